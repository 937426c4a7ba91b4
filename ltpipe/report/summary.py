"""Aggregate every classifier-stage job's ``metrics.json`` into ``summary.csv``, ``paired.csv`` and
``summary.md``.

``summary.csv`` has one row per job (data set, imbalance factor, split seed, training seed,
backbone(s), classifier entry, method, sweep point and settings, accuracies with their 95%
intervals, the code that computed them (:func:`ltpipe.provenance.code_label`), the kinds of
machine that ran the classifier job (``host``) and trained its backbone(s) (``train_host``,
:func:`ltpipe.provenance.host_label`), and a digest of its test predictions (``predictions``); the
job's ``metrics.json`` holds the full provenance). ``summary.md`` groups jobs that differ only in
their seeds (mean, interval over seeds and test images), says when its rows came from more than
one kind of machine, states each data set's scale (classes and test images per shot group), and
renders ``paired.csv``: each method against the ``joint`` and ``crt`` rows on its backbone,
paired over the same test images (:mod:`ltpipe.report.stats`).

Per-image correctness comes from each job's ``logits.npz`` and the test labels of the cache of its
first backbone (same split and training seed); both sit at the paths :mod:`ltpipe.paths` names
(:func:`job_files`), and the summary rule declares them as inputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ltpipe.evaluate import GROUPS
from ltpipe.paths import CACHE_EXT, TEMPLATES, parse
from ltpipe.provenance import code_label, host_label
from ltpipe.report import stats
from ltpipe.utils import LtpipeError, atomic_path, read_json

METRICS = ("all", *GROUPS)
#: the 95% interval of each accuracy (Wilson over the job's test images, ltpipe.report.stats)
INTERVALS = tuple(f"{m}_{end}" for m in METRICS for end in ("lo", "hi"))
COLUMNS = ["dataset", "imbalance_factor", "split_seed", "seed", "backbone", "classifier",
           "method", "point", "params", *METRICS, *INTERVALS,
           *(f"n_{m}" for m in METRICS), "val_all", "chosen_on_val", "code", "host",
           "train_host", "predictions"]
GROUP_KEYS = ("dataset", "imbalance_factor", "backbone", "classifier", "method", "point")
#: a method's rows across runs (its validation-chosen points: :func:`_method_groups`)
METHOD_KEYS = GROUP_KEYS[:-1]


def rows_from_metrics(paths: list[str | Path]) -> list[dict]:
    """One summary row per metrics.json (test part), with its per-image correctness where the
    job's logits.npz and its cache's test labels exist (:func:`job_files`)."""
    rows = []
    labels_of: dict[Path, np.ndarray] = {}
    for path in paths:
        m = read_json(path)
        test = m["metrics"]["test"]
        row = {
            "dataset": m.get("dataset", ""),
            "imbalance_factor": m.get("imbalance_factor", ""),
            "split_seed": m.get("split_seed", ""),
            "seed": m.get("seed", ""),
            "backbone": "+".join(m.get("backbones", [])),
            "classifier": m.get("classifier", m.get("method")),
            # a composed job's chain of methods (tau_norm(crt)): the row names how it was made
            "method": m.get("chain") or m["method"],
            "point": m.get("point", "default"),
            "params": ";".join(f"{k}={v}" for k, v in sorted(m.get("settings", {}).items())),
        }
        row.update({k: test.get(k) for k in METRICS})
        row["val_all"] = m["metrics"].get("val", {}).get("all")
        row["chosen_on_val"] = ""
        logits, cache = job_files(path, (m.get("backbones") or [""])[0], m.get("seed", 0))
        row["_predictions"] = prediction_digest(logits)
        row.update(_per_image(path, m, logits, cache, labels_of))
        prov = m.get("provenance", {})
        row["code"] = code_label(prov.get("code"))
        # 16 hex digits of prediction_digest: rows with equal values predicted the same class
        # for every test image (ltpipe compare-runs' "identical")
        row["predictions"] = (row["_predictions"] or "")[:16]
        row["host"] = host_label(prov.get("host"))
        row["train_host"] = "+".join(dict.fromkeys(host_label(c.get("train_host"))
                                                   for c in prov.get("caches", [])))
        rows.append(row)
    rows.sort(key=lambda r: tuple(str(r[k]) for k in COLUMNS[:9]))
    mark_chosen_on_val(rows)
    return rows


def job_files(metrics_path: str | Path, backbone: str, seed) -> tuple[Path, Path | None]:
    """The job's logits.npz (beside its metrics.json) and the cache holding its test labels: the
    one of its first backbone, same split and training seed (None when the metrics path is not
    in the :mod:`ltpipe.paths` layout, or no cache is there)."""
    logits = Path(metrics_path).with_name("logits.npz")
    fields = parse("metrics", str(metrics_path))
    if fields is None or not backbone:
        return logits, None
    root = str(metrics_path)[:len(str(metrics_path)) - len(TEMPLATES["metrics"].format(**fields))]
    for ext in CACHE_EXT.values():
        cache = Path(root + TEMPLATES["cache"].format(
            dataset=fields["dataset"], imb=fields["imb"], split_seed=fields["split_seed"],
            backbone=backbone, seed=seed, ext=ext))
        if cache.exists():
            return logits, cache
    return logits, None


def _per_image(path, m: dict, logits: Path, cache: Path | None,
               labels_of: dict[Path, np.ndarray]) -> dict:
    """``_correct`` (bool per test image), ``_image_groups`` (shot group per image), ``_test_set``,
    and the Wilson interval and image count of each accuracy; empty intervals without the files."""
    out: dict = {f"n_{k}": "" for k in METRICS} | {k: None for k in INTERVALS}
    out.update(_correct=None, _image_groups=None, _test_set=None)
    if cache is None or not logits.exists() or "shot_groups" not in m:
        return out
    if cache not in labels_of:
        from ltpipe.report.plotdata import read_cache

        labels_of[cache] = np.asarray(read_cache(cache, "test", "labels")).astype(np.int64)
    labels = labels_of[cache]
    with np.load(logits) as z:
        scores = np.asarray(z["test"])
    if scores.shape[0] != labels.shape[0]:
        raise LtpipeError(f"{logits} scores {scores.shape[0]} test images but the cache {cache} "
                          f"holds {labels.shape[0]} test labels; rerun the classifier job "
                          "(its cache changed after it ran)")
    correct = scores.argmax(axis=1) == labels
    image_groups = np.asarray(m["shot_groups"])[labels]
    out.update(_correct=correct, _image_groups=image_groups, _labels=labels,
               _metrics_counts={k: m[k] for k in ("shot_groups", "class_counts")},
               _test_set=(m.get("dataset", ""), str(m.get("imbalance_factor", "")),
                          m.get("split_seed", "")))
    for k in METRICS:
        c = correct[group_mask(image_groups, k)]
        out[f"n_{k}"] = int(len(c))
        if not len(c):
            continue
        acc = m["metrics"]["test"].get(k)
        if acc is not None and abs(100.0 * c.mean() - acc) > 1e-6:
            raise LtpipeError(f"{path}: its {k} accuracy {acc:.4f} is not what its logits.npz and "
                              f"the test labels of {cache} give ({100 * c.mean():.4f}): the cache "
                              "is not the one the job read; rerun the classifier job")
        lo, hi = stats.wilson(int(c.sum()), len(c))
        out[f"{k}_lo"], out[f"{k}_hi"] = 100 * lo, 100 * hi
    return out


def group_mask(image_groups: np.ndarray, metric: str) -> np.ndarray:
    """Which test images an accuracy pools: all, or those of one shot group (as
    :func:`ltpipe.evaluate.accuracy_report` does)."""
    if metric == "all":
        return np.ones(len(image_groups), dtype=bool)
    return image_groups == GROUPS.index(metric)


def _runs(members: list[dict], metric: str) -> list[stats.Run]:
    """Per-image correctness of ``metric``'s images in each member (all must have it)."""
    return [stats.Run(r["_test_set"], r["_correct"][group_mask(r["_image_groups"], metric)])
            for r in members]


SWEEP_KEYS = ("dataset", "imbalance_factor", "split_seed", "seed", "backbone", "classifier")


def mark_chosen_on_val(rows: list[dict]) -> None:
    """Within each sweep (same run, several points) mark the point with the best validation
    accuracy: ``chosen_on_val`` becomes "yes"/"no". Sweeps without validation scores stay "",
    since choosing on the test set would overstate accuracy."""
    sweeps: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        sweeps[tuple(r[k] for k in SWEEP_KEYS)].append(r)
    for members in sweeps.values():
        if len(members) < 2 or any(m["val_all"] is None for m in members):
            continue
        best = max(members, key=lambda m: m["val_all"])
        for m in members:
            m["chosen_on_val"] = "yes" if m is best else "no"


def prediction_digest(logits_path: Path) -> str | None:
    """SHA-256 of the predicted class of every test sample (None where no logits file exists)."""
    if not logits_path.exists():
        return None
    with np.load(logits_path) as scores:
        pred = np.asarray(scores["test"]).argmax(axis=1).astype(np.int64)
    return hashlib.sha256(pred.tobytes()).hexdigest()


def inert_sweeps(rows: list[dict]) -> list[str]:
    """One line per sweep in which several points predict exactly the same test classes.

    Such points are the same classifier as far as accuracy goes: the swept setting did not
    reach the predictions (too little training to move them, or a setting the method ignores).
    """
    sweeps: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        sweeps[tuple(r[k] for k in SWEEP_KEYS)].append(r)
    lines = []
    for key, members in sweeps.items():
        same: dict[str, list[str]] = defaultdict(list)
        for m in members:
            if m.get("_predictions") is not None:
                same[m["_predictions"]].append(m["point"])
        for points in same.values():
            if len(points) > 1:
                where = ", ".join(f"{k}={v}" for k, v in zip(SWEEP_KEYS, key))
                lines.append(f"sweep {where}: points {', '.join(sorted(points))} predict "
                             "identical test classes (the setting changed nothing)")
    return lines


def inert_section(lines: list[str]) -> str:
    """Markdown: the sweeps whose points changed nothing (empty when there are none)."""
    if not lines:
        return ""
    return ("\n## Sweeps that changed nothing\n\nThese sweep points gave identical predictions "
            "on every test sample; their rows above are one result, not several.\n\n"
            + "\n".join(f"- {line}" for line in lines) + "\n")


def chosen_section(rows: list[dict]) -> str:
    """Markdown: the sweep points chosen on validation, or why none were chosen."""
    chosen = [r for r in rows if r["chosen_on_val"] == "yes"]
    swept = {tuple(r[k] for k in SWEEP_KEYS) for r in rows if r["point"] != "default"}
    if not swept:
        return ""
    if not chosen:
        return ("\n## Sweeps\n\nNo data set here has a validation split, so every sweep point "
                "is reported above and none is chosen.\n")
    head = ["dataset", "IF", "seed", "backbone", "classifier", "chosen point", "val all",
            "test all", *GROUPS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in chosen:
        cells = [r["dataset"], str(r["imbalance_factor"]), str(r["seed"]), r["backbone"],
                 r["classifier"], r["point"], *(f"{r[k]:.2f}" if r[k] is not None else "-"
                                                for k in ("val_all", *METRICS))]
        lines.append("| " + " | ".join(cells) + " |")
    return ("\n## Sweep points chosen on validation\n\nFor each sweep, the point with the best "
            "validation accuracy and its test accuracy.\n\n" + "\n".join(lines) + "\n")


def method_rows(rows: list[dict]) -> list[dict]:
    """One row per method run: a sweep's point chosen on validation, or the single point.

    Empty unless some sweep has validation scores: without them no point can be chosen.
    """
    if not any(r["chosen_on_val"] for r in rows):
        return []
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        runs[tuple(r[k] for k in SWEEP_KEYS)].append(r)
    out = []
    for members in runs.values():
        picked = [m for m in members if m["chosen_on_val"] == "yes"] if len(members) > 1 \
            else members
        out.extend(picked)
    return out


def method_section(rows: list[dict]) -> str:
    """Markdown: each method's row with its sweep chosen on validation, mean ± std over seeds."""
    picked = method_rows(rows)
    if not picked:
        return ""
    head = ["dataset", "IF", "backbone", "classifier", "chosen points", "runs", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, members in _method_groups(picked).items():
        cells = [key[0], str(key[1]), key[2], key[3], *_chosen_cells(members)]
        lines.append("| " + " | ".join(cells) + " |")
    return ("\n## Methods, sweeps chosen on validation\n\nOne row per method: in each run "
            "(split and training seed) the sweep point with the best validation accuracy, then "
            "the test accuracy's mean ± sample std over the runs.\n\n" + "\n".join(lines) + "\n")


def _method_groups(picked: list[dict]) -> dict[tuple, list[dict]]:
    """Validation-chosen rows (:func:`method_rows`) grouped by data set, IF, backbone,
    classifier and method: one group per method, its runs as members."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in picked:
        groups[tuple(r[k] for k in METHOD_KEYS)].append(r)
    return groups


def _chosen_cells(members: list[dict]) -> list[str]:
    """A method group's cells: the points chosen (with counts), the runs, and mean ± std of each
    accuracy over the runs."""
    points: dict[str, int] = defaultdict(int)
    for m in members:
        points[m["point"]] += 1
    chosen = ", ".join(f"{p} x{n}" if n > 1 else p for p, n in sorted(points.items()))
    accs = [_fmt(_mean_std([float(m[k]) for m in members if m[k] is not None])
                 if any(m[k] is not None for m in members) else (None, None))
            for k in METRICS]
    return [chosen, str(len(members)), *accs]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def configurations(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The rows grouped by configuration (``GROUP_KEYS``: all but the seeds), in first-seen
    order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in GROUP_KEYS)].append(r)
    return groups


def aggregate(rows: list[dict]) -> list[dict]:
    """Per configuration: mean and sample standard deviation over split and training seeds, and
    (where every run has per-image correctness) the 95% interval of the mean in ``{metric}_ci``:
    Wilson for one run, the two-level bootstrap over seeds and images for several."""
    out = []
    for key, members in configurations(rows).items():
        agg = dict(zip(GROUP_KEYS, key))
        agg["runs"] = len(members)
        agg["params"] = members[0].get("params", "")
        per_image = all(m.get("_correct") is not None for m in members)
        for metric in METRICS:
            vals = [float(m[metric]) for m in members if m[metric] is not None]
            agg[metric] = _mean_std(vals) if vals else (None, None)
            agg[f"{metric}_ci"] = None
            if per_image and vals:
                lo, hi = stats.accuracy_interval(_runs(members, metric))
                agg[f"{metric}_ci"] = (100 * lo, 100 * hi)
        out.append(agg)
    return out


def _fmt(ms: tuple, ci: tuple | None = None) -> str:
    mean, std = ms
    if mean is None:
        return "-"
    text = f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return text + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci is not None else "")


def settings_text(params: str) -> str:
    """The settings a row's config gives over the method's defaults (``params``), for a table."""
    return params.replace(";", ", ") if params else "method defaults"


def markdown_table(rows: list[dict]) -> str:
    """The aggregated rows as a Markdown table: each configuration's settings over the method's
    defaults, and per accuracy the mean (± std over seeds where there are several) and its 95%
    interval where per-image results exist."""
    head = ["dataset", "IF", "backbone", "classifier", "point", "settings", "runs", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in aggregate(rows):
        cells = [a["dataset"], str(a["imbalance_factor"]), a["backbone"], a["classifier"],
                 a["point"], settings_text(a.get("params", "")), str(a["runs"]),
                 *(_fmt(a[m], a.get(f"{m}_ci")) for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_kinds(labels) -> int:
    """How many kinds of machine a set of :func:`ltpipe.provenance.host_label` labels names. A
    label without torch's CPU capability (a job that never imported torch) is the same kind as a
    label of the same processor with one; two capabilities of one processor are two kinds (torch
    dispatches to other kernels)."""
    caps: dict[str, set[str]] = defaultdict(set)
    for label in labels:
        if not label:
            continue
        m = re.fullmatch(r"(.+)/([a-z][a-z0-9_]*)", label)  # ".../avx512"; not "6/167/1"
        cpu, cap = (m.group(1), m.group(2)) if m else (label, "")
        caps[cpu].add(cap)
    return sum(max(1, len(c - {""})) for c in caps.values())


def hosts_section(rows: list[dict]) -> str:
    """Markdown: a plain warning when the rows came from more than one kind of machine (CPU
    training reproduces bit for bit on one kind of processor only), empty otherwise."""
    kinds: dict[tuple, int] = defaultdict(int)
    for r in rows:
        kinds[(r.get("train_host", ""), r.get("host", ""))] += 1
    labels = {x for pair in kinds for part in pair for x in part.split("+")}
    if machine_kinds(labels) < 2:
        return ""
    lines = [f"- trained on `{t or 'not recorded'}`, classifier stage on `{h or 'not recorded'}`: "
             f"{n} rows" for (t, h), n in sorted(kinds.items())]
    return ("\n## Machines\n\nThese rows came from more than one kind of machine. Training "
            "reruns bit for bit only on one kind of processor (another kind, or another torch "
            "CPU capability, picks other kernels), so differences between rows of different "
            "kinds include that noise: compare them within seed noise, not digit for digit. (A "
            "classifier job that never imports torch records no capability.)\n\n"
            + "\n".join(lines) + "\n\n")


# ----------------------------------------------------------------------------------- scale
def scale_rows(rows: list[dict]) -> list[dict]:
    """Per data set, imbalance factor and shot group: classes, training images per class, test
    images and test images per class, and what one test image is worth in points. Taken from the
    first run of each split seed; split seeds with the same scale are listed once."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        if r.get("_correct") is None:
            continue
        key = (r["dataset"], str(r["imbalance_factor"]), r["split_seed"])
        if key not in seen:
            seen[key] = r
    out: list[dict] = []
    by_scale: dict[tuple, list] = defaultdict(list)
    for (dataset, imb, split_seed), r in seen.items():
        m = r["_metrics_counts"]
        scale = []
        for metric in METRICS:
            mask = group_mask(r["_image_groups"], metric)
            classes = (np.arange(len(m["shot_groups"])) if metric == "all"
                       else np.flatnonzero(np.asarray(m["shot_groups"]) == GROUPS.index(metric)))
            counts = np.asarray(m["class_counts"])[classes]
            labels_in = r["_labels"][mask]
            per_class = np.bincount(labels_in, minlength=len(m["shot_groups"]))[classes]
            scale.append((metric, len(classes),
                          _span(counts), int(mask.sum()), _span(per_class),
                          round(100.0 / mask.sum(), 2) if mask.sum() else None))
        by_scale[(dataset, imb, tuple(scale))].append(split_seed)
    for (dataset, imb, scale), seeds in by_scale.items():
        for metric, classes, train, test, test_pc, point in scale:
            out.append({"dataset": dataset, "imbalance_factor": imb,
                        "split_seeds": ",".join(str(s) for s in seeds), "group": metric,
                        "classes": classes, "train_per_class": train, "test_images": test,
                        "test_per_class": test_pc, "points_per_image": point})
    return out


def _span(values) -> str:
    values = [int(v) for v in values]
    if not values:
        return "-"
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def scale_section(rows: list[dict]) -> str:
    """Markdown: the scale table (empty without per-image results)."""
    table = scale_rows(rows)
    if not table:
        return ""
    head = ["dataset", "IF", "split seeds", "group", "classes", "train images / class",
            "test images", "test images / class", "one image (points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in table:
        cells = [t["dataset"], t["imbalance_factor"], t["split_seeds"], t["group"],
                 str(t["classes"]), t["train_per_class"], str(t["test_images"]),
                 t["test_per_class"], "-" if t["points_per_image"] is None
                 else f"{t['points_per_image']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return ("\n## Scale\n\nWhat each accuracy is computed over: the classes and test images "
            "of each shot group (groups by training images per class), and how many points of "
            "that group's accuracy one test image is worth.\n\n" + "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------- paired
#: the baselines every method is compared with, on the same backbone, split and seeds
BASELINES = ("joint", "crt")
PAIRED_COLUMNS = ["dataset", "imbalance_factor", "backbone", "classifier", "method", "point",
                  "baseline", "baseline_classifier", "baseline_point", "group", "runs", "images",
                  "accuracy", "baseline_accuracy", "difference", "difference_lo",
                  "difference_hi", "better_images", "worse_images", "p", "verdict", "note"]


def paired_rows(rows: list[dict]) -> list[dict]:
    """Each configuration against the ``joint`` and ``crt`` configurations on its backbone (same
    data set and imbalance factor), paired by split and training seed over the same test images
    (:func:`ltpipe.report.stats.paired_comparison`), for all, many, medium and few. Where no such
    baseline ran, or the runs share no seeds, one row says so in ``note``."""
    configs = configurations(rows)
    out = []
    for key, members in configs.items():
        c = dict(zip(GROUP_KEYS, key))
        base = {k: c[k] for k in ("dataset", "imbalance_factor", "backbone", "classifier",
                                  "method", "point")}
        for baseline in BASELINES:
            if c["method"] == baseline:
                continue
            cands = [(k, v) for k, v in configs.items()
                     if k[:3] == key[:3] and k[4] == baseline]
            if not cands:
                out.append({**base, "baseline": baseline,
                            "note": f"no {baseline} row on backbone {c['backbone']} in this run"})
                continue
            for bkey, bmembers in cands:
                row = {**base, "baseline": baseline, "baseline_classifier": bkey[3],
                       "baseline_point": bkey[5]}
                out.extend(_paired_groups(row, members, bmembers))
    return out


def is_composed(row: dict) -> bool:
    """Whether a summary row comes from a composed entry (its method column is a chain,
    ``tau_norm(crt)``: ltpipe.workflow.compose.chain_text)."""
    return "(" in str(row["method"])


def composition_section(rows: list[dict], chosen_paired: list[dict]) -> str:
    """Markdown: each composed entry (config ``reads:``) with its points chosen on validation,
    mean ± std over the runs, and its paired verdict on all test images against each cRT entry
    (rows of :func:`method_paired_rows`): does any composition beat cRT?"""
    picked = [r for r in method_rows(rows) if is_composed(r)]
    if not picked:
        return ""
    verdicts = {(r["classifier"], r["baseline_classifier"]): r for r in chosen_paired
                if r.get("group") == "all"}
    baselines = list(dict.fromkeys(b for _, b in verdicts))
    head = ["dataset", "IF", "classifier", "chain", "chosen points", "runs", *METRICS,
            *(f"all vs {b}" for b in baselines)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, members in _method_groups(picked).items():
        vs = [_verdict_cell(verdicts[key[3], b]) if (key[3], b) in verdicts else "-"
              for b in baselines]
        lines.append("| " + " | ".join([key[0], str(key[1]), key[3], key[4],
                                        *_chosen_cells(members), *vs]) + " |")
    return ("\n## Compositions, chosen on validation\n\nEach composed entry (a method on another "
            "entry's saved head or fused features, docs/composition.md): in each run the "
            "combination of its own and its input's points with the best validation accuracy, "
            "the test accuracy's mean ± sample std over the runs, and the paired difference on "
            "all test images against each cRT entry (mean, interval and verdict as in \"Methods "
            "against cRT, paired\").\n\n" + "\n".join(lines) + "\n")


def _paired_groups(row: dict, members: list[dict], bmembers: list[dict]) -> list[dict]:
    runs = {(r["split_seed"], r["seed"]): r for r in members}
    bruns = {(r["split_seed"], r["seed"]): r for r in bmembers}
    shared = sorted(set(runs) & set(bruns), key=str)
    if not shared:
        return [{**row, "note": f"no {row['baseline']} run with the same split and training "
                                "seeds"}]
    if any(runs[s].get("_correct") is None or bruns[s].get("_correct") is None for s in shared):
        return [{**row, "note": "no per-image results (logits.npz or the cache's test labels "
                                "missing): not compared"}]
    note = "" if len(shared) == len(runs) else (
        f"compared on the {len(shared)} of {len(runs)} runs the baseline also ran")
    out = []
    for metric in METRICS:
        m = _runs([runs[s] for s in shared], metric)
        b = _runs([bruns[s] for s in shared], metric)
        if not any(len(x.correct) for x in m):
            out.append({**row, "group": metric, "runs": len(shared), "images": 0,
                        "note": "no test images in this group"})
            continue
        res = stats.paired_comparison(m, b)
        out.append({**row, "group": metric, "runs": res.runs, "images": res.images,
                    "accuracy": res.method, "baseline_accuracy": res.baseline,
                    "difference": res.diff, "difference_lo": res.lo, "difference_hi": res.hi,
                    "better_images": res.better_images, "worse_images": res.worse_images,
                    "p": res.p, "verdict": res.verdict, "note": note})
    return out


#: the ``point`` of a paired.csv row that compares a method's validation-chosen points
CHOSEN = "chosen on validation"


def method_paired_rows(rows: list[dict]) -> list[dict]:
    """Each method as the "Methods" table reports it (in every run the sweep point chosen on
    validation) against every cRT entry (method ``crt``, its default point) of the same data set
    and imbalance factor, paired by split and training seed over the same test images: the
    study's question "does it beat cRT?" (empty without validation-chosen rows)."""
    groups = _method_groups(method_rows(rows))
    crts: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["method"] == "crt" and r["point"] == "default":
            crts[(r["dataset"], r["imbalance_factor"], r["classifier"], r["backbone"])].append(r)
    out = []
    for key, members in groups.items():
        for (dataset, imb, bclassifier, bbackbone), bmembers in crts.items():
            if (dataset, imb) != key[:2] or key[3] == bclassifier:
                continue
            row = {**dict(zip(METHOD_KEYS, key)), "point": CHOSEN, "baseline": "crt",
                   "baseline_classifier": bclassifier, "baseline_point": "default",
                   "note": f"cRT on {bbackbone}"}
            out.extend(_paired_groups(row, members, bmembers))
    return out


def method_paired_section(paired: list[dict]) -> str:
    """Markdown: the validation-chosen methods against cRT (rows of method_paired_rows)."""
    lines_by: dict[tuple, dict] = {}
    for r in paired:
        if r.get("group"):
            key = (r["dataset"], str(r["imbalance_factor"]), r["backbone"], r["classifier"],
                   r["baseline_classifier"])
            lines_by.setdefault(key, {})[r["group"]] = r
    if not lines_by:
        return ""
    head = ["dataset", "IF", "backbone", "classifier", "vs cRT entry", "runs", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, groups in lines_by.items():
        first = next(iter(groups.values()))
        cells = [*key, str(first.get("runs", "")),
                 *(_verdict_cell(groups[m]) if m in groups else "-" for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    level = f"{100 * (1 - stats.ALPHA):.0f}%"
    return (f"\n## Methods against cRT, paired\n\nEach row of \"Methods, sweeps chosen on "
            f"validation\" (in every run, the point chosen on validation) against each cRT entry "
            f"of the same data set, run by run (same split and training seed) over the same test "
            f"images: the difference in points (method minus cRT, mean over runs), its {level} "
            f"interval (a paired bootstrap over seeds and images; one run: McNemar's exact "
            f"interval) and the verdict it gives, as in \"Paired comparisons\" below. Every cRT "
            f"entry is a baseline, on any backbone (an entry such as AFA + cRT is one too). "
            f"Rows: paired.csv, point \"{CHOSEN}\".\n\n" + "\n".join(lines) + "\n")


def _verdict_cell(r: dict) -> str:
    if r.get("verdict") in (None, ""):
        return "-"
    word = {"better": "better", "worse": "worse"}.get(r["verdict"], "no diff.")
    return (f"{float(r['difference']):+.2f} [{float(r['difference_lo']):+.1f}, "
            f"{float(r['difference_hi']):+.1f}] {word}")


def paired_section(paired: list[dict]) -> str:
    """Markdown rendered from the paired.csv rows: one line per (configuration, baseline)."""
    if not paired:
        return ""
    lines_by: dict[tuple, dict] = {}
    notes = []
    for r in paired:
        key = (r["dataset"], str(r["imbalance_factor"]), r["backbone"], r["classifier"],
               r["point"], r["baseline"], r.get("baseline_classifier", ""),
               r.get("baseline_point", ""))
        if not r.get("group"):
            notes.append(f"{r['dataset']} IF {r['imbalance_factor']} {r['classifier']} "
                         f"({r['point']}) vs {r['baseline']}: {r['note']}")
            continue
        lines_by.setdefault(key, {})[r["group"]] = r
    head = ["dataset", "IF", "backbone", "classifier", "point", "vs", "runs", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, groups in lines_by.items():
        first = next(iter(groups.values()))
        vs = key[6] if key[7] in ("", "default") else f"{key[6]} ({key[7]})"
        cells = [*key[:5], vs, str(first.get("runs", "")),
                 *(_verdict_cell(groups[m]) if m in groups else "-" for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    level = f"{100 * (1 - stats.ALPHA):.0f}%"
    text = (f"\n## Paired comparisons\n\nEach method against the stage-one head (`joint`) and "
            f"cRT on the same backbone, split and training seeds, over the same test images: the "
            f"accuracy difference in points (method minus baseline, mean over runs) with its "
            f"{level} interval (one run: McNemar's exact interval; several: a paired bootstrap "
            f"over seeds and images), and the verdict: better or worse where that interval "
            f"excludes 0 (for one run: McNemar's exact test at the {stats.ALPHA:g} level, which "
            f"its interval agrees with), else no diff. (no detectable difference). No "
            f"correction for the many comparisons: about 1 in 20 true ties reads better or worse "
            f"by chance. Every number: paired.csv.\n\n" + "\n".join(lines) + "\n")
    if notes:
        text += "\nNot compared:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(k, r.get(k)) for k in columns})
    return buf.getvalue()


def _cell(key: str, v):
    if isinstance(v, float):
        return "" if math.isnan(v) else (f"{v:.4g}" if key == "p" else f"{v:.4f}")
    return "" if v is None else v


def write_summary(metric_paths: list[str], csv_path: str, md_path: str,
                  paired_path: str | None = None) -> list[dict]:
    """Write summary.csv, summary.md and (``paired_path``) paired.csv atomically; returns the
    per-job rows. The paired comparisons appear in summary.md whether or not paired.csv is
    written."""
    rows = rows_from_metrics(metric_paths)
    inert = inert_sweeps(rows)
    for line in inert:
        print(f"warning: {line}")
    chosen_paired = method_paired_rows(rows)
    paired = paired_rows(rows) + chosen_paired
    with atomic_path(csv_path) as tmp:
        Path(tmp).write_text(_csv_text(rows, COLUMNS))
    if paired_path is not None:
        with atomic_path(paired_path) as tmp:
            Path(tmp).write_text(_csv_text(paired, PAIRED_COLUMNS))
    level = f"{100 * (1 - stats.ALPHA):.0f}%"
    text = ("# ltpipe results\n\nTop-1 accuracy (%) on the balanced test set, pooled over the "
            "test images of each group; mean ± sample std over split and training seeds where "
            f"there are several, then its {level} interval in brackets: Wilson over the test "
            "images for one run, a bootstrap over seeds and test images for several. `settings` "
            "are those the config gives over the method's defaults. No hyper-parameter was "
            "selected on the test set: every sweep point is its own row.\n\n"
            + hosts_section(rows)
            + method_section(rows) + method_paired_section(chosen_paired)
            + composition_section(rows, chosen_paired)
            + "\n## Every job\n\n" + markdown_table(rows) + scale_section(rows)
            + paired_section([r for r in paired if r.get("point") != CHOSEN])
            + chosen_section(rows) + inert_section(inert))
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(text)
    return rows


def rewrite_report(results: str | Path) -> list[dict]:
    """Rewrite ``summary.csv``, ``summary.md`` and ``paired.csv`` of an existing results folder
    from the metrics.json, logits.npz and caches under it (``ltpipe report``; no job reruns)."""
    root = Path(results)
    if not root.is_dir():
        raise LtpipeError(f"results folder {root} not found; pass the config's results: folder "
                          "(--results)")
    metrics = sorted(str(p) for p in root.glob("**/metrics.json")
                     if parse("metrics", str(p)) is not None)
    if not metrics:
        raise LtpipeError(f"no classifier job's metrics.json under {root} (expected "
                          f"{TEMPLATES['metrics']}); run the workflow first")
    out = {n: str(root / TEMPLATES[n]) for n in ("summary_csv", "summary_md", "paired_csv")}
    rows = write_summary(metrics, out["summary_csv"], out["summary_md"], out["paired_csv"])
    print(f"report: {len(rows)} jobs; wrote {', '.join(out.values())}")
    return rows
