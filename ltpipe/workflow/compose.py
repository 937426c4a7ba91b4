"""Composition in the config: a classifier entry that reads other entries' jobs (``reads:``).

An entry gives either ``backbones: [...]`` (it reads stage-one caches) or ``reads: <entry>`` /
``reads: [<entry>, ...]`` (it reads the heads those entries' jobs saved, and the features they read:
:mod:`ltpipe.classifiers.outputs`). A composed entry runs once per combination of its own sweep
points and its inputs' points, for every split and training seed they share; it reads the caches
of the backbones its inputs read (filled in as its ``backbones`` by :func:`expand_compositions`,
so that seeds, data sets, plots and the summary treat it like any entry). Torch-free: this runs
while Snakemake builds the DAG.
"""

from __future__ import annotations

import itertools
from typing import Any

from ltpipe.utils import LtpipeError

#: separates a composed point's own part from its inputs' points (``tau=0.5_on_lam=0.1``)
ON_SEP = "_on_"


KEY = "reads"


def upstream_of(cc: dict) -> list[str]:
    """The entries a classifier entry is composed on ([] for one on backbones)."""
    on = cc.get(KEY)
    if on is None:
        return []
    return [on] if isinstance(on, str) else list(on)


def composition_order(cfg: dict) -> list[str]:
    """Classifier entries ordered so that each comes after the entries it is composed on; an
    unknown name, a cycle, or an entry with neither ``reads`` nor ``backbones`` is an
    ``LtpipeError`` naming it."""
    entries = cfg["classifiers"]
    problems, order, state = [], [], {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            raise LtpipeError("classifiers: the entries are composed in a circle: "
                              + " -> ".join([*path[path.index(name):], name])
                              + "; an entry cannot read its own output")
        state[name] = "open"
        for up in upstream_of(entries[name]):
            if up in entries:
                visit(up, [*path, name])
        state[name] = "done"
        order.append(name)

    for name, cc in entries.items():
        if True in cc:  # YAML 1.1 reads a key on: (also yes:, y:) as the boolean true
            problems.append(f"classifiers.{name}: a key YAML reads as true (on:, yes:); to "
                            f"compose on another entry write {KEY}: <entry>")
            continue
        ups = upstream_of(cc)
        if KEY in cc and not ups:
            problems.append(f"classifiers.{name}.{KEY}: an empty list; name the entries it reads")
        unknown = [u for u in ups if u not in entries]
        if unknown:
            problems.append(f"classifiers.{name}.{KEY}: {unknown} not classifier entries of this "
                            f"config (entries: {sorted(entries)})")
        if KEY not in cc and "backbones" not in cc:
            problems.append(f"classifiers.{name}: give backbones: [...] (the caches it reads) or "
                            f"{KEY}: <entry> (the classifier entry whose jobs' heads it reads)")
    if problems:
        raise LtpipeError("config has problems:\n  - " + "\n  - ".join(problems))
    for name in entries:
        visit(name, [])
    return order


def chain_backbones(cfg: dict, name: str) -> list[str]:
    """The backbones an entry reads: its own, or those its inputs read (in order, each once)."""
    cc = cfg["classifiers"][name]
    ups = upstream_of(cc)
    if not ups:
        return list(cc["backbones"])
    return list(dict.fromkeys(b for u in ups for b in chain_backbones(cfg, u)))


def expand_compositions(cfg: dict) -> None:
    """Fill in each composed entry's ``backbones`` (its inputs' backbones, as a tuple: the mark
    of a derived value, which YAML never gives) in place, after checking the names
    (:func:`composition_order`). An entry that gives both ``reads`` and its own ``backbones``
    list is refused. Idempotent, and a second call follows a changed input."""
    order = composition_order(cfg)
    for name, cc in cfg["classifiers"].items():
        if not upstream_of(cc):
            continue
        if isinstance(cc.get("backbones"), list):
            raise LtpipeError(f"classifiers.{name}: gives both {KEY}: {cc[KEY]!r} and backbones: "
                              f"{cc['backbones']}; a composed entry reads its inputs' backbones:"
                              " remove backbones:")
        cc.pop("backbones", None)
    for name in order:
        cc = cfg["classifiers"][name]
        if upstream_of(cc):
            cc["backbones"] = tuple(chain_backbones(cfg, name))


def composed_points(own: list[tuple[str, dict]], upstream: list[tuple[str, list[str]]],
                    ) -> list[tuple[str, dict, list[dict]]]:
    """``[(point, settings, on), ...]``: every own sweep point with every combination of the
    inputs' points (``upstream``: (entry, its points)). The point's name is its own point,
    followed by ``_on_`` and the inputs' points (joined by ``+``) where an input has more than
    one point; ``on`` lists {"classifier", "point"} per input."""
    named = any(len(points) > 1 for _, points in upstream)
    out = []
    for combo in itertools.product(*(points for _, points in upstream)):
        on = [{"classifier": u, "point": p} for (u, _), p in zip(upstream, combo)]
        for pid, settings in own:
            full = f"{pid}{ON_SEP}{'+'.join(combo)}" if named else pid
            out.append((full, settings, on))
    return out


def chain_text(jobs: dict, name: str, point: str) -> str:
    """How a job's classifier was made, methods outermost first: ``tau_norm(crt)``,
    ``lws(h2t(ffn))``, ``ensemble(crt,bwlm)``; a job on backbones is its method's name."""
    job = jobs[name, point]
    ups = job.get("on") or []
    if not ups:
        return job["method"]
    inner = ",".join(chain_text(jobs, u["classifier"], u["point"]) for u in ups)
    return f"{job['method']}({inner})"


def composition_problems(cfg: dict, name: str) -> list[str]:
    """What makes a composed entry's types not fit (empty when they do): an input whose method
    saves no head, a method that needs arrays only a cache holds, the wrong number of inputs,
    inputs whose features differ in width for a method that combines features."""
    from ltpipe.classifiers import method_names, method_spec
    from ltpipe.classifiers.outputs import COMPOSABLE_NEEDS

    cc = cfg["classifiers"][name]
    ups = upstream_of(cc)
    spec = method_spec(cc["method"])
    out = []
    for u in ups:
        umethod = cfg["classifiers"][u]["method"]
        if umethod not in method_names():
            continue  # reported at that entry
        if not method_spec(umethod).head:
            savers = [m for m in method_names() if method_spec(m).head]
            out.append(f"{KEY}: {u!r} (method {umethod!r}) saves no head, so no entry can be "
                       f"composed on it; methods whose jobs save one: {savers}")
    extra = sorted(spec.needs - COMPOSABLE_NEEDS)
    if extra:
        out.append(f"method {cc['method']!r} reads {extra}, which only a backbone cache holds: "
                   f"it cannot read another job's head; give it backbones: instead of {KEY}:")
    if not spec.takes(len(ups)):
        out.append(f"{KEY}: method {cc['method']!r} reads {spec.inputs_text} input(s), got "
                   f"{len(ups)}: {ups}")
    if len(ups) > 1 and "pooled" in spec.needs:
        widths = {u: feature_width_key(cfg, chain_backbones(cfg, u)[0]) for u in ups}
        if len(set(widths.values())) > 1:
            out.append(f"{KEY}: {ups} read features of different widths (architectures "
                       f"{ {u: w[0] for u, w in widths.items()} }); method {cc['method']!r} "
                       "combines features, which needs one width")
    return out


def feature_width_key(cfg: dict, backbone: str) -> tuple[str, str]:
    """What decides a backbone's feature width without building it: its architecture and
    architecture_kwargs (equal keys, equal widths)."""
    rc = cfg["backbones"][backbone]
    return rc["architecture"], repr(sorted((rc.get("architecture_kwargs") or {}).items()))


def upstream_jobs(cfg: dict, job: dict, run: dict, layout: Any) -> list[dict]:
    """The ``on`` list a composed job's params carry: each input job's classifier, point, its
    logits.npz for this run (``run``: dataset, imb, split_seed, seed) and the index of its first
    backbone's cache among the job's caches."""
    out = []
    for u in job.get("on") or []:
        first = chain_backbones(cfg, u["classifier"])[0]
        out.append({**u, "logits": layout.path("logits", **run, classifier=u["classifier"],
                                                point=u["point"]),
                    "cache": job["backbones"].index(first)})
    return out
