"""Per-class quantities derived from training counts: class-balanced weights, LDAM and KPS margins.

Every function takes ``counts``: the per-class TRAINING counts n_j in label order (a sequence,
NumPy array or tensor of length C; classes need NOT be sorted by count) and returns a float32
tensor of length C on the CPU. Arithmetic is done in float64 first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ltpipe.losses.spec import KPS_MIRRORS
from ltpipe.utils import LtpipeError

KPS_BASE = 50.0  # the constant 50 of s_j = ln(50 n_j / n_min) / ln 50


def as_counts(counts: Any) -> np.ndarray:
    """Validate per-class training counts and return them as a float64 NumPy vector."""
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    try:
        arr = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise LtpipeError(
            f"class counts must be numbers, got {counts!r}; pass the train split's per-class "
            "counts n_j in label order"
        ) from err
    if arr.ndim != 1 or arr.size == 0:
        raise LtpipeError(
            f"class counts must be a non-empty 1-D sequence (one n_j per class), got shape "
            f"{arr.shape}; pass the train split's per-class counts in label order"
        )
    bad = [i for i, n in enumerate(arr) if not (math.isfinite(n) and n > 0)]
    if bad:
        raise LtpipeError(
            f"every class needs a positive finite training count; classes {bad} have counts "
            f"{arr[bad].tolist()}; drop empty classes from the split or fix the counts"
        )
    return arr


def _check_beta(beta: Any, what: str = "beta") -> float:
    ok = isinstance(beta, (int, float, np.floating)) and not isinstance(beta, bool)
    if not ok or not 0.0 <= float(beta) < 1.0:
        raise LtpipeError(f"{what} must be a number in [0, 1), got {beta!r} (0.9999 is usual)")
    return float(beta)


def _f32(arr: np.ndarray) -> torch.Tensor:
    return torch.tensor(arr, dtype=torch.float32)


def class_balanced_weights(counts: Any, beta: float, normalize: bool = True) -> torch.Tensor:
    """Class-balanced weights w_j = (1 - beta) / (1 - beta ** n_j) (Cui et al., 2019).

    With ``normalize`` (the default, as in Cui et al.; docs/methods.md#stage-one-losses-and-recipes)
    the weights are rescaled to sum to C; ``normalize=False`` returns the raw effective-number
    inverse.
    ``beta = 0`` gives all ones.
    """
    n = as_counts(counts)
    beta = _check_beta(beta)
    if beta == 0.0:
        raw = np.ones_like(n)
    else:
        # 1 - beta**n computed as -expm1(n log beta): exact for beta close to 1.
        raw = (1.0 - beta) / -np.expm1(n * math.log(beta))
    if normalize:
        raw = raw * (n.size / raw.sum())
    return _f32(raw)


def ldam_margins(counts: Any, max_m: float = 0.5) -> torch.Tensor:
    """LDAM margins Delta_j proportional to n_j ** (-1/4), scaled so the largest equals max_m."""
    n = as_counts(counts)
    if not (isinstance(max_m, (int, float)) and max_m > 0):
        raise LtpipeError(f"max_m must be a positive number, got {max_m!r} (0.5 is usual)")
    m = n**-0.25
    return _f32(m * (max_m / m.max()))


def _kps_scales64(n: np.ndarray) -> np.ndarray:
    return np.log(KPS_BASE * n / n.min()) / math.log(KPS_BASE)


def kps_scales(counts: Any) -> torch.Tensor:
    """KPS per-class scales s_j = ln(50 n_j / n_min) / ln 50 (1 for the rarest class)."""
    return _f32(_kps_scales64(as_counts(counts)))




def kps_mirrored_scales(counts: Any, mirror: str = "closed_form") -> torch.Tensor:
    """s_{k(j)}: the KPS scale that class j takes from its mirror class k(j).

    ``mirror="closed_form"`` (default; the FFN paper's form): s_{k(j)} = ln(50 n_max / n_j) / ln 50.
    For an exact exponential profile, n_{k(j)} = n_max n_min / n_j, so this IS the scale of the
    mirrored class; it is the paper's m_y = C_m - log n_y up to the normalization to ``max_m``.
    Equal counts get equal values by construction, the rarest class gets max(s) and the most
    frequent gets 1, whatever the label order.

    ``mirror="positional"`` (the public FFN code): sort classes by descending count, ties by class
    index (a stable sort); the class at position p takes the scale s of the class at position
    C - 1 - p. The reference flips the label-ordered array, which is this when labels are sorted
    by count; once counts are rounded (CIFAR-LT) or tied, it only approximates the closed form.
    """
    n = as_counts(counts)
    if mirror == "closed_form":
        return _f32(np.log(KPS_BASE * n.max() / n) / math.log(KPS_BASE))
    if mirror == "positional":
        order = np.argsort(-n, kind="stable")  # position p -> class order[p]
        s = _kps_scales64(n)
        out = np.empty_like(s)
        out[order] = s[order[::-1]]
        return _f32(out)
    raise LtpipeError(f"KPS mirror={mirror!r} is unknown: expected one of {list(KPS_MIRRORS)} "
                      "(closed_form is the paper's, positional the reference code's)")


def kps_margins(counts: Any, max_m: float, mirror: str = "closed_form") -> torch.Tensor:
    """KPS margins m_j = s_{k(j)} * max_m / max_j s_{k(j)} (see ``kps_mirrored_scales``).

    The rarest class gets ``max_m``, the most frequent max_m / max(s).
    """
    if not (isinstance(max_m, (int, float)) and max_m > 0):
        raise LtpipeError(f"max_m must be a positive number, got {max_m!r} (0.2-0.5 is usual)")
    mirrored = kps_mirrored_scales(counts, mirror).double()
    return (mirrored * (max_m / mirrored.max())).float()
