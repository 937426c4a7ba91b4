"""Classifier-stage methods that run on cached stage-one arrays.

What each computes, with its paper: docs/methods.md#classifier-stage-methods.

Each method is one module holding ``SPEC`` (a :class:`ltpipe.classifiers.spec.MethodSpec`: the
cached arrays it needs, its number of backbones, whether it uses torch and a GPU, every
setting) and ``run(inputs, settings, seed, device)`` returning scores per evaluated split
({"test": [N, C], "val": [N, C] where present}). ``METHODS`` maps a built-in method's name to
its module; plug-in methods come from the ``ltpipe.methods`` entry points
(:mod:`ltpipe.plugins`). Every fact is read from the spec; method modules import torch inside
their functions only, so reading the registry and the specs never imports torch (DAG
building computes memory requests from them). A method with ``torch=False`` (joint,
tau_norm, ncm, logit_adjust: closed forms in numpy) never imports torch, so neither does its
job. Adding a built-in method: its module, plus its name in ``METHODS``.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

from ltpipe import plugins
from ltpipe.classifiers.spec import MethodSpec, check_method
from ltpipe.settings import defaults, resolve_settings
from ltpipe.utils import LtpipeError

METHODS: dict[str, str] = {
    name: f"ltpipe.classifiers.{name}"
    for name in ("joint", "crt", "lws", "tau_norm", "ncm", "logit_adjust", "ffn", "h2t", "fsa",
                 "bwlm", "ensemble")
}


def method_names() -> list[str]:
    """Every usable method: the built-ins, then the installed plug-ins (a plug-in that reuses a
    built-in's name is not one of them; the config check refuses it)."""
    return list(METHODS) + [n for n in plugins.names("methods") if n not in METHODS]


def plugin_problems() -> list[str]:
    """Plug-in methods whose names clash (with a built-in or each other)."""
    return plugins.clash_problems("methods", METHODS)


@functools.cache
def _lookup(name: str) -> tuple[ModuleType, MethodSpec]:
    if name in METHODS:
        module = importlib.import_module(METHODS[name])
        where = METHODS[name]
    elif name in plugins.names("methods"):
        module, where = plugins.load("methods", name)
    else:
        raise LtpipeError(f"unknown classifier method {name!r}; expected one of "
                          f"{method_names()}")
    return module, check_method(name, module, where)


def get_method(name: str) -> ModuleType:
    """The module of method ``name`` (checked against the method contract)."""
    return _lookup(name)[0]


def method_spec(name: str) -> MethodSpec:
    """The facts method ``name`` declares (no torch import)."""
    return _lookup(name)[1]


def method_settings(name: str) -> dict[str, Any]:
    """The method's declared settings (``ltpipe.settings.Setting`` per key)."""
    return dict(method_spec(name).settings)


def method_defaults(name: str) -> dict[str, Any]:
    """A copy of the method's settings with their defaults."""
    return defaults(method_settings(name))


def method_needs(name: str) -> set[str]:
    """The cached arrays (besides labels) the method reads, e.g. {"pooled"} or {"fmap", "cam"}."""
    return set(method_spec(name).needs)


def merge_settings(name: str, settings: dict | None) -> dict[str, Any]:
    """``settings`` over the method's defaults; an unknown key or a value its declaration
    refuses is an ``LtpipeError`` (the same check runs at DAG build, ``ltpipe.workflow.config``)."""
    return resolve_settings(f"method {name!r}", method_settings(name), settings)


def run_method(name: str, inputs: list, settings: dict | None, seed: int,
               device: Any = "cpu") -> dict:
    """Run method ``name`` on ``inputs`` (list of ``Features``) and return scores per split.

    Settings are merged over the method's defaults; an unknown key, a bad value or a wrong number of
    inputs raises ``LtpipeError``. Results are reproducible for a given ``seed``.
    """
    module, spec = _lookup(name)
    merged = merge_settings(name, settings)
    if not spec.takes(len(inputs)):
        raise LtpipeError(f"method {name!r} takes {spec.inputs_text} backbone(s), got "
                          f"{len(inputs)}; fix the method's backbone list in the config")
    for feat in inputs:
        if len(feat.class_counts) != feat.num_classes:
            raise LtpipeError(f"method {name!r}: class_counts has {len(feat.class_counts)} "
                              f"classes but the head has {feat.num_classes}; rebuild the cache")
    if not spec.torch:  # closed form in numpy: no torch import (~3 s)
        return module.run(list(inputs), merged, int(seed), str(device))
    import torch

    return module.run(list(inputs), merged, int(seed), torch.device(device))


def method_uses_torch(name: str) -> bool:
    """False for the closed-form methods written in numpy (their jobs never import torch)."""
    return method_spec(name).torch
