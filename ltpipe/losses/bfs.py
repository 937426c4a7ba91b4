"""BFS (balanced focal softmax) loss of BWLM's classifier stage."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from ltpipe.losses.base import LTLoss, Setting, register_loss
from ltpipe.losses.spec import settings_of
from ltpipe.losses.standard import balanced_softmax_losses, focal_term
from ltpipe.losses.weights import class_balanced_weights


@register_loss("bfs")
class BFSLoss(LTLoss):
    """L = alpha * w_CB(y) * FL(z, y) + (1 - alpha) * BS(z, y) (BWLM paper Eq. 11-13).

    FL is the sigmoid focal loss summed over classes, sum_j (1 - p_j^t) ** gamma * (-log p_j^t),
    with p_j^t = sigmoid(z_j^t) and the target-signed logit z_j^t = z_j if j == y else -z_j;
    BS is the balanced softmax loss -log(n_y e^{z_y} / sum_i n_i e^{z_i}); z = scale * logits.
    Defaults alpha 0.1, beta 0.9999, gamma 2.

    w_CB(y) = (1 - beta) / (1 - beta ** n_y) is NORMALIZED to sum to C by default: the paper
    prints the raw factor, but names Cui et al.'s class-balanced loss as its source, and that
    loss (docs/methods.md#stage-one-losses-and-recipes) normalizes the weights to sum to C to
    keep the loss scale.
    Raw weights are ~1/n_y at beta = 0.9999 (1e-3..1e-1 for ImageNet-LT counts), which would
    make alpha nearly irrelevant, unlike the paper's alpha ablation. ``cb_normalize: false``
    gives the literal raw factor. The weight decay term lambda ||W||^2 belongs to the trainer.
    """

    SETTINGS: ClassVar[dict[str, Setting]] = settings_of("bfs")  # ltpipe.losses.spec

    def __init__(self, counts: Any, **settings: Any) -> None:
        super().__init__(counts, **settings)
        weights = class_balanced_weights(counts, self.beta, normalize=self.cb_normalize)
        self.register_buffer("cb_weights", weights, persistent=False)
        self.register_buffer("log_counts", self.counts.double().log().float(), persistent=False)

    def sample_losses(self, logits: Tensor, target: Tensor, epoch: int) -> Tensor:
        z = self.scale * logits
        sign = 2.0 * F.one_hot(target, self.num_classes).to(z.dtype) - 1.0
        log_pt = F.logsigmoid(sign * z)
        focal = (focal_term(log_pt, self.gamma) * -log_pt).sum(dim=1)
        bs = balanced_softmax_losses(z, target, self.log_counts)
        return self.alpha * self.cb_weights[target] * focal + (1 - self.alpha) * bs
