"""Torch ``Dataset`` over a :class:`FileListData`: lazy PIL decoding of list-file images.

Kept in its own module so that importing ``ltpipe.data`` does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ltpipe.data.listfile import FileListData
from ltpipe.utils import LtpipeError


class FileListDataset(Dataset):
    """Item ``i`` is ``(transform(rgb PIL image), label)``; ``data.ids[i]`` is its source id.

    A missing or undecodable image raises :class:`LtpipeError` naming the file.
    """

    def __init__(self, data: FileListData, transform: Callable[[Any], Any] | None = None):
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image, UnidentifiedImageError

        path = self.data.root / self.data.paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except FileNotFoundError:
            raise LtpipeError(
                f"image {path} not found; check dataset.root (the folder the list-file paths "
                "are relative to)"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise LtpipeError(
                f"image {path} is corrupt or not an image ({exc}); replace or re-extract it"
            ) from exc
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.data.labels[i])
