"""LWS (learnable weight scaling, Kang et al.): the stage-one head frozen, one learned scale per
class on its logits, z_j = s_j * joint_j, with s initialized to 1; class-balanced sampling,
5 epochs. Works on the cached logits (the head's exact output), so it needs no features.

As the reference code (facebookresearch/classifier-balancing, models/TauNormClassifier.py), the
scale multiplies the whole logit w_j f + b_j, W and b stay frozen, and the optimizer's weight
decay (5e-4 in its configs) applies to the scales. Defaults: its ImageNet-LT config (batch 512,
lr 0.2 cosine to 0, 5 epochs of int(N / batch) steps; see ``crt`` for the epoch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ltpipe.classifiers.common import make_loss, score_splits, train_tensors
from ltpipe.classifiers.crt import KANG_IMAGENET_LT
from ltpipe.classifiers.trainer import (
    TrainConfig,
    make_generator,
    train_head,
    trainer_settings,
)

SETTINGS = trainer_settings(epochs=5, **KANG_IMAGENET_LT)  # Kang et al.: 5 epochs
NEEDS = {"logits"}
NUM_BACKBONES = 1


class ClassScale(nn.Module):
    """z_j = s_j * logits_j with learned s (init 1)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        super().__init__()
        self.scales = nn.Parameter(torch.ones(num_classes, device=device))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scales


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Learn per-class scales on the train logits; return scaled logits per evaluated split."""
    (feat,) = inputs
    cfg = TrainConfig.from_settings(settings)
    gen = make_generator(seed, device)
    z, y = train_tensors(feat, "logits", "lws", device)
    model = ClassScale(feat.num_classes, device)
    train_head(model, z, y, make_loss("ce", feat.class_counts, device), cfg, gen)
    return score_splits(feat, "logits", "lws", device, model)
