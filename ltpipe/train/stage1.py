"""Stage one: train a backbone on a split's training part; resumable, safe to interrupt.

``train_stage1(split_path, recipe, out_path)`` writes the final weights to ``out_path``
(atomically) and keeps a resumable checkpoint at ``<out_path>.ckpt`` while it runs:

- every ``checkpoint_every`` epochs, and on SIGTERM / SIGUSR1 at the next step boundary, after
  which it raises ``TrainingInterrupted`` (a ``SystemExit`` with code 75, EX_TEMPFAIL: an
  unhandled one ends the process with exit status 75, so a Slurm or Snakemake retry resumes);
- a new call with the same ``out_path`` resumes from the checkpoint if its recipe, seed and
  split fingerprint match (else ``LtpipeError``: delete the checkpoint); on the CPU a resumed
  run ends with exactly the weights of an uninterrupted one;
- a non-finite loss raises ``LtpipeError`` naming epoch, step and value, and leaves the last
  good checkpoint in place; the checkpoint is deleted once the final file is in place.

``head_half`` (BWLM stage one) keeps only the training images of the C // 2 most frequent
classes (by count rank, ties to the lower class index). The model still has C outputs and the
loss is built on the split's full class counts (never zero), so the cache keeps C columns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.provenance import code_version, host_info, library_versions
from ltpipe.train.checkpoint import (
    CKPT_KIND,
    FINAL_KIND,
    ckpt_path,
    load_checkpoint,
    load_resumable,
    rng_states,
    save_atomic,
    set_rng_states,
)
from ltpipe.train.recipe import RECIPE_DEFAULTS, normalize_recipe
from ltpipe.utils import LtpipeError

__all__ = ["EXIT_INTERRUPTED", "RECIPE_DEFAULTS", "TrainingInterrupted", "head_half_classes",
           "load_checkpoint", "train_stage1"]

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: "try again"; the checkpoint makes the retry resume
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving ``<out>.ckpt``; exit status 75, rerun to resume."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_INTERRUPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


def head_half_classes(counts: Any) -> np.ndarray:
    """Sorted ids of the C // 2 most frequent classes (ties broken toward the lower class id)."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    return np.sort(order[: len(counts) // 2])


# ---- runtime set-up -----------------------------------------------------------------------

@contextlib.contextmanager
def _runtime(device: str | None, threads: int | None,
             deterministic: bool | str) -> Iterator[str]:
    """Pick the device and set thread count / determinism flags; restore them afterwards."""
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
        raise LtpipeError(f"device {dev!r} requested but CUDA is not available; use device "
                          "'cpu' or run on a GPU node")
    if deterministic == "auto":  # free on a CPU (only index accumulation changes), not on a GPU
        deterministic = torch.device(dev).type == "cpu"
    old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
           torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic != old[1]:  # the call imports torch._inductor (seconds): only when needed
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = torch.device(dev).type == "cuda" and not deterministic
    try:
        yield dev
    finally:
        torch.set_num_threads(old[0])
        if deterministic != old[1]:
            torch.use_deterministic_algorithms(old[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old[2], old[3]


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Yield a ``should_stop()`` poll that turns true on SIGTERM / SIGUSR1 (main thread only)."""
    flag = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, lambda *_: flag.set())
    try:
        yield flag.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _emitter(log: Any) -> Callable[[str], None]:
    if log is None:
        return lambda msg: print(msg, flush=True)
    if isinstance(log, logging.Logger):
        return log.info
    def emit(msg: str) -> None:
        log.write(msg + "\n")
        if hasattr(log, "flush"):
            log.flush()
    return emit


def _progress_bar(epoch: int, epochs: int) -> Callable[[int, int], None] | None:
    """A plain-text bar on stderr, only when stderr is a terminal (never in log files)."""
    if not sys.stderr.isatty():
        return None
    def show(step: int, total: int) -> None:
        if step == total or step % max(1, total // 50) == 0:
            done = int(30 * step / total)
            end = "\r" if step < total else "\r" + " " * 60 + "\r"
            sys.stderr.write(f"\repoch {epoch + 1}/{epochs} [{'#' * done}{'.' * (30 - done)}] "
                             f"{step}/{total}{end}")
            sys.stderr.flush()
    return show


# ---- the run ------------------------------------------------------------------------------

def _training_data(split: Any, head_half: bool) -> tuple[Any, list[int]]:
    from ltpipe.data import split_data
    from ltpipe.data.batches import subset

    data = split_data(split, "train")
    if not head_half:
        return data, list(range(int(split.num_classes)))
    keep = head_half_classes(split.class_counts)
    return subset(data, np.flatnonzero(np.isin(np.asarray(data.labels), keep))), keep.tolist()


def train_stage1(split_path: str | Path, recipe: dict, out_path: str | Path, *, seed: int = 0,
                 device: str | None = None, threads: int | None = None, log: Any = None,
                 deterministic: bool = False,
                 on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train a stage-one backbone; write ``out_path``; return the final metrics.

    ``recipe``: see ``RECIPE_DEFAULTS`` (unknown keys / bad values raise ``LtpipeError``).
    ``device``: None = "cuda" when available, else "cpu" (lease a GPU with
    ``ltpipe.train.device.lease_device`` first). ``threads``: torch CPU threads. ``log``: a
    file-like object or ``logging.Logger`` for per-epoch lines (default: stdout).
    ``deterministic``: deterministic algorithms, no cudnn.benchmark, whatever the recipe's
    ``deterministic`` (auto: on for CPU training). ``on_step(global_step)``
    is called after every optimizer step (progress hooks, tests).
    Raises ``TrainingInterrupted`` (exit status 75) after checkpointing on SIGTERM / SIGUSR1.
    """
    from ltpipe.data import read_split
    from ltpipe.train.loop import Stage1Trainer, StopRequested

    cfg = normalize_recipe(recipe)
    emit = _emitter(log)
    out_path, ck_path = Path(out_path), ckpt_path(out_path)
    split = read_split(split_path)
    train_data, train_classes = _training_data(split, cfg["head_half"])
    with _runtime(device, threads, True if deterministic else cfg["deterministic"]) as dev:
        trainer = Stage1Trainer(train_data, split.class_counts, int(split.num_classes), cfg, dev,
                                seed)
        ident = {"recipe": cfg, "seed": seed, "split_fingerprint": split.fingerprint,
                 "normalization": trainer.normalization, "code": code_version(),
                 "versions": library_versions(), "init_weights": trainer.init_weights}
        ckpt = load_resumable(ck_path, cfg, seed, split.fingerprint)
        epoch, step, history = 0, 0, []
        if ckpt is not None:
            trainer.load_state_dict(ckpt)
            set_rng_states(ckpt["rng"])
            epoch, step, history = ckpt["epoch"], ckpt["step_in_epoch"], list(ckpt["history"])
            emit(f"stage1: resuming {out_path.name} at epoch {epoch}, step {step}")

        def save(e: int, s: int) -> None:
            save_atomic({"kind": CKPT_KIND, **ident, "epoch": e, "step_in_epoch": s,
                         "history": history, "rng": rng_states(), **trainer.state_dict()},
                        ck_path)

        if trainer.init_weights is not None:
            emit(f"stage1: backbone starts from {trainer.init_weights['path']} "
                 f"({trainer.init_weights['tensors']} tensors, sha256 "
                 f"{trainer.init_weights['sha256'][:12]})")
        if cfg["frozen"]:
            emit("stage1: frozen backbone: only the head is trained")
        emit(f"stage1: {cfg['architecture']} {cfg['loss']} on {len(train_data.labels)} images, "
             f"{trainer.steps_per_epoch} steps/epoch, {cfg['epochs']} epochs, device {dev}")
        with _stop_on_signals() as should_stop:
            try:
                _fit(trainer, cfg, epoch, step, history, save, should_stop, on_step, emit)
            except StopRequested as stop:
                save(stop.epoch, stop.step_in_epoch)
                msg = (f"stage1: interrupted at epoch {stop.epoch}, step {stop.step_in_epoch}; "
                       f"checkpoint {ck_path} saved: rerun the same command to resume")
                emit(msg)
                raise TrainingInterrupted(msg) from None
        metrics = _final_metrics(trainer, split, cfg, history, emit)
        payload = {"kind": FINAL_KIND, **ident, "model_state": trainer.state_dict()["model_state"],
                   "model_spec": trainer.model.spec, "epochs": cfg["epochs"], "metrics": metrics,
                   "logit_scale": float(trainer.loss.settings.get("scale", 1.0)),
                   "train_classes": train_classes, "history": history, "host": host_info(dev)}
        save_atomic(payload, out_path)
        ck_path.unlink(missing_ok=True)
    return metrics


def _fit(trainer: Any, cfg: dict, epoch: int, step: int, history: list, save: Callable,
         should_stop: Callable[[], bool], on_step: Callable | None,
         emit: Callable[[str], None]) -> None:
    """Epochs ``epoch..`` (the first from ``step``); checkpoint and log after each."""
    from ltpipe.train.loop import StopRequested

    epochs, every = cfg["epochs"], cfg["checkpoint_every"]
    session_start = time.perf_counter()
    first = epoch
    while epoch < epochs:
        stats = trainer.train_epoch(epoch, step, should_stop=should_stop, on_step=on_step,
                                    progress=_progress_bar(epoch, epochs))
        history.append({"epoch": epoch, **stats})
        epoch, step = epoch + 1, 0
        elapsed = time.perf_counter() - session_start
        eta = elapsed / (epoch - first) * (epochs - epoch)
        emit(f"epoch {epoch}/{epochs} loss {stats['loss']:.4f} acc {stats['acc']:.4f} "
             f"lr {stats['lr']:.3g} {stats['images_per_s']:.0f} img/s eta {eta / 60:.1f} min")
        if should_stop():
            raise StopRequested(epoch, 0)
        if epoch == epochs or (every and epoch % every == 0):
            save(epoch, 0)


def _final_metrics(trainer: Any, split: Any, cfg: dict, history: list,
                   emit: Callable[[str], None]) -> dict[str, Any]:
    from ltpipe.data import split_data

    last = history[-1] if history else {}
    metrics: dict[str, Any] = {
        "train_loss": last.get("loss"), "train_acc": last.get("acc"),
        "images_per_s": (sum(h["images"] for h in history)
                         / max(sum(h["seconds"] for h in history), 1e-9)) if history else None,
        "epochs": cfg["epochs"], "steps": trainer.global_step,
    }
    if cfg["final_eval"]:
        test = trainer.evaluate(split_data(split, "test"), cfg["eval_batch_size"])
        metrics["test_acc"] = test["acc"]
        emit(f"stage1: test top-1 {test['acc']:.4f} on {test['images']} images")
    return metrics
