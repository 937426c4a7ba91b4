"""H2T (head-to-tail fusion): graft channels of head-class features onto tail-class features.

Each step draws a receiver batch class-balanced (the trainer's sampler) and a donor batch of
the same size instance-sampled (uniform over training samples, so mostly head classes). One
random subset of int(rho * D) channels is picked per batch, and those channels of every
receiver are replaced by its donor's; the label stays the receiver's. The classifier,
initialized from the stage-one head, is trained with CE; 10 epochs, batch 128, cosine lr.

The mask acts on whole channels, so it commutes with average pooling: fusing pooled features is
exactly fusing feature maps and then pooling (BatchNorm in eval mode). The reference keeps
BatchNorm in train mode in stage two; a cache cannot reproduce that.

Defaults are the reference code's CIFAR-100-LT IF 100 config (Keke921/H2T,
config/cifar100/*imb001*_stage2_ce_H2T.yaml), the only data set it has configs for: lr 0.1 x
lr_factor 0.2 = 0.02 with a cosine over the 10 epochs, wd 5e-4 (its IF 50 and IF 200 configs:
wd 2e-4, start lr again 0.02), batch 128, rho 0.25, an epoch of ceil(N / 128) steps. The
reference sets the lr once per epoch and never reaches 0; here it follows the cosine per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.classifiers.train_settings import trainer_settings
from ltpipe.settings import number

if TYPE_CHECKING:  # torch is imported inside the functions: reading SPEC must not import it
    import numpy as np
    import torch

SETTINGS = {
    "rho": number(0.25, 0, 1, doc="fraction of channels taken from the donor (CIFAR-100: 0.25)"),
    **trainer_settings(
        epochs=10,                 # reference: 10
        batch_size=128,            # reference: 128
        lr=0.02,                   # reference CIFAR-100 IF 100: 0.1 x lr_factor 0.2
        lr_min=0.0,                # cosine schedule end
        schedule="cosine",
        momentum=0.9,
        weight_decay=5e-4,         # reference CIFAR-100 IF 100: 5e-4 (IF 50 / 200: 2e-4)
        sampler="class_balanced",  # receivers' sampler; donors are always instance-sampled
    ),
}
SPEC = MethodSpec(needs={"pooled"}, gpu=True, settings=SETTINGS, head=True)


def channel_subset(dim: int, rho: float, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """int(rho * dim) distinct channel indices drawn uniformly."""
    import torch

    k = int(rho * dim)
    return torch.randperm(dim, generator=generator, device=device)[:k]


def fuse_channels(receiver: torch.Tensor, donor: torch.Tensor,
                  channels: torch.Tensor) -> torch.Tensor:
    """Copy of ``receiver`` [B, D, ...] whose ``channels`` (dim 1) come from ``donor``."""
    out = receiver.clone()
    out[:, channels] = donor[:, channels]
    return out


def make_augment(rho: float):
    """The trainer hook: receivers from the sampler, donors uniform, one channel set per batch."""

    import torch

    def augment(idx, x, y, generator):
        donors = torch.randint(len(y), idx.shape, generator=generator, device=x.device)
        channels = channel_subset(x.shape[1], rho, generator, x.device)
        return fuse_channels(x[idx], x[donors], channels), y[idx]

    return augment


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Fine-tune the stage-one head on fused features; return logits per evaluated split."""
    from ltpipe.classifiers.common import make_loss, score_splits, stage_one_head, train_tensors
    from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

    (feat,) = inputs
    cfg = TrainConfig.from_settings(settings)
    gen = make_generator(seed, device)
    x, y = train_tensors(feat, "pooled", "h2t", device)
    head = stage_one_head(feat, device)
    train_head(head, x, y, make_loss("ce", feat.class_counts, device), cfg, gen,
               augment=make_augment(float(settings["rho"])))
    return score_splits(feat, "pooled", "h2t", device, head)
