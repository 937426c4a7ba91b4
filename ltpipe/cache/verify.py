"""Integrity check of a committed feature cache against its manifest.

:func:`verify_cache` re-reads every array a few chunks at a time, recomputes each chunk's
checksum (the manifest's ``checksum``: algorithm, rows per chunk, one value per chunk) and compares
it, the shape and the dtype with the manifest, naming the array and the chunks that differ.
"""

from __future__ import annotations

import os

import numpy as np

from ltpipe.cache.format import CacheError, bad_chunks, checksum_function, describe_bad_chunks
from ltpipe.cache.reader import CacheReader, open_cache

#: chunks read per call while verifying
_CHUNKS_PER_READ = 8


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
                problem = _verify_array(reader, key, entry)
            except Exception as err:  # noqa: BLE001 - any read failure is a finding, not a crash
                problem = f"cannot be read ({type(err).__name__}: {err})"
            if problem:
                problems.append(f"{key}: {problem} in {path}; rerun the cache dump")
    return problems


def _verify_array(reader: CacheReader, key: str, entry: dict) -> str | None:
    group, name = key.split("/")
    shape, dtype = reader.stored(group, name)
    want_shape, want_dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
    if shape != want_shape:
        return f"shape on disk {shape} differs from the manifest's {want_shape}"
    if dtype != want_dtype:
        return f"dtype on disk {dtype} differs from the manifest's {want_dtype}"
    spec = entry.get("checksum") or {}
    algorithm, values = spec.get("algorithm"), spec.get("values", [])
    if not shape:
        got = [checksum_function(str(algorithm))(
            np.asarray(reader.read(group, name, check=False), dtype))]
        return None if got == values else f"its {algorithm} checksum differs from the manifest's"
    size, rows = int(spec.get("chunk_rows", 0)), shape[0]
    count = -(-rows // size) if size > 0 else -1
    if count != len(values):
        return (f"the manifest has {len(values)} checksums for {rows} rows in chunks of "
                f"{size} rows; expected {count} (the manifest is damaged)")
    checksum = checksum_function(str(algorithm))
    bad, unreadable = [], []
    for first in range(0, count, _CHUNKS_PER_READ):
        lo, hi = first * size, min(rows, (first + _CHUNKS_PER_READ) * size)
        try:
            block = np.asarray(reader.read(group, name, slice(lo, hi), check=False), want_dtype)
        except Exception as err:  # noqa: BLE001 - name the chunks that cannot be read
            unreadable.append(f"chunks {first}-{-(-hi // size) - 1} ({type(err).__name__}: {err})")
            continue
        bad += bad_chunks(spec, block, first, checksum)
    parts = [f"{describe_bad_chunks(bad, size, rows, algorithm)} (the data on disk changed or "
             "is corrupted)"] if bad else []
    if unreadable:
        parts.append("cannot read " + "; ".join(unreadable))
    return "; ".join(parts) or None
