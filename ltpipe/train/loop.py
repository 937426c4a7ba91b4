"""The stage-one training loop: model, loss, SGD and data for one run, one epoch at a time.

``Stage1Trainer`` holds everything a step needs and nothing about files or signals (those are
``ltpipe.train.stage1``'s job), so the benchmark times exactly the loop the pipeline runs.

Randomness: every global RNG is seeded with ``seed`` before the model is built; the data order,
crops, flips and mixup draws of epoch e come from generators seeded by (seed, e), drawn in full
at the start of the epoch. Resuming at step k of epoch e re-draws epoch e and skips k steps, so
it sees exactly the batches an uninterrupted run sees. The AFA pair generator's state and every
global RNG state are saved in the checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ltpipe.data.augment import draw_mixup, mix
from ltpipe.data.batches import TrainBatches, compute_normalization, is_in_memory
from ltpipe.train.schedules import recipe_lr, set_lr
from ltpipe.utils import LtpipeError, seed_everything


class StopRequested(Exception):
    """Raised inside the loop when the stop flag is seen at a step boundary."""

    def __init__(self, epoch: int, step_in_epoch: int) -> None:
        super().__init__(f"stop requested at epoch {epoch}, step {step_in_epoch}")
        self.epoch, self.step_in_epoch = epoch, step_in_epoch


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for random stream ``stream`` of epoch ``epoch`` of run ``seed``."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


class Stage1Trainer:
    """One stage-one run: ``train_epoch`` for each epoch, ``state_dict`` to checkpoint it."""

    def __init__(self, train_data: Any, class_counts: Any, num_classes: int, recipe: dict,
                 device: str | torch.device, seed: int,
                 normalization: dict | None = None) -> None:
        from ltpipe.losses import build_loss
        from ltpipe.models import build_model

        self.cfg, self.seed = recipe, seed
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.normalization = normalization or compute_normalization(
            train_data, recipe["image_size"], workers=recipe["loader_workers"])
        in_channels = int(train_data.images.shape[-1]) if is_in_memory(train_data) else 3
        kwargs = dict(recipe["architecture_kwargs"])
        afa_model = None
        if recipe["afa"] is not None:
            afa_model = {k: v for k, v in recipe["afa"].items() if k not in ("t", "lam")}
            side = train_data.images.shape[1] if is_in_memory(train_data) else recipe["image_size"]
            kwargs.setdefault("input_size", int(side))
        seed_everything(seed)  # Python, NumPy and torch (CPU and CUDA) global RNGs
        self.model = build_model(recipe["architecture"], num_classes, in_channels=in_channels,
                                 head=recipe["head"], afa=afa_model, **kwargs)
        self.init_weights: dict[str, Any] | None = None
        if recipe["init_weights"] is not None:
            from ltpipe.models.init_weights import load_init_weights

            self.init_weights = load_init_weights(self.model, recipe["init_weights"])
        if recipe["frozen"]:  # only the head learns; the backbone keeps the file's weights
            for name, param in self.model.named_parameters():
                param.requires_grad_(name.startswith("head."))
        self.memory_format = (torch.channels_last if recipe["channels_last"]
                              else torch.contiguous_format)
        self.model.to(self.device, memory_format=self.memory_format)
        self.loss = build_loss(recipe["loss"], class_counts, **recipe["loss_settings"])
        self.loss.to(self.device)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trained, lr=recipe["lr"],
                                         momentum=recipe["momentum"], nesterov=recipe["nesterov"],
                                         weight_decay=recipe["weight_decay"],
                                         fused=True if self.on_gpu else None)
        self.batches = TrainBatches(train_data, self.normalization, recipe["batch_size"],
                                    self.device, recipe["augment"], recipe["image_size"],
                                    recipe["loader_workers"])
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.forward = self.model
        # CUDA-graph modes need each step marked (outputs of one replay are reused by the next)
        self.cudagraph_steps = False
        if recipe["compile"]:  # normalize_recipe refuses compile with afa
            mode = None if recipe["compile"] is True else recipe["compile"]
            self.forward = torch.compile(self.model, mode=mode)
            self.cudagraph_steps = mode in ("reduce-overhead", "max-autotune")  # no-op on CPU
        self.use_amp = self.on_gpu and recipe["amp"] == "bf16"
        self.global_step = 0
        self.afa_generator: torch.Generator | None = None
        self.partial: dict[str, float] = {}  # metrics of an interrupted epoch, for its resume
        self.check_every = 25 if self.on_gpu else 1  # steps between non-finite checks (a sync)

    # ---- one step -----------------------------------------------------------------------

    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _base_loss(self, epoch: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda logits, target: self.loss(logits.float(), target, epoch)

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, lam: float,
              perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        afa = self.cfg["afa"]
        if self.cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        with self._autocast():
            if afa is not None:
                from ltpipe.models.afa import lbls_loss

                out = self.model.afa_train_forward(x, y, self.afa_generator,
                                                   generate=epoch >= afa["t"])
                logits = out["logits"]
                loss = lbls_loss(out, y, epoch, self._base_loss(epoch), afa["t"], afa["lam"])
            elif lam != 1.0:
                from ltpipe.losses import mixup_loss

                logits = self.forward(mix(x, lam, perm))
                perm = perm.to(y.device)
                loss = mixup_loss(self.loss, logits.float(), y, y[perm], lam, epoch)
            else:
                logits = self.forward(x)
                loss = self.loss(logits.float(), y, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    # ---- one epoch ----------------------------------------------------------------------

    def _epoch_generators(self, epoch: int) -> tuple[torch.Generator, torch.Generator]:
        data_gen = torch.Generator().manual_seed(stream_seed(self.seed, epoch, 0))
        mix_gen = torch.Generator().manual_seed(stream_seed(self.seed, epoch, 1))
        return data_gen, mix_gen

    def _check_finite(self, pending: list[tuple[int, torch.Tensor]], epoch: int) -> None:
        if not pending:
            return
        values = torch.stack([v for _, v in pending]).float()
        bad = (~torch.isfinite(values)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise LtpipeError(
                f"non-finite training loss {float(values[i])} at epoch {epoch}, step "
                f"{pending[i][0]} (global step {pending[i][0] + epoch * self.steps_per_epoch}); "
                "lower the lr, add warm-up or check the loss settings and the input data. The "
                "last good checkpoint is kept")
        pending.clear()

    def train_epoch(self, epoch: int, start_step: int = 0, *,
                    should_stop: Callable[[], bool] = lambda: False,
                    on_step: Callable[[int], None] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Run steps ``start_step..`` of ``epoch``; return its metrics.

        ``should_stop()`` is polled at every step boundary; when true the loop raises
        ``StopRequested`` (after checking the losses so far are finite), leaving the trainer in
        a state ``state_dict`` can save. ``on_step(global_step)`` runs after every step.
        """
        # frozen: eval mode throughout (BatchNorm statistics and dropout of the backbone stay
        # as in the file; the head has neither)
        self.model.train(not self.cfg["frozen"])
        data_gen, mix_gen = self._epoch_generators(epoch)
        n_steps = self.steps_per_epoch
        lams, perms = draw_mixup(self.cfg["mixup_alpha"], n_steps, self.batches.batch_size,
                                 mix_gen)
        if start_step == 0 or self.afa_generator is None:
            self.afa_generator = torch.Generator(device=self.device)
            self.afa_generator.manual_seed(stream_seed(self.seed, epoch, 2))
        if start_step == 0:
            self.partial = {}
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        pending: list[tuple[int, torch.Tensor]] = []
        start = time.perf_counter()
        step = start_step
        for x, y in self.batches.epoch(data_gen, start_step):
            if should_stop():
                self._check_finite(pending, epoch)
                self._save_partial(loss_sum, correct, seen, time.perf_counter() - start)
                raise StopRequested(epoch, step)
            set_lr(self.optimizer, recipe_lr(self.cfg, self.global_step, n_steps))
            loss, logits = self._step(x, y, epoch, float(lams[step]), perms[step])
            pending.append((step, loss))
            loss_sum += loss.double() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
            step += 1
            self.global_step += 1
            if len(pending) >= self.check_every:
                self._check_finite(pending, epoch)
            if on_step is not None:
                on_step(self.global_step)
            if progress is not None:
                progress(step, n_steps)
        self._check_finite(pending, epoch)
        if seen == 0 and start_step < n_steps:
            raise LtpipeError("the training set yielded no batch; check the split's train part")
        return self._epoch_metrics(loss_sum, correct, seen, time.perf_counter() - start)

    def _save_partial(self, loss_sum, correct, seen, seconds) -> None:
        p = self.partial
        self.partial = {"loss_sum": p.get("loss_sum", 0.0) + float(loss_sum),
                        "correct": p.get("correct", 0) + int(correct),
                        "seen": p.get("seen", 0) + seen,
                        "seconds": p.get("seconds", 0.0) + seconds}

    def _epoch_metrics(self, loss_sum, correct, seen, seconds) -> dict[str, float]:
        self._save_partial(loss_sum, correct, seen, seconds)  # one sync per epoch
        p, self.partial = self.partial, {}
        n = max(p["seen"], 1)
        return {"loss": p["loss_sum"] / n, "acc": p["correct"] / n, "images": p["seen"],
                "seconds": p["seconds"], "images_per_s": p["seen"] / max(p["seconds"], 1e-9),
                "lr": self.optimizer.param_groups[0]["lr"]}

    # ---- evaluation ---------------------------------------------------------------------

    @torch.inference_mode()
    def evaluate(self, data: Any, batch_size: int) -> dict[str, float]:
        """Top-1 accuracy of the model's own head on ``data`` (no augmentation)."""
        from ltpipe.data.batches import eval_batches

        self.model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        total = 0
        for x, y, _ in eval_batches(data, self.normalization, batch_size, self.device):
            with self._autocast():
                logits = self.model(x)
            correct += (logits.argmax(1) == y).sum()
            total += y.shape[0]
        return {"acc": int(correct) / max(total, 1), "images": total}

    # ---- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, scheduler position, AFA generator and partial-epoch metrics."""
        return {
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": "stateless (lr = f(global_step))",
                          "global_step": self.global_step,
                          "lr": self.optimizer.param_groups[0]["lr"]},
            "scaler": None,  # bf16 autocast needs no gradient scaler
            "afa_generator": (self.afa_generator.get_state()
                              if self.afa_generator is not None else None),
            "partial": dict(self.partial),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved (the model keeps its device and memory format)."""
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.global_step = int(state["scheduler"]["global_step"])
        self.partial = dict(state.get("partial") or {})
        if state.get("afa_generator") is not None:
            self.afa_generator = torch.Generator(device=self.device)
            self.afa_generator.set_state(state["afa_generator"])
