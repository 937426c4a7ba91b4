"""The report's intervals and paired tests (ltpipe/report/stats.py) against values worked out by
hand, and summary.csv / paired.csv / summary.md on a small finished run written with the real
cache writer and the real accuracy code."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from ltpipe.cli import main as ltpipe_main
from ltpipe.evaluate import accuracy_report
from ltpipe.report import stats
from ltpipe.report.summary import write_summary
from ltpipe.utils import write_json


def test_mcnemar_exact_known_answer():
    # b = 7 images only the method gets right, c = 1 only the baseline: under H0 each of the 8
    # discordant images is a fair coin; two-sided p = 2 * P(X <= 1), X ~ Binomial(8, 1/2)
    expected = 2 * (math.comb(8, 0) + math.comb(8, 1)) / 2 ** 8
    assert expected == pytest.approx(0.0703125)
    assert stats.mcnemar_exact(7, 1) == pytest.approx(expected)
    assert stats.mcnemar_exact(1, 7) == pytest.approx(expected)
    assert stats.mcnemar_exact(9, 0) == pytest.approx(2 / 2 ** 9)
    assert stats.mcnemar_exact(3, 3) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    assert stats.verdict(stats.mcnemar_exact(7, 1), 7, 1) == "no detectable difference"
    assert stats.verdict(stats.mcnemar_exact(9, 0), 9, 0) == "better"
    assert stats.verdict(stats.mcnemar_exact(0, 9), 0, 9) == "worse"


def _wilson_by_roots(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    # the Wilson interval is the set of p with |k/n - p| <= z sqrt(p (1 - p) / n): the two roots
    # of (1 + z^2/n) p^2 - (2 k/n + z^2/n) p + (k/n)^2 = 0
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k,n", [(23, 30), (30, 30), (0, 10), (1, 3), (150, 150)])
def test_wilson_matches_the_quadratic_roots(k, n):
    lo, hi = stats.wilson(k, n)
    elo, ehi = _wilson_by_roots(k, n)
    assert lo == pytest.approx(max(0.0, elo), abs=1e-12)
    assert hi == pytest.approx(min(1.0, ehi), abs=1e-12)
    assert lo <= k / n <= hi


def test_sign_test_on_many_discordant_images():
    """Thousands of flips (a 10,000-image test set) with no float overflow; symmetric, and
    against the normal approximation where it is accurate."""
    binom_two_sided = stats.binom_two_sided
    assert binom_two_sided(1500, 1500) == 1.0
    p = binom_two_sided(1450, 1550)
    assert p == binom_two_sided(1550, 1450)
    z = (1550 - 1500) / math.sqrt(3000 / 4)  # continuity-corrected normal: |z| - 0.5 / sd
    approx = math.erfc((abs(z) - 0.5 / math.sqrt(750)) / math.sqrt(2))
    assert p == pytest.approx(approx, rel=0.02)
    assert binom_two_sided(0, 5000) == 0.0  # 2 / 2**5000 underflows to zero, no error


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="k=5 correct of n=3"):
        stats.wilson(5, 3)
    assert all(math.isnan(v) for v in stats.wilson(0, 0))


def test_seed_level_of_the_bootstrap_known_answer():
    # two runs on one test set, one all right and one all wrong: image resampling changes
    # nothing, the run resample gives mean 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% percentiles are 0 and 1
    runs = [stats.Run("s0", np.ones(20, bool)), stats.Run("s0", np.zeros(20, bool))]
    assert stats.hierarchical_interval(runs) == (0.0, 1.0)


def test_runs_sharing_a_test_set_share_the_image_draw():
    # four identical runs: on a shared test set every replicate is one image draw of one run's
    # accuracy (the width of one run); labelled as four test sets, the draws average out: with
    # run multiplicities m from a 4-of-4 resample the variance is var1 * E[sum m^2] / 16 =
    # var1 * 7 / 16, a width about 1.5 times narrower
    rng = np.random.default_rng(1)
    c = rng.random(200) < 0.7
    shared = stats.hierarchical_interval([stats.Run("s0", c) for _ in range(4)])
    apart = stats.hierarchical_interval([stats.Run(f"s{i}", c) for i in range(4)])
    assert (shared[1] - shared[0]) > 1.3 * (apart[1] - apart[0])
    assert shared[0] < c.mean() < shared[1]


def _tail(k: int, n: int, theta: float, upper: bool) -> float:
    ks = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.comb(n, i) * theta ** i * (1 - theta) ** (n - i) for i in ks)


def test_exact_paired_interval_known_answer():
    # Clopper-Pearson of 7 of 8: at its ends the one-sided binomial tails are exactly 2.5%
    lo, hi = stats.clopper_pearson(7, 8)
    assert _tail(7, 8, lo, upper=True) == pytest.approx(0.025, rel=1e-6)
    assert _tail(7, 8, hi, upper=False) == pytest.approx(0.025, rel=1e-6)
    # the difference on 30 images: 8 / 30 * (2 theta - 1); it contains 0 as McNemar's p > 0.05
    dlo, dhi = stats.mcnemar_interval(7, 1, 30)
    assert (dlo, dhi) == pytest.approx((8 / 30 * (2 * lo - 1), 8 / 30 * (2 * hi - 1)))
    assert dlo < 0 < dhi
    # 9 of 9 (p = 0.0039): the interval excludes 0; lower end where P(X >= 9) = theta^9 = 0.025
    dlo, dhi = stats.mcnemar_interval(9, 0, 30)
    assert dlo == pytest.approx(9 / 30 * (2 * 0.025 ** (1 / 9) - 1)) and dhi == pytest.approx(0.3)
    assert stats.mcnemar_interval(0, 0, 30) == (0.0, 0.0)


def test_paired_comparison_one_run_is_mcnemar():
    n = 30
    base = np.zeros(n, bool)
    base[:17] = True
    meth = base.copy()
    meth[0] = False           # c = 1
    meth[17:24] = True        # b = 7
    res = stats.paired_comparison([stats.Run("s0", meth)], [stats.Run("s0", base)])
    assert (res.better_images, res.worse_images) == (7, 1)
    assert res.p == pytest.approx(0.0703125)
    assert res.diff == pytest.approx(100 * 6 / 30)
    assert res.verdict == "no detectable difference"
    exact = stats.mcnemar_interval(7, 1, 30)
    assert (res.lo, res.hi) == pytest.approx((100 * exact[0], 100 * exact[1]))
    with pytest.raises(ValueError, match="different test images"):
        stats.paired_comparison([stats.Run("s0", meth)], [stats.Run("s1", base)])


def test_paired_comparison_over_seeds_averages_per_image():
    # two seeds on one test set: image i's difference is the mean over seeds; an image the
    # method wins in one seed and loses in the other counts as a tie
    b0 = np.array([0, 0, 0, 0, 1, 1], bool)
    m0 = np.array([1, 1, 1, 0, 0, 1], bool)   # +1 +1 +1 0 -1 0
    b1 = np.array([0, 0, 0, 0, 0, 1], bool)
    m1 = np.array([1, 1, 0, 0, 1, 1], bool)   # +1 +1 0 0 +1 0
    res = stats.paired_comparison([stats.Run("s0", m0), stats.Run("s0", m1)],
                                  [stats.Run("s0", b0), stats.Run("s0", b1)])
    # per image: 1, 1, 0.5, 0, 0, 0 -> 3 better, 0 worse
    assert (res.better_images, res.worse_images) == (3, 0)
    assert res.p == pytest.approx(2 / 8)
    assert res.diff == pytest.approx(100 * ((4 - 2) / 6 + (4 - 1) / 6) / 2)


# ------------------------------------------------------------------ a small finished run
SHOTS = [0, 1, 2]          # class 0 many, 1 medium, 2 few
COUNTS = [40, 15, 4]
PER_CLASS = 10


def _cache(path: Path) -> np.ndarray:
    from ltpipe.cache import CacheWriter

    labels = np.repeat(np.arange(3), PER_CLASS)
    w = CacheWriter(path, backend="zarr")
    w.write("test", "pooled", np.zeros((len(labels), 2), np.float32))
    w.write("test", "labels", labels.astype(np.int64))
    w.write("meta", "class_counts", np.asarray(COUNTS, dtype=np.int64))
    w.write("meta", "shot_groups", np.asarray(SHOTS, dtype=np.int8))
    w.commit({})
    return labels


def _job(root: Path, backbone: str, clf: str, method: str, correct: np.ndarray,
         labels: np.ndarray, settings: dict) -> str:
    out = root / "toy" / "if10" / "s0" / "cls" / clf / "t0" / "default"
    out.mkdir(parents=True)
    pred = np.where(correct, labels, (labels + 1) % 3)
    scores = np.eye(3, dtype=np.float32)[pred]
    np.savez(out / "logits.npz", test=scores)
    write_json(out / "metrics.json", {
        "dataset": "toy", "imbalance_factor": "10", "split_seed": 0, "seed": 0,
        "backbones": [backbone], "classifier": clf, "method": method, "point": "default",
        "settings": settings, "class_counts": COUNTS, "shot_groups": SHOTS,
        "metrics": {"test": accuracy_report(scores, labels, np.asarray(SHOTS))}})
    return str(out / "metrics.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("stats") / "results"
    labels = _cache(results / "toy" / "if10" / "s0" / "ce" / "t0" / "cache.zarr")
    _cache(results / "toy" / "if10" / "s0" / "kps" / "t0" / "cache.zarr")
    joint = np.zeros(30, bool)
    joint[:10] = True          # class 0: 10 of 10
    joint[10:15] = True        # class 1: 5 of 10
    joint[20:22] = True        # class 2: 2 of 10
    crt = joint.copy()
    crt[0] = False             # the one image only joint gets right
    crt[15:19] = True          # class 1: 4 more
    crt[22:25] = True          # class 2: 3 more  -> b = 7, c = 1 overall; few: b = 3, c = 0
    _job(results, "ce", "joint", "joint", joint, labels, {})
    _job(results, "ce", "crt", "crt", crt, labels, {"batch_size": 64, "lr": 0.1})
    _job(results, "kps", "ncm_kps", "ncm", joint, labels, {})
    return results


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_command_writes_intervals_scale_and_paired(run):
    assert ltpipe_main(["report", "--results", str(run)]) in (0, None)
    rows = {r["classifier"]: r for r in _read(run / "summary.csv")}
    lo, hi = _wilson_by_roots(23, 30)
    assert float(rows["crt"]["all"]) == pytest.approx(100 * 23 / 30, abs=1e-4)
    assert float(rows["crt"]["all_lo"]) == pytest.approx(100 * lo, abs=1e-4)
    assert float(rows["crt"]["all_hi"]) == pytest.approx(100 * hi, abs=1e-4)
    assert rows["crt"]["n_few"] == "10" and rows["crt"]["params"] == "batch_size=64;lr=0.1"

    paired = _read(run / "paired.csv")
    crt_all = next(r for r in paired if r["classifier"] == "crt" and r["group"] == "all")
    assert crt_all["baseline"] == "joint" and crt_all["baseline_classifier"] == "joint"
    assert (crt_all["better_images"], crt_all["worse_images"]) == ("7", "1")
    assert float(crt_all["p"]) == pytest.approx(0.0703125, rel=1e-3)
    assert float(crt_all["difference"]) == pytest.approx(20.0)
    assert crt_all["verdict"] == "no detectable difference"
    crt_few = next(r for r in paired if r["classifier"] == "crt" and r["group"] == "few")
    assert float(crt_few["p"]) == pytest.approx(2 / 8) and crt_few["images"] == "10"
    joint_vs_crt = [r for r in paired if r["classifier"] == "joint"]
    assert {r["baseline"] for r in joint_vs_crt} == {"crt"} and len(joint_vs_crt) == 4
    # the kps backbone has no joint or crt row: said so, nothing invented
    kps = [r for r in paired if r["backbone"] == "kps"]
    assert [(r["baseline"], r["note"]) for r in kps] == [
        ("joint", "no joint row on backbone kps in this run"),
        ("crt", "no crt row on backbone kps in this run")]

    md = (run / "summary.md").read_text()
    assert "| toy | 10 | ce | crt | default | batch_size=64, lr=0.1 | 1 | 76.67 [" in md
    assert "| toy | 10 | ce | joint | default | method defaults |" in md
    # scale: few = 1 class of 4 training images, 10 test images, one image = 10 points
    assert "| toy | 10 | 0 | few | 1 | 4 | 10 | 10 | 10.00 |" in md
    assert "| toy | 10 | ce | crt | default | joint | 1 | +20.00 [" in md
    assert "no joint row on backbone kps in this run" in md


def test_summarize_without_per_image_files_leaves_intervals_empty(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"dataset": "d", "imbalance_factor": "10", "split_seed": 0, "seed": 0,
                      "backbones": ["ce"], "classifier": "crt", "method": "crt",
                      "point": "default", "settings": {},
                      "metrics": {"test": {"all": 50.0, "many": 50.0, "medium": 50.0,
                                           "few": 50.0}}})
    write_summary([str(path)], tmp_path / "s.csv", tmp_path / "s.md", tmp_path / "p.csv")
    (row,) = _read(tmp_path / "s.csv")
    assert row["all_lo"] == "" and row["n_all"] == ""
    (p,) = [r for r in _read(tmp_path / "p.csv")]
    assert p["note"] == "no joint row on backbone ce in this run"


def test_methods_chosen_on_validation_against_crt_by_hand(tmp_path):
    """The "Methods against cRT, paired" rows: in each run the sweep point chosen on validation,
    paired run by run with cRT; the difference and the image counts worked out here by hand."""
    results = tmp_path / "results"
    labels = np.repeat(np.arange(3), PER_CLASS)
    rng = np.random.default_rng(3)
    correct = {}
    for seed in (0, 1):
        _cache(results / "toy" / "if10" / "s0" / "ce" / f"t{seed}" / "cache.zarr")
        for clf, point, val in [("crt", "default", 50.0), ("tau", "tau=0", 60.0 + seed),
                                ("tau", "tau=1", 61.0 - seed)]:
            c = rng.random(30) < 0.6
            correct[(clf, point, seed)] = c
            out = results / "toy" / "if10" / "s0" / "cls" / clf / f"t{seed}" / point
            out.mkdir(parents=True)
            scores = np.eye(3, dtype=np.float32)[np.where(c, labels, (labels + 1) % 3)]
            np.savez(out / "logits.npz", test=scores)
            write_json(out / "metrics.json", {
                "dataset": "toy", "imbalance_factor": "10", "split_seed": 0, "seed": seed,
                "backbones": ["ce"], "classifier": clf, "method": clf, "point": point,
                "settings": {}, "class_counts": COUNTS, "shot_groups": SHOTS,
                "metrics": {"test": accuracy_report(scores, labels, np.asarray(SHOTS)),
                            "val": {"all": val}},
                # tau is composed on crt's head (reads: crt): its rows name the chain
                **({"chain": "tau(crt)"} if clf == "tau" else {})})
    assert ltpipe_main(["report", "--results", str(results)]) in (0, None)
    # chosen on validation: seed 0 -> tau=1 (61 > 60), seed 1 -> tau=0 (61 > 60)
    method = [correct[("tau", "tau=1", 0)], correct[("tau", "tau=0", 1)]]
    crt = [correct[("crt", "default", 0)], correct[("crt", "default", 1)]]
    per_image = (method[0].astype(int) - crt[0] + method[1].astype(int) - crt[1]) / 2
    (row,) = [r for r in _read(results / "paired.csv")
              if r["point"] == "chosen on validation" and r["group"] == "all"]
    assert row["classifier"] == "tau" and row["baseline_classifier"] == "crt"
    assert float(row["difference"]) == pytest.approx(100 * per_image.mean(), abs=1e-3)
    assert int(row["better_images"]) == int((per_image > 0).sum())
    assert int(row["worse_images"]) == int((per_image < 0).sum())
    md = (results / "summary.md").read_text()
    assert "## Methods against cRT, paired" in md
    assert f"| toy | 10 | ce | tau | crt | 2 | {100 * per_image.mean():+.2f} [" in md
    # the compositions' own table: chosen points, and the same paired difference against cRT
    part = md.split("## Compositions, chosen on validation")[1]
    line = next(x for x in part.splitlines() if x.startswith("| toy | 10 | tau |"))
    assert line.startswith("| toy | 10 | tau | tau(crt) | tau=0, tau=1 | 2 | ")
    assert line.split(" | ")[-1].startswith(f"{100 * per_image.mean():+.2f} [")
    assert "all vs crt" in part


def test_several_runs_verdict_follows_the_interval_not_the_count():
    """Three seeds on 60 images: 30 images won in one seed of three (d = +1/3), 15 lost in all
    three (d = -1). The sign test counts 30 against 15 (p < 0.05, "better"), but the mean
    difference is (30/3 - 15) / 60 = -8.33 points: the verdict is the interval's, which spans 0
    once the seeds are resampled too."""
    base = [np.zeros(60, bool) for _ in range(3)]
    meth = [np.zeros(60, bool) for _ in range(3)]
    for s in range(3):
        meth[s][s * 10:(s + 1) * 10] = True  # images 0-29: each won in exactly one seed
        base[s][45:60] = True                # images 45-59: lost in every seed
    res = stats.paired_comparison([stats.Run("t", m) for m in meth],
                                  [stats.Run("t", b) for b in base])
    assert (res.better_images, res.worse_images) == (30, 15)
    assert res.p < 0.05 and res.diff == pytest.approx(-100 * 5 / 60)
    assert res.lo < 0 < res.hi and res.verdict == "no detectable difference"


def test_bootstrap_by_kind_counts_matches_resampling_images():
    """The two-level bootstrap draws, per replicate, how many resampled images fall on each kind
    of image (ltpipe.report.stats._replicates); written out here the plain way (resample runs,
    then n images with replacement shared by the runs of a test set), both give the same
    distribution: equal means and quantiles within Monte Carlo error."""
    from ltpipe.report.stats import _replicates

    rng = np.random.default_rng(0)
    n = 200
    runs = [[rng.random(n) < 0.7, rng.random(n) < 0.6] for _ in range(3)]
    runs = [[a.astype(float), b.astype(float)] for a, b in runs]
    sets = ["s", "s", "s"]
    reps = 20000
    fast = _replicates(runs, sets, reps, seed=1)
    plain = np.empty(reps)
    for b in range(reps):
        picks = rng.integers(0, 3, 3)
        idx = rng.integers(0, n, n)
        plain[b] = np.mean([runs[i][0][idx].mean() - runs[i][1][idx].mean() for i in picks])
    assert abs(fast.mean() - plain.mean()) < 0.002
    assert abs(fast.std() - plain.std()) < 0.002
    for q in (0.025, 0.5, 0.975):
        assert abs(np.quantile(fast, q) - np.quantile(plain, q)) < 0.006
