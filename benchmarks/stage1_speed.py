"""Stage-one speed: the ltpipe trainer vs a reference-style CIFAR loop, side by side.

Both train the same model (ResNet-32, same initial weights) with the same batch size and number
of timed steps on CIFAR-sized random uint8 data (the values do not matter for speed):

- reference: a torchvision-datasets-like ``Dataset`` returning PIL images through
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` into a
  ``DataLoader`` (``--ref-workers`` workers, pin_memory on GPU); fp32, NCHW, plain SGD step;
- ltpipe: ``Stage1Trainer.train_epoch``, the loop ``train_stage1`` runs (data on the device as
  uint8, batched crop/flip there, channels_last, bf16 autocast on GPU, optional torch.compile).

Usage (device auto: CUDA when present)::

    python benchmarks/stage1_speed.py [--rounds 5] [--steps 8] [--batch-size 128]
        [--threads 2] [--ref-workers 2] [--compile] [--device cpu|cuda]

The two loops alternate in rounds (a round of one, then a round of the other) so that a
shared machine's load drift hits both alike; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltpipe.data import InMemoryData  # noqa: E402
from ltpipe.models import build_model  # noqa: E402
from ltpipe.train.loop import Stage1Trainer  # noqa: E402
from ltpipe.train.recipe import normalize_recipe  # noqa: E402

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
    """Generator: each ``next()`` times one ``Stage1Trainer.train_epoch`` of ``steps`` steps."""
    n = batch_size * steps
    recipe = normalize_recipe({"backbone": "resnet32", "batch_size": batch_size, "epochs": 1000,
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
    p.add_argument("--compile", action="store_true", help="torch.compile the ltpipe model")
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
    ref = reference_rounds(images, labels, device, args.batch_size, args.warmup, args.steps,
                           args.ref_workers)
    ours = ltpipe_rounds(images, labels, device, args.batch_size, args.warmup, args.steps,
                         args.compile)
    rates = {"ref": [], "ours": []}
    for _ in range(args.rounds):  # alternate, so that load drift hits both loops alike
        rates["ref"].append(next(ref))
        rates["ours"].append(next(ours))
    amp = "bf16 autocast, " if device.type == "cuda" else ""
    label = f"ltpipe ({amp}channels_last{', compiled' if args.compile else ''})"
    print(f"{'loop':<42}{'median img/s':>14}   per round")
    for key, text in (("ref", "reference (PIL + DataLoader, fp32)"), ("ours", label)):
        rounds = " ".join(f"{r:.1f}" for r in rates[key])
        print(f"{text:<42}{statistics.median(rates[key]):>14.1f}   {rounds}")
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["ref"])
    per_round = " ".join(f"{o / r:.2f}" for o, r in zip(rates["ours"], rates["ref"]))
    print(f"ratio ltpipe / reference (medians): {ratio:.2f}x   per round: {per_round}")


if __name__ == "__main__":
    main()
