"""Attentive Feature Augmentation (AFA) and the Lay-Back Learning Schedule (LBLS) loss.

Wang et al., "Attentive Feature Augmentation for Long-Tailed Visual Recognition" (IEEE TCSVT
2022; docs/methods.md#afa-and-lbls). The module sits
between the last two stages of a backbone. On the map X [B, D, H, W], flattened to [B, D, HW]:

1. Q = X W_Q, K = X W_K, V = X W_V, each a learned HW x HW linear map along HW (Algorithm 1
   writes them without a bias; so do we). The module therefore depends on H*W at that point:
   ``build_model`` computes it from the ``input_size`` kwarg (see ``ltpipe.models.registry``).
2. X_att = softmax(Q K^T / sqrt(HW)) V: attention across channels; the softmax runs over the
   last axis of the [B, D, D] score matrix (row d of X_att mixes all channels of V, weighted by
   the correlation of Q's channel d with every channel of K, as the paper describes).
3. X~_att = SE(X_att): a standard SE block (Hu et al.): global average pool over HW, FC D -> D/r,
   ReLU, FC D/r -> D, sigmoid, channel-wise rescale of X_att; r = ``se_reduction`` (16, as in the
   SE paper; the AFA paper does not give r). Hidden width max(1, D // r).
4. M = softmax(X~_att + X_att). The paper does not name the axis. Default ``mask_softmax =
   "channel"``: softmax over the D channels at each position, since M is said to capture "the
   specific combination of feature patterns" and a pattern is a channel. ``"spatial"`` (over HW
   per channel) is the option.
5. X_class = M * V, X_var = V - X_class (Eq. 5 subtracts from V, not from X), X_enh = X + X_class.
   X_enh goes on through the network in training and at inference.
6. Generation (training only): for each class c in the batch with count f_c,
   R_c = f_c^-alpha / sum_c' f_c'^-alpha and G_c = ceil(gamma * R_c * B) new maps
   X_class[i] + X_var[j], i drawn uniformly from the samples of class c, j uniformly from the
   other B - 1 samples (i != j), labelled c. A batch of one sample generates nothing.

LBLS (Eq. 12): L = L_ori for epoch < t, then L_ori + lambda * L_all, where L_ori is the
classification loss of the original samples through the enhanced path (Table I: "the
classification loss of enhanced features") and L_all the loss over [X_enh; X_gen]. The paper uses
cross-entropy for both; ``lbls_loss`` takes any ``base_loss(logits, targets)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ltpipe.utils import LtpipeError

AFA_DEFAULTS: dict[str, Any] = {"gamma": 1.0, "alpha": 4.0, "se_reduction": 16,
                                "mask_softmax": "channel"}
MASK_AXES = {"channel": 1, "spatial": 2}


def normalize_afa_config(afa: dict[str, Any]) -> dict[str, Any]:
    """Fill AFA defaults and validate; raise LtpipeError naming any bad key or value."""
    if not isinstance(afa, dict):
        raise LtpipeError(f"afa must be a dict like {AFA_DEFAULTS} or None, got {afa!r}")
    unknown = sorted(set(afa) - set(AFA_DEFAULTS))
    if unknown:
        raise LtpipeError(f"unknown AFA setting(s) {unknown}: expected keys among "
                          f"{sorted(AFA_DEFAULTS)}; remove or rename them")
    cfg = {**AFA_DEFAULTS, **afa}
    if not (isinstance(cfg["gamma"], (int, float)) and cfg["gamma"] >= 0):
        raise LtpipeError(f"AFA gamma must be a number >= 0 (paper: 1.0), got {cfg['gamma']!r}")
    if not isinstance(cfg["alpha"], (int, float)):
        raise LtpipeError(f"AFA alpha must be a number (paper: 4), got {cfg['alpha']!r}")
    if not (isinstance(cfg["se_reduction"], int) and cfg["se_reduction"] >= 1):
        raise LtpipeError(f"AFA se_reduction must be an int >= 1, got {cfg['se_reduction']!r}")
    if cfg["mask_softmax"] not in MASK_AXES:
        raise LtpipeError(f"AFA mask_softmax must be one of {list(MASK_AXES)}, "
                          f"got {cfg['mask_softmax']!r}")
    cfg["gamma"], cfg["alpha"] = float(cfg["gamma"]), float(cfg["alpha"])
    return cfg


def generation_counts(y: torch.Tensor, gamma: float, alpha: float) -> tuple[list[int], list[int]]:
    """Classes present in ``y`` (ascending) and G_c = ceil(gamma * R_c * B) for each.

    A guard of 1e-9 keeps exact integers (e.g. gamma * R_c * B = 2.0 in real arithmetic) from
    being pushed up by floating-point error.
    """
    classes, counts = torch.unique(y.detach().cpu(), sorted=True, return_counts=True)
    weights = counts.double() ** (-alpha)
    ratios = weights / weights.sum()
    b = int(y.numel())
    return classes.tolist(), [math.ceil(gamma * r * b - 1e-9) for r in ratios.tolist()]


def sample_pairs(y: torch.Tensor, gamma: float, alpha: float,
                 generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) and labels y_gen of the generated samples, on ``y``'s device.

    For each class c: G_c indices i uniform over the samples of class c, and j uniform over the
    other B - 1 samples (so j != i). Drawn with ``generator`` on its own device (CPU if None).
    """
    b = int(y.numel())
    dev = generator.device if generator is not None else torch.device("cpu")
    y_host = y.detach().to(dev)
    if b < 2:
        empty = torch.zeros(0, dtype=torch.long, device=y.device)
        return empty, empty, y[:0]
    classes, sizes = generation_counts(y, gamma, alpha)
    idx_i, labels = [], []
    for c, g in zip(classes, sizes, strict=True):
        members = torch.nonzero(y_host == c).flatten()
        pick = torch.randint(members.numel(), (g,), generator=generator, device=dev)
        idx_i.append(members[pick])
        labels.append(torch.full((g,), c, dtype=y.dtype, device=dev))
    i = torch.cat(idx_i)
    j = torch.randint(b - 1, (i.numel(),), generator=generator, device=dev)
    j = j + (j >= i).long()
    return i.to(y.device), j.to(y.device), torch.cat(labels).to(y.device)


class SEBlock(nn.Module):
    """Squeeze-and-excitation on [B, D, HW]: x * sigmoid(FC(ReLU(FC(mean_HW x))))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(2)))))
        return x * gate.unsqueeze(2)


class AFAModule(nn.Module):
    """The AFA module for maps with ``channels`` channels and ``hw`` = H * W positions."""

    def __init__(self, channels: int, hw: int, gamma: float = 1.0, alpha: float = 4.0,
                 se_reduction: int = 16, mask_softmax: str = "channel") -> None:
        super().__init__()
        if mask_softmax not in MASK_AXES:
            raise LtpipeError(f"mask_softmax must be one of {list(MASK_AXES)}, "
                              f"got {mask_softmax!r}")
        self.channels, self.hw = int(channels), int(hw)
        self.gamma, self.alpha = float(gamma), float(alpha)
        self.mask_dim = MASK_AXES[mask_softmax]
        self.q = nn.Linear(self.hw, self.hw, bias=False)
        self.k = nn.Linear(self.hw, self.hw, bias=False)
        self.v = nn.Linear(self.hw, self.hw, bias=False)
        self.se = SEBlock(self.channels, se_reduction)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hw={self.hw}, gamma={self.gamma}, "
                f"alpha={self.alpha}, mask_dim={self.mask_dim}")

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] * x.shape[3] != self.hw:
            raise LtpipeError(
                f"AFA module was built for maps [B, {self.channels}, H, W] with H*W = {self.hw}, "
                f"got {tuple(x.shape)}; build the model with input_size=<your input side> so "
                "the module matches the map at the last stage's input")

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(X_enh, X_class, X_var), each [B, D, H, W], from the map X [B, D, H, W]."""
        self._check(x)
        shape = x.shape
        flat = x.flatten(2)
        q, k, v = self.q(flat), self.k(flat), self.v(flat)
        scores = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.hw), dim=-1)
        x_att = scores @ v
        mask = torch.softmax(self.se(x_att) + x_att, dim=self.mask_dim)
        x_class = mask * v
        x_var = v - x_class
        x_class, x_var = x_class.reshape(shape), x_var.reshape(shape)
        return x + x_class, x_class, x_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X_enh = X + X_class (no generation: this is the inference path)."""
        return self.decompose(x)[0]

    def generate(self, x_class: torch.Tensor, x_var: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated maps X_class[i] + X_var[j] [G, D, H, W] and their labels [G].

        ``index_select``, not ``x[i]``: i and j repeat samples, and the backward of advanced
        indexing (``index_put_`` with accumulation) adds the repeats in a different order from
        pass to pass on a multi-threaded CPU (tested); ``index_select``'s backward does not.
        That alone does not make a whole AFA training bit-reproducible on such a CPU; torch's
        deterministic mode does (the recipe key ``deterministic``, on for CPU training by
        default; see docs/stage-one.md#bit-reproducible-reruns)."""
        i, j, y_gen = sample_pairs(y, self.gamma, self.alpha, generator)
        i, j = i.to(x_class.device), j.to(x_class.device)
        return x_class.index_select(0, i) + x_var.index_select(0, j), y_gen


def lbls_loss(out: dict[str, torch.Tensor], y: torch.Tensor, epoch: int,
              base_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              t: int, lam: float) -> torch.Tensor:
    """Lay-Back Learning Schedule loss (Eq. 12) on the output of ``afa_train_forward``.

    L_ori = base_loss(out["logits"], y): the original samples through the enhanced path
    (X_enh = X + X_class). For ``epoch < t`` (0-based epochs) the loss is L_ori; from epoch t on
    it is L_ori + lam * L_all with L_all = base_loss(out["logits_all"], out["labels_all"]), the
    loss over enhanced plus generated samples. Paper defaults: t = 30 of 90 epochs, lam = 2.
    From epoch t on, ``out`` must come from ``afa_train_forward(..., generate=True)``.
    """
    loss_ori = base_loss(out["logits"], y)
    if epoch < t:
        return loss_ori
    if "logits_all" not in out or "labels_all" not in out:
        raise LtpipeError("lbls_loss from epoch t on needs 'logits_all' and 'labels_all' "
                          "(the output of LTModel.afa_train_forward); got keys "
                          f"{sorted(out)}")
    return loss_ori + lam * base_loss(out["logits_all"], out["labels_all"])
