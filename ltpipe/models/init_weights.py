"""Start a backbone from a weights file instead of random init (recipe key ``init_weights``).

Accepted files (loaded with ``torch.load(weights_only=True)``):

- a torchvision state dict, e.g. ImageNet weights of ResNet-50 / ResNeXt-50 / ResNet-152
  (``resnet152-394f9c45.pth``): ``conv1`` / ``bn1`` / ``layer1..4`` / ``fc`` keys, mapped to
  ltpipe's ``stem.0`` / ``stem.1`` / ``stages.0..3``; ``fc`` is dropped;
- for the torchvision architectures of ``ltpipe.models.tv_zoo`` (ConvNeXt, ViT, Swin, ...):
  that model's torchvision state dict (``torch.save(model.state_dict(), path)``), keys renamed by
  the model's ``file_keys`` table; torchvision's classifier keys are dropped;
- an ltpipe stage-one model file (``model.pt``): its backbone part;
- either of those wrapped the way other training code saves them: ``{"state_dict": ...}``,
  ``{"model": ...}``, ``{"model_state": ...}``, with or without a ``module.`` prefix
  (DataParallel).

Only the backbone (stem and stages) is loaded; the head (and an AFA module) keep their fresh
init, since the class count of the new task differs. Every backbone tensor must be in the
file with the model's shape, and the file must hold no other backbone tensor: a file of another
architecture is refused with the keys that differ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ltpipe.utils import LtpipeError, sha256_file

BACKBONE_PREFIXES = ("stem.", "stages.")
_TORCHVISION = [(re.compile(r"^conv1\."), "stem.0."), (re.compile(r"^bn1\."), "stem.1."),
                (re.compile(r"^layer([1-9])\."), None)]


def _unwrap(obj: Any) -> dict:
    for _ in range(3):  # {"state_dict": {...}} and the like, possibly nested once or twice
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in ("model_state", "state_dict", "model") if k in obj
                      and isinstance(obj[k], dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise LtpipeError("holds no state dict (expected a dict of tensors, or one under "
                          "'state_dict' / 'model' / 'model_state')")
    return obj


def _ltpipe_key(key: str) -> str | None:
    """The ltpipe name of a file's key; None for keys that are not part of a backbone."""
    key = key.removeprefix("module.")
    if key.startswith(BACKBONE_PREFIXES):
        return key
    for pattern, repl in _TORCHVISION:
        m = pattern.match(key)
        if m:
            if repl is None:  # layerN. -> stages.{N-1}.
                return f"stages.{int(m.group(1)) - 1}." + key[m.end():]
            return repl + key[m.end():]
    return None  # fc., head., afa., anything else: not loaded


def backbone_state(obj: Any, model: Any = None) -> dict[str, Any]:
    """The backbone tensors of a loaded weights file, under ltpipe's key names.

    For a model wrapped from torchvision (``model.file_keys``, see ``ltpipe.models.tv_zoo``) a
    key is renamed by that table; the torchvision classifier's keys are dropped; any other key
    that is not an ltpipe backbone key is kept under its own name (so it is reported as not in
    the model). Otherwise the ResNet naming rules above apply."""
    state = _unwrap(obj)
    table = getattr(model, "file_keys", None)
    if table:
        by_file = {v: k for k, v in table.items()}
        ignored = set(getattr(model, "file_keys_ignored", ()))
        out = {}
        for key, value in state.items():
            key = str(key).removeprefix("module.")
            if key in ignored or not hasattr(value, "shape"):
                continue
            out[by_file.get(key, key)] = value
        return {k: v for k, v in out.items() if not k.startswith(("head.", "afa."))}
    out = {}
    for key, value in state.items():
        name = _ltpipe_key(str(key))
        if name is not None and hasattr(value, "shape"):
            out[name] = value
    return out


def load_init_weights(model: Any, path: str | Path) -> dict[str, Any]:
    """Copy a weights file's backbone tensors into ``model`` (an ``LTModel``); return
    ``{"path", "sha256", "tensors"}`` for the run's record. Raises ``LtpipeError`` naming the
    file and what does not match."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise LtpipeError(f"init_weights: {path} does not exist; put the weights file there "
                          "(e.g. torchvision's ImageNet weights of the same architecture) or "
                          "set init_weights: null")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = backbone_state(obj, model)
    except LtpipeError as err:
        raise LtpipeError(f"init_weights: {path} {err}") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise LtpipeError(f"init_weights: {path} is not a readable torch weights file "
                          f"({type(err).__name__}: {str(err)[:200]})") from None
    own = {k: v for k, v in model.state_dict().items() if k.startswith(BACKBONE_PREFIXES)}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or shapes:
        table = getattr(model, "file_keys", None) or {}
        named = table.get  # a key as the file names it (torchvision's name where wrapped)
        missing, shapes = (sorted(keys, key=lambda k: named(k, k)) for keys in (missing, shapes))
        listed = [(missing, "missing", lambda k: named(k, k)), (extra, "not in the model", str),
                  (shapes, "of another shape",
                   lambda k: f"{named(k, k)} {tuple(state[k].shape)} vs "
                             f"{tuple(own[k].shape)}")]
        parts = [f"{len(keys)} tensor(s) {label}: {', '.join(map(show, keys[:4]))}"
                 + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
                 for keys, label, show in listed if keys]
        kwargs = model.spec.get("kwargs") or {}
        raise LtpipeError(f"init_weights: {path} does not fit backbone {model.spec['name']!r} "
                          f"(in_channels {model.spec['in_channels']}, architecture_kwargs "
                          f"{kwargs}): " + "; ".join(parts)
                          + "; give a state dict of the same architecture and settings (e.g. "
                          "torch.save(torchvision.models." + str(model.spec["name"])
                          + "().state_dict(), path) for torchvision's), fix architecture / "
                          "architecture_kwargs to match the file, or set init_weights: null")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key].to(dtype=tensor.dtype))
    return {"path": str(path), "sha256": sha256_file(path), "tensors": len(own)}
