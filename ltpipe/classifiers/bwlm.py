"""BWLM (balanced weight learning): a new linear head on the frozen features, trained on the
"balanced review" set with the BFS loss plus lambda * ||W||^2.

Balanced review set (BWLM paper Eq. 2): rank classes by descending training count (ties by
class index); the m = C // 2 most frequent ("head half") are each subsampled without
replacement to n_{m+1}, the count of the (m+1)-th most frequent class; the other classes are
kept in full. BFS = alpha * w_CB(y) * sigmoid-focal + (1 - alpha) * balanced softmax
(``ltpipe.losses`` "bfs"), built on the review set's class counts, the distribution the head
is trained on. lambda * ||W||^2 penalizes the weight matrix (not the bias); SGD weight decay is
0 by default so the penalty is not counted twice. Paper: batch 64, cosine lr from 0.01 to 0;
the epoch count (30) is our choice for a cached head (the paper's 320 cover the whole net).
"""

from __future__ import annotations

import numpy as np
import torch

from ltpipe.classifiers.common import (
    check_number,
    make_loss,
    new_head,
    score_splits,
    train_tensors,
)
from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

DEFAULTS = {
    "lam": 0.1,             # lambda of lambda * ||W||^2 (the paper's main knob)
    "alpha": 0.1,           # BFS: weight of the class-balanced focal term
    "beta": 0.9999,         # BFS: class-balanced beta
    "gamma": 2.0,           # BFS: focal gamma
    "epochs": 30,           # passes over the review set
    "batch_size": 64,       # paper: 64
    "lr": 0.01,             # paper: cosine from 0.01
    "lr_min": 0.0,          # paper: to 0
    "schedule": "cosine",   # "cosine" | "constant"
    "momentum": 0.9,        # SGD momentum
    "weight_decay": 0.0,    # extra SGD decay on top of lam * ||W||^2
    "sampler": "instance",  # over the review set (already balanced by construction)
}
NEEDS = {"pooled"}
NUM_BACKBONES = 1


def review_indices(labels: torch.Tensor, num_classes: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of the balanced review set (see module doc)."""
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.argsort(-counts, stable=True)
    m = num_classes // 2
    cap = torch.full_like(counts, torch.iinfo(torch.long).max)
    if m < num_classes:
        cap[order[:m]] = counts[order[m]]
    # a random rank of each sample within its class; keep ranks below the class cap
    noise = torch.rand(len(labels), generator=generator, device=labels.device)
    by_noise = torch.argsort(noise)
    perm = by_noise[torch.argsort(labels[by_noise], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[perm] = torch.arange(len(labels), device=labels.device) - starts[labels[perm]]
    return torch.nonzero(rank < cap[labels]).squeeze(1)


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Train the BWLM head; return its logits per evaluated split."""
    (feat,) = inputs
    check_number(settings, "lam", "bwlm", lo=0.0)
    cfg = TrainConfig.from_settings(settings)
    gen = make_generator(seed, device)
    x, y = train_tensors(feat, "pooled", "bwlm", device)
    keep = review_indices(y, feat.num_classes, gen)
    x, y = x[keep], y[keep]
    counts = torch.bincount(y, minlength=feat.num_classes).cpu().numpy()
    head = new_head("linear", feat.num_classes, x.shape[1], gen, device)
    bfs = make_loss("bfs", np.maximum(counts, 1), device, alpha=settings["alpha"],
                    beta=settings["beta"], gamma=settings["gamma"])
    lam = float(settings["lam"])

    def loss(logits, target, epoch):
        return bfs(logits, target, epoch) + lam * head.weight.pow(2).sum()

    train_head(head, x, y, loss, cfg, gen)
    return score_splits(feat, "pooled", "bwlm", device, head)

