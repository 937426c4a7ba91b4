"""Aggregate every classifier-stage job's ``metrics.json`` into ``summary.csv`` and ``summary.md``.

``summary.csv`` has one row per job (data set, imbalance factor, split seed, training seed,
backbone(s), classifier entry, method, sweep point and settings, accuracies, and the code that
computed them: :func:`ltpipe.provenance.code_label`, and the kinds of machine that ran the
classifier job (``host``) and trained its backbone(s) (``train_host``):
:func:`ltpipe.provenance.host_label`; the job's ``metrics.json`` holds the full provenance).
``summary.md`` groups jobs that differ only in their seeds and reports mean and standard
deviation over the seeds, and says when its rows came from more than one kind of machine.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ltpipe.provenance import code_label, host_label
from ltpipe.utils import atomic_path, read_json

COLUMNS = ["dataset", "imbalance_factor", "split_seed", "seed", "backbone", "classifier",
           "method", "point", "params", "all", "many", "medium", "few", "val_all",
           "chosen_on_val", "code", "host", "train_host", "predictions"]
METRICS = ("all", "many", "medium", "few")
GROUP_KEYS = ("dataset", "imbalance_factor", "backbone", "classifier", "method", "point")


def rows_from_metrics(paths: list[str | Path]) -> list[dict]:
    """One summary row per metrics.json (test part)."""
    rows = []
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
            "method": m["method"],
            "point": m.get("point", "default"),
            "params": ";".join(f"{k}={v}" for k, v in sorted(m.get("settings", {}).items())),
        }
        row.update({k: test.get(k) for k in METRICS})
        row["val_all"] = m["metrics"].get("val", {}).get("all")
        row["chosen_on_val"] = ""
        row["_predictions"] = prediction_digest(Path(path).with_name("logits.npz"))
        prov = m.get("provenance", {})
        row["code"] = code_label(prov.get("code"))
        # 16 hex digits of prediction_digest: rows with equal values predicted the same class
        # for every test image (ltpipe compare's "identical")
        row["predictions"] = (row["_predictions"] or "")[:16]
        row["host"] = host_label(prov.get("host"))
        row["train_host"] = "+".join(dict.fromkeys(host_label(c.get("train_host"))
                                                   for c in prov.get("caches", [])))
        rows.append(row)
    rows.sort(key=lambda r: tuple(str(r[k]) for k in COLUMNS[:9]))
    mark_chosen_on_val(rows)
    return rows


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
            "test all", "many", "medium", "few"]
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
    keys = ("dataset", "imbalance_factor", "backbone", "classifier", "method")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in picked:
        groups[tuple(r[k] for k in keys)].append(r)
    head = ["dataset", "IF", "backbone", "classifier", "chosen points", "runs", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, members in groups.items():
        points = defaultdict(int)
        for m in members:
            points[m["point"]] += 1
        chosen = ", ".join(f"{p} x{n}" if n > 1 else p for p, n in sorted(points.items()))
        stats = [_fmt(_mean_std([float(m[k]) for m in members if m[k] is not None])
                      if any(m[k] is not None for m in members) else (None, None))
                 for k in METRICS]
        cells = [key[0], str(key[1]), key[2], key[3], chosen, str(len(members)), *stats]
        lines.append("| " + " | ".join(cells) + " |")
    return ("\n## Methods, sweeps chosen on validation\n\nOne row per method: in each run "
            "(split and training seed) the sweep point with the best validation accuracy, then "
            "the test accuracy's mean ± sample std over the runs.\n\n" + "\n".join(lines) + "\n")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over split and training seeds, per configuration."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in GROUP_KEYS)].append(r)
    out = []
    for key, members in groups.items():
        agg = dict(zip(GROUP_KEYS, key))
        agg["runs"] = len(members)
        for metric in METRICS:
            vals = [float(m[metric]) for m in members if m[metric] is not None]
            agg[metric] = _mean_std(vals) if vals else (None, None)
        out.append(agg)
    return out


def _fmt(ms: tuple) -> str:
    mean, std = ms
    if mean is None:
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def markdown_table(rows: list[dict]) -> str:
    """The aggregated rows as a Markdown table (mean ± std over seeds where there are several)."""
    head = ["dataset", "IF", "backbone", "classifier", "point", "runs", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in aggregate(rows):
        cells = [a["dataset"], str(a["imbalance_factor"]), a["backbone"], a["classifier"],
                 a["point"], str(a["runs"]), *(_fmt(a[m]) for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def hosts_section(rows: list[dict]) -> str:
    """Markdown: a plain warning when the rows came from more than one kind of machine (CPU
    training reproduces bit for bit on one kind of processor only), empty otherwise."""
    kinds: dict[tuple, int] = defaultdict(int)
    for r in rows:
        kinds[(r.get("train_host", ""), r.get("host", ""))] += 1
    if len(kinds) < 2:
        return ""
    lines = [f"- trained on `{t or 'not recorded'}`, classifier stage on `{h or 'not recorded'}`: "
             f"{n} rows" for (t, h), n in sorted(kinds.items())]
    return ("\n## Machines\n\nThese rows came from more than one kind of machine. Training "
            "reruns bit for bit only on one kind of processor (another kind, or another torch "
            "CPU capability, picks other kernels), so differences between rows of different "
            "kinds include that noise: compare them within seed noise, not digit for digit.\n\n"
            + "\n".join(lines) + "\n")


def write_summary(metric_paths: list[str], csv_path: str, md_path: str) -> list[dict]:
    """Write both tables atomically; returns the per-job rows."""
    rows = rows_from_metrics(metric_paths)
    inert = inert_sweeps(rows)
    for line in inert:
        print(f"warning: {line}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    with atomic_path(csv_path) as tmp:
        Path(tmp).write_text(buf.getvalue())
    text = ("# ltpipe results\n\nTop-1 accuracy (%) on the balanced test set; mean ± sample std "
            "over split and training seeds where there are several. No hyper-parameter was "
            "selected on the test set: every sweep point is its own row.\n\n"
            + hosts_section(rows)
            + (methods + "\n## Every job\n\n" if (methods := method_section(rows)) else "")
            + markdown_table(rows) + chosen_section(rows)
            + inert_section(inert))
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(text)
    return rows
