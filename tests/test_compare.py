"""ltpipe compare-runs: verdicts worked out by hand on small summary files."""

from __future__ import annotations

import csv
import math
import statistics

import pytest

from ltpipe.cli import main
from ltpipe.report.compare import compare_rows, read_summary
from ltpipe.utils import LtpipeError

FIELDS = ["dataset", "imbalance_factor", "split_seed", "seed", "backbone", "classifier", "method",
          "point", "params", "all", "many", "medium", "few", "predictions"]


def row(seed, all_, classifier="crt", point="default", few=None, predictions=""):
    few = all_ if few is None else few
    return {"dataset": "digits", "imbalance_factor": "10", "split_seed": "0", "seed": str(seed),
            "backbone": "ce", "classifier": classifier, "method": classifier, "point": point,
            "params": "", "all": f"{all_:.4f}", "many": f"{all_:.4f}", "medium": f"{all_:.4f}",
            "few": f"{few:.4f}", "predictions": predictions}


def write(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


A = [row(0, 80.0, predictions="aa"), row(1, 82.0, predictions="bb"), row(2, 84.0),
     row(0, 90.0, classifier="ncm"), row(0, 70.0, classifier="lws")]
B = [row(0, 80.0, predictions="aa"), row(1, 82.0, predictions="cc"), row(2, 91.0),
     row(0, 90.5, classifier="ncm"), row(0, 75.0, classifier="fsa")]


def test_verdicts_by_hand():
    got = {(r["classifier"], r["seed"]): r for r in compare_rows(A, B, k=2.0, tolerance=1.0)}
    # crt's noise: each side's variance over its three seeds, pooled (2 + 2 degrees of freedom)
    std = math.sqrt((statistics.variance([80, 82, 84]) + statistics.variance([80, 82, 91])) / 2)
    bound = 2.0 * math.sqrt(2.0) * std  # 2 x the std of a difference of two runs: ~10.2
    assert got[("crt", "0")]["verdict"] == "identical"  # same numbers, same predictions
    # same numbers, other predictions: not identical, but no difference at all
    assert got[("crt", "1")]["verdict"] == "within noise"
    assert got[("crt", "2")]["all_diff"] == pytest.approx(7.0)
    assert got[("crt", "2")]["bound"] == pytest.approx(bound)
    assert 7.0 < bound and got[("crt", "2")]["verdict"] == "within noise"
    assert got[("crt", "2")]["basis"] == "seeds (df 4)"
    # one seed: the stated tolerance, 1 point
    assert got[("ncm", "0")]["verdict"] == "within noise"
    assert got[("ncm", "0")]["basis"] == "tolerance"
    assert got[("lws", "0")]["verdict"] == "only in A"
    assert got[("fsa", "0")]["verdict"] == "only in B"
    tight = {(r["classifier"], r["seed"]): r for r in compare_rows(A, B, k=0.5, tolerance=0.25)}
    assert 7.0 > 0.5 * math.sqrt(2.0) * std
    assert tight[("crt", "2")]["verdict"] == "different"
    assert tight[("ncm", "0")]["verdict"] == "different"  # 0.5 > 0.25


def test_a_shot_group_alone_can_make_a_row_different():
    a = [row(0, 80.0, few=50.0)]
    b = [row(0, 80.0, few=60.0)]
    (rec,) = compare_rows(a, b, tolerance=1.0)
    assert rec["verdict"] == "different" and rec["few_diff"] == pytest.approx(10.0)


def test_cli_writes_markdown_and_checks(tmp_path, capsys):
    a = write(tmp_path / "a.csv", A)
    results = tmp_path / "results"
    results.mkdir()
    write(results / "summary.csv", B)  # a results folder works as well as the file
    assert main(["compare-runs", str(a), str(results), "--out", str(tmp_path / "c.md")]) == 0
    md = (tmp_path / "c.md").read_text()
    assert "6 rows: 1 identical, 3 within noise, 1 only in A, 1 only in B." in md
    assert "| **only in B** |" in md
    assert main(["compare-runs", str(a), str(results), "--check"]) == 1
    same = write(tmp_path / "same.csv", A)
    assert main(["compare-runs", str(a), str(same), "--check"]) == 0
    capsys.readouterr()


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(LtpipeError, match="summary.csv"):
        read_summary(tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LtpipeError, match="not an ltpipe summary.csv"):
        read_summary(tmp_path / "x.csv")
    with pytest.raises(LtpipeError, match="k must be > 0"):
        compare_rows(A, B, k=0)
    with pytest.raises(LtpipeError, match="tolerance 'wide': give 'binomial' or a number"):
        compare_rows(A, B, tolerance="wide")


def test_single_seed_binomial_bound_by_hand():
    """One seed: the bound is k x sqrt(2) x 100 sqrt(p (1 - p) / n) of the group's test images."""
    a, b = row(0, 80.0, few=60.0), row(0, 82.0, few=50.0)
    for r in (a, b):
        r.update(n_all="300", n_many="150", n_medium="90", n_few="60")
    (rec,) = compare_rows([a], [b], k=2.0)
    few_bound = 2.0 * math.sqrt(2.0) * 100 * math.sqrt(0.55 * 0.45 / 60)  # p = mean of 60, 50
    assert rec["verdict"] == "within noise"  # 10 points on 60 images: ~18 allowed
    assert rec["basis"] == "binomial (n 60)" and rec["bound"] == pytest.approx(few_bound)
    (tight,) = compare_rows([a], [b], k=0.5)
    assert 10.0 > 0.5 * math.sqrt(2.0) * 100 * math.sqrt(0.55 * 0.45 / 60)
    assert tight["verdict"] == "different"
