"""FFN (feature fusion network) classifier stage: fuse the pooled features of two stage-one
backbones, z = w1 * f_KPS + (1 - w1) * f_CE, and train a cosine classifier on z with LDAM.

Inputs: [KPS backbone (tail-biased, cosine head), CE backbone], same split and sample order.

variant "paper" (default; FFN paper, Table 2 and Eq. 14): raw features fused, a new randomly
  initialized cosine classifier, LDAM (max_m 0.5, s 30), instance sampling, 30 epochs, batch 64,
  wd 2e-4, lr 0.1. The paper names no lr schedule; cosine to 0 is our choice. LDAM's scale s = 30
  presumes raw cosines, hence the cosine classifier.
variant "reference" (public code, zxsong999/Feature-Fusion-Network.pytorch): both features
  L2-normalized before the weighted sum and the sum NOT re-normalized, so the classifier outputs
  w1 * cos(f_KPS, w_j) + (1 - w1) * cos(f_CE, w_j); the classifier's rows are initialized from the
  KPS head; resampling with weights 1/n_y (= class-balanced sampling, N samples per epoch),
  cosine lr from 0.002 to 0 (0.01 * 0.1 * (1 + cos)), weight decay 1e-4 (cifar_train_classifier.py).
Returned scores are s * cos (the LDAM scale times the classifier's cosines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ltpipe.classifiers.inputs import Features
from ltpipe.classifiers.spec import MethodSpec
from ltpipe.classifiers.train_settings import trainer_settings
from ltpipe.settings import choice, number
from ltpipe.utils import LtpipeError

if TYPE_CHECKING:  # torch is imported inside the functions: reading SPEC must not import it
    import torch

SETTINGS = {
    "w1": number(0.9, 0, 1, doc="weight of the KPS feature; CE gets 1 - w1 (paper: 0.5 on "
                 "CIFAR-10, 0.9 on CIFAR-100 and ImageNet-LT)"),
    "variant": choice("paper", ("paper", "reference"), doc="see the module doc"),
    "max_m": number(0.5, 0, lo_open=True, doc="LDAM largest margin"),
    "scale": number(30.0, 0, lo_open=True, doc="LDAM scale s on the cosines"),
    **trainer_settings(epochs=30, batch_size=64, lr_min=0.0, schedule="cosine", momentum=0.9,
                       sampler=None),  # paper: 30 epochs, batch 64
    # None = the variant's default (VARIANT_DEFAULTS): paper 0.1 / 2e-4 / instance sampling,
    # reference 0.002 / 1e-4 / class-balanced
    "lr": number(None, 0, optional=True, doc="start lr; null = the variant's"),
    "weight_decay": number(None, 0, optional=True, doc="SGD weight decay; null = the variant's"),
}
# saves its head and the fused features it reads (another job can train a head on them)
SPEC = MethodSpec(needs={"pooled"}, num_backbones=2, gpu=True, settings=SETTINGS,
                  head=True, features=True)
VARIANT_DEFAULTS = {"paper": {"lr": 0.1, "sampler": "instance", "weight_decay": 2e-4},
                    "reference": {"lr": 0.002, "sampler": "class_balanced", "weight_decay": 1e-4}}


def fuse_features(f_kps: torch.Tensor, f_ce: torch.Tensor, w1: float,
                  normalize: bool) -> torch.Tensor:
    """w1 * f_KPS + (1 - w1) * f_CE, each L2-normalized first when ``normalize``."""
    import torch.nn.functional as F

    if normalize:
        f_kps, f_ce = F.normalize(f_kps, dim=1), F.normalize(f_ce, dim=1)
    return w1 * f_kps + (1.0 - w1) * f_ce


def _check_inputs(kps: Features, ce: Features) -> None:
    if kps.feature_dim != ce.feature_dim:
        raise LtpipeError(f"ffn: the backbones' features differ in size ({kps.feature_dim} vs "
                          f"{ce.feature_dim}); a weighted sum needs the same architecture")
    for split in ("train", *kps.eval_splits()):
        a, b = getattr(kps, split), getattr(ce, split)
        if b is None or not np.array_equal(a["labels"], b["labels"]):
            raise LtpipeError(f"ffn: the two caches' {split!r} labels differ; both backbones must "
                              "be dumped on the same split (same samples, same order)")


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Train the fused classifier; return s * cos scores per evaluated split."""
    import torch

    from ltpipe.classifiers.common import (
        ScaledCosineHead,
        as_tensor,
        make_loss,
        new_head,
        predict,
        saved_head,
    )
    from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

    kps, ce = inputs
    _check_inputs(kps, ce)
    variant = settings["variant"]
    resolved = {k: (VARIANT_DEFAULTS[variant][k] if settings[k] is None else settings[k])
                for k in VARIANT_DEFAULTS[variant]}
    cfg = TrainConfig.from_settings(settings, **resolved)
    w1, ref = float(settings["w1"]), variant == "reference"
    gen = make_generator(seed, device)

    def fused(split: str) -> torch.Tensor:
        return fuse_features(as_tensor(kps.require(split, "pooled", "ffn"), device),
                             as_tensor(ce.require(split, "pooled", "ffn"), device), w1, ref)

    x, y = fused("train"), as_tensor(kps.train["labels"], device, torch.long)
    if ref:
        head = ScaledCosineHead(as_tensor(kps.head_weight, device), normalize_input=False)
    else:
        head = new_head("cosine", kps.num_classes, x.shape[1], gen, device)
    loss = make_loss("ldam", kps.class_counts, device, max_m=settings["max_m"],
                     scale=settings["scale"])
    train_head(head, x, y, loss, cfg, gen)
    s = float(settings["scale"])
    head.scale = s  # scores are s * cos: the saved head gives the same
    features = {split: fused(split) for split in ("train", *kps.eval_splits())}
    out = {split: predict(head, features[split]) for split in kps.eval_splits()}
    out["head"] = saved_head(head)
    out["features"] = {split: x.float().cpu().numpy() for split, x in features.items()}
    return out
