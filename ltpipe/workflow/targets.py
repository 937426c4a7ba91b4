"""Which plots a config asks for, and which files each plot job reads (used by rules/report.smk).

Plots aggregate over split and training seeds, so they live beside the splits:
``{results}/{dataset}/if{imb}/plots/``. A *group* is the backbone set a classifier entry reads,
joined by ``+`` (``ce``, or ``kps+ce`` for FFN); per-class, confusion and weight-norm plots are
drawn per group, with the ``joint`` entries on the group's backbones as the baseline. Functions
of ``(cfg, wildcards)`` are the rules' input functions (bound to the config with ``partial``).
"""

from __future__ import annotations

from types import SimpleNamespace

from ltpipe.paths import Layout, parse
from ltpipe.workflow.config import (
    as_json,
    classifier_datasets,
    classifier_inputs,
    classifier_seeds,
    metric_targets,
    shared_seeds,
    splits,
    sweep_points,
    sweep_table,
)

#: a confusion matrix is drawn only for data sets of at most this many classes
CONFUSION_MAX = 20


def group_of(cfg: dict, clf: str) -> str:
    """The group tag of a classifier entry: its backbones joined by '+'."""
    return "+".join(cfg["classifiers"][clf]["backbones"])


def _split_dirs(cfg: dict, dataset: str, imb: str) -> list[tuple[int, dict]]:
    """(split seed, the split's path fields) of every split of ``dataset`` at ``imb``."""
    return [(k.split_seed, k.fields) for k in splits(cfg) if k.dataset == dataset and k.imb == imb]


def _entries(cfg: dict, dataset: str) -> list[str]:
    return [c for c in cfg["classifiers"] if dataset in classifier_datasets(cfg, c)]


def groups(cfg: dict, dataset: str) -> list[str]:
    """Backbone groups of the classifier entries that run on ``dataset`` (config order)."""
    out: list[str] = []
    for clf in _entries(cfg, dataset):
        g = group_of(cfg, clf)
        if g not in out:
            out.append(g)
    return out


def group_entries(cfg: dict, dataset: str, group: str) -> list[str]:
    """The group's classifier entries plus the joint entries on each of its backbones."""
    members = set(group.split("+"))
    out = []
    for clf in _entries(cfg, dataset):
        ccfg = cfg["classifiers"][clf]
        if group_of(cfg, clf) == group or (
                ccfg["method"] == "joint" and set(ccfg["backbones"]) <= members):
            out.append(clf)
    return out


def sweep_entries(cfg: dict, dataset: str, clf: str) -> list[str]:
    """A swept entry plus the joint entries on its backbones (the sweep plot's baseline)."""
    joint = [c for c in group_entries(cfg, dataset, group_of(cfg, clf))
             if cfg["classifiers"][c]["method"] == "joint"]
    return [clf, *(c for c in joint if c != clf)]


def swept_entries(cfg: dict, dataset: str) -> list[str]:
    """Classifier entries with more than one sweep point."""
    return [c for c in _entries(cfg, dataset)
            if len(entry_points(cfg, c)) > 1]


def entry_points(cfg: dict, clf: str) -> list[str]:
    """The sweep points of a classifier entry (a composed entry's include its inputs' points:
    the whole table is built only for one; called per plot job while the DAG is built)."""
    from ltpipe.workflow.compose import upstream_of

    ccfg = cfg["classifiers"][clf]
    if not upstream_of(ccfg):
        return [p for p, _ in sweep_points(ccfg.get("settings", {}))]
    return [p for c, p in sweep_table(cfg) if c == clf]


def entry_files(cfg: dict, dataset: str, imb: str, clf: str, name: str) -> list[str]:
    """Artifact ``name`` (metrics / logits) of every split seed, training seed and point."""
    points = entry_points(cfg, clf)
    return [Layout(cfg).path(name, **d, classifier=clf, seed=seed, point=p)
            for _, d in _split_dirs(cfg, dataset, imb)
            for seed in classifier_seeds(cfg, clf) for p in points]


def metrics_of(cfg: dict, dataset: str, imb: str, entries: list[str]) -> list[str]:
    return [f for c in entries for f in entry_files(cfg, dataset, imb, c, "metrics")]


def logits_of(cfg: dict, dataset: str, imb: str, entries: list[str]) -> list[str]:
    return [f for c in entries for f in entry_files(cfg, dataset, imb, c, "logits")]


def group_caches(cfg: dict, dataset: str, imb: str, group: str) -> list[str]:
    """Caches of the group's backbones for every split seed and every seed its entries use."""
    seeds: set[int] = set()
    for clf in group_entries(cfg, dataset, group):
        seeds |= set(classifier_seeds(cfg, clf))
    return [Layout(cfg).path("cache", **d, backbone=b, seed=s)
            for _, d in _split_dirs(cfg, dataset, imb)
            for b in group.split("+") for s in sorted(seeds)]


def summary_inputs(cfg: dict, jobs: dict | None = None) -> dict[str, list[str]]:
    """Input of the summary rule: every classify job's metrics.json and logits.npz, and the cache
    of each job's first backbone (its test labels: what :func:`ltpipe.report.summary.job_files`
    reads for the intervals and paired comparisons)."""
    layout, jobs = Layout(cfg), jobs or sweep_table(cfg)
    metrics = metric_targets(cfg, jobs)
    logits, caches = [], {}  # caches: a dict as an ordered set (a list's `in` grows with the jobs)
    for path in metrics:
        f = parse("metrics", path)
        logits.append(layout.path("logits", **f))
        caches.setdefault(classifier_inputs(cfg, SimpleNamespace(**f), jobs)["caches"][0])
    return {"metrics": metrics, "logits": logits, "caches": list(caches)}


def group_metrics(cfg: dict, wildcards) -> list[str]:
    """Input of plot_perclass: metrics.json of the group's entries (``wildcards``: the job's)."""
    w = wildcards
    return metrics_of(cfg, w.dataset, w.imb, group_entries(cfg, w.dataset, w.group))


def sweep_metrics(cfg: dict, wildcards) -> list[str]:
    """Input of plot_sweep: metrics.json of the swept entry and its joint baselines."""
    w = wildcards
    return metrics_of(cfg, w.dataset, w.imb, sweep_entries(cfg, w.dataset, w.classifier))


def group_inputs(cfg: dict, wildcards) -> dict[str, list[str]]:
    """Input of plot_wnorm_confusion: the group's metrics.json, logits.npz and caches."""
    w = wildcards
    entries = group_entries(cfg, w.dataset, w.group)
    return {"metrics": metrics_of(cfg, w.dataset, w.imb, entries),
            "logits": logits_of(cfg, w.dataset, w.imb, entries),
            "caches": group_caches(cfg, w.dataset, w.imb, w.group)}


def tsne_backbones(cfg: dict, dataset: str) -> list[str]:
    """Stage-one recipes read by any classifier entry on ``dataset``."""
    out: list[str] = []
    for clf in _entries(cfg, dataset):
        for b in cfg["classifiers"][clf]["backbones"]:
            if b not in out:
                out.append(b)
    return out


def first_run(cfg: dict, dataset: str, imb: str, backbones: list[str]) -> tuple[dict, int]:
    """(split path fields, training seed) of the first split seed and the first seed all
    backbones share."""
    return _split_dirs(cfg, dataset, imb)[0][1], (shared_seeds(cfg, backbones) or [0])[0]


def tsne_caches(cfg: dict, dataset: str, imb: str, backbones: list[str]) -> list[str]:
    d, seed = first_run(cfg, dataset, imb, backbones)
    return [Layout(cfg).path("cache", **d, backbone=b, seed=seed) for b in backbones]


def fused_entries(cfg: dict, dataset: str) -> list[str]:
    return [c for c in _entries(cfg, dataset) if cfg["classifiers"][c]["method"] == "ffn"]


def tsne_inputs(cfg: dict, wildcards) -> list[str]:
    """Input of plot_tsne: the cache of one backbone, or those of an FFN entry's (``fused``)."""
    w = wildcards
    backbones = cfg["classifiers"][w.features]["backbones"] if w.kind == "fused" else [w.features]
    return tsne_caches(cfg, w.dataset, w.imb, backbones)


def tsne_args(cfg: dict, wildcards) -> list[str]:
    """plot_tsne's title and, for fused features, the FFN entry's first-point w1 and variant (the
    plot resolves them over FFN's declared defaults as the job does; torch stays out of here)."""
    w = wildcards
    if w.kind == "backbone":
        return ["--title", f"{w.dataset} IF{w.imb}, backbone {w.features}"]
    point = sweep_points(cfg["classifiers"][w.features].get("settings", {}))[0][1]
    return ["--ffn-settings", as_json({k: v for k, v in point.items() if k in ("w1", "variant")}),
            "--title", f"{w.dataset} IF{w.imb}, {w.features} fused features"]


def plot_targets(cfg: dict) -> list[str]:
    """Every plot and table the report rules make for this config."""
    from ltpipe.data.sources import num_classes_of
    from ltpipe.workflow.compose import expand_compositions

    expand_compositions(cfg)  # composed entries read their inputs' backbones
    layout = Layout(cfg)
    out = [layout.path(name) for name in ("comparison_csv", "comparison_md", "tables_html")]
    seen = set()
    for key in splits(cfg):
        if (key.dataset, key.imb) in seen:
            continue
        seen.add((key.dataset, key.imb))
        where = {"dataset": key.dataset, "imb": key.imb}
        for g in groups(cfg, key.dataset):
            out += [layout.path("plot_perclass", **where, group=g),
                    layout.path("plot_wnorm_confusion", **where, kind="wnorm", group=g)]
            if num_classes_of(cfg["datasets"][key.dataset]) <= CONFUSION_MAX:
                out.append(layout.path("plot_wnorm_confusion", **where, kind="confusion",
                                       group=g))
        out += [layout.path("plot_sweep", **where, classifier=c)
                for c in swept_entries(cfg, key.dataset)]
        out += [layout.path("plot_tsne", **where, kind="backbone", features=b)
                for b in tsne_backbones(cfg, key.dataset)]
        out += [layout.path("plot_tsne", **where, kind="fused", features=c)
                for c in fused_entries(cfg, key.dataset)]
    return out


def run_traits(cfg: dict) -> dict:
    """What the comparison table matches on: each data set's source and each recipe's traits."""
    return {
        "datasets": {name: ds["source"] for name, ds in cfg["datasets"].items()},
        "backbones": {
            name: {"architecture": rc["architecture"], "loss": rc.get("loss", "ce"),
                   "mixup": float(rc.get("mixup_alpha", 0.0) or 0.0) > 0,
                   "afa": bool(rc.get("afa"))}
            for name, rc in cfg["backbones"].items()
        },
    }

