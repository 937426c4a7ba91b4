"""cRT (classifier re-training, Kang et al.): a re-initialized linear head trained with CE on the
frozen pooled features, class-balanced sampling, 10 epochs, cosine learning rate.

Defaults are the reference code's ImageNet-LT config (facebookresearch/classifier-balancing,
config/ImageNet_LT/*/cls_crt.yaml): batch 512, lr 0.2 cosine to 0, momentum 0.9, wd 5e-4, 10
epochs. An epoch there is int(N / batch) steps over the real training-set size
(``run_networks.py`` sets ``epoch_steps`` from the data set, not from the class-aware sampler's
nominal n_max x C length), so ``epoch_samples`` defaults to "data"; "class_aware" gives the
sampler's nominal epoch of n_max x C samples. Places-LT uses batch 256 / lr 0.1 and
iNaturalist 2018 wd 1e-4 / 30 epochs (see the presets). Not reproduced: the reference samples 4
consecutive images per class visit and updates the frozen backbone's BatchNorm statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.classifiers.train_settings import trainer_settings

if TYPE_CHECKING:  # torch is imported by run() only: reading SPEC must not import it
    import numpy as np
    import torch

# The reference's ImageNet-LT classifier stage, shared by cRT and LWS (cls_crt.yaml and
# cls_lws.yaml differ only in the number of epochs).
KANG_IMAGENET_LT = {
    "epoch_samples": "data",      # one epoch = N samples, as the reference's loop
    "batch_size": 512,
    "lr": 0.2,
    "lr_min": 0.0,                # cosine to 0
    "schedule": "cosine",
    "momentum": 0.9,
    "weight_decay": 5e-4,         # LWS: on the scales too
    "sampler": "class_balanced",  # Kang et al.: class-balanced sampling
}
SETTINGS = trainer_settings(epochs=10, **KANG_IMAGENET_LT)  # Kang et al.: 10 epochs
SPEC = MethodSpec(needs={"pooled"}, gpu=True, settings=SETTINGS, head=True)


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Train a new linear head; return its logits on each evaluated split."""
    from ltpipe.classifiers.common import make_loss, new_head, score_splits, train_tensors
    from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

    (feat,) = inputs
    cfg = TrainConfig.from_settings(settings)
    gen = make_generator(seed, device)
    x, y = train_tensors(feat, "pooled", "crt", device)
    head = new_head("linear", feat.num_classes, x.shape[1], gen, device)
    train_head(head, x, y, make_loss("ce", feat.class_counts, device), cfg, gen)
    return score_splits(feat, "pooled", "crt", device, head)
