"""The uniform model contract every registered backbone satisfies (``LTModel``).

A backbone is a stem followed by a list of stages; ``LTModel`` adds global average pooling and a
head, and optionally an AFA module between the last two stages::

    x -> stem -> stages[0] -> ... -> stages[-2] -> [AFA: X_enh] -> stages[-1] = F
      -> F.mean((2, 3)) = f -> head(f) = z

Stage-two methods only need F (``forward_features``), f and z (``forward_all``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ltpipe.utils import LtpipeError


@dataclass
class Backbone:
    """What a registered constructor returns.

    stem: the layers before the first stage; stages: the residual stages, in order (at least
    two); feature_dim: channels D of the last stage's output; afa_channels: channels at the
    input of the last stage (where AFA sits); strides_before_last: the spatial stride of every
    layer before the last stage (each layer maps a side n to ceil(n / s)), used to size AFA;
    default_input_size: the input side the family is usually trained at. file_keys: for a
    backbone wrapped from another library's model (``tv_zoo``), ltpipe key -> that model's key
    for every backbone tensor (how ``init_weights`` reads its weights files);
    file_keys_ignored: that model's keys a weights file may hold but the backbone does not use
    (its classifier). afa_channels 0: no AFA module on this backbone.
    """

    stem: nn.Module
    stages: list[nn.Module]
    feature_dim: int
    afa_channels: int
    strides_before_last: list[int] = field(default_factory=list)
    default_input_size: int = 32
    file_keys: dict[str, str] | None = None
    file_keys_ignored: tuple[str, ...] = ()


class LTModel(nn.Module):
    """Backbone + global average pooling + head, with the contract the pipeline relies on.

    Attributes: ``feature_dim`` (D), ``head`` (LinearHead or CosineHead, ``.weight`` [C, D]),
    ``head_kind`` ("linear" | "cosine"), ``num_classes`` (C), ``afa`` (AFAModule or None) and
    ``spec`` (the arguments of ``build_model`` that rebuild this model; see ``model_from_spec``).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, head_kind: str,
                 spec: dict[str, Any], afa: nn.Module | None = None) -> None:
        super().__init__()
        if len(backbone.stages) < 2:
            raise LtpipeError(f"a backbone needs at least 2 stages, got {len(backbone.stages)}")
        self.stem = backbone.stem
        self.stages = nn.ModuleList(backbone.stages)
        self.afa = afa
        self.head = head
        self.head_kind = head_kind
        self.feature_dim = int(backbone.feature_dim)
        self.num_classes = int(head.weight.shape[0])
        self.spec = spec
        self.file_keys = backbone.file_keys  # see Backbone (plain attributes, not state)
        self.file_keys_ignored = backbone.file_keys_ignored

    def _before_last(self, x: torch.Tensor) -> torch.Tensor:
        """The map at the input of the last stage, before AFA."""
        h = self.stem(x)
        for stage in self.stages[:-1]:
            h = stage(h)
        return h

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map F [B, D, H, W] (the last map before global average pooling).

        With AFA, the enhanced map X_enh = X + X_class goes on through the last stage (in train
        and eval mode alike); samples are generated only in ``afa_train_forward``.
        """
        h = self._before_last(x)
        if self.afa is not None:
            h = self.afa(h)
        return self.stages[-1](h)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"fmap": F [B, D, H, W], "pooled": F.mean((2, 3)) [B, D], "logits": head(f) [B, C]}."""
        fmap = self.forward_features(x)
        pooled = fmap.mean((2, 3))
        return {"fmap": fmap, "pooled": pooled, "logits": self.head(pooled)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits z [B, C]."""
        return self.head(self.forward_features(x).mean((2, 3)))

    def afa_train_forward(self, x: torch.Tensor, y: torch.Tensor,
                          generator: torch.Generator | None = None,
                          generate: bool = True) -> dict[str, torch.Tensor]:
        """Training pass of an AFA model: enhanced samples plus generated ones.

        One pass of the last stage and the head over the concatenation [X_enh; X_gen] (the
        paper's Fig. 1), so the last stage's BatchNorm sees B + G samples. Returns
        ``{"logits": [B, C] (the X_enh rows), "logits_all": [B + G, C], "labels_all": [B + G],
        "pooled": [B, D] (X_enh rows), "num_generated": G (0-d long tensor)}``.
        ``generate=False`` gives G = 0 (LBLS before epoch t trains on original samples only:
        pass ``generate=(epoch >= t)``); so does eval mode (no generation at inference).
        ``generator`` draws the (i, j) pairs; it may live on any device. See
        ``ltpipe.models.afa`` for the method and ``lbls_loss`` for the loss.
        """
        if self.afa is None:
            raise LtpipeError("afa_train_forward needs a model built with afa={...}; this one "
                              f"({self.spec.get('name')!r}) has none")
        h = self._before_last(x)
        x_enh, x_class, x_var = self.afa.decompose(h)
        labels_all = y
        if generate and self.training:
            x_gen, y_gen = self.afa.generate(x_class, x_var, y, generator)
            x_enh = torch.cat([x_enh, x_gen.to(x_enh.dtype)], 0)
            labels_all = torch.cat([y, y_gen.to(y.device, y.dtype)], 0)
        pooled_all = self.stages[-1](x_enh).mean((2, 3))
        logits_all = self.head(pooled_all)
        b = x.shape[0]
        return {"logits": logits_all[:b], "logits_all": logits_all, "labels_all": labels_all,
                "pooled": pooled_all[:b],
                "num_generated": torch.tensor(labels_all.shape[0] - b)}
