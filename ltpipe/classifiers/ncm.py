"""NCM (nearest class mean, Kang et al.): subtract the mean train feature, L2-normalize, and
score each class by the negative squared distance to its centroid.

Centroids are the means of the processed (centered, normalized) train features of each class.
A class with no training samples gets a score of -1e4 (far below any real one, >= -4 when
normalized), so it is never predicted. Closed form in numpy (float32): a job of this method
never imports torch.
"""

from __future__ import annotations

import numpy as np

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.classifiers.tau_norm import l2_normalize
from ltpipe.settings import flag

SETTINGS = {
    "center": flag(True, "subtract the mean train feature first"),
    "normalize": flag(True, "L2-normalize features (after centering)"),
}
SPEC = MethodSpec(needs={"pooled"}, torch=False, settings=SETTINGS)  # numpy only
EMPTY_CLASS_SCORE = -1e4
CHUNK = 8192  # rows scored at a time


def class_centroids(x: np.ndarray, y: np.ndarray, num_classes: int,
                    transform=None) -> np.ndarray:
    """Mean of ``transform(x)`` per class [C, D] (zero rows for empty classes), float32;
    ``CHUNK`` rows at a time (sums in float64)."""
    sums = np.zeros((num_classes, x.shape[1]), np.float64)
    for i in range(0, len(x), CHUNK):
        xs, ys = x[i:i + CHUNK], y[i:i + CHUNK]
        if transform is not None:
            xs = transform(xs)
        order = np.argsort(ys, kind="stable")
        ys = ys[order]
        starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
        sums[ys[starts]] += np.add.reduceat(xs[order].astype(np.float64), starts, axis=0)
    counts = np.maximum(np.bincount(y, minlength=num_classes), 1)
    return (sums / counts[:, None]).astype(np.float32)


def run(inputs: list, settings: dict, seed: int, device) -> dict[str, np.ndarray]:
    """NCM scores of each evaluated split (seed and device are unused)."""
    (feat,) = inputs
    x = np.asarray(feat.require("train", "pooled", "ncm"), dtype=np.float32)
    y = np.asarray(feat.train["labels"], dtype=np.int64)
    mean = x.mean(0, dtype=np.float64).astype(np.float32) if settings["center"] else None

    def process(f: np.ndarray) -> np.ndarray:
        if mean is not None:
            f = f - mean
        return l2_normalize(f) if settings["normalize"] else f

    centroids = class_centroids(x, y, feat.num_classes, transform=process)
    counts = np.bincount(y, minlength=feat.num_classes)
    c2 = (centroids.astype(np.float64) ** 2).sum(1)
    out = {}
    for split in feat.eval_splits():
        f_all = np.asarray(feat.require(split, "pooled", "ncm"), dtype=np.float32)
        parts = []
        for i in range(0, len(f_all), CHUNK):
            f = process(f_all[i:i + CHUNK]).astype(np.float64)
            d2 = np.maximum((f ** 2).sum(1)[:, None] - 2 * f @ centroids.T.astype(np.float64)
                            + c2[None, :], 0.0)
            parts.append(np.where(counts[None, :] == 0, EMPTY_CLASS_SCORE, -d2))
        out[split] = np.concatenate(parts).astype(np.float32)
    return out
