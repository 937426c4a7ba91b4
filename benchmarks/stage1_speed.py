"""Stage-one speed: the ltpipe trainer vs a reference-style CIFAR loop, side by side.

Both train the same model (ResNet-32, same initial weights) with the same batch size and number
of timed steps on CIFAR-sized random uint8 data (the values do not matter for speed):

- reference: a torchvision-datasets-like ``Dataset`` returning PIL images through
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` into a
  ``DataLoader`` (``--ref-workers`` workers, pin_memory on GPU); fp32, NCHW, plain SGD step;
  the blocks computed as the reference CIFAR ResNet code writes them (``relu(bn1(conv1(x)))``,
  ``out += shortcut(x)``, ``relu(out)``: new tensors where ltpipe's blocks work in place; the
  same arithmetic, bit for bit);
- ltpipe: ``Stage1Trainer.train_epoch``, the loop ``train_stage1`` runs (data on the device as
  uint8, batched crop/flip there, channels_last, bf16 autocast on GPU);
- with ``--compile``, a third loop: the same trainer with ``compile: <--compile-mode>``
  (torch.compile; its compile time falls in the untimed warm-up epochs).

Usage (device auto: CUDA when present)::

    python benchmarks/stage1_speed.py [--rounds 5] [--steps 8] [--batch-size 128]
        [--threads 2] [--ref-workers 2] [--compile [--compile-mode MODE]] [--device cpu|cuda]

The loops alternate in rounds (a round of each in turn) so that a shared machine's load drift
hits all alike. Printed: each loop's median images/s, and each ratio to the reference twice: as
the ratio of the medians and as the median of the per-round ratios (a round of ltpipe over the
reference round just before it), which is the steadier of the two on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltpipe.data import InMemoryData  # noqa: E402
from ltpipe.models import build_model  # noqa: E402
from ltpipe.models.cifar_resnet import BasicBlockA  # noqa: E402
from ltpipe.train.loop import Stage1Trainer  # noqa: E402
from ltpipe.train.recipe import COMPILE_MODES, normalize_recipe  # noqa: E402

NUM_CLASSES = 10


class PilArrayDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: array -> PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_block_forward(self: BasicBlockA, x: torch.Tensor) -> torch.Tensor:
    """A basic block as the reference CIFAR ResNet code computes it (out-of-place ReLUs)."""
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    out += self.shortcut(x)
    return F.relu(out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_rounds(images, labels, device, batch_size, warmup, steps, workers):
    """Generator: after ``warmup`` untimed steps, each ``next()`` times ``steps`` more steps."""
    from torchvision import transforms as T

    mean = images.reshape(-1, 3).mean(0) / 255
    std = images.reshape(-1, 3).std(0) / 255
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean.tolist(), std.tolist())])
    loader = torch.utils.data.DataLoader(
        PilArrayDataset(images, labels, transform), batch_size=batch_size, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = build_model("resnet32", NUM_CLASSES).to(device)
    for block in model.modules():
        if isinstance(block, BasicBlockA):
            block.forward = types.MethodType(reference_block_forward, block)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()

    def batches():
        while True:
            yield from loader

    it = batches()

    def run(n: int) -> None:
        for _ in range(n):
            x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    run(warmup)
    while True:
        yield _timed(run, steps, batch_size, device)


def ltpipe_rounds(images, labels, device, batch_size, warmup, steps, compile_):
    """Generator: each ``next()`` times one ``Stage1Trainer.train_epoch`` of ``steps`` steps.

    ``compile_``: the recipe's ``compile`` value (False, True or a torch.compile mode)."""
    n = batch_size * steps
    recipe = normalize_recipe({"architecture": "resnet32", "batch_size": batch_size, "epochs": 1000,
                               "warmup_epochs": 0, "augment": "crop_flip", "compile": compile_})
    data = InMemoryData(images=images[:n], labels=labels[:n], ids=np.arange(n))
    counts = np.bincount(labels[:n], minlength=NUM_CLASSES)
    trainer = Stage1Trainer(data, counts, NUM_CLASSES, recipe, device, seed=0)
    epoch = 0

    def run(_: int) -> None:
        nonlocal epoch
        trainer.train_epoch(epoch)
        epoch += 1

    while warmup > 0:  # whole warm-up epochs (compiling, allocator, cudnn autotuning)
        run(0)
        warmup -= steps
    while True:
        yield _timed(run, steps, batch_size, device)


def _timed(run, steps: int, batch_size: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    run(steps)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5,
                   help="timed rounds per loop, alternating between the loops")
    p.add_argument("--steps", type=int, default=8, help="steps per timed round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--ref-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers of the reference loop")
    p.add_argument("--compile", action="store_true",
                   help="also time the ltpipe trainer with torch.compile (a third loop)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode of that loop")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    n = args.batch_size * args.steps * 4
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch threads {torch.get_num_threads()}, cpu cores "
          f"{os.cpu_count()}, ResNet-32, batch {args.batch_size}, {args.rounds} alternating "
          f"rounds of {args.steps} timed steps after {args.warmup} warm-up steps, reference "
          f"workers {args.ref_workers}")
    loops = {"ref": ("reference (PIL + DataLoader, fp32)",
                     reference_rounds(images, labels, device, args.batch_size, args.warmup,
                                      args.steps, args.ref_workers))}
    amp = "bf16 autocast, " if device.type == "cuda" else ""
    loops["ours"] = (f"ltpipe ({amp}channels_last)",
                     ltpipe_rounds(images, labels, device, args.batch_size, args.warmup,
                                   args.steps, False))
    if args.compile:
        mode = args.compile_mode
        loops["compiled"] = (f"ltpipe ({amp}channels_last, compile {mode})",
                             ltpipe_rounds(images, labels, device, args.batch_size, args.warmup,
                                           args.steps, True if mode == "default" else mode))
    rates: dict[str, list[float]] = {key: [] for key in loops}
    for _ in range(args.rounds):  # alternate, so that load drift hits every loop alike
        for key, (_, rounds) in loops.items():
            rates[key].append(next(rounds))
    width = max(len(text) for text, _ in loops.values()) + 2
    print(f"{'loop':<{width}}{'median img/s':>14}   per round")
    for key, (text, _) in loops.items():
        per_round = " ".join(f"{r:.1f}" for r in rates[key])
        print(f"{text:<{width}}{statistics.median(rates[key]):>14.1f}   {per_round}")
    ref = statistics.median(rates["ref"])
    for key, (text, _) in loops.items():
        if key == "ref":
            continue
        paired = [o / r for o, r in zip(rates[key], rates["ref"], strict=True)]
        print(f"ratio {text} / reference: {statistics.median(rates[key]) / ref:.2f}x of the "
              f"medians, {statistics.median(paired):.2f}x median of the rounds' ratios "
              f"({' '.join(f'{r:.2f}' for r in paired)})")


if __name__ == "__main__":
    main()
