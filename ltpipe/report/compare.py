"""Compare two result sets row by row: is a run a reproduction of another?

``ltpipe compare A B`` reads each side's ``summary.csv`` (a results folder, or the file itself)
and matches rows by what identifies a job (data set, imbalance factor, split and training seed,
backbone, classifier entry, method, sweep point). Each matched row gets one verdict:

- ``identical``: the same accuracies (to the CSV's four decimals) and, where both sides recorded
  them, the same predicted class for every test image;
- ``within noise``: every accuracy (all, many, medium, few) differs by at most ``k`` times the
  noise of a difference of two runs, ``sqrt(2) * s``, where ``s`` is the standard deviation of
  that accuracy over the seeds of the same configuration (each side's sample variance over its
  own seeds, pooled over the sides that have two seeds or more); where neither side has two
  seeds of a configuration, by at most ``k`` times the same spread computed from the test set
  instead, ``sqrt(2) * 100 * sqrt(p (1 - p) / n)`` with ``n`` the group's test images
  (``summary.csv``'s ``n_*`` columns) and ``p`` the two sides' mean accuracy: the binomial
  standard error, what one test set can resolve (``tolerance="binomial"``, the default), or by
  at most a stated ``tolerance`` in points;
- ``different``: otherwise.

Rows present on one side only are listed as such. What it does not do: explain a difference.
Two runs of the same commit on two kinds of processor are expected to be "within noise", not
"identical" (``host`` column, ``docs/reproducibility.md``).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from ltpipe.report.summary import COLUMNS, METRICS
from ltpipe.utils import LtpipeError

#: what identifies a job: summary.csv's columns up to the sweep point
KEY = tuple(COLUMNS[:COLUMNS.index("point") + 1])
#: the seed-free part of KEY: rows that differ only in their seeds are one configuration
CONFIG = tuple(k for k in KEY if k not in ("split_seed", "seed"))
DEFAULT_K = 2.0
DEFAULT_TOLERANCE = "binomial"
VERDICTS = ("identical", "within noise", "different", "only in A", "only in B")


def read_summary(path: str | Path) -> list[dict]:
    """The rows of ``summary.csv`` at ``path`` (a results folder or the file itself)."""
    path = Path(path)
    file = path / "summary.csv" if path.is_dir() else path
    if not file.is_file():
        raise LtpipeError(f"{file} not found: give a results folder holding summary.csv (run the "
                          "workflow to the end first) or the summary.csv file itself")
    with open(file, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [k for k in (*KEY, *METRICS) if rows and k not in rows[0]]
    if missing:
        raise LtpipeError(f"{file} has no column(s) {missing}: not an ltpipe summary.csv")
    return rows


def _value(row: dict, metric: str) -> float | None:
    text = row.get(metric, "")
    return float(text) if text not in ("", None, "None") else None


def seed_noise(rows: list[dict]) -> dict[tuple, dict[str, tuple[float, int]]]:
    """Per configuration and metric of one side: (sample variance over its seeds, degrees of
    freedom), where it has two seeds or more."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in CONFIG)].append(r)
    out: dict[tuple, dict[str, tuple[float, int]]] = {}
    for key, members in groups.items():
        out[key] = {}
        for metric in METRICS:
            values = [v for m in members if (v := _value(m, metric)) is not None]
            if len(values) >= 2:
                mean = sum(values) / len(values)
                out[key][metric] = (sum((v - mean) ** 2 for v in values) / (len(values) - 1),
                                    len(values) - 1)
    return out


def pooled_std(*estimates: tuple[float, int] | None) -> tuple[float, int] | None:
    """(std, degrees of freedom) pooled over the sides' (variance, df) estimates; None without
    any: the variances weighted by their degrees of freedom, as in a two-sample t-test."""
    known = [e for e in estimates if e is not None]
    if not known:
        return None
    df = sum(d for _, d in known)
    return math.sqrt(sum(v * d for v, d in known) / df), df


def _binomial_spread(ra: dict, rb: dict, metric: str, va: float, vb: float) -> float | None:
    """100 x sqrt(p (1 - p) / n): the binomial standard error of the group's accuracy over its
    n test images (None where summary.csv records no n)."""
    try:
        n = int(ra.get(f"n_{metric}") or rb.get(f"n_{metric}"))
    except (TypeError, ValueError):
        return None
    p = (va + vb) / 200.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else None


def parse_tolerance(text: str | float) -> str | float:
    """``binomial`` or a number of points >= 0 (the CLI's --tolerance)."""
    if text == "binomial":
        return text
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = -1.0
    if value < 0:
        raise LtpipeError(f"tolerance {text!r}: give 'binomial' or a number of points >= 0")
    return value


def compare_rows(a: list[dict], b: list[dict], k: float = DEFAULT_K,
                 tolerance: str | float = DEFAULT_TOLERANCE) -> list[dict]:
    """One record per row key: ``verdict``, each metric's two values and difference (B - A), and
    the bound it was held to (``bound``: the largest allowed difference of the metric that
    decided; ``basis``: "seeds (df N)", the pooled degrees of freedom, "binomial (n N)" or
    "tolerance")."""
    tolerance = parse_tolerance(tolerance)
    if k <= 0:
        raise LtpipeError(f"k must be > 0, got k={k}")
    a_by = {tuple(r[x] for x in KEY): r for r in a}
    b_by = {tuple(r[x] for x in KEY): r for r in b}
    noise_a, noise_b = seed_noise(a), seed_noise(b)
    out = []
    for key in sorted(set(a_by) | set(b_by)):
        rec = dict(zip(KEY, key))
        ra, rb = a_by.get(key), b_by.get(key)
        if ra is None or rb is None:
            rec["verdict"] = "only in B" if ra is None else "only in A"
            out.append(rec)
            continue
        config = tuple(rec[x] for x in CONFIG)
        same = all(_value(ra, m) == _value(rb, m) for m in METRICS)
        pa, pb = ra.get("predictions", ""), rb.get("predictions", "")
        if pa and pb:
            same = same and pa == pb
        worst, within = -1.0, True
        for m in METRICS:
            va, vb = _value(ra, m), _value(rb, m)
            rec[f"{m}_a"], rec[f"{m}_b"] = va, vb
            if va is None or vb is None:
                within = within and va is vb
                continue
            diff = vb - va
            rec[f"{m}_diff"] = diff
            noise = pooled_std(noise_a.get(config, {}).get(m), noise_b.get(config, {}).get(m))
            if noise is not None:
                bound, basis = k * math.sqrt(2.0) * noise[0], f"seeds (df {noise[1]})"
            elif tolerance == "binomial" and (
                    spread := _binomial_spread(ra, rb, m, va, vb)) is not None:
                bound = k * math.sqrt(2.0) * spread
                basis = f"binomial (n {ra.get(f'n_{m}') or rb.get(f'n_{m}')})"
            else:
                bound = 1.0 if tolerance == "binomial" else tolerance
                basis = "tolerance"
            within = within and abs(diff) <= bound
            ratio = abs(diff) / bound if bound > 0 else (math.inf if diff else 0.0)
            if ratio > worst:
                worst = ratio
                rec["bound"] = bound
                rec["basis"] = basis
        rec["verdict"] = "identical" if same else ("within noise" if within else "different")
        out.append(rec)
    return out


def _f(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def render(records: list[dict], name_a: str, name_b: str, k: float,
           tolerance: str | float) -> str:
    """Markdown: the counts per verdict, then one line per row."""
    counts = {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}
    lines = [f"# Comparison: A = `{name_a}`, B = `{name_b}`", "", "## Verdicts", "",
             f"{len(records)} rows: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
             + ".", "",
             f"Rule: identical = same accuracies and the same predicted class for every test "
             f"image (where both recorded predictions); within noise = every accuracy within "
             f"{k:g} x sqrt(2) x (std over the configuration's seeds, each side's variance "
             f"pooled); where neither side has two seeds, "
             + (f"within {k:g} x sqrt(2) x the binomial standard error of the accuracy over the "
                f"group's test images, 100 sqrt(p (1 - p) / n) (1 point where n is not recorded)."
                if tolerance == "binomial" else f"within {tolerance:g} points.")
             + " `bound`: the allowed difference of the group closest to it; `basis`: where "
             "that bound came from.", "", "## Rows", "",
             "| dataset | IF | split | seed | backbone | classifier | point | all A | all B | "
             "diff all | diff many | diff medium | diff few | bound | basis | verdict |",
             "|" + "---|" * 16]
    for r in records:
        cells = [r["dataset"], r["imbalance_factor"], r["split_seed"], r["seed"], r["backbone"],
                 r["classifier"], r["point"], _f(r.get("all_a")), _f(r.get("all_b")),
                 *(_f(r.get(f"{m}_diff"), signed=True) for m in METRICS),
                 _f(r.get("bound")), r.get("basis") or "-", f"**{r['verdict']}**"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def compare(path_a: str | Path, path_b: str | Path, k: float = DEFAULT_K,
            tolerance: str | float = DEFAULT_TOLERANCE) -> tuple[list[dict], str]:
    """Compare two result sets; returns the records and their Markdown."""
    records = compare_rows(read_summary(path_a), read_summary(path_b), k, tolerance)
    return records, render(records, str(path_a), str(path_b), k, tolerance)
