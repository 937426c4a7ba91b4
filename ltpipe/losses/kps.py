"""KPS (Key Point Sensitive) loss: the tail-biased stage-one branch of FFN, on a cosine head."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from ltpipe.losses.base import LTLoss, Setting, register_loss
from ltpipe.losses.spec import settings_of
from ltpipe.losses.weights import kps_margins, kps_mirrored_scales, kps_scales
from ltpipe.utils import LtpipeError


@register_loss("kps")
class KPSLoss(LTLoss):
    """KPS loss (docs/methods.md#kps; FFN paper Eq. 5-8) on raw cosines of a cosine head.

    With s_j = ln(50 n_j / n_min) / ln 50 and s_{k(j)} the scale class j takes from its mirror
    class k(j) (``ltpipe.losses.weights.kps_mirrored_scales``):

    - margins m_j = s_{k(j)} * max_m / max(s): the rarest class gets ``max_m``;
    - logits z_j = s_j cos_j, and for the target z_y = s_y cos_y - m_y;
    - loss CE(scale * z) with ``scale`` = 15 for epochs < ``switch_epoch`` (120), then the
      scale becomes per sample clamp(scale * s_{k(y)}, scale, ``max_scale`` = 50).

    ``mirror: closed_form`` (default, the paper's form): s_{k(j)} = ln(50 n_max / n_j) / ln 50,
    i.e. the paper's m_y = C_m - log n_y normalized to ``max_m``. The paper writes the loss as
    s (r_y cos_y - m_y) with r_y = log n_y + C_r; s_j above is r_j / ln 50 with
    C_r = ln(50 / n_min). Classes with equal counts get equal margins and scales.
    ``mirror: positional`` (the public FFN code, Feature-Fusion-Network.pytorch): classes sorted by
    descending count (ties by class index), position p takes the scale at position C - 1 - p;
    the reference flips the label-ordered array, which is the same when labels are sorted by
    count, as in its CIFAR-LT data. The two agree exactly on an exact exponential profile and
    differ slightly once counts are rounded or tied (up to 0.008 of max_m 0.5 on CIFAR-100 IF 100).
    ``max_m``: 0.2 on CIFAR-10, 0.5 on CIFAR-100, 0.35 on ImageNet-LT (docs/methods.md#kps).
    """

    SETTINGS: ClassVar[dict[str, Setting]] = settings_of("kps")  # ltpipe.losses.spec

    def __init__(self, counts: Any, **settings: Any) -> None:
        super().__init__(counts, **settings)
        if self.max_scale < self.scale:
            raise LtpipeError(
                f"loss 'kps': max_scale = {self.max_scale!r} is below scale = {self.scale!r}; "
                "the late-epoch scale is clamped to [scale, max_scale], so set max_scale >= scale"
            )
        self.register_buffer("class_scales", kps_scales(counts), persistent=False)
        mirrored = kps_mirrored_scales(counts, self.mirror)
        self.register_buffer("mirrored_scales", mirrored, persistent=False)
        self.register_buffer("margins", kps_margins(counts, self.max_m, self.mirror),
                             persistent=False)

    def sample_scale(self, target: Tensor, epoch: int) -> Tensor | float:
        """The outer scale at ``epoch``: ``scale`` before the switch, per-sample [B, 1] after."""
        if epoch < self.switch_epoch:
            return self.scale
        per_sample = (self.scale * self.mirrored_scales[target]).clamp(self.scale, self.max_scale)
        return per_sample[:, None]

    def sample_losses(self, logits: Tensor, target: Tensor, epoch: int) -> Tensor:
        margin = F.one_hot(target, self.num_classes) * self.margins[target][:, None]
        z = self.class_scales * logits - margin
        return F.cross_entropy(self.sample_scale(target, epoch) * z, target, reduction="none")
