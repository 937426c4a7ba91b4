"""NCM (nearest class mean, Kang et al.): subtract the mean train feature, L2-normalize, and
score each class by the negative squared distance to its centroid.

Centroids are the means of the processed (centered, normalized) train features of each class.
A class with no training samples gets a score of -1e4 (far below any real one, >= -4 when
normalized), so it is never predicted.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ltpipe.classifiers.common import score_splits, train_tensors
from ltpipe.settings import flag

SETTINGS = {
    "center": flag(True, "subtract the mean train feature first"),
    "normalize": flag(True, "L2-normalize features (after centering)"),
}
NEEDS = {"pooled"}
NUM_BACKBONES = 1
EMPTY_CLASS_SCORE = -1e4


def class_centroids(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of ``x`` per class [C, D] (zero rows for empty classes)."""
    sums = torch.zeros(num_classes, x.shape[1], device=x.device).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1)
    return sums / counts[:, None].to(x.dtype)


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """NCM scores of each evaluated split."""
    (feat,) = inputs
    x, y = train_tensors(feat, "pooled", "ncm", device)
    mean = x.mean(0) if settings["center"] else torch.zeros_like(x[0])

    def process(f: torch.Tensor) -> torch.Tensor:
        f = f - mean
        return F.normalize(f, dim=1) if settings["normalize"] else f

    centroids = class_centroids(process(x), y, feat.num_classes)
    empty = torch.bincount(y, minlength=feat.num_classes) == 0

    def model(f: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(f, centroids).pow(2)
        return (-d2).masked_fill(empty[None, :], EMPTY_CLASS_SCORE)

    return score_splits(feat, "pooled", "ncm", device, model, transform=process)
