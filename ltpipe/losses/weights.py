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

    With ``normalize`` (the default, as in Cui et al. and methods.md section 3) the weights are
    rescaled to sum to C; ``normalize=False`` returns the raw effective-number inverse.
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


def kps_mirrored_scales(counts: Any) -> torch.Tensor:
    """s_{k(j)}: the KPS scale of the class at the mirrored count rank of class j.

    Classes are ranked by descending count; class j at rank r is paired with the class at rank
    C - 1 - r, so the rarest class gets max(s) and the most frequent gets 1. Ties are ranked
    densely (all classes with one count form one rank level, mirrored over the distinct counts),
    so equal counts always get equal values and both end points keep their guarantee.
    Without ties this is the plain rank mirror.
    """
    n = as_counts(counts)
    levels, level_of = np.unique(n, return_inverse=True)  # ascending distinct counts
    s_levels = _kps_scales64(levels)
    return _f32(s_levels[::-1][level_of])


def kps_margins(counts: Any, max_m: float) -> torch.Tensor:
    """KPS margins m_j = s_{k(j)} * max_m / max(s), k(j) the mirrored count rank of j.

    The rarest class gets max_m, the most frequent max_m / max(s). Goes by count RANK, never by
    label index (the reference code flips the label-ordered array; see ``KPSLoss``).
    """
    if not (isinstance(max_m, (int, float)) and max_m > 0):
        raise LtpipeError(f"max_m must be a positive number, got {max_m!r} (0.2-0.5 is usual)")
    mirrored = kps_mirrored_scales(counts).double()
    return (mirrored * (max_m / mirrored.max())).float()
