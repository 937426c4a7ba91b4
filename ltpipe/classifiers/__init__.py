"""Classifier-stage methods that run on cached stage-one arrays.

What each computes, with its paper: docs/methods.md#classifier-stage-methods.

Each method is one module with ``SETTINGS`` (every setting, declared with ``ltpipe.settings``:
default, check, unit and source), ``NEEDS`` (cached
arrays it reads), ``NUM_BACKBONES`` and ``run(inputs, settings, seed, device)`` returning scores
per evaluated split ({"test": [N, C], "val": [N, C] where present}). ``METHODS`` maps a method
name to its module path; modules (and torch) are imported only when a method is used, so that
reading the registry stays cheap. A module with ``TORCH = False`` (joint, tau_norm, ncm,
logit_adjust: closed forms in numpy) never imports torch, so neither does its job.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ltpipe.settings import defaults, resolve_settings
from ltpipe.utils import LtpipeError

METHODS: dict[str, str] = {
    name: f"ltpipe.classifiers.{name}"
    for name in ("joint", "crt", "lws", "tau_norm", "ncm", "logit_adjust", "ffn", "h2t", "fsa",
                 "bwlm")
}


def get_method(name: str) -> ModuleType:
    """The module of method ``name``."""
    if name not in METHODS:
        raise LtpipeError(f"unknown classifier method {name!r}; expected one of {list(METHODS)}")
    return importlib.import_module(METHODS[name])


def method_settings(name: str) -> dict[str, Any]:
    """The method's declared settings (``ltpipe.settings.Setting`` per key)."""
    return dict(get_method(name).SETTINGS)


def method_defaults(name: str) -> dict[str, Any]:
    """A copy of the method's settings with their defaults."""
    return defaults(get_method(name).SETTINGS)


def method_needs(name: str) -> set[str]:
    """The cached arrays (besides labels) the method reads, e.g. {"pooled"} or {"fmap", "cam"}."""
    return set(get_method(name).NEEDS)


def method_num_backbones(name: str) -> int:
    """How many stage-one backbones (``Features``) the method takes: 2 for FFN, else 1."""
    return int(get_method(name).NUM_BACKBONES)


def merge_settings(name: str, settings: dict | None) -> dict[str, Any]:
    """``settings`` over the method's defaults; an unknown key or a value its declaration
    refuses is an ``LtpipeError`` (the same check runs at DAG build, ``ltpipe.config``)."""
    return resolve_settings(f"method {name!r}", get_method(name).SETTINGS, settings)


def run_method(name: str, inputs: list, settings: dict | None, seed: int,
               device: Any = "cpu") -> dict:
    """Run method ``name`` on ``inputs`` (list of ``Features``) and return scores per split.

    Settings are merged over the method's defaults; an unknown key, a bad value or a wrong number of
    inputs raises ``LtpipeError``. Results are reproducible for a given ``seed``.
    """
    module = get_method(name)
    merged = merge_settings(name, settings)
    if len(inputs) != module.NUM_BACKBONES:
        raise LtpipeError(f"method {name!r} takes {module.NUM_BACKBONES} backbone(s), got "
                          f"{len(inputs)}; fix the method's backbone list in the config")
    for feat in inputs:
        if len(feat.class_counts) != feat.num_classes:
            raise LtpipeError(f"method {name!r}: class_counts has {len(feat.class_counts)} "
                              f"classes but the head has {feat.num_classes}; rebuild the cache")
    if not getattr(module, "TORCH", True):  # closed form in numpy: no torch import (~3 s)
        return module.run(list(inputs), merged, int(seed), str(device))
    import torch

    return module.run(list(inputs), merged, int(seed), torch.device(device))


def method_uses_torch(name: str) -> bool:
    """False for the closed-form methods written in numpy (their jobs never import torch)."""
    return bool(getattr(get_method(name), "TORCH", True))
