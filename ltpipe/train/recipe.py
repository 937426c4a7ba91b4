"""Stage-one recipe: the flat hyper-parameter dict, its defaults (with units) and its validation.

``RECIPE_DEFAULTS`` is the single source of truth for the keys ``train_stage1`` accepts; the
comment beside each key gives its unit and how to choose it. ``normalize_recipe`` fills the
defaults and rejects unknown keys and bad values with an ``LtpipeError`` that names the fix.
"""

from __future__ import annotations

from typing import Any

from ltpipe.utils import LtpipeError

RECIPE_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet32",  # registry name in ltpipe.models (resnet32, resnet50, ...)
    "backbone_kwargs": {},  # extra keyword arguments of the backbone constructor
    "head": "linear",  # "linear" | "cosine" (cosine: the scale lives in the loss)
    "loss": "ce",  # ltpipe.losses name: ce, focal, ldam, balanced_softmax, kps, bfs
    "loss_settings": {},  # keyword settings of that loss (e.g. scale, max_m, drw_epoch)
    "epochs": 200,  # training epochs (one epoch = one pass over the training images)
    "batch_size": 128,  # images per SGD step (the last incomplete batch is dropped)
    "lr": 0.1,  # base learning rate (per step, SGD)
    "momentum": 0.9,  # SGD momentum
    "weight_decay": 2e-4,  # L2 weight decay (SGD's weight_decay, on every parameter)
    "nesterov": False,  # Nesterov momentum
    "schedule": "multistep",  # "multistep" | "cosine"; evaluated every step at fractional epoch
    "milestones": [160, 180],  # epochs at which multistep multiplies the lr by gamma
    "gamma": 0.01,  # lr factor per milestone (0.01 at 160 and 180: x0.01 then x1e-4)
    "warmup_epochs": 5,  # linear warm-up epochs: lr(e) = lr * min(1, (e + 1) / warmup_epochs)
    "mixup_alpha": 0.0,  # mixup Beta(a, a) parameter; 0 = no mixup (CIFAR papers: 1.0)
    "augment": "crop_flip",  # "crop_flip" | "crop" | "none" (pad = side // 8 px; see augment.py)
    "image_size": 224,  # file-list data only: RandomResizedCrop side (px); eval: resize+center crop
    "init_weights": None,  # None (random init) or a weights file for the backbone: torchvision's
    # ImageNet weights of the same architecture, or an ltpipe model.pt (ltpipe.models.init_weights)
    "afa": None,  # None or {"gamma", "alpha", "t" (epoch), "lam"}: AFA module + LBLS loss
    "head_half": False,  # BWLM stage one: train only on the C // 2 most frequent classes
    "compile": False,  # torch.compile the model: false | true (mode "default") | a mode name in
    # COMPILE_MODES. Costs up to ~1 min of compiling at start (cached across runs); pays off on
    # long runs (ResNet-32 on 2 CPU cores: ~1.07x faster steps). Not with afa (samples in forward)
    "amp": "bf16",  # "bf16" | "off": bf16 autocast on GPU (ignored on CPU)
    "channels_last": True,  # NHWC memory format for the model and inputs
    "checkpoint_every": 1,  # epochs between resumable checkpoints (<out>.ckpt); 0 = only on signal
    "eval_batch_size": 512,  # images per batch for the final test evaluation
    "final_eval": True,  # evaluate top-1 on the split's test part after training
    "loader_workers": 4,  # file-list data only: DataLoader worker processes
}

AFA_RECIPE_DEFAULTS: dict[str, Any] = {"gamma": 1.0, "alpha": 4.0, "t": 30, "lam": 2.0}
AFA_MODEL_EXTRA_KEYS = ("se_reduction", "mask_softmax")  # passed to the AFA module, checked there

# Keys that change only how fast or how safely a run goes, never its result (compile changes
# floating-point rounding at most). The Snakemake train rule passes them outside its params
# (environment variable RUNTIME_ENV, read by ``ltpipe train --runtime-of NAME``), so that
# changing one does not retrain a finished backbone; a running one picks it up when resumed.
RUNTIME_KEYS = ("checkpoint_every", "eval_batch_size", "loader_workers", "compile")
RUNTIME_ENV = "LTPIPE_RUNTIME_SETTINGS"
# Keys a checkpoint need not agree on to be resumed: those, and final_eval (it only adds the
# test score at the end).
RESUME_NEUTRAL_KEYS = (*RUNTIME_KEYS, "final_eval")

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_CHOICES = {
    "head": ("linear", "cosine"),
    "schedule": ("multistep", "cosine"),
    "augment": ("crop_flip", "crop", "none"),
    "amp": ("bf16", "off"),
}


def _fail(key: str, value: Any, expected: str) -> LtpipeError:
    return LtpipeError(f"stage-one recipe: {key}={value!r} is invalid: expected {expected}; "
                       f"fix '{key}' in the recipe (default {RECIPE_DEFAULTS.get(key)!r})")


def _check_number(cfg: dict, key: str, *, integer: bool = False, minimum: float = 0.0,
                  strict: bool = False) -> None:
    value = cfg[key]
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        sign = ">" if strict else ">="
        raise _fail(key, value, f"{'an integer' if integer else 'a number'} {sign} {minimum}")


def _normalize_afa(afa: Any) -> dict[str, Any] | None:
    if afa is None:
        return None
    if not isinstance(afa, dict):
        raise _fail("afa", afa, f"None or a dict with keys {sorted(AFA_RECIPE_DEFAULTS)}")
    known = [*AFA_RECIPE_DEFAULTS, *AFA_MODEL_EXTRA_KEYS]
    unknown = sorted(set(afa) - set(known))
    if unknown:
        raise LtpipeError(f"stage-one recipe: unknown afa key(s) {unknown}: expected keys among "
                          f"{sorted(known)}; remove or rename them")
    out = {**AFA_RECIPE_DEFAULTS, **afa}
    for key in AFA_RECIPE_DEFAULTS:
        if not isinstance(out[key], (int, float)) or isinstance(out[key], bool) or out[key] < 0:
            raise _fail(f"afa.{key}", out[key], "a number >= 0")
    return out


def normalize_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """Return the recipe with defaults filled in; raise ``LtpipeError`` on any bad key or value."""
    if not isinstance(recipe, dict):
        raise LtpipeError(f"stage-one recipe must be a dict, got {type(recipe).__name__}")
    unknown = sorted(set(recipe) - set(RECIPE_DEFAULTS))
    if unknown:
        raise LtpipeError(f"stage-one recipe: unknown key(s) {unknown}; the known keys are "
                          f"{sorted(RECIPE_DEFAULTS)}: remove or rename them")
    cfg = {**RECIPE_DEFAULTS, **recipe}
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            raise _fail(key, cfg[key], f"one of {list(choices)}")
    if not isinstance(cfg["backbone"], str) or not cfg["backbone"]:
        raise _fail("backbone", cfg["backbone"], "a model registry name such as 'resnet32'")
    if not isinstance(cfg["loss"], str) or not cfg["loss"]:
        raise _fail("loss", cfg["loss"], "a loss name such as 'ce'")
    for key in ("backbone_kwargs", "loss_settings"):
        if not isinstance(cfg[key], dict):
            raise _fail(key, cfg[key], "a dict (possibly empty)")
    for key in ("epochs", "batch_size", "eval_batch_size", "image_size"):
        _check_number(cfg, key, integer=True, minimum=1)
    for key in ("checkpoint_every", "loader_workers"):
        _check_number(cfg, key, integer=True)
    _check_number(cfg, "lr", strict=True)
    for key in ("momentum", "weight_decay", "gamma", "warmup_epochs", "mixup_alpha"):
        _check_number(cfg, key)
    if not isinstance(cfg["compile"], bool) and cfg["compile"] not in COMPILE_MODES:
        raise _fail("compile", cfg["compile"], f"true, false or one of {list(COMPILE_MODES)}")
    if cfg["compile"] and cfg["afa"] is not None:
        raise LtpipeError("stage-one recipe: compile cannot be combined with afa (the AFA module "
                          "samples inside its forward, which breaks the compiled graph); set "
                          "compile: false")
    for key in ("nesterov", "head_half", "channels_last", "final_eval"):
        if not isinstance(cfg[key], bool):
            raise _fail(key, cfg[key], "true or false")
    if cfg["init_weights"] is not None and (not isinstance(cfg["init_weights"], str)
                                            or not cfg["init_weights"].strip()):
        raise _fail("init_weights", cfg["init_weights"], "null or the path of a weights file")
    ms = cfg["milestones"]
    numeric = isinstance(ms, (list, tuple)) and all(
        isinstance(m, (int, float)) and not isinstance(m, bool) for m in ms)
    if not numeric or list(ms) != sorted(ms):
        raise _fail("milestones", ms, "an increasing list of epochs, e.g. [160, 180]")
    cfg["milestones"] = list(ms)
    if cfg["warmup_epochs"] > cfg["epochs"]:
        raise _fail("warmup_epochs", cfg["warmup_epochs"], f"at most epochs={cfg['epochs']}")
    cfg["afa"] = _normalize_afa(cfg["afa"])
    if cfg["afa"] is not None and cfg["mixup_alpha"] > 0:
        raise LtpipeError("stage-one recipe: afa and mixup_alpha > 0 cannot be combined (AFA "
                          "generates its own samples); set mixup_alpha: 0 or afa: null")
    return cfg
