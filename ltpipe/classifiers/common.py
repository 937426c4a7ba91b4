"""Pieces shared by the classifier-stage methods: tensors from ``Features``, heads, scoring.

Heads here (``ScaledLinearHead``, ``ScaledCosineHead``; named apart from the stage-one heads of
``ltpipe.models.heads``) carry their own output scale so that ``head(pooled)``
reproduces the cached logits of the stage-one head (logits = logit_scale * head(pooled)), and
new heads are initialized from a seeded ``torch.Generator`` (no global RNG).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltpipe.classifiers.inputs import Features
from ltpipe.classifiers.trainer import LossFn
from ltpipe.utils import LtpipeError


def as_tensor(arr: np.ndarray, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """A numpy array as a tensor of ``dtype`` on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(arr)).to(device=device, dtype=dtype)


def train_tensors(feat: Features, key: str, method: str,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, ...] float32, labels int64 [N]) of the train split on ``device``."""
    x = as_tensor(feat.require("train", key, method), device)
    y = as_tensor(feat.train["labels"], device, torch.long)
    return x, y


class ScaledLinearHead(nn.Module):
    """z = scale * (x W^T + b); ``bias`` may be absent."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone()) if bias is not None else None
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.weight.t()
        if self.bias is not None:
            z = z + self.bias
        return self.scale * z


class ScaledCosineHead(nn.Module):
    """z = scale * <x, w_j / ||w_j||>, with x L2-normalized too unless ``normalize_input`` is off.

    With ``normalize_input=False`` the caller passes inputs that are already combinations of
    unit vectors (FFN's reference fusion): the output is then a weighted sum of cosines.
    """

    def __init__(self, weight: torch.Tensor, scale: float = 1.0, normalize_input: bool = True):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = None
        self.scale = float(scale)
        self.normalize_input = normalize_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        return self.scale * (x @ F.normalize(self.weight, dim=1).t())


def random_weight(num_classes: int, dim: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """U(-1/sqrt(D), 1/sqrt(D)) init (nn.Linear's default range), drawn from ``generator``."""
    bound = 1.0 / dim**0.5
    u = torch.rand(num_classes, dim, generator=generator, device=device)
    return (2 * u - 1) * bound


def new_head(kind: str, num_classes: int, dim: int, generator: torch.Generator,
             device: torch.device, scale: float = 1.0) -> nn.Module:
    """A freshly initialized ``linear`` (with bias) or ``cosine`` head."""
    w = random_weight(num_classes, dim, generator, device)
    if kind == "linear":
        b = (2 * torch.rand(num_classes, generator=generator, device=device) - 1) / dim**0.5
        return ScaledLinearHead(w, b, scale)
    if kind == "cosine":
        return ScaledCosineHead(w, scale)
    raise LtpipeError(f"unknown head kind {kind!r}; expected 'linear' or 'cosine'")


def stage_one_head(feat: Features, device: torch.device) -> nn.Module:
    """A trainable copy of the stage-one head; ``head(pooled)`` equals the cached logits."""
    w = as_tensor(feat.head_weight, device)
    if feat.head_kind == "cosine":
        return ScaledCosineHead(w, feat.logit_scale)
    b = as_tensor(feat.head_bias, device) if feat.head_bias is not None else None
    return ScaledLinearHead(w, b, feat.logit_scale)


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            chunk: int = 8192) -> np.ndarray:
    """Model outputs on ``x`` in chunks, as float32 numpy."""
    if isinstance(model, nn.Module):
        model.eval()
    outs = [model(x[i:i + chunk]).float().cpu() for i in range(0, len(x), chunk)]
    return torch.cat(outs).numpy()


def score_splits(feat: Features, key: str, method: str, device: torch.device,
                 model: Callable[[torch.Tensor], torch.Tensor],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ) -> dict[str, np.ndarray]:
    """{"test": scores, "val": scores?}: ``model`` applied to array ``key`` of each split.

    When ``model`` is a linear or cosine head, its effective weight (rows scaled by the output
    scale) comes back too, as ``"head_weight"`` [C, D], for the weight-norm plots, and without a
    ``transform`` the head itself, as ``"head"`` (:func:`saved_head`: what a job composed on this
    one reads).
    """
    out = {}
    for split in feat.eval_splits():
        x = as_tensor(feat.require(split, key, method), device)
        if transform is not None:
            x = transform(x)
        out[split] = predict(model, x)
    if isinstance(model, (ScaledLinearHead, ScaledCosineHead)):
        w = model.weight.detach().float()
        if isinstance(model, ScaledCosineHead):
            w = F.normalize(w, dim=1)
        out["head_weight"] = (model.scale * w).cpu().numpy()
        if transform is None:
            out["head"] = saved_head(model)
    return out


def saved_head(model: nn.Module):
    """A ``ScaledLinearHead`` or ``ScaledCosineHead`` as an ``ltpipe.classifiers.outputs.Head``
    (numpy) that gives the same scores."""
    from ltpipe.classifiers.outputs import Head

    w = model.weight.detach().float().cpu().numpy()
    if isinstance(model, ScaledCosineHead):
        return Head(w, None, model.scale, normalize_input=model.normalize_input,
                    normalize_weight=True)
    b = None if model.bias is None else model.bias.detach().float().cpu().numpy()
    return Head(w, b, model.scale)


def make_loss(name: str, counts, device: torch.device, **settings) -> LossFn:
    """``ltpipe.losses.build_loss(name, counts, **settings)`` on ``device`` as a trainer loss."""
    from ltpipe.losses import build_loss

    loss = build_loss(name, np.asarray(counts), **settings).to(device)

    def fn(logits: torch.Tensor, target: torch.Tensor, epoch: int) -> torch.Tensor:
        return loss(logits, target, epoch=epoch)

    return fn


class ClassScale(nn.Module):
    """LWS's head: z_j = s_j * logits_j with learned s (init 1)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        super().__init__()
        self.scales = nn.Parameter(torch.ones(num_classes, device=device))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scales
