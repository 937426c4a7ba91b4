"""Plug-ins: classifier methods, architectures and data sources from other distributions.

A distribution adds them through Python entry points (``importlib.metadata``), the mechanism
pytest plugins and Snakemake executor plugins use, in three groups (``GROUPS``):

- ``ltpipe.methods``: name -> a module keeping the method contract (``SPEC`` and ``run``;
  :mod:`ltpipe.classifiers.spec`);
- ``ltpipe.architectures``: name -> a backbone constructor ``f(in_channels, **kwargs)``
  returning an ``ltpipe.models.Backbone`` (:mod:`ltpipe.models.registry`);
- ``ltpipe.sources``: name -> an ``ltpipe.data.sources.Source`` subclass, constructed with the
  data set's config entry (:mod:`ltpipe.data.sources`).

A config names a plug-in by its entry-point name exactly as it names a built-in. Reading the
names costs one scan of the installed distributions' metadata (cached); a plug-in's code is
imported only when a config uses it (:func:`load`, cached). A name that is also a built-in's, or
that two distributions declare, is refused by :func:`clash_problems` (config check), naming the
distribution and the fix; so is a plug-in that fails to import or breaks its contract.
See docs/extending.md.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
from collections.abc import Iterable
from typing import Any

from ltpipe.utils import LtpipeError

GROUPS = {"methods": "ltpipe.methods", "architectures": "ltpipe.architectures",
          "sources": "ltpipe.sources"}


@functools.cache
def _all_entry_points() -> dict[str, list[md.EntryPoint]]:
    """Group -> its entry points over every installed distribution (one metadata scan)."""
    found: dict[str, list[md.EntryPoint]] = {group: [] for group in GROUPS.values()}
    for group in GROUPS.values():
        found[group] = list(md.entry_points(group=group))
    return found


def clear_cache() -> None:
    """Forget scanned and loaded plug-ins (after changing ``sys.path``, e.g. in tests)."""
    importlib.invalidate_caches()  # importlib.metadata's cached directory listings too
    _all_entry_points.cache_clear()
    load.cache_clear()


def _group(kind: str) -> str:
    if kind not in GROUPS:
        raise LtpipeError(f"unknown plug-in kind {kind!r}; expected one of {list(GROUPS)}")
    return GROUPS[kind]


def entry_points(kind: str) -> dict[str, list[md.EntryPoint]]:
    """Plug-in name -> the entry points declaring it (more than one is a clash)."""
    out: dict[str, list[md.EntryPoint]] = {}
    for ep in _all_entry_points()[_group(kind)]:
        out.setdefault(ep.name, []).append(ep)
    return out


def names(kind: str) -> list[str]:
    """The plug-in names of ``kind`` ("methods", "architectures", "sources"), sorted."""
    return sorted(entry_points(kind))


def origin(ep: md.EntryPoint) -> str:
    """Where an entry point comes from, for messages."""
    dist = (f"distribution {ep.dist.name} {ep.dist.version}" if ep.dist
            else "an unknown distribution")
    return f"entry point {ep.name} = {ep.value} (group {ep.group}, {dist})"


def clash_problems(kind: str, builtin: Iterable[str]) -> list[str]:
    """One line per plug-in name of ``kind`` that a built-in or another distribution also
    uses, naming the distributions and the fix."""
    builtin = set(builtin)
    out = []
    for name, eps in sorted(entry_points(kind).items()):
        if name in builtin:
            out += [f"{origin(ep)}: {name!r} is the name of a built-in {kind[:-1]}; rename the "
                    "entry point in that distribution's pyproject.toml (e.g. a prefix) and "
                    "reinstall it" for ep in eps]
        elif len(eps) > 1:
            out.append(f"plug-in {kind[:-1]} {name!r} is declared twice: "
                       + " and ".join(origin(ep) for ep in eps)
                       + "; uninstall one or rename its entry point")
    return out


@functools.cache
def load(kind: str, name: str) -> tuple[Any, str]:
    """(the object entry point ``name`` of ``kind`` refers to, its origin), imported once.

    An unknown name, a name declared twice, or an import that fails is an ``LtpipeError``
    naming the distribution and the fix.
    """
    eps = entry_points(kind).get(name)
    if not eps:
        raise LtpipeError(f"no plug-in {kind[:-1]} {name!r} is installed (entry-point group "
                          f"{_group(kind)}); installed: {names(kind)}")
    if len(eps) > 1:
        raise LtpipeError(clash_problems(kind, ())[0])
    (ep,) = eps
    try:
        obj = ep.load()
    except Exception as err:  # an import error, a missing attribute: the plug-in's fault
        raise LtpipeError(f"{origin(ep)} fails to load: {type(err).__name__}: {err}; fix or "
                          f"reinstall that distribution, or uninstall it "
                          f"(pip uninstall {ep.dist.name if ep.dist else '...'})") from err
    return obj, origin(ep)


def plugin_problems(cfg: dict | None = None) -> list[str]:
    """The config check's plug-in problems: every name that clashes (with a built-in or
    another distribution's), and each plug-in data source ``cfg`` uses that fails to load or is
    not a ``Source`` (plug-in methods and architectures are loaded by their own checks)."""
    from ltpipe.classifiers import plugin_problems as method_problems
    from ltpipe.data.sources import BUILTIN_SOURCES, source_class
    from ltpipe.models.catalog import builtin_names

    out = method_problems()
    out += clash_problems("architectures", builtin_names())
    out += clash_problems("sources", BUILTIN_SOURCES)
    used = {ds.get("source") for ds in ((cfg or {}).get("datasets") or {}).values()}
    for name in sorted(used & set(names("sources")) - set(BUILTIN_SOURCES), key=str):
        try:
            source_class(name)
        except LtpipeError as err:
            out.append(f"source {name!r}: {err}")
    return out
