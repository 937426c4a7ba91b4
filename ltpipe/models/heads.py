"""Classifier heads of the model contract: a plain linear head and a cosine ("normed") head.

Both expose ``.weight`` of shape [C, D] and ``.bias`` ([C] for linear, ``None`` for cosine), so
stage-two methods (tau-norm, LWS, FSA's CAMs, ...) can read the classifier the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltpipe.utils import LtpipeError

HEAD_KINDS = ("linear", "cosine")


class LinearHead(nn.Linear):
    """z = W f + b with W [C, D] and b [C]; exactly ``nn.Linear(D, C)``."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__(feature_dim, num_classes, bias=True)


class CosineHead(nn.Module):
    """Raw cosines cos(theta_j) = <f / |f|, w_j / |w_j|>, in [-1, 1]; no bias, no scale.

    The scale s (e.g. 30 for LDAM, per-class for KPS) belongs to the loss, not to the head.
    """

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = feature_dim
        self.out_features = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initial directions as ``nn.Linear`` (only the directions matter here)."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).t()
        return cos.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def make_head(kind: str, feature_dim: int, num_classes: int) -> nn.Module:
    """Build a head by name: ``"linear"`` or ``"cosine"``."""
    if kind == "linear":
        return LinearHead(feature_dim, num_classes)
    if kind == "cosine":
        return CosineHead(feature_dim, num_classes)
    raise LtpipeError(f"unknown head {kind!r}: expected one of {list(HEAD_KINDS)}; fix the "
                      "model's 'head' setting")
