"""Runtime settings: config values that decide how fast, or on which device, a job runs, never
what it computes. The whole policy lives here.

- A stage-one recipe's speed keys (``RECIPE_KEYS``: compile and deterministic change
  floating-point rounding at most) reach the train job of that recipe
  (``ltpipe train --runtime-of NAME``).
- ``classify_device`` (cpu | cuda | auto, :mod:`ltpipe.classifiers.device`) reaches every
  classify job.

They travel outside Snakemake's params, in environment variables (``RECIPES_ENV``, JSON, and
``DEVICE_ENV``), so that changing one reruns nothing that finished; a running train job picks its
keys up when it resumes. The Snakefile calls :func:`export` once (on a cluster, each job's own
Snakemake calls it again); a job reads its part with :func:`recipe_runtime` or
:func:`classify_device`.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from typing import Any

from ltpipe.utils import LtpipeError

RECIPE_KEYS = ("checkpoint_every", "eval_batch_size", "loader_workers", "compile", "deterministic")
RECIPES_ENV = "LTPIPE_RUNTIME_SETTINGS"
DEVICE_ENV = "LTPIPE_CLASSIFY_DEVICE"


def split_recipe(recipe: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the keys that decide the result, the runtime keys) of one recipe."""
    return ({k: v for k, v in recipe.items() if k not in RECIPE_KEYS},
            {k: v for k, v in recipe.items() if k in RECIPE_KEYS})


def export(cfg: dict[str, Any], environ: MutableMapping[str, str] = os.environ) -> None:
    """Put the config's runtime settings into ``environ`` (what the Snakefile does once)."""
    recipes = {name: split_recipe(rc)[1] for name, rc in cfg["backbones"].items()}
    environ.update({RECIPES_ENV: json.dumps(recipes, sort_keys=True, separators=(",", ":")),
                    DEVICE_ENV: str(cfg.get("classify_device", "cpu"))})


def recipe_runtime(name: str) -> dict[str, Any]:
    """Recipe ``name``'s runtime keys from the environment; {} outside ltpipe's Snakefile (the
    recipe's own values or the defaults apply)."""
    text = os.environ.get(RECIPES_ENV)
    if text is None:
        return {}
    try:
        table = json.loads(text)
    except json.JSONDecodeError as err:
        raise LtpipeError(f"environment variable {RECIPES_ENV} is not JSON ({err}); unset it or "
                          "let ltpipe's Snakefile set it") from None
    entry = table.get(name, {}) if isinstance(table, dict) else None
    if not isinstance(entry, dict) or set(entry) - set(RECIPE_KEYS):
        raise LtpipeError(f"{RECIPES_ENV}[{name!r}] = {entry!r}: expected a dict with keys "
                          f"among {list(RECIPE_KEYS)}; unset the variable or fix it")
    return entry


def classify_device() -> str:
    """The classify jobs' device choice from the environment (``cpu`` when unset)."""
    return os.environ.get(DEVICE_ENV, "cpu")
