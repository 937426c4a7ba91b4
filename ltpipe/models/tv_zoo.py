"""torchvision classification architectures by name (ConvNeXt, ViT, Swin, EfficientNet, RegNet,
DenseNet, MobileNetV2 and the ResNets not in ``tv_resnet``), built with ``weights=None``.

Each name of ``ZOO`` is registered as an ltpipe model under torchvision's own builder name
(``convnext_tiny``, ``vit_b_16``, ``swin_t``, ``efficientnet_b0``, ``regnet_y_400mf``, ...).
No weights are ever downloaded: a recipe starts the backbone from a file with ``init_weights``
(a torchvision state dict; ``ltpipe.models.init_weights``). torchvision's classifier is dropped
and ltpipe's head (``LinearHead`` / ``CosineHead`` for the data set's class count) takes its
place. The split into ``stem`` / ``stages`` keeps the LTModel contract: the last stage returns
a map F [B, D, H, W] whose spatial mean is the pooled feature f, so that cached CAMs are exact
and FSA's recombined features live in the space of f:

- CNNs (EfficientNet, RegNet, DenseNet, MobileNetV2, ResNets): F is torchvision's map before
  its global average pool (DenseNet: after its final ReLU), exactly as torchvision computes f.
- Swin: F is the last stage after torchvision's final LayerNorm, permuted to [B, C, H, W];
  exactly torchvision's f.
- ConvNeXt: torchvision normalises the *pooled* vector (LayerNorm, then Linear). Our choice:
  the LayerNorm is applied at every position of the map before pooling (timm's
  ``head_norm_first`` form), so that f stays the mean of F; its weights come from the file.
- ViT: F is the grid of patch tokens after the encoder's final LayerNorm ([B, D, S/p, S/p]),
  the class token excluded; f is their mean (our choice, for the same reason: torchvision's
  classifier reads the class token instead, which has no spatial map).

Geometry overrides (``architecture_kwargs``), e.g. a tiny ViT for tests or 8x8 digits:
``vit_*``: image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, dropout,
attention_dropout; ``swin_*``: patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio,
dropout, attention_dropout, stochastic_depth_prob; ``convnext_*``: dims, depths,
stochastic_depth_prob, layer_scale; ``efficientnet_*``: stochastic_depth_prob; ``mobilenet_v2``:
width_mult; ResNets: zero_init_residual. A value left out is torchvision's for that name (read
from torchvision's own builder, not copied here). Input channels: 3, or 1 (a grey image is
repeated to 3 channels, so a file's first convolution loads unchanged). The AFA module is not
available on these models. torchvision is imported only when a model is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ltpipe.models.base import Backbone
from ltpipe.models.catalog import FAMILY_KWARGS, ZOO
from ltpipe.models.registry import register_model
from ltpipe.utils import LtpipeError

#: families whose final map is a grid of transformer tokens (see the module docstring)
TOKEN_FAMILIES = ("vit", "swin")


class GreyToRGB(nn.Module):
    """[B, 1, H, W] -> [B, 3, H, W] (the grey channel repeated); no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class ViTStem(nn.Module):
    """Patch projection, class token and position embedding of a torchvision ViT: image ->
    tokens [B, 1 + N, D] (the parameters are the torchvision model's own)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv_proj = net.conv_proj
        self.class_token = net.class_token
        self.pos_embedding = net.encoder.pos_embedding
        self.dropout = net.encoder.dropout
        self.image_size, self.patch_size = net.image_size, net.patch_size
        self.hidden_dim = net.hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise LtpipeError(f"this ViT takes {self.image_size}x{self.image_size} images, got "
                              f"{tuple(x.shape[-2:])}; set architecture_kwargs image_size: "
                              f"{x.shape[-1]} (a multiple of patch_size {self.patch_size}), or "
                              "resize the images")
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.class_token.expand(x.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, tokens], 1) + self.pos_embedding)


class TokenGrid(nn.Module):
    """Final LayerNorm, then the patch tokens (class token dropped) as a map [B, D, h, w]."""

    def __init__(self, ln: nn.Module, side: int) -> None:
        super().__init__()
        self.ln = ln
        self.side = side

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = self.ln(tokens)[:, 1:]
        b, n, d = patches.shape
        return patches.transpose(1, 2).reshape(b, d, self.side, self.side)


class ReLUAfter(nn.Sequential):
    """DenseNet's last block + norm5 followed by the ReLU its forward applies before pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


def _captured_call(module: Any, cls_name: str, tv_name: str) -> tuple[tuple, dict]:
    """The (args, kwargs) torchvision's builder ``tv_name`` passes to class ``cls_name``.

    The builder runs with the class replaced by a recorder, so the geometry of every named
    variant is torchvision's own, overridable key by key."""
    import torchvision.models as tvm

    class _Recorded(Exception):
        pass

    calls: list = []

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))
        raise _Recorded

    real = getattr(module, cls_name)
    setattr(module, cls_name, record)
    try:
        getattr(tvm, tv_name)(weights=None)
    except _Recorded:
        pass
    finally:
        setattr(module, cls_name, real)
    return calls[0]


def _split(family: str, net: nn.Module) -> tuple[nn.Module, list[nn.Module], int]:
    """(stem, stages, feature_dim) of a torchvision model of ``family``."""
    if family == "convnext":
        f = net.features
        return f[0], [*f[1:-1], nn.Sequential(f[-1], net.classifier[0])], \
            net.classifier[2].in_features
    if family == "vit":
        side = net.image_size // net.patch_size
        return ViTStem(net), [net.encoder.layers, TokenGrid(net.encoder.ln, side)], net.hidden_dim
    if family == "swin":
        f = net.features
        return f[0], [*f[1:-1], nn.Sequential(f[-1], net.norm, net.permute)], net.head.in_features
    if family in ("efficientnet", "mobilenet_v2"):
        f = net.features
        return f[0], list(f[1:]), net.classifier[-1].in_features
    if family == "regnet":
        return net.stem, list(net.trunk_output), net.fc.in_features
    if family == "densenet":
        f = net.features
        return f[:4], [*f[4:-2], ReLUAfter(f[-2], f[-1])], net.classifier.in_features
    if family == "resnet":
        return (nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
                [net.layer1, net.layer2, net.layer3, net.layer4], net.fc.in_features)
    raise LtpipeError(f"no torchvision family {family!r}; known: {sorted(ZOO)}")


def _build_net(family: str, tv_name: str, overrides: dict[str, Any]) -> nn.Module:
    """The torchvision model ``tv_name`` (``weights=None``) with ``overrides`` applied."""
    import torchvision.models as tvm

    if family == "vit":
        args, kwargs = _captured_call(tvm.vision_transformer, "VisionTransformer", tv_name)
        return tvm.VisionTransformer(*args, **{**kwargs, **overrides})
    if family == "swin":
        args, kwargs = _captured_call(tvm.swin_transformer, "SwinTransformer", tv_name)
        return tvm.SwinTransformer(*args, **{**kwargs, **overrides})
    if family == "convnext" and ("dims" in overrides or "depths" in overrides):
        from torchvision.models.convnext import CNBlockConfig

        (setting,), kwargs = _captured_call(tvm.convnext, "ConvNeXt", tv_name)
        dims = overrides.pop("dims", [c.input_channels for c in setting])
        depths = overrides.pop("depths", [c.num_layers for c in setting])
        if len(dims) != len(depths) or len(dims) < 2:
            raise LtpipeError(f"{tv_name}: dims {dims} and depths {depths} must be lists of the "
                              "same length (one per stage, at least 2)")
        setting = [CNBlockConfig(dims[i], dims[i + 1] if i + 1 < len(dims) else None, depths[i])
                   for i in range(len(dims))]
        return tvm.ConvNeXt(setting, **{**kwargs, **overrides})
    return getattr(tvm, tv_name)(weights=None, **overrides)


def file_key_map(stem: nn.Module, stages: list[nn.Module], net: nn.Module
                 ) -> tuple[dict[str, str], tuple[str, ...]]:
    """(ltpipe key -> torchvision key for every backbone tensor, torchvision keys left out).

    Found by tensor identity: the backbone's modules are the torchvision model's own, so a
    tensor reachable under both names is the same object. The keys left out are torchvision's
    classifier (replaced by ltpipe's head); a weights file may hold them."""
    holder = nn.Module()
    holder.stem = stem
    holder.stages = nn.ModuleList(stages)
    tv_by_id = {id(t): k for k, t in net.state_dict(keep_vars=True).items()}
    ours = {k: tv_by_id[id(t)] for k, t in holder.state_dict(keep_vars=True).items()}
    missing = [k for k in holder.state_dict(keep_vars=True) if k not in ours]
    if missing:  # pragma: no cover - a torchvision change the split does not follow
        raise LtpipeError(f"internal: backbone tensors {missing[:4]} are not in the torchvision "
                          "model")
    used = set(ours.values())
    return ours, tuple(k for k in net.state_dict() if k not in used)


def _ctor(family: str, tv_name: str, in_channels: int = 3, **overrides: Any) -> Backbone:
    if in_channels not in (1, 3):
        raise LtpipeError(f"{tv_name} takes 3-channel (or 1-channel grey) images, got "
                          f"in_channels={in_channels}; convert the images to RGB")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        net = _build_net(family, tv_name, dict(overrides))
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise LtpipeError(f"{tv_name}: torchvision refused architecture_kwargs {overrides} "
                          f"({type(err).__name__}: {err}); fix architecture_kwargs") from None
    stem, stages, feature_dim = _split(family, net)
    keys, left_out = file_key_map(stem, stages, net)
    if in_channels == 1:
        stem = nn.Sequential(GreyToRGB(), stem)
        keys = {("stem.1." + k[len("stem."):] if k.startswith("stem.") else k): v
                for k, v in keys.items()}
    return Backbone(stem=stem, stages=stages, feature_dim=int(feature_dim), afa_channels=0,
                    default_input_size=getattr(net, "image_size", 224), file_keys=keys,
                    file_keys_ignored=left_out)


def _make_ctor(family: str, tv_name: str):
    """A registry constructor for ``tv_name`` whose signature lists the family's settings (so
    ``check_model_kwargs`` refuses a wrong key at DAG build without importing torchvision)."""
    import inspect

    def ctor(in_channels: int = 3, **overrides: Any) -> Backbone:
        return _ctor(family, tv_name, in_channels, **overrides)

    params = [inspect.Parameter("in_channels", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default=3)]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None)
               for k in FAMILY_KWARGS[family]]
    ctor.__signature__ = inspect.Signature(params)
    ctor.__name__ = ctor.__qualname__ = tv_name
    ctor.__doc__ = f"torchvision {tv_name} ({family} family; see ltpipe.models.tv_zoo)."
    return ctor


def family_of(name: str) -> str | None:
    """The ``ZOO`` family of a registered name, or None for the other models."""
    return next((fam for fam, names in ZOO.items() if name in names), None)


def is_token_model(name: str) -> bool:
    """True for the transformer models (ViT, Swin) whose map is a grid of tokens."""
    return family_of(name) in TOKEN_FAMILIES


for _family, _names in ZOO.items():
    for _tv_name in _names:
        register_model(_tv_name)(_make_ctor(_family, _tv_name))

__all__ = ["TOKEN_FAMILIES", "ZOO", "family_of", "file_key_map", "is_token_model"]
