"""Model registry (name -> backbone constructor); ``build_model`` and ``model_from_spec``.

A registered constructor takes ``in_channels`` plus its own keyword settings and returns a
``Backbone``; ``build_model`` adds the head and, optionally, the AFA module, and records a ``spec``
that rebuilds the same architecture (``model_from_spec(model.spec)``), e.g. from a checkpoint.
The built-in names and their settings are declared in :mod:`ltpipe.models.catalog` (torch-free,
what the config check reads); their modules are imported here on first use.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any

from ltpipe import plugins
from ltpipe.models import catalog
from ltpipe.models.afa import AFAModule, normalize_afa_config
from ltpipe.models.base import LTModel
from ltpipe.models.heads import HEAD_KINDS, make_head
from ltpipe.utils import LtpipeError

MODELS: dict[str, Callable[..., Any]] = {}
SPEC_KEYS = ("name", "num_classes", "in_channels", "head", "afa", "kwargs")


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a backbone constructor under ``name`` (warns when replacing one)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        arch = catalog.ARCHITECTURES.get(name)
        if arch is not None and fn.__module__ == arch.module:
            takes = catalog.signature_kwargs(fn)
            if takes is None or set(takes) != set(arch.kwargs):
                raise LtpipeError(f"built-in model {name!r}: its constructor takes {takes} but "
                                  f"ltpipe.models.catalog declares {arch.kwargs}; make them "
                                  "agree")
        if name in MODELS and MODELS[name] is not fn:
            warnings.warn(f"model {name!r} is registered again: {fn.__module__}."
                          f"{fn.__qualname__} replaces {MODELS[name].__module__}."
                          f"{MODELS[name].__qualname__}", stacklevel=2)
        MODELS[name] = fn
        return fn

    return deco


def register_builtins() -> None:
    """Import the module of every built-in architecture (``catalog.ARCHITECTURES``), which
    registers its constructor."""
    for module in dict.fromkeys(a.module for a in catalog.ARCHITECTURES.values()):
        importlib.import_module(module)


def model_names() -> list[str]:
    """Registered model names (the built-ins and any registered in this process) and plug-in
    architectures (entry points ``ltpipe.architectures``), sorted."""
    register_builtins()
    return sorted(set(MODELS) | set(plugins.names("architectures")))


def _constructor(name: str) -> Callable[..., Any]:
    """The constructor of ``name``: a registered one, else a plug-in's (imported on first use;
    a plug-in that reuses a registered name is refused by the config check)."""
    if name not in MODELS and name in catalog.ARCHITECTURES:
        importlib.import_module(catalog.ARCHITECTURES[name].module)
    if name in MODELS:
        return MODELS[name]
    if name in plugins.names("architectures"):
        return catalog.plugin_constructor(name)
    raise LtpipeError(f"unknown model {name!r}; registered: {model_names()}")


def _jsonable(value: Any) -> Any:
    """Tuples become lists so that a spec survives a JSON round trip unchanged."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _check_kwargs(name: str, ctor: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    catalog.check_kwargs(name, catalog.signature_kwargs(ctor), kwargs)


def _afa_hw(input_size: Any, strides: list[int]) -> int:
    """H * W at the last stage's input for an input of ``input_size`` (int or [H, W])."""
    sides = [input_size, input_size] if isinstance(input_size, int) else list(input_size)
    if len(sides) != 2 or not all(isinstance(s, int) and s >= 1 for s in sides):
        raise LtpipeError(f"input_size must be an int or [H, W] of positive ints, "
                          f"got {input_size!r}")
    for stride in strides:
        sides = [math.ceil(s / stride) for s in sides]
    return sides[0] * sides[1]


def build_model(name: str, num_classes: int, in_channels: int = 3, head: str = "linear",
                afa: dict | None = None, **kwargs: Any) -> LTModel:
    """Build a registered backbone with a head (and optionally AFA) as an ``LTModel``.

    name: a registered name (``model_names()``); num_classes: C; in_channels: input channels of
    the stem (1 for digits / Fashion-MNIST); head: "linear" or "cosine"; afa: None (no AFA) or a
    dict of AFA settings (``{}`` for the paper's defaults gamma=1.0, alpha=4.0; see
    ``ltpipe.models.afa``); kwargs: the constructor's own settings (``widths``, ``strides`` for
    the CIFAR ResNets; ``zero_init_residual`` for torchvision ones) plus, for every model,
    ``input_size`` (int or [H, W], default 32 for CIFAR ResNets, 224 for torchvision ones): the
    training input size, used only to size the AFA module's HW x HW maps.
    """
    ctor = _constructor(name)
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise LtpipeError(f"num_classes must be a positive int, got {num_classes!r}")
    if not (isinstance(in_channels, int) and in_channels >= 1):
        raise LtpipeError(f"in_channels must be a positive int, got {in_channels!r}")
    if head not in HEAD_KINDS:
        raise LtpipeError(f"unknown head {head!r}: expected one of {list(HEAD_KINDS)}")
    _check_kwargs(name, ctor, kwargs)
    kwargs = {k: _jsonable(v) for k, v in kwargs.items()}
    ctor_kwargs = {k: v for k, v in kwargs.items() if k != "input_size"}
    backbone = ctor(in_channels=in_channels, **ctor_kwargs)
    afa_cfg = None
    afa_module = None
    if afa is not None and not backbone.afa_channels:
        raise LtpipeError(f"model {name!r} takes no AFA module (its last stage does not read a "
                          "convolutional map); set afa: null or use a ResNet")
    if afa is not None:
        afa_cfg = normalize_afa_config(afa)
        input_size = kwargs.get("input_size", backbone.default_input_size)
        hw = _afa_hw(input_size, backbone.strides_before_last)
        afa_module = AFAModule(backbone.afa_channels, hw, **afa_cfg)
    spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels,
            "head": head, "afa": afa_cfg, "kwargs": kwargs}
    return LTModel(backbone, make_head(head, backbone.feature_dim, num_classes), head, spec,
                   afa=afa_module)


def model_from_spec(spec: dict[str, Any]) -> LTModel:
    """Rebuild a model from ``LTModel.spec`` (the inverse of ``build_model``; fresh weights)."""
    if not isinstance(spec, dict) or set(spec) != set(SPEC_KEYS):
        got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise LtpipeError(f"a model spec needs exactly the keys {list(SPEC_KEYS)}, got {got}; "
                          "use the 'spec' attribute of a built model")
    return build_model(spec["name"], spec["num_classes"], spec["in_channels"], spec["head"],
                       spec["afa"], **(spec["kwargs"] or {}))
