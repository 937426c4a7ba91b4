"""Declared settings: one dialect for every configurable value of a loss, trainer or method.

A ``Setting`` holds a default, a check and what the check expects (for errors), plus a short
``doc`` (unit, meaning, source). A component declares ``SETTINGS: dict[str, Setting]``;
``resolve_settings`` merges given values over the defaults and refuses unknown keys and bad
values with one message naming the key, the value, what was expected and the allowed keys.
The DAG-build check (``ltpipe.workflow.config``) resolves every sweep point of every classifier
entry with the same function, so a range error stops Snakemake before any job runs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ltpipe.utils import LtpipeError


@dataclass(frozen=True)
class Setting:
    """One setting: default, value check, what the check expects, and unit / source notes."""

    default: Any
    ok: Callable[[Any], bool]
    expect: str
    doc: str = ""

    def with_default(self, default: Any, doc: str | None = None) -> Setting:
        """The same setting with another default (and optionally another note)."""
        return replace(self, default=default, doc=self.doc if doc is None else doc)


def is_real(v: Any) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def number(default: Any, lo: float | None = None, hi: float | None = None, *,
           integer: bool = False, lo_open: bool = False, hi_open: bool = False,
           optional: bool = False, doc: str = "") -> Setting:
    """A number (an integer with ``integer``) in [lo, hi] (open ends on request), or None when
    ``optional``."""

    def ok(v: Any) -> bool:
        if v is None:
            return optional
        if not (is_int(v) if integer else is_real(v)):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)

    interval = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
                f"{'inf' if hi is None else hi}{')' if hi_open else ']'}")
    kind = "an integer" if integer else "a number"
    return Setting(default, ok, ("null or " if optional else "") + f"{kind} in {interval}", doc)


def choice(default: Any, options: tuple, *, optional: bool = False, doc: str = "") -> Setting:
    """One of ``options`` (or None when ``optional``)."""
    return Setting(default, lambda v: (optional and v is None) or v in options,
                   ("null or " if optional else "") + f"one of {list(options)}", doc)


def flag(default: bool, doc: str = "") -> Setting:
    """true or false."""
    return Setting(default, lambda v: isinstance(v, bool), "true or false", doc)


def defaults(spec: dict[str, Setting]) -> dict[str, Any]:
    """The default of every setting in ``spec`` (a fresh dict)."""
    return {key: s.default for key, s in spec.items()}


#: recipe keys that were renamed: old name -> new name (a checkpoint written under the old name
#: still resumes, ltpipe.train.checkpoint)
RENAMED_KEYS = {"backbone": "architecture", "backbone_kwargs": "architecture_kwargs"}
#: config keys that were renamed or removed -> what to write instead (read by the config checks
#: and by :func:`resolve_settings`, so an old config or recipe gets the fix, not "unknown key")
RETIRED_KEYS = {
    **{old: f"renamed {new!r}" for old, new in RENAMED_KEYS.items()},
    "augmented_views": "removed (no classifier-stage method read the cached augmented views); "
                       "delete the key",
}
RETIRED_KEYS["backbone"] += (" (backbones.<name>.architecture: resnet32); 'backbone' names only "
                             "the recipes")


def retired(keys: Any) -> list[str]:
    """``"'old': fix"`` for each of ``keys`` that :data:`RETIRED_KEYS` lists."""
    return [f"{k!r}: {RETIRED_KEYS[k]}" for k in sorted(keys) if k in RETIRED_KEYS]


def resolve_settings(owner: str, spec: dict[str, Setting], given: dict[str, Any] | None
                     ) -> dict[str, Any]:
    """``given`` over the defaults of ``spec``; ``LtpipeError`` on an unknown key or bad value.

    ``owner`` names the component in the message, e.g. "loss 'kps'" or "method 'h2t'".
    """
    given = dict(given or {})
    allowed = ", ".join(sorted(spec))
    unknown = sorted(set(given) - set(spec))
    if retired(unknown):
        raise LtpipeError(f"{owner}: " + "; ".join(retired(unknown)))
    if unknown:
        raise LtpipeError(f"{owner} has no setting(s) {unknown}; allowed keys: {allowed}. "
                          "Remove or rename them in the config")
    out = defaults(spec)
    for key, value in given.items():
        if not spec[key].ok(value):
            doc = f" ({spec[key].doc})" if spec[key].doc else ""
            raise LtpipeError(f"{owner}: setting {key!r} = {value!r} is invalid, expected "
                              f"{spec[key].expect}{doc}; allowed keys: {allowed}")
        out[key] = value
    return out
