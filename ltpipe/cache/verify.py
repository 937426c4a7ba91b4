"""Integrity check of a committed feature cache against its manifest.

:func:`verify_cache` re-reads every array a few chunks at a time, recomputes each chunk's
checksum (the manifest's ``checksum``: algorithm, rows per chunk, one value per chunk) and compares
it, the shape and the dtype with the manifest, naming the array and the chunks that differ.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ltpipe.cache.reader import open_cache
from ltpipe.cache.store import CacheError, checksum_function

#: chunks read per call while verifying
_CHUNKS_PER_READ = 8
#: bad chunks named one by one in a problem before the rest are only counted
_NAMED = 5


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Problems found in the cache at ``path``, each naming its ``group/name``; [] if all good.

    A bad chunk is named by its index and rows (``chunk 3 (rows 192:256)``). A cache that cannot
    be opened at all (missing, incomplete, another format version) gives one problem saying why.
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
    spec = entry.get("checksum") or {}
    algorithm, values = spec.get("algorithm"), spec.get("values", [])
    checksum = checksum_function(str(algorithm))
    if not shape:
        got = [checksum(np.asarray(impl.read_range(key, 0, 0), want_dtype))]
        return None if got == values else f"its {algorithm} checksum differs from the manifest's"
    size, rows = int(spec.get("chunk_rows", 0)), shape[0]
    count = -(-rows // size) if size > 0 else -1
    if count != len(values):
        return (f"the manifest has {len(values)} checksums for {rows} rows in chunks of "
                f"{size} rows; expected {count} (the manifest is damaged)")
    bad, unreadable = [], []
    for first in range(0, count, _CHUNKS_PER_READ):
        lo, hi = first * size, min(rows, (first + _CHUNKS_PER_READ) * size)
        try:
            block = np.asarray(impl.read_range(key, lo, hi), want_dtype)
        except Exception as err:  # noqa: BLE001 - name the chunks that cannot be read
            unreadable.append(f"chunks {first}-{-(-hi // size) - 1} ({type(err).__name__}: {err})")
            continue
        for j in range(0, hi - lo, size):
            if checksum(block[j:j + size]) != values[first + j // size]:
                bad.append(first + j // size)
    return _describe(algorithm, size, rows, bad, unreadable)


def _describe(algorithm: str, size: int, rows: int, bad: list[int],
              unreadable: list[str]) -> str | None:
    parts = []
    if bad:
        named = ", ".join(f"chunk {i} (rows {i * size}:{min(rows, (i + 1) * size)})"
                          for i in bad[:_NAMED])
        more = f" and {len(bad) - _NAMED} more" if len(bad) > _NAMED else ""
        parts.append(f"{named}{more} fail their {algorithm} checksum (the data on disk changed "
                     "or is corrupted)")
    if unreadable:
        parts.append("cannot read " + "; ".join(unreadable))
    return "; ".join(parts) or None
