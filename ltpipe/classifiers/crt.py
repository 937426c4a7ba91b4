"""cRT (classifier re-training, Kang et al.): a re-initialized linear head trained with CE on the
frozen pooled features, class-balanced sampling, 10 epochs, cosine learning rate."""

from __future__ import annotations

import numpy as np
import torch

from ltpipe.classifiers.common import make_loss, new_head, score_splits, train_tensors
from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

DEFAULTS = {
    "epochs": 10,                 # passes of ceil(N / batch_size) steps (methods.md: 10)
    "batch_size": 128,            # samples per step
    "lr": 0.1,                    # start learning rate
    "lr_min": 0.0,                # cosine schedule end
    "schedule": "cosine",         # "cosine" | "constant"
    "momentum": 0.9,              # SGD momentum
    "weight_decay": 5e-4,         # SGD weight decay
    "sampler": "class_balanced",  # instance | class_balanced | sqrt | inverse
}
NEEDS = {"pooled"}
NUM_BACKBONES = 1


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Train a new linear head; return its logits on each evaluated split."""
    (feat,) = inputs
    cfg = TrainConfig.from_settings(settings)
    gen = make_generator(seed, device)
    x, y = train_tensors(feat, "pooled", "crt", device)
    head = new_head("linear", feat.num_classes, x.shape[1], gen, device)
    train_head(head, x, y, make_loss("ce", feat.class_counts, device), cfg, gen)
    return score_splits(feat, "pooled", "crt", device, head)
