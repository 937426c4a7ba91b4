"""Softmax losses for stage one and the classifier stage: CE, focal, LDAM, balanced softmax.

CE, focal and LDAM share class re-weighting: ``cb_beta`` (class-balanced weights from epoch 0)
and deferred re-weighting (DRW: class-balanced weights with ``drw_beta`` from ``drw_epoch`` on).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ltpipe.losses.base import LTLoss, Setting, register_loss
from ltpipe.losses.spec import REWEIGHTED_SETTINGS, settings_of
from ltpipe.losses.weights import class_balanced_weights, ldam_margins


class ReweightedLoss(LTLoss):
    """A loss whose per-sample terms are multiplied by a per-class weight w_y.

    Weights at epoch e: DRW weights (class-balanced, ``drw_beta``) if ``drw_epoch`` is set and
    e >= drw_epoch; else class-balanced weights with ``cb_beta`` if set; else none. Weights are
    normalized to sum to C.

    Reduction with weights: ``weighted_mean: true`` (default) divides by the batch's weight sum,
    sum_i w_{y_i} l_i / sum_i w_{y_i}: torch's ``cross_entropy(weight=w)``, which the LDAM-DRW
    reference code (kaidic/LDAM-DRW, ``cifar_train.py``) uses for CE and LDAM under DRW; the
    papers do not state the reduction. ``weighted_mean: false`` takes the plain batch mean of
    w_y * l_i, the form of Cui et al.'s class-balanced loss code; with instance sampling it
    scales the gradient by the batch's mean weight (0.17-0.20 on CIFAR-LT at IF 100).
    """

    SETTINGS: ClassVar[dict[str, Setting]] = REWEIGHTED_SETTINGS  # ltpipe.losses.spec

    def __init__(self, counts: Any, **settings: Any) -> None:
        super().__init__(counts, **settings)
        cb = self.cb_beta
        drw = self.drw_epoch is not None
        self.register_buffer(
            "cb_weights", None if cb is None else class_balanced_weights(counts, cb),
            persistent=False,
        )
        self.register_buffer(
            "drw_weights", class_balanced_weights(counts, self.drw_beta) if drw else None,
            persistent=False,
        )

    def class_weights(self, epoch: int) -> Tensor | None:
        """The per-class weights in force at ``epoch`` (None: unweighted)."""
        if self.drw_epoch is not None and epoch >= self.drw_epoch:
            return self.drw_weights
        return self.cb_weights

    def reduce(self, losses: Tensor, target: Tensor, epoch: int) -> Tensor:
        w = self.class_weights(epoch)
        if w is None:
            return losses.mean()
        wy = w[target]
        if self.weighted_mean:
            return (wy * losses).sum() / wy.sum()
        return (wy * losses).mean()


@register_loss("ce")
class CELoss(ReweightedLoss):
    """Cross-entropy on ``scale * logits``, optionally class-balanced and/or DRW."""

    def sample_losses(self, logits: Tensor, target: Tensor, epoch: int) -> Tensor:
        return F.cross_entropy(self.scale * logits, target, reduction="none")


@register_loss("focal")
class FocalLoss(ReweightedLoss):
    """Softmax focal loss -(1 - p_y) ** gamma * log p_y on ``scale * logits`` (Lin et al.).

    ``gamma`` defaults to 1.0, the value of the focal baseline in the LDAM-DRW CIFAR-LT protocol
    that ltpipe follows (Lin et al. used 2 for detection; Cui et al. swept 0.5-2). gamma = 0 is CE.
    With weights, the weight multiplies the focal term (it does not enter p_y), and the batch
    reduction is the plain mean of w_y * l_i (``weighted_mean: false``): both Cui et al.'s
    class-balanced focal loss and the LDAM-DRW reference's ``FocalLoss`` divide by the batch size.
    """

    SETTINGS: ClassVar[dict[str, Setting]] = settings_of("focal")  # ltpipe.losses.spec

    def sample_losses(self, logits: Tensor, target: Tensor, epoch: int) -> Tensor:
        log_p = F.log_softmax(self.scale * logits, dim=1).gather(1, target[:, None])[:, 0]
        return focal_term(log_p, self.gamma) * -log_p


def focal_term(log_p: Tensor, gamma: float) -> Tensor:
    """(1 - p) ** gamma from log p, exact near p = 1, and 1 (no gradient issue) for gamma = 0."""
    if gamma == 0:
        return torch.ones_like(log_p)
    # clamp away from 0: d/dx x**gamma is infinite at 0 for gamma < 1
    return (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny) ** gamma


@register_loss("ldam")
class LDAMLoss(ReweightedLoss):
    """LDAM (Cao et al., 2019): CE(scale * (z - Delta_y 1_y)), Delta_j prop. to n_j ** -1/4.

    The largest margin is ``max_m`` (0.5); ``scale`` defaults to 30, meant for a cosine head that
    outputs raw cosines. LDAM-DRW = ``drw_epoch`` 160 of 200 with ``drw_beta`` 0.9999
    (docs/methods.md#ldam-drw), reduced as the reference code does (``weighted_mean``, see
    ``ReweightedLoss``).
    """

    SETTINGS: ClassVar[dict[str, Setting]] = settings_of("ldam")  # ltpipe.losses.spec

    def __init__(self, counts: Any, **settings: Any) -> None:
        super().__init__(counts, **settings)
        self.register_buffer("margins", ldam_margins(counts, self.max_m), persistent=False)

    def sample_losses(self, logits: Tensor, target: Tensor, epoch: int) -> Tensor:
        shifted = logits - F.one_hot(target, self.num_classes) * self.margins[target][:, None]
        return F.cross_entropy(self.scale * shifted, target, reduction="none")


@register_loss("balanced_softmax")
class BalancedSoftmaxLoss(LTLoss):
    """Balanced softmax (Ren et al., 2020): CE on scale * z_j + log n_j."""

    def __init__(self, counts: Any, **settings: Any) -> None:
        super().__init__(counts, **settings)
        self.register_buffer("log_counts", self.counts.double().log().float(), persistent=False)

    def sample_losses(self, logits: Tensor, target: Tensor, epoch: int) -> Tensor:
        return balanced_softmax_losses(self.scale * logits, target, self.log_counts)


def balanced_softmax_losses(logits: Tensor, target: Tensor, log_counts: Tensor) -> Tensor:
    """Per-sample -log(n_y e^{z_y} / sum_i n_i e^{z_i})."""
    return F.cross_entropy(logits + log_counts.to(logits.dtype), target, reduction="none")
