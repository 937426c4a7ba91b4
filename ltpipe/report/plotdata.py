"""The numbers behind each plot, read from metrics.json, logits.npz and feature caches.

Plots average over split and training seeds; everything here is plain numpy so that it is tested
without drawing anything (the drawing lives in :mod:`ltpipe.report.plots`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltpipe.evaluate import GROUPS
from ltpipe.utils import LtpipeError, read_json

SHOT_NAMES = GROUPS


@dataclass
class Run:
    """One classifier-stage job's results (test part)."""

    path: Path
    dataset: str
    imbalance_factor: str
    classifier: str
    method: str
    point: str
    settings: dict
    seed: int
    split_seed: int
    backbones: list[str]
    class_counts: np.ndarray
    shot_groups: np.ndarray
    test: dict
    class_names: list[str]

    @property
    def entry(self) -> tuple[str, str]:
        return self.classifier, self.point

    @property
    def label(self) -> str:
        return self.classifier if self.point == "default" else f"{self.classifier} ({self.point})"


def load_runs(metric_paths: list[str | Path]) -> list[Run]:
    """Read every metrics.json; refuse one without a test part."""
    runs = []
    for p in metric_paths:
        m = read_json(p)
        if "test" not in m.get("metrics", {}):
            raise LtpipeError(f"{p}: metrics.json has no 'test' part (parts: "
                              f"{sorted(m.get('metrics', {}))}); rerun the classifier job")
        runs.append(Run(Path(p), str(m.get("dataset", "")), str(m.get("imbalance_factor", "")),
                        m.get("classifier", m["method"]), m["method"],
                        m.get("point", "default"), m.get("settings", {}), int(m.get("seed", 0)),
                        int(m.get("split_seed", 0)), list(m.get("backbones", [])),
                        np.asarray(m["class_counts"]), np.asarray(m["shot_groups"]),
                        m["metrics"]["test"],
                        # metrics.json from before class names were kept: the class indices
                        list(m.get("class_names") or map(str, range(len(m["class_counts"]))))))
    if not runs:
        raise LtpipeError("no metrics.json given: a plot needs at least one classifier job")
    return runs


def class_order(counts: np.ndarray) -> np.ndarray:
    """Class indices sorted by training count, largest first (ties: lower index first)."""
    return np.argsort(-np.asarray(counts, dtype=float), kind="stable")


def entries(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by (classifier, point), in first-seen order."""
    out: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        out[r.entry].append(r)
    return dict(out)


def mean_counts(runs: list[Run]) -> np.ndarray:
    """Training counts per class, averaged over the runs' splits (equal for profile splits)."""
    return np.mean([r.class_counts for r in runs], axis=0)


def mean_per_class(runs: list[Run]) -> np.ndarray:
    """Per-class test accuracy (%) averaged over the runs (seeds)."""
    return np.mean([np.asarray(r.test["per_class"], dtype=float) for r in runs], axis=0)


def is_joint(runs: list[Run]) -> bool:
    return runs[0].method == "joint"


def sweep_axis(runs: list[Run]) -> tuple[str, list, bool]:
    """The swept setting: (name, x value per point in plotting order, numeric?).

    With one swept setting the x values are its values; with several, the point ids.
    """
    by_point = {r.point: r.settings for r in runs}
    keys = sorted({k for s in by_point.values() for k in s
                   if len({repr(t.get(k)) for t in by_point.values()}) > 1})
    points = list(by_point)
    if len(keys) == 1:
        values = [by_point[p].get(keys[0]) for p in points]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            order = np.argsort(values, kind="stable")
            return keys[0], [(points[i], float(values[i])) for i in order], True
        return keys[0], [(p, str(v)) for p, v in zip(points, values)], False
    return "point", [(p, p) for p in sorted(points)], False


def sweep_curves(runs: list[Run]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric (all / many / medium / few): mean and std over seeds at each sweep point."""
    _, axis, _ = sweep_axis(runs)
    by_point = entries(runs)
    out = {}
    for metric in ("all", *SHOT_NAMES):
        means, stds = [], []
        for point, _ in axis:
            vals = [r.test.get(metric) for r in by_point[(runs[0].classifier, point)]]
            vals = [float(v) for v in vals if v is not None]
            means.append(np.mean(vals) if vals else np.nan)
            stds.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
        out[metric] = (np.asarray(means), np.asarray(stds))
    return out


def parse_cache_path(path: str | Path) -> tuple[int, str, int]:
    """(split seed, backbone, training seed) from ``.../s{split}/{backbone}/t{seed}/cache.*``."""
    from ltpipe.paths import parse

    fields = parse("cache", str(path).rstrip("/"))
    if not fields or not (fields["split_seed"].isdigit() and fields["seed"].isdigit()):
        raise LtpipeError(f"{path} is not a cache path of the form "
                          ".../{dataset}/if{imb}/s{split_seed}/{backbone}/t{seed}/cache.zarr|h5")
    return int(fields["split_seed"]), fields["backbone"], int(fields["seed"])


def read_cache(path: str | Path, group: str, name: str, rows=None) -> np.ndarray:
    from ltpipe.cache import open_cache

    with open_cache(path) as reader:
        return np.asarray(reader.read(group, name, rows))


def row_norms(weight: np.ndarray) -> np.ndarray:
    """L2 norm of each row (class) of a [C, D] weight."""
    return np.linalg.norm(np.asarray(weight, dtype=np.float64), axis=1)


def stage_one_norms(cache_paths: list[str]) -> dict[str, np.ndarray]:
    """Per backbone: the stage-one head's per-class weight norms, averaged over caches (seeds)."""
    per: dict[str, list[np.ndarray]] = defaultdict(list)
    for p in cache_paths:
        _, backbone, _ = parse_cache_path(p)
        per[backbone].append(row_norms(read_cache(p, "head", "weight")))
    return {b: np.mean(v, axis=0) for b, v in per.items()}


#: why a method's logits.npz holds no ``head_weight``: by design, it trains no new weight matrix
#: (the weight-norm plot and its caption say so)
NO_HEAD_WEIGHT = {
    "tau_norm": "rescales the stage-one head at test time (w_j / ||w_j||^tau): no trained weight",
    "lws": "learns one scale per class on the frozen stage-one logits: no new weight matrix",
    "ncm": "scores by distance to class-mean features: no weight matrix",
    "logit_adjust": "shifts the stage-one logits by tau * log prior: the stage-one head unchanged",
    "ffn": "its head reads the fusion of two backbones' features, so its norms are not "
           "comparable with one backbone's head; not saved",
}


def missing_head_notes(runs: list[Run], drawn: set[str]) -> list[str]:
    """One line per method with runs but no drawn weight-norm curve, saying why (a method not in
    :data:`NO_HEAD_WEIGHT` should have saved one: its logits.npz lacks ``head_weight``)."""
    labels: dict[str, list[str]] = defaultdict(list)
    for r in runs:
        if r.method != "joint" and r.label not in drawn and r.label not in labels[r.method]:
            labels[r.method].append(r.label)
    return [f"{', '.join(names)}: " + NO_HEAD_WEIGHT.get(
        method, "its logits.npz holds no head_weight (rerun its job to save one)")
        for method, names in sorted(labels.items())]


def method_norms(runs: list[Run]) -> dict[str, np.ndarray]:
    """Per (classifier, point) label: norms of ``head_weight`` in logits.npz, mean over seeds.

    Entries whose logits.npz holds no ``head_weight`` (methods without a trained head) are left
    out.
    """
    out = {}
    for members in entries(runs).values():
        norms = []
        for r in members:
            with np.load(r.path.parent / "logits.npz") as z:
                if "head_weight" in z.files:
                    norms.append(row_norms(z["head_weight"]))
        if norms:
            out[members[0].label] = np.mean(norms, axis=0)
    return out


def confusion(runs: list[Run], cache_paths: list[str]) -> np.ndarray:
    """Row-normalised test confusion matrix (rows: true class) summed over seeds, in %.

    Labels come from the test part of the cache of the run's first backbone, same split seed and
    training seed (the order in which the classifier job scored the samples).
    """
    caches = {parse_cache_path(p): p for p in cache_paths}
    C = len(runs[0].class_counts)
    cm = np.zeros((C, C), dtype=np.float64)
    for r in runs:
        key = (r.split_seed, r.backbones[0], r.seed)
        if key not in caches:
            raise LtpipeError(f"no cache for split seed {key[0]}, backbone {key[1]!r}, seed "
                              f"{key[2]} among {sorted(caches)}: it holds the test labels of "
                              f"{r.path}")
        labels = read_cache(caches[key], "test", "labels")
        with np.load(r.path.parent / "logits.npz") as z:
            pred = np.asarray(z["test"]).argmax(axis=1)
        np.add.at(cm, (labels, pred), 1.0)
    rows = cm.sum(axis=1, keepdims=True)
    return 100.0 * cm / np.maximum(rows, 1.0)


def subsample(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed random subsample of ``min(n, k)`` of ``n`` rows."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.RandomState(seed).choice(n, size=k, replace=False))


def tsne_points(cache_paths: list[str], max_points: int = 1000, seed: int = 0,
                w1: float | None = None, normalize: bool = False) -> dict:
    """2-D t-SNE of cached test features (pooled; with two caches and ``w1``, the FFN fusion
    w1 * f_first + (1 - w1) * f_second, each L2-normalised first when ``normalize``).

    Returns xy [N, 2], labels [N], shot group per class and class counts (from the first cache).
    """
    from sklearn.manifold import TSNE

    n = int(_cache_rows(cache_paths[0], "test", "labels"))
    idx = subsample(n, max_points, seed)
    feats = [read_cache(p, "test", "pooled", idx).astype(np.float64) for p in cache_paths]
    if len(feats) == 2:
        if w1 is None:
            raise LtpipeError("two caches give a fused t-SNE only with a fusion weight w1")
        if normalize:
            feats = [f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
                     for f in feats]
        x = w1 * feats[0] + (1.0 - w1) * feats[1]
    elif len(feats) == 1:
        x = feats[0]
    else:
        raise LtpipeError(f"t-SNE takes one cache (or two to fuse), got {len(feats)}")
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
              max_iter=500).fit_transform(x)
    return {"xy": xy, "labels": read_cache(cache_paths[0], "test", "labels", idx),
            "shot_groups": read_cache(cache_paths[0], "meta", "shot_groups"),
            "class_counts": read_cache(cache_paths[0], "meta", "class_counts")}


def _cache_rows(path: str | Path, group: str, name: str) -> int:
    from ltpipe.cache import open_cache

    with open_cache(path) as reader:
        return reader.shape(group, name)[0]
