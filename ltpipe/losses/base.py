"""Loss base class, registry, settings validation and mixup, shared by every ltpipe loss.

A loss is built from the train split's per-class counts plus keyword settings; each class
declares its settings in ``SETTINGS`` (``ltpipe.settings``, the one dialect of every setting),
so configs are validated up front and bad keys fail at build time with a message naming them.
A built-in loss's ``SETTINGS`` is its declaration in :mod:`ltpipe.losses.spec` (torch-free, read
by the config check at DAG build); :func:`register_loss` refuses a built-in class that declares
other settings.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ltpipe.losses.spec import (
    BASE_SETTINGS,
    LOSS_SPECS,
    beta,
    epoch,
    fraction,
    nonnegative,
    positive,
    unknown_loss,
)
from ltpipe.losses.weights import as_counts
from ltpipe.settings import Setting, choice, flag, is_real, resolve_settings
from ltpipe.utils import LtpipeError

__all__ = ["LOSSES", "LTLoss", "Setting", "beta", "build_loss", "choice", "epoch", "flag",
           "fraction", "loss_settings", "mixup_loss", "nonnegative", "positive", "register_loss"]


class LTLoss(nn.Module):
    """Base class of all ltpipe losses.

    ``forward(logits, target, epoch)`` returns the scalar mean loss over the batch. ``epoch``
    (0-based) matters only to schedule-dependent losses (DRW, the KPS scale switch).
    Per-class tensors are registered as (non-persistent) buffers, so ``.to(device)`` moves them.
    Subclasses implement ``sample_losses`` and may override ``reduce``.
    """

    SETTINGS: ClassVar[dict[str, Setting]] = BASE_SETTINGS  # ltpipe.losses.spec
    registry_name: ClassVar[str] = ""

    def __init__(self, counts: Any, **settings: Any) -> None:
        super().__init__()
        name = self.registry_name or type(self).__name__
        self.settings = resolve_settings(f"loss {name!r}", self.SETTINGS, settings)
        n = as_counts(counts)
        self.num_classes = int(n.size)
        self.register_buffer("counts", torch.tensor(n, dtype=torch.float32), persistent=False)

    def __getattr__(self, key: str) -> Any:
        settings = self.__dict__.get("settings")
        if settings is not None and key in settings:
            return settings[key]
        return super().__getattr__(key)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings.items())

    def forward(self, logits: Tensor, target: Tensor, epoch: int = 0) -> Tensor:
        """Scalar mean loss of ``logits`` [B, C] against integer ``target`` [B] at ``epoch``."""
        self.check_inputs(logits, target)
        return self.reduce(self.sample_losses(logits, target, epoch), target, epoch)

    def sample_losses(self, logits: Tensor, target: Tensor, epoch: int) -> Tensor:
        """Per-sample losses [B] before any class weighting."""
        raise NotImplementedError

    def reduce(self, losses: Tensor, target: Tensor, epoch: int) -> Tensor:
        """Batch reduction; the plain mean unless a subclass weights classes."""
        return losses.mean()

    def check_inputs(self, logits: Tensor, target: Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise LtpipeError(
                f"{type(self).__name__} expects logits of shape [B, {self.num_classes}] (one "
                f"column per class in counts), got {tuple(logits.shape)}"
            )
        if target.shape != logits.shape[:1] or target.dtype.is_floating_point:
            raise LtpipeError(
                f"{type(self).__name__} expects integer targets of shape [{logits.shape[0]}], "
                f"got {target.dtype} of shape {tuple(target.shape)}"
            )


LOSSES: dict[str, type[LTLoss]] = {}


def register_loss(name: str) -> Callable[[type[LTLoss]], type[LTLoss]]:
    """Class decorator adding a loss to ``LOSSES`` under ``name`` (warns when replacing one)."""

    def deco(cls: type[LTLoss]) -> type[LTLoss]:
        spec = LOSS_SPECS.get(name)
        if spec is not None and cls.__module__ == spec.module and dict(cls.SETTINGS) != dict(
                spec.settings):
            raise LtpipeError(f"built-in loss {name!r}: {cls.__qualname__}.SETTINGS differs from "
                              "its declaration in ltpipe.losses.spec.LOSS_SPECS; declare the "
                              "settings there and read them with settings_of")
        if name in LOSSES:
            warnings.warn(
                f"loss {name!r} re-registered: {LOSSES[name].__qualname__} replaced by "
                f"{cls.__qualname__}",
                stacklevel=2,
            )
        cls.registry_name = name
        LOSSES[name] = cls
        return cls

    return deco


def register_builtins() -> None:
    """Import the module of every built-in loss (``LOSS_SPECS``), which registers its class."""
    for module in dict.fromkeys(spec.module for spec in LOSS_SPECS.values()):
        importlib.import_module(module)


def _lookup(name: str) -> type[LTLoss]:
    if name not in LOSSES:
        register_builtins()
    try:
        return LOSSES[name]
    except KeyError:
        raise unknown_loss(name, list(LOSSES)) from None


def build_loss(name: str, counts: Any, **settings: Any) -> LTLoss:
    """Build the registered loss ``name`` for per-class training ``counts`` with ``settings``."""
    return _lookup(name)(counts, **settings)


def loss_settings(name: str) -> dict[str, Any]:
    """The default value of every setting of loss ``name`` (a fresh dict)."""
    return {key: s.default for key, s in _lookup(name).SETTINGS.items()}


def mixup_loss(
    loss: LTLoss, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float, epoch: int = 0
) -> Tensor:
    """Mixup objective lam * L(logits, y_a) + (1 - lam) * L(logits, y_b)."""
    if not (is_real(lam) and 0 <= lam <= 1):
        raise LtpipeError(f"mixup lam must be a number in [0, 1], got {lam!r}")
    return lam * loss(logits, y_a, epoch) + (1 - lam) * loss(logits, y_b, epoch)
