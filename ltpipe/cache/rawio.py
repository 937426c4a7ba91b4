"""Raw file I/O shared by the cache backends: page-aligned arrays and ``preadv`` into them."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def empty_aligned(shape: tuple[int, ...], dtype: Any, align: int = 4096) -> np.ndarray:
    """``np.empty`` whose data starts on an ``align``-byte boundary (for arrays of 64 KiB on).

    numpy's large allocations start 16 bytes past a page boundary, and the kernel copies page
    cache pages into such a buffer about 3x slower than into an aligned one (measured with
    ``preadv`` on this project's machines), which alone halves whole-array read speed.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < 1 << 16:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def pread_into(fd: int, dst: np.ndarray | memoryview, offset: int) -> None:
    """Fill ``dst`` (a contiguous buffer) with the file's bytes from ``offset``; no copies."""
    view = memoryview(dst).cast("B")
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], offset + done)
        else:  # pragma: no cover - platforms without preadv
            os.lseek(fd, offset + done, os.SEEK_SET)
            got = os.readv(fd, [view[done:]])
        if got <= 0:
            raise OSError(f"file ends {len(view) - done} bytes early at offset {offset + done}")
        done += got
