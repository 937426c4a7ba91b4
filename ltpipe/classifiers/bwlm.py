"""BWLM (balanced weight learning): a new linear head on the frozen features, trained on the
"balanced review" set with the BFS loss and weight decay lambda.

Balanced review set (BWLM paper Eq. 2): rank classes by descending training count (ties by
class index); the m = C // 2 most frequent ("head half") are each subsampled without
replacement to n_{m+1}, the count of the (m+1)-th most frequent class; the other classes are
kept in full. BFS = alpha * w_CB(y) * sigmoid-focal + (1 - alpha) * balanced softmax
(``ltpipe.losses`` "bfs"), built on the review set's class counts, the distribution the head
is trained on.

Weight decay lambda. The paper writes lambda * sum ||theta||^2 (Eq. 14-17) but takes lambda's
value from the code it cites (Alshammari et al., "Long-tailed recognition via weight balancing",
ShadeAlsha/LTR-weight-balancing), whose second stage uses SGD weight decay 0.1 on the classifier:
the gradient lambda * theta, on the weight AND the bias. ``decay: sgd`` (default) is that;
``decay: penalty`` adds the paper's literal lambda * ||W||^2 to the loss (gradient 2 lambda W,
weight only), with which lambda means twice as much.

Budget: a fixed number of SGD ``iterations`` (1700 of batch 64), the cited code's second stage
on CIFAR-100-LT IF 100 (10 epochs of 170 steps), so that the head trains on any data size; the
paper gives no stage-two length. lr: cosine from 0.01 to 0 (paper and cited code), momentum 0.9,
batch 64, instance sampling over the review set (balanced by construction). Not taken from the
cited code: its MaxNorm projection (BWLM does not use it) and its re-use of the stage-one head
(BWLM adds a new FC layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.classifiers.train_settings import trainer_settings
from ltpipe.settings import choice, number

if TYPE_CHECKING:  # torch is imported inside the functions: reading SPEC must not import it
    import torch

SETTINGS = {
    "lam": number(0.1, 0, doc="lambda: weight decay of the head (cited code's stage two: 0.1)"),
    "decay": choice("sgd", ("sgd", "penalty"), doc=(
        "'sgd': gradient lam * theta on W and b (cited code) | 'penalty': lam ||W||^2 in the "
        "loss (the paper's formula)")),
    "alpha": number(0.1, 0, 1, doc="BFS: weight of the class-balanced focal term (paper: 0.1)"),
    "beta": number(0.9999, 0, 1, hi_open=True, doc="BFS: class-balanced beta"),
    "gamma": number(2.0, 0, doc="BFS: focal gamma"),
    **trainer_settings(
        iterations=1700,     # cited code: 10 epochs x 170 steps on CIFAR-100-LT IF 100
        batch_size=64,       # paper: 64
        lr=0.01,             # paper: cosine from 0.01
        lr_min=0.0,          # paper: to 0
        schedule="cosine",
        momentum=0.9,        # paper: 0.9
        sampler="instance",  # over the review set (already balanced by construction)
    ),
}
SPEC = MethodSpec(needs={"pooled"}, gpu=True, settings=SETTINGS, head=True)


def review_indices(labels: torch.Tensor, num_classes: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of the balanced review set (see module doc)."""
    import torch

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
    import torch

    from ltpipe.classifiers.common import make_loss, new_head, score_splits, train_tensors
    from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

    (feat,) = inputs
    lam, sgd_decay = float(settings["lam"]), settings["decay"] == "sgd"
    cfg = TrainConfig.from_settings(settings, weight_decay=lam if sgd_decay else 0.0)
    gen = make_generator(seed, device)
    x, y = train_tensors(feat, "pooled", "bwlm", device)
    keep = review_indices(y, feat.num_classes, gen)
    x, y = x[keep], y[keep]
    counts = torch.bincount(y, minlength=feat.num_classes).cpu().numpy()
    head = new_head("linear", feat.num_classes, x.shape[1], gen, device)
    bfs = make_loss("bfs", np.maximum(counts, 1), device, alpha=settings["alpha"],
                    beta=settings["beta"], gamma=settings["gamma"])

    def penalized(logits, target, epoch):
        return bfs(logits, target, epoch) + lam * head.weight.pow(2).sum()

    train_head(head, x, y, bfs if sgd_decay else penalized, cfg, gen)
    return score_splits(feat, "pooled", "bwlm", device, head)
