"""Split data -> device tensors: training batches, evaluation batches and input normalization.

Two kinds of data (``ltpipe.data.split_data``):

- ``InMemoryData`` (digits, Fashion-MNIST, CIFAR: ``images`` uint8 [N, H, W, C]): the training
  images go to the device ONCE as uint8 and every batch is gathered, augmented
  (``ltpipe.data.augment``) and normalized there; no per-image Python in the loop.
- ``FileListData`` (ImageNet-LT, Places-LT, iNaturalist): a ``DataLoader`` with workers,
  ``persistent_workers`` and ``pin_memory`` decodes JPEGs; training uses RandomResizedCrop
  (+ flip), evaluation Resize(side * 256 / 224) + CenterCrop(side). Workers return uint8 so
  that 4x fewer bytes cross to the device; normalization happens there.

The ``normalization`` dict stored with a model is ``{"mean": [C floats], "std": [C floats]}``
on the [0, 1] scale, computed on the training images; for file-list data it also holds
``"image_size"`` (the crop side), so evaluation needs nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ltpipe.data.augment import apply_crop_flip, augment_batch, default_pad, draw_crop_flip
from ltpipe.utils import LtpipeError

NORM_MAX_FILES = 2000  # file-list data: images sampled (evenly spaced) to estimate mean / std


def is_in_memory(data: Any) -> bool:
    """True for ``InMemoryData`` (has ``images``), False for ``FileListData``."""
    return hasattr(data, "images")


def subset(data: Any, indices: np.ndarray) -> Any:
    """The same kind of data record restricted to ``indices`` (positions in ``data``)."""
    indices = np.asarray(indices, dtype=np.int64)
    fields = {"labels": np.asarray(data.labels)[indices], "ids": np.asarray(data.ids)[indices]}
    if is_in_memory(data):
        fields["images"] = data.images[indices]
    else:
        fields["paths"] = [data.paths[i] for i in indices]
    return dataclasses.replace(data, **fields)


def compute_normalization(data: Any, image_size: int = 224,
                          workers: int | None = None) -> dict[str, Any]:
    """Per-channel mean and std (population, [0, 1] scale) of the training images."""
    if is_in_memory(data):
        images = data.images
        c = images.shape[-1]
        total = np.zeros(c)
        total_sq = np.zeros(c)
        for start in range(0, len(images), 4096):
            chunk = images[start:start + 4096].reshape(-1, c).astype(np.float64)
            total += chunk.sum(0)
            total_sq += (chunk * chunk).sum(0)
        count = images.size // c
        extra: dict[str, Any] = {}
    else:
        picks = np.unique(np.linspace(0, len(data) - 1, min(len(data), NORM_MAX_FILES)).astype(int))
        loader = _file_loader(subset(data, picks), _eval_transform(image_size), 256, "cpu",
                              workers=workers)
        total = total_sq = np.zeros(3)
        count = 0
        for imgs, _ in batches_of(loader):
            x = imgs.double().permute(0, 2, 3, 1).reshape(-1, imgs.shape[1]).numpy()
            total = total + x.sum(0)
            total_sq = total_sq + (x * x).sum(0)
            count += x.shape[0]
        extra = {"image_size": int(image_size)}
    mean = total / count / 255.0
    var = np.maximum(total_sq / count / 255.0**2 - mean**2, 0.0)
    std = np.maximum(np.sqrt(var), 1e-3)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], **extra}


def _norm_tensors(normalization: dict, device: str | torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=device)
    std = torch.tensor(normalization["std"], dtype=torch.float32, device=device)
    return mean, std


def normalize_nchw(imgs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (any memory format) -> float32 channels_last, (x / 255 - mean) / std."""
    x = imgs.float().contiguous(memory_format=torch.channels_last)
    return x.mul_(1.0 / 255.0).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def _nhwc_to_input(imgs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> normalized float NCHW whose memory is channels_last (no copy)."""
    return normalize_nchw(imgs.permute(0, 3, 1, 2), mean, std)


# ---- file-list plumbing -------------------------------------------------------------------

def _eval_transform(size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()])


def _train_transform(size: int, augment: str):
    from torchvision import transforms as T

    if augment == "none":
        return _eval_transform(size)
    steps = [T.RandomResizedCrop(size)]
    if augment == "crop_flip":
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.PILToTensor()])


class _ListSampler(torch.utils.data.Sampler):
    """Yields whatever index list the trainer set for the current epoch (persistent workers)."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _file_loader(data: Any, transform, batch_size: int, device: str | torch.device, *,
                 sampler=None, workers: int | None = None, drop_last: bool = False,
                 seed: int = 0):
    from torch.utils.data import DataLoader

    from ltpipe.data.torch_dataset import FileListDataset

    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    return DataLoader(FileListDataset(data, transform), batch_size=batch_size, sampler=sampler,
                      shuffle=False, drop_last=drop_last, num_workers=workers,
                      persistent_workers=workers > 0 and sampler is not None,
                      pin_memory=torch.device(device).type == "cuda",
                      generator=torch.Generator().manual_seed(seed))


def batches_of(loader) -> Iterator:
    """Iterate a DataLoader. An ``LtpipeError`` raised in a worker (a corrupt image, say) comes
    back as itself with its own one-line message, not wrapped in the worker's traceback text."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except LtpipeError as err:
            raise LtpipeError(worker_message(str(err))) from None
        yield batch


def worker_message(text: str) -> str:
    """The original message of an error that torch re-raised from a DataLoader worker."""
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split("LtpipeError: ", 1)[-1].strip()


# ---- training batches ---------------------------------------------------------------------

class TrainBatches:
    """Shuffled, augmented training batches; epoch e's order and draws come from a generator.

    ``epoch(generator, start_step)`` yields (x float normalized NCHW, y) for steps
    ``start_step .. steps_per_epoch - 1``; the incomplete last batch is dropped (unless the
    whole set is smaller than one batch). Skipping to ``start_step`` draws exactly the same
    random numbers as a full epoch, so a resumed epoch continues the interrupted one.
    """

    def __init__(self, data: Any, normalization: dict, batch_size: int,
                 device: str | torch.device, augment: str = "crop_flip",
                 image_size: int = 224, workers: int = 4) -> None:
        self.n = len(data.labels)
        self.batch_size = min(batch_size, self.n)
        self.steps_per_epoch = self.n // self.batch_size
        self.device = torch.device(device)
        self.augment = augment
        self.in_memory = is_in_memory(data)
        self.mean, self.std = _norm_tensors(normalization, self.device)
        if self.in_memory:
            self.images = torch.from_numpy(np.ascontiguousarray(data.images)).to(self.device)
            self.labels = torch.from_numpy(np.asarray(data.labels, np.int64)).to(self.device)
            self.pad = default_pad(min(self.images.shape[1], self.images.shape[2]))
        else:
            self.sampler = _ListSampler()
            self.loader = _file_loader(data, _train_transform(image_size, augment),
                                       self.batch_size, self.device, sampler=self.sampler,
                                       workers=workers, drop_last=True)

    def epoch(self, generator: torch.Generator, start_step: int = 0
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(self.n, generator=generator)
        if not self.in_memory:
            self.sampler.indices = perm[start_step * self.batch_size:].tolist()
            for imgs, y in batches_of(self.loader):
                x = normalize_nchw(imgs.to(self.device, non_blocking=True), self.mean, self.std)
                yield x, y.to(self.device, non_blocking=True)
            return
        draws = None
        if self.augment != "none":
            flip = self.augment == "crop_flip"
            draws = [t.to(self.device) for t in draw_crop_flip(self.n, self.pad, flip, generator)]
        perm = perm.to(self.device)
        b = self.batch_size
        for step in range(start_step, self.steps_per_epoch):
            idx = perm[step * b:(step + 1) * b]
            imgs = self.images[idx]
            if draws is not None:
                imgs = apply_crop_flip(imgs, self.pad, *(d[step * b:(step + 1) * b] for d in draws))
            yield _nhwc_to_input(imgs, self.mean, self.std), self.labels[idx]


# ---- evaluation batches -------------------------------------------------------------------

def eval_batches(data: Any, normalization: dict, batch_size: int, device: str | torch.device
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x float normalized NCHW, y int64, ids int64) on ``device``, in data order, no augmentation.

    For the cache dump and evaluation. File-list data use Resize + CenterCrop to
    ``normalization["image_size"]``.
    """
    yield from _ordered_batches(data, normalization, batch_size, device, None, 0)


def _ordered_batches(data, normalization, batch_size, device, augment, seed):
    device = torch.device(device)
    mean, std = _norm_tensors(normalization, device)
    ids_all = torch.from_numpy(np.asarray(data.ids, dtype=np.int64))
    labels_all = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
    if is_in_memory(data):
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(labels_all), batch_size):
            end = start + batch_size
            imgs = torch.from_numpy(np.ascontiguousarray(data.images[start:end])).to(device)
            if augment is not None:
                imgs = augment_batch(imgs, augment, generator)
            yield (_nhwc_to_input(imgs, mean, std), labels_all[start:end].to(device),
                   ids_all[start:end].to(device))
        return
    size = int(normalization.get("image_size", 224))
    transform = _eval_transform(size) if augment is None else _train_transform(size, augment)
    start = 0
    for imgs, y in batches_of(_file_loader(data, transform, batch_size, device, seed=seed)):
        end = start + len(y)
        yield (normalize_nchw(imgs.to(device, non_blocking=True), mean, std), y.to(device),
               ids_all[start:end].to(device))
        start = end
