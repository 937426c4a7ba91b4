"""Batched on-device augmentation of uint8 images, and mixup.

In-memory data sets live on the training device as uint8 [N, H, W, C]; a batch is augmented by
one gather, with no per-image Python:

- ``crop_flip``: zero-pad by ``pad`` pixels on each side, take a random H x W crop (offsets
  uniform in [0, 2 * pad]) and flip horizontally with probability 1/2: torchvision's
  ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()``, the CIFAR reference augmentation.
- ``crop``: the same without the flip (for digits, where a mirrored digit is another glyph).
- ``none``: identity.

The pad is ``default_pad(side) = max(1, side // 8)``: 4 px at 32x32 (the CIFAR reference), 3 px
at 28x28 (Fashion-MNIST: a mild shift of about 10 %), 1 px at 8x8 (digits). Random draws come
from a CPU ``torch.Generator`` (then move to the device), so a seed gives the same crops and
flips on every device.
"""

from __future__ import annotations

import numpy as np
import torch

AUGMENTS = ("crop_flip", "crop", "none")


def default_pad(side: int) -> int:
    """Padding of the random crop for an image side of ``side`` pixels."""
    return max(1, side // 8)


def draw_crop_flip(n: int, pad: int, flip: bool, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random offsets dy, dx in [0, 2 * pad] and flip flags (all int64 [n], on the CPU)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    if flip:
        flips = torch.randint(0, 2, (n,), generator=generator)
    else:
        flips = torch.zeros(n, dtype=torch.int64)
    return dy, dx, flips


def apply_crop_flip(images: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor,
                    flips: torch.Tensor) -> torch.Tensor:
    """Crop-with-zero-padding and flip a batch of uint8 images [B, H, W, C] by one gather.

    Output pixel (i, j) of image b is padded[b, dy_b + i, dx_b + j'] with j' = W - 1 - j when
    the image is flipped, else j: the flip of the crop, as RandomCrop then RandomHorizontalFlip.
    """
    b, h, w, c = images.shape
    dev = images.device
    padded = images.new_zeros((b, h + 2 * pad, w + 2 * pad, c))
    padded[:, pad:pad + h, pad:pad + w] = images
    dy, dx, flips = dy.to(dev), dx.to(dev), flips.to(dev).bool()
    rows = dy[:, None] + torch.arange(h, device=dev)[None, :]
    j = torch.arange(w, device=dev)[None, :]
    cols = dx[:, None] + torch.where(flips[:, None], w - 1 - j, j)
    return padded[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augment_batch(images: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """Augment uint8 images [B, H, W, C] with ``augment`` (see the module docstring)."""
    if augment == "none":
        return images
    pad = default_pad(min(images.shape[1], images.shape[2]))
    dy, dx, flips = draw_crop_flip(images.shape[0], pad, augment == "crop_flip", generator)
    return apply_crop_flip(images, pad, dy, dx, flips)


def draw_mixup(alpha: float, steps: int, batch_size: int, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup coefficients lam ~ Beta(alpha, alpha) [steps] and partner permutations [steps, B].

    ``alpha == 0`` means no mixup: lam = 1 and the identity permutation. lam comes from a NumPy
    generator seeded by one draw of ``generator`` (torch has no seeded Beta sampler).
    """
    if alpha <= 0:
        return torch.ones(steps, dtype=torch.float64), torch.arange(batch_size).repeat(steps, 1)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=steps))
    perms = torch.rand(steps, batch_size, generator=generator).argsort(dim=1)
    return lam, perms


def mix(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam * x + (1 - lam) * x[perm] (returns ``x`` itself when lam == 1)."""
    if lam == 1.0:
        return x
    return x.mul(lam).add_(x[perm.to(x.device)], alpha=1.0 - lam)
