"""The one training loop of the classifier stage: a head on cached feature tensors on the device.

Whole-set tensors live on the device; each step indexes a batch from them with a sampler from
``ltpipe.data.samplers`` (no DataLoader). SGD with momentum, weight decay, cosine or constant
learning rate, a fixed number of epochs or of iterations, and a per-batch ``augment`` hook that
methods such as H2T and FSA use to build their batches. All randomness comes from the one seeded
``torch.Generator`` passed in, so a run is reproducible for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ltpipe.classifiers.train_settings import (  # noqa: F401  (re-exported)
    EPOCH_SAMPLES,
    SAMPLERS,
    TRAINER_SETTINGS,
    trainer_settings,
)
from ltpipe.data.samplers import LabelSampler
from ltpipe.settings import resolve_settings
from ltpipe.utils import LtpipeError, cosine_decay

# augment(batch_idx, x, y, generator) -> (x_batch, y_batch); batch_idx is None with sampler None
Augment = Callable[[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Generator],
                   tuple[torch.Tensor, torch.Tensor]]
# loss(logits, target, epoch) -> scalar mean loss
LossFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def samples_per_epoch(labels: torch.Tensor, kind: str) -> int:
    """Samples in one epoch: N ("data") or n_max x C over the classes present ("class_aware")."""
    if kind == "data":
        return len(labels)
    counts = torch.bincount(labels)
    return int(counts.max()) * int((counts > 0).sum())


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings of ``train_head``; field meanings and checks: ``TRAINER_SETTINGS``.

    An epoch is ceil(samples / batch_size) steps, samples from ``epoch_samples``; ``iterations``
    (when set) replaces epochs x steps. ``sampler`` None means the augment hook builds batches.
    """

    epochs: int = 10
    iterations: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    lr_min: float = 0.0
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sampler: str | None = "class_balanced"
    epoch_samples: str = "data"

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> TrainConfig:
        """The config from a method's merged settings (keys that are not fields are skipped)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.items() if k in names}
        values.update(overrides)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``LtpipeError`` on a value ``TRAINER_SETTINGS`` refuses."""
        resolve_settings("trainer", TRAINER_SETTINGS, asdict(self))

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of step ``step`` (0-based) out of ``total``."""
        if self.schedule == "constant" or total <= 1:
            return self.lr
        return cosine_decay(step / total, self.lr, self.lr_min)


class MomentumSGD:
    """SGD with momentum and L2 weight decay, the update of ``torch.optim.SGD`` (dampening 0,
    no Nesterov): g = grad + wd * p; buf = momentum * buf + g (buf = g at the first step);
    p -= lr * buf. Written out because constructing the first ``torch.optim`` optimizer of a
    process costs seconds of imports, which every short classifier job would pay."""

    def __init__(self, params: list[torch.Tensor], momentum: float, weight_decay: float):
        self.params = params
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = g.clone()
                else:
                    buf.mul_(self.momentum).add_(g)
                g = buf
            p.add_(g, alpha=-lr)


# CPU steps on fewer elements than this run single-threaded: for a 128 x 64 batch the intra-op
# thread pool costs ~10x more than the arithmetic, worse still on a shared machine.
SMALL_STEP_ELEMENTS = 1 << 20


@contextmanager
def cpu_threads(device: torch.device, elements: int) -> Iterator[None]:
    """Run the block with one intra-op thread when on CPU and a step touches few elements."""
    if device.type != "cpu" or elements >= SMALL_STEP_ELEMENTS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _default_batch(idx: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return x[idx], y[idx]


def train_head(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
               config: TrainConfig, generator: torch.Generator,
               augment: Augment | None = None) -> list[float]:
    """Train the parameters of ``model`` that require grad; return the mean loss per epoch.

    ``x`` [N, ...] and ``y`` int64 [N] are the whole training set on the device. An epoch is
    ceil(samples / batch_size) steps, samples from ``config.epoch_samples``. Each step draws
    ``batch_size`` indices with ``config.sampler`` (instance: a fresh permutation per epoch,
    batches always full), builds the batch with ``augment`` (default: ``x[idx], y[idx]``),
    and takes one SGD step on ``loss_fn(model(xb), yb, epoch)``.
    """
    if augment is None and config.sampler is None:
        raise LtpipeError("train_head: sampler=None needs an augment hook that builds batches")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LtpipeError("train_head: the model has no trainable parameters")
    augment = augment or _default_batch
    sampler = LabelSampler(y, config.sampler) if config.sampler is not None else None
    bs = config.batch_size
    steps_per_epoch = max(1, math.ceil(samples_per_epoch(y, config.epoch_samples) / bs))
    total = config.iterations or config.epochs * steps_per_epoch
    opt = MomentumSGD(params, config.momentum, config.weight_decay)
    model.train()
    history: list[float] = []
    step = 0
    with cpu_threads(x.device, bs * x[0].numel()):
        while step < total:
            n_steps = min(steps_per_epoch, total - step)
            idx_all = (sampler.sample(n_steps * bs, generator).view(n_steps, bs)
                       if sampler is not None else None)
            running = torch.zeros((), device=x.device)
            for k in range(n_steps):
                xb, yb = augment(idx_all[k] if idx_all is not None else None, x, y, generator)
                loss = loss_fn(model(xb), yb, len(history))
                opt.zero_grad()
                loss.backward()
                opt.step(config.lr_at(step, total))
                running += loss.detach()
                step += 1
            history.append(_epoch_mean(running, n_steps, len(history)))
    return history


def _epoch_mean(running: torch.Tensor, n_steps: int, epoch: int) -> float:
    mean = float(running) / n_steps
    if not math.isfinite(mean):
        raise LtpipeError(f"training diverged: mean loss {mean} in epoch {epoch}; lower lr or "
                          "check the cached features for NaN/inf")
    return mean


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
