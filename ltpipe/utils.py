"""Small shared helpers: atomic writes, hashing, JSON I/O, seeding, errors."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import random
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


class LtpipeError(Exception):
    """Bad input or a bad artifact; the message says what is wrong and how to fix it."""


def _host() -> str:
    """This machine's short host name, with characters unsafe in a file name replaced."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname().split(".")[0]) or "host"


def tmp_sibling(path: str | os.PathLike) -> Path:
    """A temporary name in the same directory as ``path`` (same filesystem, so rename is atomic).

    The name is ``.<name>.tmp-<host>-<pid>-<random>``. Temporaries of ``path`` that a killed
    process left behind (same host, process no longer running) are removed first, so a killed
    dump or training job does not leave its partial output on disk for good.
    """
    path = Path(path)
    remove_stale_tmps(path)
    return path.with_name(
        f".{path.name}.tmp-{_host()}-{os.getpid()}-{random.randrange(1 << 30):08x}")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_tmps(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ``path`` (see ``tmp_sibling``) whose writer is gone: made on this host by
    a process that is no longer running. Those of other hosts (a shared filesystem) or of a
    running process are never listed."""
    path = Path(path)
    prefix = f".{path.name}.tmp-"
    host, found = _host(), []
    if not path.parent.is_dir():
        return found
    for entry in path.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        parts = entry.name[len(prefix):].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue  # another host's, or an older name without the host: not ours to judge
        pid = int(parts[1])
        if pid != os.getpid() and not _pid_running(pid):
            found.append(entry)
    return sorted(found)


def remove_stale_tmps(path: str | os.PathLike) -> list[Path]:
    """Remove ``stale_tmps(path)``; log (warning) and return what was removed."""
    removed = []
    for entry in stale_tmps(path):
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        except OSError as err:
            logging.getLogger("ltpipe").warning("could not remove stale temporary %s: %s",
                                                entry, err)
            continue
        removed.append(entry)
        logging.getLogger("ltpipe").warning(
            "ltpipe: removed %s, a partial output of process %s, which is no longer running",
            entry, entry.name.rsplit("-", 2)[1])
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success rename it onto ``path``, on error remove it.

    Works for files and directories. Nothing is left at ``path`` unless the block finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
            fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_array(arr: np.ndarray) -> str:
    """Hex SHA-256 of an array's dtype, shape and C-ordered bytes."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """Short hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) PyTorch RNGs."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.manual_seed(seed)


def cosine_decay(progress: float, start: float, end: float = 0.0) -> float:
    """Half-cosine from ``start`` (progress 0) to ``end`` (progress 1): the lr schedule of both
    stages (stage one per fractional epoch after warm-up, the classifier stage per step)."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def lazy_getattr(package: str, names: dict[str, str], prepare: str) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` (PEP 562) that imports each of ``names`` (attribute ->
    the module defining it) on first use, after calling ``prepare`` ("module:function", e.g. the
    registration of the built-ins): the package itself imports nothing heavy."""
    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, function = prepare.split(":")
        getattr(importlib.import_module(module), function)()
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__

