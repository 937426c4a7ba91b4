"""LWS (learnable weight scaling, Kang et al.): the stage-one head frozen, one learned scale per
class on its logits, z_j = s_j * joint_j, with s initialized to 1; class-balanced sampling,
5 epochs. Works on the cached logits (the head's exact output), so it needs no features.

As the reference code (facebookresearch/classifier-balancing, models/TauNormClassifier.py), the
scale multiplies the whole logit w_j f + b_j, W and b stay frozen, and the optimizer's weight
decay (5e-4 in its configs) applies to the scales. Defaults: its ImageNet-LT config (batch 512,
lr 0.2 cosine to 0, 5 epochs of int(N / batch) steps; see ``crt`` for the epoch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ltpipe.classifiers.crt import KANG_IMAGENET_LT
from ltpipe.classifiers.spec import MethodSpec
from ltpipe.classifiers.train_settings import trainer_settings

if TYPE_CHECKING:  # torch is imported by run() only: reading SPEC must not import it
    import numpy as np
    import torch

SETTINGS = trainer_settings(epochs=5, **KANG_IMAGENET_LT)  # Kang et al.: 5 epochs
SPEC = MethodSpec(needs={"logits"}, gpu=True, settings=SETTINGS)


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Learn per-class scales on the train logits; return scaled logits per evaluated split."""
    from ltpipe.classifiers.common import ClassScale, make_loss, score_splits, train_tensors
    from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

    (feat,) = inputs
    cfg = TrainConfig.from_settings(settings)
    gen = make_generator(seed, device)
    z, y = train_tensors(feat, "logits", "lws", device)
    model = ClassScale(feat.num_classes, device)
    train_head(model, z, y, make_loss("ce", feat.class_counts, device), cfg, gen)
    return score_splits(feat, "logits", "lws", device, model)
