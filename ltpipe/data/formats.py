"""Readers for on-disk image array formats: IDX (MNIST family) and CIFAR's python pickles.

Both return NHWC ``uint8`` images and ``int64`` labels. The CIFAR layout is the one torchvision
downloads (``cifar-10-batches-py/`` and ``cifar-100-python/``), read here without torchvision.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.utils import LtpipeError, sha256_file

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

CIFAR_LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
        "labels_key": "labels",
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
        "labels_key": "fine_labels",
        "num_classes": 100,
    },
}

_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_CIFAR_CACHE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()


def file_digest(path: Path) -> str:
    """SHA-256 of a file, memoized in-process on (path, size, mtime) so repeats are free."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into an array of its declared type and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            blob = fh.read()
    except (OSError, EOFError) as exc:
        raise LtpipeError(
            f"cannot read IDX file {path}: {exc}; re-download or re-install it"
        ) from exc
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_DTYPES:
        raise LtpipeError(
            f"{path} is not an IDX file (bad magic {blob[:4].hex()}); expected the MNIST-style "
            "format, e.g. train-images-idx3-ubyte(.gz)"
        )
    ndim = blob[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", blob[4:header])
    dtype = np.dtype(_IDX_DTYPES[blob[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(blob) - header != expected:
        raise LtpipeError(
            f"IDX file {path} declares shape {shape} ({expected} bytes of data) but holds "
            f"{len(blob) - header}; the file is truncated or corrupt, re-download it"
        )
    arr = np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def find_idx(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``, whichever exists (raw wins)."""
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise LtpipeError(
        f"IDX file {stem}(.gz) not found in {root}; put the four MNIST-style files "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, gzipped or not) there, or set dataset.root"
    )


def cifar_dir(root: Path, source: str) -> Path:
    """The folder holding the CIFAR pickles: ``root/<folder>`` or ``root`` itself."""
    layout = CIFAR_LAYOUTS[source]
    for cand in (root / layout["folder"], root):
        if (cand / layout["train"][0]).is_file():
            return cand
    return root / layout["folder"]


def cifar_missing(root: Path, source: str) -> list[str]:
    """Names of the CIFAR pickle files missing under ``root``."""
    layout = CIFAR_LAYOUTS[source]
    folder = cifar_dir(root, source)
    names = [*layout["train"], *layout["test"], layout["meta"]]
    return [n for n in names if not (folder / n).is_file()]


def cifar_files(root: Path, source: str) -> list[Path]:
    """All CIFAR pickle files of ``source`` under ``root`` (train, test, meta)."""
    layout = CIFAR_LAYOUTS[source]
    folder = cifar_dir(root, source)
    return [folder / n for n in (*layout["train"], *layout["test"], layout["meta"])]


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise LtpipeError(
            f"cannot unpickle CIFAR file {path}: {exc}; replace it with the original from "
            "the CIFAR python archive"
        ) from exc
    if not isinstance(obj, dict):
        raise LtpipeError(f"CIFAR file {path} holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if "data" not in batch or labels_key not in batch:
        raise LtpipeError(
            f"CIFAR file {path} lacks keys 'data' and {labels_key!r} (has {sorted(batch)}); "
            "is it the right data set (CIFAR-10 vs CIFAR-100)?"
        )
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[labels_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.size:
        raise LtpipeError(
            f"CIFAR file {path}: data shape {data.shape} with {labels.size} labels; expected "
            "[N, 3072] rows (R, G, B planes of 32x32) and N labels"
        )
    return data, labels


def _rows_to_nhwc(batches: list[np.ndarray]) -> np.ndarray:
    """CIFAR rows (R, G, B planes of 32x32 each) to one ``[N, 32, 32, 3]`` array, one copy."""
    out = np.empty((sum(b.shape[0] for b in batches), 1024, 3), dtype=np.uint8)
    start = 0
    for rows in batches:
        for ch in range(3):  # contiguous reads, strided writes: far faster than a 4-d transpose
            out[start:start + rows.shape[0], :, ch] = rows[:, ch * 1024:(ch + 1) * 1024]
        start += rows.shape[0]
    return out.reshape(-1, 32, 32, 3)


def read_cifar(root: Path, source: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 32, 32, 3]`` and labels ``int64 [N]`` of CIFAR ``part`` (train/test).

    The train batches are concatenated in file order, so row k is the source's train image k.
    The last two parts read are memoized (read-only arrays), keyed on the files' size and
    mtime, so building a split and then loading its data reads the pickles once.
    """
    layout = CIFAR_LAYOUTS[source]
    folder = cifar_dir(root, source)
    paths = [folder / name for name in layout[part]]
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key in _CIFAR_CACHE:
        _CIFAR_CACHE.move_to_end(key)
        return _CIFAR_CACHE[key]
    batches = [_read_batch(p, layout["labels_key"]) for p in paths]
    images = _rows_to_nhwc([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    images.setflags(write=False)
    labels.setflags(write=False)
    _CIFAR_CACHE[key] = (images, labels)
    while len(_CIFAR_CACHE) > 2:
        _CIFAR_CACHE.popitem(last=False)
    return images, labels


def read_cifar_names(root: Path, source: str) -> list[str]:
    """Class names from the CIFAR meta pickle."""
    layout = CIFAR_LAYOUTS[source]
    path = cifar_dir(root, source) / layout["meta"]
    names = _unpickle(path).get(layout["names_key"])
    if names is None or len(names) != layout["num_classes"]:
        raise LtpipeError(
            f"CIFAR meta file {path} must list {layout['num_classes']} class names under "
            f"{layout['names_key']!r}"
        )
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
