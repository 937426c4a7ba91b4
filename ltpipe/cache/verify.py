"""Integrity check of a committed feature cache against its manifest.

:func:`verify_cache` re-reads every array block by block, recomputes the sha256 of its C-order
bytes and compares it, the shape and the dtype with the manifest, without ever holding a whole
large array in memory.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from ltpipe.cache.store import CacheError, open_cache


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Problems found in the cache at ``path``, each naming its ``group/name``; [] if all good.

    A cache that cannot be opened at all (missing, incomplete) gives one problem saying why.
    """
    try:
        reader = open_cache(path)
    except CacheError as err:
        return [str(err)]
    problems = []
    with reader:
        for key, entry in sorted(reader.manifest.get("arrays", {}).items()):
            try:
                problem = _verify_array(reader._impl, key, entry)
            except Exception as err:  # noqa: BLE001 - any read failure is a finding, not a crash
                problem = f"cannot be read ({type(err).__name__}: {err})"
            if problem:
                problems.append(f"{key}: {problem} in {path}; rerun the cache dump")
    return problems


def _verify_array(impl: Any, key: str, entry: dict) -> str | None:
    shape, dtype = impl.meta(key)
    want_shape, want_dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
    if shape != want_shape:
        return f"shape on disk {shape} differs from the manifest's {want_shape}"
    if dtype != want_dtype:
        return f"dtype on disk {dtype} differs from the manifest's {want_dtype}"
    hasher = hashlib.sha256()
    if not shape:
        hasher.update(memoryview(np.ascontiguousarray(impl.read_range(key, 0, 0))).cast("B"))
    else:
        step = impl.block_rows(key)
        for start in range(0, shape[0], step):
            block = np.ascontiguousarray(impl.read_range(key, start, min(shape[0], start + step)))
            hasher.update(memoryview(block).cast("B"))
    if hasher.hexdigest() != entry["sha256"]:
        return (f"sha256 {hasher.hexdigest()[:12]}... differs from the manifest's "
                f"{entry['sha256'][:12]}... (the data on disk changed or is corrupted)")
    return None
