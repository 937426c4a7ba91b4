"""Stage-one files: the resumable checkpoint ``<out>.ckpt`` and the final weights file.

Both are written to a temporary sibling and renamed into place, so a reader (or a retry after
a crash) sees either the previous complete file or the new complete file, never a torn one.
Both are loaded with ``torch.load(weights_only=True)``: they hold only tensors and plain Python
values (RNG states are converted to lists and tensors for that). torch is imported inside the
functions, so that ``from ltpipe.train.stage1 import RECIPE_DEFAULTS`` stays cheap.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.models.modelfile import FINAL_KIND, load_checkpoint, load_file  # noqa: F401
from ltpipe.train.recipe import RECIPE_DEFAULTS, RESUME_NEUTRAL_KEYS
from ltpipe.utils import LtpipeError, atomic_path

CKPT_KIND = "ltpipe-stage1-checkpoint"


def ckpt_path(out_path: str | Path) -> Path:
    """Where the resumable checkpoint of a run writing ``out_path`` lives."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".ckpt")


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary sibling, then rename onto ``path``."""
    import torch

    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:
        # torch.save reports a full disk as RuntimeError('... unexpected pos ...')
        import shutil

        free = shutil.disk_usage(Path(path).parent).free
        full = (err.errno == errno.ENOSPC if isinstance(err, OSError)
                else "unexpected pos" in str(err) or free < (1 << 20))
        if not full:
            raise
        raise LtpipeError(f"could not write {path}: No space left on device ({free} bytes free "
                          f"there; {type(err).__name__}: {str(err)[:120]}); free some space "
                          "and rerun: training resumes from the last good checkpoint") from None


# ---- RNG states ---------------------------------------------------------------------------

def rng_states() -> dict[str, Any]:
    """Every global RNG state: Python, NumPy, torch CPU and (if initialized) CUDA."""
    import torch

    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states captured by ``rng_states``."""
    import torch

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---- resume -------------------------------------------------------------------------------

def resume_key(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe entries a checkpoint must agree on to be resumed (a key that a checkpoint
    written before it existed lacks counts as its default; a renamed key counts as its new name)."""
    from ltpipe.settings import RENAMED_KEYS

    full = {**RECIPE_DEFAULTS, **{RENAMED_KEYS.get(k, k): v for k, v in recipe.items()}}
    return {k: v for k, v in full.items() if k not in RESUME_NEUTRAL_KEYS}


def load_resumable(path: Path, recipe: dict[str, Any], seed: int,
                   fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this run, None if there is none.

    A checkpoint of another recipe, seed or split raises ``LtpipeError`` (never silently
    overwritten: it may be someone's hours of training).
    """
    if not path.exists():
        return None
    ckpt = load_file(path, CKPT_KIND)
    mine = resume_key(recipe)
    theirs = resume_key(ckpt.get("recipe") or {})
    diffs = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    problems = [f"recipe keys {diffs}"] if diffs else []
    if ckpt.get("seed") != seed:
        problems.append(f"seed {ckpt.get('seed')} != {seed}")
    if ckpt.get("split_fingerprint") != fingerprint:
        problems.append(f"split {ckpt.get('split_fingerprint')} != {fingerprint}")
    if problems:
        raise LtpipeError(f"{path} is a checkpoint of a different run ({'; '.join(problems)}); "
                          "delete it to start this run from scratch, or restore the old settings "
                          "to resume it")
    return ckpt

