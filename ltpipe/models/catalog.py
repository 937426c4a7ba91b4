"""Every built-in architecture by name: the module that registers it and the keyword settings
(``architecture_kwargs``) its constructor takes (no torch import).

The config check (``ltpipe.workflow.config``) runs in the Snakemake process while it builds the
DAG, so it reads architecture names and settings from here and never imports torch. The
constructors (``ltpipe.models.cifar_resnet``, ``tv_resnet``, ``tv_zoo``) are registered with
``ltpipe.models.registry.register_model``, which refuses a built-in whose signature disagrees
with its entry here; ``tv_zoo`` builds its constructors' signatures from ``FAMILY_KWARGS``.
A plug-in architecture (entry points ``ltpipe.architectures``) has no declaration: checking its
settings loads it (imports its module, usually torch too), only when a config names it.
Adding a built-in architecture: its constructor, plus its entry in ``ARCHITECTURES``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ltpipe import plugins
from ltpipe.utils import LtpipeError

#: torchvision family -> the builder names registered under that family (``ltpipe.models.tv_zoo``)
ZOO: dict[str, tuple[str, ...]] = {
    "convnext": ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
    "vit": ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"),
    "swin": ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"),
    "efficientnet": tuple(f"efficientnet_b{i}" for i in range(8))
    + ("efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"),
    "regnet": tuple(f"regnet_{k}_{s}" for k, sizes in
                    (("x", ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
                     ("y", ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf")))
                    for s in sizes),
    "densenet": ("densenet121", "densenet161", "densenet169", "densenet201"),
    "mobilenet_v2": ("mobilenet_v2",),
    "resnet": ("resnet101", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
               "wide_resnet101_2"),
}

#: architecture_kwargs each torchvision family takes (None: torchvision's value for that name)
FAMILY_KWARGS: dict[str, tuple[str, ...]] = {
    "vit": ("image_size", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim",
            "dropout", "attention_dropout"),
    "swin": ("patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
             "dropout", "attention_dropout", "stochastic_depth_prob"),
    "convnext": ("dims", "depths", "stochastic_depth_prob", "layer_scale"),
    "efficientnet": ("stochastic_depth_prob",),
    "regnet": (),
    "densenet": (),
    "mobilenet_v2": ("width_mult",),
    "resnet": ("zero_init_residual",),
}

#: a setting every model takes besides its constructor's own (``build_model``: AFA's map size)
COMMON_KWARGS = ("input_size",)


@dataclass(frozen=True)
class Architecture:
    """module: the module whose import registers the constructor; kwargs: its keyword settings
    besides ``in_channels``."""

    module: str
    kwargs: tuple[str, ...]


ARCHITECTURES: dict[str, Architecture] = {
    **{name: Architecture("ltpipe.models.cifar_resnet", ("widths", "strides"))
       for name in ("resnet8", "resnet20", "resnet32")},
    **{name: Architecture("ltpipe.models.tv_resnet", ("zero_init_residual",))
       for name in ("resnet10", "resnet18", "resnet34", "resnet50", "resnext50_32x4d",
                    "resnet152", "resnet18_cifar", "resnet34_cifar")},
    **{name: Architecture("ltpipe.models.tv_zoo", FAMILY_KWARGS[family])
       for family, names in ZOO.items() for name in names},
}


def builtin_names() -> list[str]:
    """The built-in architectures' names, sorted."""
    return sorted(ARCHITECTURES)


def architecture_names() -> list[str]:
    """Built-in architectures and plug-in ones (entry points ``ltpipe.architectures``), sorted."""
    return sorted(set(ARCHITECTURES) | set(plugins.names("architectures")))


def plugin_constructor(name: str) -> Callable[..., Any]:
    """The constructor a plug-in architecture's entry point names (imported on first use)."""
    ctor, where = plugins.load("architectures", name)
    if not callable(ctor):
        raise LtpipeError(f"{where} is not callable; point the entry point at a backbone "
                          "constructor f(in_channels, **kwargs) -> ltpipe.models.Backbone")
    return ctor


def signature_kwargs(ctor: Callable[..., Any]) -> tuple[str, ...] | None:
    """The keyword settings ``ctor`` takes besides ``in_channels``; None when it takes any
    (``**kwargs``)."""
    params = inspect.signature(ctor).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return tuple(p for p in params if p != "in_channels")


def check_kwargs(name: str, allowed: tuple[str, ...] | None, kwargs: dict[str, Any]) -> None:
    """Raise ``LtpipeError`` naming the first key of ``kwargs`` that model ``name`` does not take
    (``allowed``: its constructor's settings; None: any)."""
    if allowed is None:
        return
    allowed_all = sorted(allowed) + list(COMMON_KWARGS)
    for key in kwargs:
        if key not in allowed_all:
            raise LtpipeError(f"model {name!r} takes no setting {key!r}: expected keyword "
                              f"arguments among {allowed_all}; remove or rename it")


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``LtpipeError`` if ``kwargs`` are not settings of architecture ``name`` (what
    ``build_model`` checks, without building anything). A built-in is checked against its
    declaration (no torch import); a plug-in is loaded and its signature read."""
    if name in ARCHITECTURES:
        allowed = ARCHITECTURES[name].kwargs
    elif name in plugins.names("architectures"):
        allowed = signature_kwargs(plugin_constructor(name))
    else:
        raise LtpipeError(f"unknown model {name!r}; registered: {architecture_names()}")
    check_kwargs(name, allowed, kwargs)
