"""The feature cache's writer: :class:`CacheWriter`.

A cache holds arrays addressed as ``group/name`` (e.g. ``train/fmap``) plus a JSON manifest.
:class:`CacheWriter` streams rows into a temporary sibling of the final path, one storage chunk
(about ``chunk_mb`` MB of rows along axis 0) at a time, records a checksum of every chunk's C-order
bytes (XXH3-64 where xxhash is installed, see :func:`ltpipe.cache.format.default_checksum`: cheap
enough to cost a fraction of the write, and it lets :func:`ltpipe.cache.verify_cache` name the
exact chunk that changed) and, on :meth:`CacheWriter.commit`, writes the manifest last
and renames the whole cache into place. What the writer, reader and verifier share is in
:mod:`ltpipe.cache.format`; the backends (``zarr_backend``, ``hdf5_backend``) are imported only
when used.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.cache.format import (
    CACHE_FORMAT_VERSION,
    backend_module,
    checksum_function,
    default_checksum,
    detect_backend,
    read_manifest,
)
from ltpipe.utils import LtpipeError, _json_default, tmp_sibling

RESERVED_KEYS = ("format_version", "backend", "arrays", "complete")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: whole chunks handed to the backend per call (bounds the copy of a non-contiguous input)
_CHUNKS_PER_PUT = 8


def _is_complete(path: Path, kind: str) -> bool:
    try:
        return read_manifest(path, kind) is not None
    except (OSError, ValueError):
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ----------------------------------------------------------------------- writer
@dataclass
class _Stream:
    """Write state of one array: at most one partial chunk of rows and the chunk checksums."""

    tail: tuple[int, ...]
    dtype: np.dtype
    chunk_rows: int
    expected_rows: int | None
    rows: int = 0
    filled: int = 0
    buffer: np.ndarray | None = None
    sums: list[int] = field(default_factory=list)


class CacheWriter:
    """Write a cache under a temporary sibling of ``path``; :meth:`commit` renames it into place.

    Args:
        path: final path, a directory for zarr (``cache.zarr``) or a file for HDF5 (``cache.h5``).
        backend: ``zarr`` or ``hdf5``.
        compression: zarr: none | zstd | lz4 | blosc; hdf5: none | gzip | lzf. Feature arrays
            compress poorly, and every codec costs far more time than it saves on a local disk
            (see benchmarks/cache_io.py), hence the default ``none``.
        level: compression level (zstd/blosc/gzip).
        chunk_mb: target chunk size along axis 0 in MB (arrays smaller than this: one chunk).
        overwrite: replace an existing cache at ``path`` on commit.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "zarr", compression: str = "none",
                 level: int = 1, chunk_mb: float = 1.0, overwrite: bool = False) -> None:
        self.path, self.backend = Path(path), backend
        mod = backend_module(backend)
        mod.check_compression(compression)
        if not chunk_mb > 0:
            raise LtpipeError(f"chunk_mb must be > 0, got {chunk_mb!r}")
        self._check_target(overwrite)
        self.overwrite, self.chunk_mb = overwrite, chunk_mb
        self.checksum = default_checksum()
        self._sum = checksum_function(self.checksum)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_sibling(self.path)
        self._impl = mod.Writer(self.tmp, compression, level, chunk_mb)
        self._streams: dict[str, _Stream] = {}
        self._small: dict[str, dict[str, Any]] = {}
        self._state = "open"

    def _check_target(self, overwrite: bool) -> None:
        if overwrite or not (self.path.exists() or self.path.is_symlink()):
            return
        kind = detect_backend(self.path)
        what = "a complete cache" if kind and _is_complete(self.path, kind) else (
            "an incomplete cache" if kind else "something that is not a cache")
        raise LtpipeError(f"{self.path} already exists ({what}); pass overwrite=True to replace "
                          "it, or delete it first")

    # ----------------------------------------------------------------- writing
    def create(self, group: str, name: str, shape_tail: tuple, dtype: Any,
               expected_rows: int | None = None) -> None:
        """Declare a streamed array of shape ``(rows, *shape_tail)``; rows come via :meth:`append`.

        ``expected_rows``, when given, caps the chunk size, lets the backend lay the array out
        in one extent (read by mapping it, see :mod:`ltpipe.cache.rawio`), and is checked by
        every append (no more rows) and at commit (no fewer).
        """
        key = self._new_key(group, name)
        dtype = np.dtype(dtype).newbyteorder("<")  # stored little-endian on every backend
        if dtype.kind not in "biufc":
            raise LtpipeError(f"{key}: dtype {dtype} is not numeric or bool; store numbers only")
        tail = tuple(int(d) for d in shape_tail)
        row_bytes = max(1, dtype.itemsize * math.prod(tail))
        chunk_rows = max(1, math.ceil(self.chunk_mb * 2**20 / row_bytes))
        if expected_rows is not None:
            chunk_rows = max(1, min(chunk_rows, int(expected_rows)))
        self._impl.create(key, tail, dtype, chunk_rows, expected_rows)
        self._streams[key] = _Stream(tail, dtype, chunk_rows, expected_rows)

    def append(self, group: str, name: str, rows: np.ndarray) -> None:
        """Append rows along axis 0; whole chunks go straight to disk, at most one is buffered."""
        key, st = self._stream(group, name)
        rows = self._coerce(key, st, rows)
        pos, n = 0, len(rows)
        if st.expected_rows is not None and st.rows + st.filled + n > st.expected_rows:
            raise LtpipeError(f"{key}: appending {n} rows to the {st.rows + st.filled} already "
                              f"written would exceed expected_rows={st.expected_rows}; declare "
                              "the array's true row count in create()")
        if st.filled:  # complete the pending partial chunk first
            pos = min(st.chunk_rows - st.filled, n)
            st.buffer[st.filled:st.filled + pos] = rows[:pos]
            st.filled += pos
            if st.filled == st.chunk_rows:
                self._put(key, st, st.buffer)
                st.filled = 0
        whole = (n - pos) // st.chunk_rows * st.chunk_rows
        step = st.chunk_rows * _CHUNKS_PER_PUT
        for lo in range(pos, pos + whole, step):  # whole chunks: no copy when contiguous
            self._put(key, st, rows[lo:min(lo + step, pos + whole)])
        pos += whole
        if pos < n:
            if st.buffer is None:
                st.buffer = np.empty((st.chunk_rows, *st.tail), st.dtype)
            st.buffer[:n - pos] = rows[pos:]
            st.filled = n - pos

    def write(self, group: str, name: str, array: np.ndarray) -> None:
        """Write a whole (small) array at once."""
        array = np.asarray(array)
        if array.ndim == 0:
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
            key = self._new_key(group, name)
            self._impl.write_small(key, array)
            self._small[key] = _entry(array.shape, array.dtype, [],
                                      self._checksums(1, [self._sum(array)]))
            return
        self.create(group, name, array.shape[1:], array.dtype, expected_rows=len(array))
        self.append(group, name, array)

    def commit(self, manifest: dict) -> dict:
        """Flush, write the manifest last and rename the cache into place; returns the manifest."""
        self._require_open()
        clash = sorted(set(manifest) & set(RESERVED_KEYS))
        if clash:
            raise LtpipeError(f"manifest keys {clash} are reserved by the cache; rename them")
        try:
            text = self._finalize(manifest)
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return json.loads(text)

    def _finalize(self, manifest: dict) -> str:
        arrays = dict(self._small)
        for key, st in self._streams.items():
            if st.filled:
                self._put(key, st, st.buffer[:st.filled])
                st.filled, st.buffer = 0, None
            if st.expected_rows is not None and st.rows != st.expected_rows:
                raise LtpipeError(f"{key}: {st.rows} rows were appended but expected_rows was "
                                  f"{st.expected_rows}; the dump stopped early or miscounted")
            self._impl.finish(key, st.rows)
            arrays[key] = _entry((st.rows, *st.tail), st.dtype, self._impl.chunks(key),
                                 self._checksums(st.chunk_rows, st.sums))
        full = {**manifest, "format_version": CACHE_FORMAT_VERSION, "backend": self.backend,
                "arrays": dict(sorted(arrays.items())), "complete": True}
        text = json.dumps(full, indent=2, sort_keys=True, default=_json_default) + "\n"
        self._impl.finalize(text)
        self._close()
        return text

    def _close(self) -> None:
        self._impl.close()

    def abort(self) -> None:
        """Discard everything written so far (nothing appears at the final path)."""
        if self._state == "open":
            self._state = "aborted"
        self._close()
        _remove(self.tmp)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._state != "committed":
            self.abort()

    # ----------------------------------------------------------------- helpers
    def _require_open(self) -> None:
        if self._state != "open":
            raise LtpipeError(f"cache writer for {self.path} is {self._state}; open a new one")

    def _new_key(self, group: str, name: str) -> str:
        self._require_open()
        for part in (group, name):
            if not isinstance(part, str) or not _NAME.match(part):
                raise LtpipeError(f"cache group/name {part!r} must match {_NAME.pattern}")
        key = f"{group}/{name}"
        if key in self._streams or key in self._small:
            raise LtpipeError(f"{key} was already created in {self.path}; use another name")
        return key

    def _stream(self, group: str, name: str) -> tuple[str, _Stream]:
        self._require_open()
        key = f"{group}/{name}"
        if key not in self._streams:
            raise LtpipeError(f"{key} was not created; call create({group!r}, {name!r}, ...) first")
        return key, self._streams[key]

    @staticmethod
    def _coerce(key: str, st: _Stream, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.shape[1:] != st.tail or rows.ndim != len(st.tail) + 1:
            raise LtpipeError(f"{key}: rows of shape {rows.shape} do not match (n, *{st.tail})")
        if rows.dtype != st.dtype:
            if not np.can_cast(rows.dtype, st.dtype, "same_kind"):
                raise LtpipeError(f"{key}: cannot store {rows.dtype} rows in a {st.dtype} array")
            rows = rows.astype(st.dtype)
        return rows

    def _put(self, key: str, st: _Stream, block: np.ndarray) -> None:
        """Checksum and write whole chunks (or the array's last, partial one), in this thread.

        A worker thread that checksummed while this one wrote saved the checksum's time (17 ms
        of 274 MB) only with a core free; with both cores busy, its two hand-offs per block
        (every 2-4 MB in the dump) made writes slower than doing both here (median 0.20 s
        against 0.16 s for 274 MB at load average 3.5, this project's 2-core machine).
        """
        block = np.ascontiguousarray(block)
        size = st.chunk_rows
        sums = [self._sum(block[lo:lo + size]) for lo in range(0, len(block), size)]
        self._impl.write_chunks(key, st.rows // size, block)
        st.sums.extend(sums)
        st.rows += len(block)

    def _checksums(self, chunk_rows: int, values: list[int]) -> dict[str, Any]:
        return {"algorithm": self.checksum, "chunk_rows": int(chunk_rows),
                "values": [int(v) for v in values]}

    def _move_into_place(self) -> None:
        old = None
        if self.path.exists() or self.path.is_symlink():
            if not self.overwrite:
                raise LtpipeError(f"{self.path} appeared while writing; rerun with overwrite=True")
            old = tmp_sibling(self.path)
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            _remove(old)


def _entry(shape: tuple, dtype: np.dtype, chunks: list[int],
           checksum: dict[str, Any]) -> dict[str, Any]:
    return {"shape": [int(d) for d in shape], "dtype": np.dtype(dtype).str,
            "chunks": [int(c) for c in chunks], "checksum": checksum}

