"""Aggregate every classifier-stage job's ``metrics.json`` into ``summary.csv`` and ``summary.md``.

``summary.csv`` has one row per job (data set, imbalance factor, split seed, training seed,
backbone(s), classifier entry, method, sweep point and settings, accuracies, and the code that
computed them: :func:`ltpipe.provenance.code_label`; the job's ``metrics.json`` holds the full
provenance). ``summary.md`` groups jobs that differ only in their seeds and reports mean and
standard deviation over the seeds.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

from ltpipe.provenance import code_label
from ltpipe.utils import atomic_path, read_json

COLUMNS = ["dataset", "imbalance_factor", "split_seed", "seed", "backbone", "classifier",
           "method", "point", "params", "all", "many", "medium", "few", "val_all",
           "chosen_on_val", "code"]
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
        row["code"] = code_label(m.get("provenance", {}).get("code"))
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


def write_summary(metric_paths: list[str], csv_path: str, md_path: str) -> list[dict]:
    """Write both tables atomically; returns the per-job rows."""
    rows = rows_from_metrics(metric_paths)
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
            + markdown_table(rows) + chosen_section(rows))
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(text)
    return rows
