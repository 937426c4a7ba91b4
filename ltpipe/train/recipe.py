"""Stage-one recipe: the flat hyper-parameter dict, its declared settings and its validation.

``RECIPE_SETTINGS`` is the single source of truth for the keys ``train_stage1`` accepts, each
declared with ``ltpipe.settings`` (default, check, unit and how to choose it); ``RECIPE_DEFAULTS``
is their defaults. ``normalize_recipe`` fills the defaults and rejects unknown keys and bad
values with an ``LtpipeError`` that names the fix, plus the checks across keys.
"""

from __future__ import annotations

from typing import Any

from ltpipe.runtime import RECIPE_KEYS as RUNTIME_KEYS
from ltpipe.settings import Setting, choice, defaults, flag, is_real, number, resolve_settings
from ltpipe.utils import LtpipeError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
AFA_RECIPE_DEFAULTS: dict[str, Any] = {"gamma": 1.0, "alpha": 4.0, "t": 30, "lam": 2.0}
AFA_MODEL_EXTRA_KEYS = ("se_reduction", "mask_softmax")  # passed to the AFA module, checked there
AFA_KEYS = (*AFA_RECIPE_DEFAULTS, *AFA_MODEL_EXTRA_KEYS)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _is_milestones(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and all(is_real(m) for m in v)
            and list(v) == sorted(v))


# Every key train_stage1 accepts, declared once (ltpipe.settings): default, check, unit.
RECIPE_SETTINGS: dict[str, Setting] = {
    "architecture": Setting("resnet32", lambda v: isinstance(v, str) and bool(v),
                            "a model registry name such as 'resnet32'",
                            "registry name in ltpipe.models (resnet32, resnet50, ...)"),
    "architecture_kwargs": Setting({}, _is_dict, "a dict (possibly empty)",
                                   "extra keyword arguments of the architecture's constructor"),
    "head": choice("linear", ("linear", "cosine"), doc="cosine: the scale lives in the loss"),
    "loss": Setting("ce", lambda v: isinstance(v, str) and bool(v), "a loss name such as 'ce'",
                    "ltpipe.losses name: ce, focal, ldam, balanced_softmax, kps, bfs"),
    "loss_settings": Setting({}, _is_dict, "a dict (possibly empty)",
                             "keyword settings of that loss (e.g. scale, max_m, drw_epoch)"),
    "epochs": number(200, 1, integer=True, doc="one epoch = one pass over the training images"),
    "batch_size": number(128, 1, integer=True,
                         doc="images per SGD step (the last incomplete batch is dropped)"),
    "lr": number(0.1, 0, lo_open=True, doc="base learning rate (per step, SGD)"),
    "momentum": number(0.9, 0, 1, doc="SGD momentum"),
    "weight_decay": number(2e-4, 0, doc="L2 weight decay (SGD's, on every parameter)"),
    "nesterov": flag(False, "Nesterov momentum"),
    "schedule": choice("multistep", ("multistep", "cosine"),
                       doc="evaluated every step at the fractional epoch"),
    "milestones": Setting([160, 180], _is_milestones,
                          "an increasing list of epochs, e.g. [160, 180]",
                          "epochs at which multistep multiplies the lr by gamma"),
    "gamma": number(0.01, 0, doc="lr factor per milestone (0.01 at 160 and 180: x0.01, x1e-4)"),
    "warmup_epochs": number(5, 0, doc="linear warm-up: lr(e) = lr * min(1, (e + 1) / warmup)"),
    "mixup_alpha": number(0.0, 0, doc="mixup Beta(a, a); 0 = no mixup (CIFAR papers: 1.0)"),
    "augment": choice("crop_flip", ("crop_flip", "crop", "none"),
                      doc="pad = side // 8 px; see augment.py"),
    "image_size": number(224, 1, integer=True,
                         doc="file-list data only: RandomResizedCrop side (px)"),
    "init_weights": Setting(None, lambda v: v is None or (isinstance(v, str) and bool(v.strip())),
                            "null or the path of a weights file",
                            "torchvision ImageNet weights of the architecture, or a model.pt"),
    "frozen": flag(False, "keep the init_weights backbone fixed (eval mode, no gradient): only "
                          "the head is trained, for `epochs` epochs, with this recipe's loss and "
                          "SGD (a linear probe); needs init_weights"),
    "afa": Setting(None, lambda v: v is None or isinstance(v, dict),
                   f"None or a dict with keys {sorted(AFA_KEYS)}",
                   "AFA module + LBLS loss: {gamma, alpha, t (epoch), lam}"),
    "head_half": flag(False, "BWLM stage one: train only on the C // 2 most frequent classes"),
    "compile": Setting(False, lambda v: isinstance(v, bool) or v in COMPILE_MODES,
                       f"true, false or one of {list(COMPILE_MODES)}",
                       "torch.compile (~1 min to compile at start); not with afa"),
    "deterministic": Setting("auto", lambda v: v == "auto" or isinstance(v, bool),
                             "auto, true or false",
                             "torch's deterministic algorithms (bit-identical reruns on a "
                             "multi-threaded CPU: AFA needs them there; on a GPU also no cuDNN "
                             "autotuning); auto = on for CPU training, off on a GPU; a runtime "
                             "setting"),
    "amp": choice("bf16", ("bf16", "off"), doc="bf16 autocast on GPU (ignored on CPU)"),
    "channels_last": flag(True, "NHWC memory format for the model and inputs"),
    "checkpoint_every": number(1, 0, integer=True,
                               doc="epochs between resumable checkpoints; 0 = only on signal"),
    "eval_batch_size": number(512, 1, integer=True, doc="images per batch for the test pass"),
    "final_eval": flag(True, "evaluate top-1 on the split's test part after training"),
    "loader_workers": number(4, 0, integer=True,
                             doc="file-list data only: DataLoader worker processes"),
}
RECIPE_DEFAULTS: dict[str, Any] = defaults(RECIPE_SETTINGS)

# Keys a checkpoint need not agree on to be resumed: the runtime keys (ltpipe.runtime: they
# never change a result), and final_eval (it only adds the test score at the end).
RESUME_NEUTRAL_KEYS = (*RUNTIME_KEYS, "final_eval")


def _fail(key: str, value: Any, expected: str) -> LtpipeError:
    return LtpipeError(f"stage-one recipe: {key}={value!r} is invalid: expected {expected}; "
                       f"fix '{key}' in the recipe (default {RECIPE_DEFAULTS.get(key)!r})")


def _normalize_afa(afa: Any) -> dict[str, Any] | None:
    if afa is None:
        return None
    if not isinstance(afa, dict):
        raise _fail("afa", afa, f"None or a dict with keys {sorted(AFA_RECIPE_DEFAULTS)}")
    unknown = sorted(set(afa) - set(AFA_KEYS))
    if unknown:
        raise LtpipeError(f"stage-one recipe: unknown afa key(s) {unknown}: expected keys among "
                          f"{sorted(AFA_KEYS)}; remove or rename them")
    out = {**AFA_RECIPE_DEFAULTS, **afa}
    for key in AFA_RECIPE_DEFAULTS:
        if not isinstance(out[key], (int, float)) or isinstance(out[key], bool) or out[key] < 0:
            raise _fail(f"afa.{key}", out[key], "a number >= 0")
    return out


def normalize_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """Return the recipe with defaults filled in; raise ``LtpipeError`` on any bad key or value."""
    if not isinstance(recipe, dict):
        raise LtpipeError(f"stage-one recipe must be a dict, got {type(recipe).__name__}")
    cfg = resolve_settings("stage-one recipe", RECIPE_SETTINGS, recipe)
    if cfg["compile"] and cfg["afa"] is not None:
        raise LtpipeError("stage-one recipe: compile cannot be combined with afa (the AFA module "
                          "samples inside its forward, which breaks the compiled graph); set "
                          "compile: false")
    cfg["milestones"] = list(cfg["milestones"])
    if cfg["warmup_epochs"] > cfg["epochs"]:
        raise _fail("warmup_epochs", cfg["warmup_epochs"], f"at most epochs={cfg['epochs']}")
    cfg["afa"] = _normalize_afa(cfg["afa"])
    if cfg["frozen"] and cfg["init_weights"] is None:
        raise LtpipeError("stage-one recipe: frozen: true keeps the backbone's starting weights, "
                          "so it needs init_weights (the path of a weights file); give "
                          "init_weights or set frozen: false")
    if cfg["frozen"] and cfg["afa"] is not None:
        raise LtpipeError("stage-one recipe: frozen cannot be combined with afa (the AFA module "
                          "sits inside the backbone and would stay untrained); set afa: null")
    if cfg["afa"] is not None and cfg["mixup_alpha"] > 0:
        raise LtpipeError("stage-one recipe: afa and mixup_alpha > 0 cannot be combined (AFA "
                          "generates its own samples); set mixup_alpha: 0 or afa: null")
    return cfg
