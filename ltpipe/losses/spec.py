"""Every built-in loss by name: the module that defines it and its declared settings (no torch).

The config check (``ltpipe.workflow.config``) runs in the Snakemake process while it builds the
DAG, so it reads the loss names and their settings from here and never imports torch; the loss
classes (``ltpipe.losses.standard``, ``kps``, ``bfs``) take their ``SETTINGS`` from these
declarations, and ``ltpipe.losses.base.register_loss`` refuses a built-in whose class declares
other settings. Adding a built-in loss: its class, plus its entry in ``LOSS_SPECS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ltpipe.settings import Setting, choice, flag, number
from ltpipe.utils import LtpipeError


def positive(default: float) -> Setting:
    return number(default, 0, lo_open=True)


def nonnegative(default: float) -> Setting:
    return number(default, 0)


def fraction(default: float) -> Setting:
    return number(default, 0, 1)


def beta(default: float | None, optional: bool = False) -> Setting:
    return number(default, 0, 1, hi_open=True, optional=optional)


def epoch(default: int | None, optional: bool = False) -> Setting:
    return number(default, 0, integer=True, optional=optional)


KPS_MIRRORS = ("closed_form", "positional")

#: the settings of every loss (``LTLoss``): the logits' scale
BASE_SETTINGS: dict[str, Setting] = {"scale": positive(1.0)}
#: CE, focal and LDAM: class-balanced weights from epoch 0 and deferred re-weighting (DRW)
REWEIGHTED_SETTINGS: dict[str, Setting] = {
    **BASE_SETTINGS,
    "cb_beta": beta(None, optional=True),
    "drw_epoch": epoch(None, optional=True),
    "drw_beta": beta(0.9999),
    "weighted_mean": flag(True),
}


@dataclass(frozen=True)
class LossSpec:
    """module: the module whose import registers the loss class; settings: its declarations."""

    module: str
    settings: Mapping[str, Setting]

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


LOSS_SPECS: dict[str, LossSpec] = {
    "ce": LossSpec("ltpipe.losses.standard", REWEIGHTED_SETTINGS),
    "focal": LossSpec("ltpipe.losses.standard", {**REWEIGHTED_SETTINGS,
                                                 "gamma": nonnegative(1.0),
                                                 "weighted_mean": flag(False)}),
    "ldam": LossSpec("ltpipe.losses.standard", {**REWEIGHTED_SETTINGS, "scale": positive(30.0),
                                                "max_m": positive(0.5)}),
    "balanced_softmax": LossSpec("ltpipe.losses.standard", BASE_SETTINGS),
    "kps": LossSpec("ltpipe.losses.kps", {"scale": positive(15.0), "max_m": positive(0.5),
                                          "switch_epoch": epoch(120),
                                          "max_scale": positive(50.0),
                                          "mirror": choice("closed_form", KPS_MIRRORS)}),
    "bfs": LossSpec("ltpipe.losses.bfs", {**BASE_SETTINGS, "alpha": fraction(0.1),
                                          "beta": beta(0.9999), "gamma": nonnegative(2.0),
                                          "cb_normalize": flag(True)}),
}


def loss_names() -> list[str]:
    """The built-in losses' names, sorted."""
    return sorted(LOSS_SPECS)


def loss_spec(name: str) -> LossSpec:
    """The declaration of built-in loss ``name``; an unknown name is an ``LtpipeError``."""
    try:
        return LOSS_SPECS[name]
    except KeyError:
        raise unknown_loss(name, loss_names()) from None


def unknown_loss(name: str, known: list[str]) -> LtpipeError:
    return LtpipeError(f"unknown loss {name!r}; known losses: {', '.join(sorted(known))}. "
                       "Fix the loss name in the config")


def settings_of(name: str) -> dict[str, Setting]:
    """The declared settings of built-in loss ``name`` (what its class's ``SETTINGS`` is)."""
    return dict(loss_spec(name).settings)


def default_settings(name: str) -> dict[str, Any]:
    """The default value of every setting of built-in loss ``name`` (a fresh dict)."""
    return {key: s.default for key, s in loss_spec(name).settings.items()}
