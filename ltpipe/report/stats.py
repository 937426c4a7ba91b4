"""Intervals and paired tests for the summary's accuracies: plain numpy / math, no torch.

Every accuracy ltpipe reports (overall and per shot group, :func:`ltpipe.evaluate.accuracy_report`)
is *pooled over test images*: correct images / images whose class is in the group. The intervals
here estimate that same quantity:

* one run (one split seed, one training seed): the Wilson score interval of ``k`` correct of ``n``
  images (:func:`wilson`);
* several runs of one configuration (seeds): a two-level percentile bootstrap
  (:func:`hierarchical_interval`): each replicate resamples the runs with replacement, and
  resamples the test images of each test set once (runs that share a split share the draw, since
  their test images are the same), then averages the picked runs' accuracies.

A method is compared with a baseline on the same test images (:func:`paired_comparison`): the
difference of accuracies (mean over the shared runs), and an exact two-sided sign test on the
per-image differences (mean over training seeds of method-correct minus baseline-correct). With one
run the per-image differences are -1, 0 or +1, the sign test is McNemar's exact test
(:func:`mcnemar_exact`) and the interval is its exact conditional interval
(:func:`mcnemar_interval`), so interval and verdict agree. With several runs the interval is a
paired two-level bootstrap (method and baseline resampled together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: two-sided level of every interval and test in the report
ALPHA = 0.05
#: bootstrap replicates (the percentile endpoints move by < 0.1 points between seeds at 2000)
BOOTSTRAP = 2000
#: the bootstrap's RNG seed: the report is a pure function of its inputs
BOOTSTRAP_SEED = 0
_Z = 1.959963984540054  # the standard normal's 0.975 quantile


def wilson(k: int, n: int, z: float = _Z) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (as fractions); (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} correct of n={n} images is impossible (need 0 <= k <= n)")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at k = 0 or k = n one endpoint is exactly 0 or 1 (rounding would leave 1 - 1e-16)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def binom_two_sided(pos: int, neg: int) -> float:
    """Exact two-sided p of ``pos`` successes in ``pos + neg`` fair coin flips (sign test):
    twice the smaller tail, capped at 1; 1.0 when there are no flips."""
    n = pos + neg
    if n == 0:
        return 1.0
    k = min(pos, neg)
    # exact integers, one division at the end: 2.0 ** n overflows a float from n = 1024 on
    # (a 10,000-image test set easily has that many discordant images)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / (1 << n))


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion ``k / n``: the proportions
    whose one-sided tail P(X >= k) or P(X <= k) is at least alpha / 2 (scipy's beta quantiles)."""
    from scipy.stats import beta

    if n <= 0:
        return math.nan, math.nan
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def mcnemar_interval(b: int, c: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact interval of the paired accuracy difference (b - c) / n on n images, conditional on
    the b + c discordant ones: (b + c) / n * (2 theta - 1), theta the Clopper-Pearson interval of
    b of b + c. It excludes 0 exactly when :func:`mcnemar_exact` is below alpha."""
    if b + c == 0:
        return 0.0, 0.0
    lo, hi = clopper_pearson(b, b + c, alpha)
    scale = (b + c) / n
    return scale * (2 * lo - 1), scale * (2 * hi - 1)


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact test: ``b`` images only the method gets right, ``c`` only the baseline."""
    return binom_two_sided(b, c)


@dataclass
class Run:
    """One run's per-image correctness on its test set.

    ``test_set`` names the test images (runs with equal names share them image for image: the
    split seed); ``correct`` is a boolean [N] vector, in the same image order for every run of a
    test set.
    """

    test_set: object
    correct: np.ndarray


def _test_sets(runs: list[Run]) -> dict[object, int]:
    sizes: dict[object, int] = {}
    for r in runs:
        n = len(r.correct)
        if sizes.setdefault(r.test_set, n) != n:
            raise ValueError(f"runs on test set {r.test_set!r} score {sizes[r.test_set]} and {n} "
                             "images: runs of one split must score the same test images")
    return sizes


def _replicates(runs: list[list[np.ndarray]], test_sets: list[object], reps: int,
                seed: int) -> np.ndarray:
    """Two-level bootstrap: ``reps`` replicates of the mean over runs of each run's value.

    ``runs[i]`` is ``[x]`` (the run's value: the mean of per-image ``x``) or ``[x, y]`` (the
    paired difference mean(x) - mean(y) over the same images). Each replicate resamples the runs
    with replacement (not with one run) and draws one image resample per test set, which every
    run with that ``test_sets[i]`` uses.

    An image resample enters a run's value only through how many draws land on images of each
    kind, a kind being the tuple of the values the runs of that test set take on the image (at
    most 3^k kinds for k paired runs of 0/1 correctness). So each replicate draws those counts
    from the multinomial distribution over the kinds, with the kinds' frequencies: the same
    distribution as drawing n images with replacement, in O(kinds) instead of O(n) per
    replicate (a report of 576 jobs took 6 minutes the other way)."""
    rng = np.random.default_rng(seed)
    n_runs = len(runs)
    picks = (rng.integers(0, n_runs, (reps, n_runs)) if n_runs > 1
             else np.zeros((reps, 1), dtype=np.int64))
    values = np.empty((reps, n_runs))
    for ts in dict.fromkeys(test_sets):
        members = [i for i, t in enumerate(test_sets) if t == ts]
        per_image = np.stack([np.asarray(runs[i][0], float) - np.asarray(runs[i][1], float)
                              if len(runs[i]) > 1 else np.asarray(runs[i][0], float)
                              for i in members], axis=1)  # [n images, runs of this test set]
        kinds, freq = np.unique(per_image, axis=0, return_counts=True)
        counts = rng.multinomial(len(per_image), freq / freq.sum(), size=reps)  # [reps, kinds]
        values[:, members] = counts @ kinds / len(per_image)
    return np.take_along_axis(values, picks, axis=1).mean(axis=1)


def hierarchical_interval(runs: list[Run], reps: int = BOOTSTRAP,
                          seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval (level 1 - ALPHA) of the mean over runs of the pooled accuracy, as
    fractions; (nan, nan) when no run scores an image."""
    runs = [r for r in runs if len(r.correct)]
    if not runs:
        return math.nan, math.nan
    _test_sets(runs)
    reps_ = _replicates([[np.asarray(r.correct, dtype=float)] for r in runs],
                        [r.test_set for r in runs], reps, seed)
    lo, hi = np.quantile(reps_, [ALPHA / 2, 1 - ALPHA / 2])
    return float(lo), float(hi)


def accuracy_interval(runs: list[Run]) -> tuple[float, float]:
    """The report's interval of an accuracy (fractions): Wilson for one run, the two-level
    bootstrap for several."""
    if len(runs) == 1:
        c = np.asarray(runs[0].correct, dtype=bool)
        return wilson(int(c.sum()), len(c))
    return hierarchical_interval(runs)


@dataclass
class Paired:
    """A method against a baseline on the same images (accuracies and difference in points)."""

    runs: int
    images: int
    method: float
    baseline: float
    diff: float
    lo: float
    hi: float
    better_images: int  # images on which the method does better (mean over seeds)
    worse_images: int
    p: float
    verdict: str


def verdict(p: float, better: int, worse: int, alpha: float = ALPHA) -> str:
    """better / worse (p < alpha, direction of the sign test) or "no detectable difference"."""
    if p < alpha and better != worse:
        return "better" if better > worse else "worse"
    return "no detectable difference"


def paired_comparison(method: list[Run], baseline: list[Run], reps: int = BOOTSTRAP,
                      seed: int = BOOTSTRAP_SEED) -> Paired:
    """Compare ``method[i]`` with ``baseline[i]`` (the same split and training seed, the same
    images in the same order).

    The difference is the mean over runs of (method accuracy - baseline accuracy), in points, with
    :func:`mcnemar_interval` for one run, else a paired two-level percentile bootstrap interval.
    The test: per test image (one split's image),
    d = mean over that split's runs of (method correct - baseline correct); the exact two-sided
    sign test on the images with d != 0 (McNemar's exact test when there is one run). The
    verdict: with one run, McNemar's (its exact interval agrees with it); with several, the
    bootstrap interval's (better when it lies above 0, worse below, else no detectable
    difference), so that a verdict never contradicts its interval; ``p`` is still the sign
    test's, which ignores how much each image moves.
    """
    if len(method) != len(baseline):
        raise ValueError(f"paired_comparison: {len(method)} method runs but {len(baseline)} "
                         "baseline runs; pair them by split and training seed first")
    for m, b in zip(method, baseline):
        if m.test_set != b.test_set or len(m.correct) != len(b.correct):
            raise ValueError(f"paired_comparison: method and baseline runs score different test "
                             f"images ({m.test_set!r}: {len(m.correct)}, {b.test_set!r}: "
                             f"{len(b.correct)})")
    pairs = [(np.asarray(m.correct, dtype=float), np.asarray(b.correct, dtype=float), m.test_set)
             for m, b in zip(method, baseline) if len(m.correct)]
    if not pairs:
        nan = math.nan
        return Paired(len(method), 0, nan, nan, nan, nan, nan, 0, 0, 1.0,
                      "no test images in this group")
    acc_m = float(np.mean([a.mean() for a, _, _ in pairs]))
    acc_b = float(np.mean([b.mean() for _, b, _ in pairs]))
    per_set: dict[object, list[np.ndarray]] = {}
    for a, b, ts in pairs:
        per_set.setdefault(ts, []).append(a - b)
    d = np.concatenate([np.mean(v, axis=0) for v in per_set.values()])
    better, worse = int((d > 0).sum()), int((d < 0).sum())
    p = binom_two_sided(better, worse)
    if len(pairs) == 1:  # one run: the exact interval that agrees with McNemar's exact test
        lo, hi = mcnemar_interval(better, worse, len(d))
    else:
        reps_ = _replicates([[a, b] for a, b, _ in pairs], [ts for _, _, ts in pairs], reps,
                            seed)
        lo, hi = np.quantile(reps_, [ALPHA / 2, 1 - ALPHA / 2])
    if len(pairs) == 1:
        word = verdict(p, better, worse)
    else:
        word = "better" if lo > 0 else "worse" if hi < 0 else "no detectable difference"
    return Paired(len(pairs), len(d), 100 * acc_m, 100 * acc_b, 100 * (acc_m - acc_b),
                  100 * float(lo), 100 * float(hi), better, worse, p, word)
