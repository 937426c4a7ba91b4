"""The feature cache's one reader/writer interface over its zarr and HDF5 backends.

A cache holds arrays addressed as ``group/name`` (e.g. ``train/fmap``) plus a JSON manifest.
:class:`CacheWriter` streams rows into a temporary sibling of the final path, hashes them on the
way (sha256 of the C-order bytes) and, on :meth:`CacheWriter.commit`, writes the manifest last and
renames the whole cache into place. :func:`open_cache` refuses anything without a complete
manifest. The backends (``zarr_backend``, ``hdf5_backend``) are imported only when used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.utils import LtpipeError, _json_default, tmp_sibling

CACHE_FORMAT_VERSION = 1
BACKENDS = ("zarr", "hdf5")
RESERVED_KEYS = ("format_version", "backend", "arrays", "complete")
FIX = "rerun the cache dump (snakemake --forcerun <the rule that writes this cache>)"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class CacheError(LtpipeError):
    """A cache is missing, incomplete, corrupted or not the one a job expects."""


def _backend(name: str) -> Any:
    if name == "zarr":
        from ltpipe.cache import zarr_backend as mod
    elif name == "hdf5":
        from ltpipe.cache import hdf5_backend as mod
    else:
        raise LtpipeError(f"cache backend {name!r} is unknown; choose one of {list(BACKENDS)}")
    return mod


def detect_backend(path: str | os.PathLike) -> str | None:
    """'zarr' for a zarr directory, 'hdf5' for an HDF5 file, None for anything else."""
    path = Path(path)
    if path.is_dir():
        return "zarr" if (path / "zarr.json").is_file() else None
    if path.is_file():
        with open(path, "rb") as fh:
            return "hdf5" if fh.read(8) == b"\x89HDF\r\n\x1a\n" else None
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@dataclass
class _Stream:
    """Write state of one array: a buffer of at most one block and a running hash."""

    tail: tuple[int, ...]
    dtype: np.dtype
    block_rows: int
    expected_rows: int | None
    rows: int = 0
    filled: int = 0
    buffer: np.ndarray | None = None
    hasher: Any = field(default_factory=hashlib.sha256)


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
        mod = _backend(backend)
        mod.check_compression(compression)
        if not chunk_mb > 0:
            raise LtpipeError(f"chunk_mb must be > 0, got {chunk_mb!r}")
        self._check_target(overwrite)
        self.overwrite, self.chunk_mb = overwrite, chunk_mb
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_sibling(self.path)
        self._impl = (mod.ZarrWriter if backend == "zarr" else mod.Hdf5Writer)(
            self.tmp, compression, level, chunk_mb)
        self._streams: dict[str, _Stream] = {}
        self._small: dict[str, dict[str, Any]] = {}
        self._pool: Any = None
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

        ``expected_rows``, when given, caps the chunk size and is checked at commit.
        """
        key = self._new_key(group, name)
        dtype = np.dtype(dtype)
        if dtype.kind not in "biufc":
            raise LtpipeError(f"{key}: dtype {dtype} is not numeric or bool; store numbers only")
        tail = tuple(int(d) for d in shape_tail)
        row_bytes = max(1, dtype.itemsize * math.prod(tail))
        chunk_rows = max(1, math.ceil(self.chunk_mb * 2**20 / row_bytes))
        if expected_rows is not None:
            chunk_rows = max(1, min(chunk_rows, int(expected_rows)))
        block_rows = self._impl.create(key, tail, dtype, chunk_rows)
        self._streams[key] = _Stream(tail, dtype, block_rows, expected_rows)

    def append(self, group: str, name: str, rows: np.ndarray) -> None:
        """Append rows along axis 0; holds at most one block (a few chunks) in memory."""
        key, st = self._stream(group, name)
        rows = self._coerce(key, st, rows)
        pos = 0
        while pos < len(rows):
            if st.filled == 0 and len(rows) - pos >= st.block_rows:  # whole block: no copy
                self._flush(key, st, rows[pos:pos + st.block_rows])
                pos += st.block_rows
                continue
            if st.buffer is None:
                st.buffer = np.empty((st.block_rows, *st.tail), st.dtype)
            take = min(st.block_rows - st.filled, len(rows) - pos)
            st.buffer[st.filled:st.filled + take] = rows[pos:pos + take]
            st.filled += take
            pos += take
            if st.filled == st.block_rows:
                self._flush(key, st, st.buffer)
                st.filled = 0

    def write(self, group: str, name: str, array: np.ndarray) -> None:
        """Write a whole (small) array at once."""
        array = np.asarray(array)
        if array.ndim == 0:
            key = self._new_key(group, name)
            self._impl.write_small(key, array)
            self._small[key] = _entry(array.shape, array.dtype, _sha256(array), [])
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
                self._flush(key, st, st.buffer[:st.filled])
                st.filled, st.buffer = 0, None
            if st.expected_rows is not None and st.rows != st.expected_rows:
                raise LtpipeError(f"{key}: {st.rows} rows were appended but expected_rows was "
                                  f"{st.expected_rows}; the dump stopped early or miscounted")
            self._impl.finish(key, st.rows)
            arrays[key] = _entry((st.rows, *st.tail), st.dtype, st.hasher.hexdigest(),
                                 self._impl.chunks(key))
        full = {**manifest, "format_version": CACHE_FORMAT_VERSION, "backend": self.backend,
                "arrays": dict(sorted(arrays.items())), "complete": True}
        text = json.dumps(full, indent=2, sort_keys=True, default=_json_default) + "\n"
        self._impl.finalize(text)
        self._close()
        return text

    def _close(self) -> None:
        self._impl.close()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

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

    def _flush(self, key: str, st: _Stream, block: np.ndarray) -> None:
        """Write one block; its sha256 update runs in a thread meanwhile (both release the GIL)."""
        block = np.ascontiguousarray(block)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-hash")
        hashing = self._pool.submit(st.hasher.update, memoryview(block).cast("B"))
        try:
            self._impl.write_block(key, st.rows, block)
        finally:
            hashing.result()
        st.rows += len(block)

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


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def _entry(shape: tuple, dtype: np.dtype, sha: str, chunks: list[int]) -> dict[str, Any]:
    return {"shape": [int(d) for d in shape], "dtype": np.dtype(dtype).str, "sha256": sha,
            "chunks": [int(c) for c in chunks]}


def _read_manifest(path: Path, kind: str) -> dict | None:
    """The manifest if the cache is complete, else None."""
    if kind == "zarr":
        file = path / "manifest.json"
        text = file.read_text() if file.is_file() else None
    else:
        from ltpipe.cache.hdf5_backend import Hdf5Reader

        reader = Hdf5Reader(path)
        try:
            text = reader.manifest_json()
        finally:
            reader.close()
    if text is None:
        return None
    manifest = json.loads(text)
    return manifest if manifest.get("complete") is True else None


def _is_complete(path: Path, kind: str) -> bool:
    try:
        return _read_manifest(path, kind) is not None
    except (OSError, ValueError):
        return False


class CacheReader:
    """Read access to a committed cache; get one from :func:`open_cache`."""

    def __init__(self, path: Path, backend: str, manifest: dict) -> None:
        self.path, self.backend, self.manifest = path, backend, manifest
        mod = _backend(backend)
        self._impl = mod.ZarrReader(path) if backend == "zarr" else mod.Hdf5Reader(path)
        self._arrays: dict[str, dict] = manifest.get("arrays", {})

    def groups(self) -> list[str]:
        """Sorted group names."""
        return sorted({key.split("/")[0] for key in self._arrays})

    def names(self, group: str) -> list[str]:
        """Sorted array names in ``group``."""
        names = sorted(k.split("/")[1] for k in self._arrays if k.split("/")[0] == group)
        if not names:
            raise CacheError(f"group {group!r} is not in {self.path}; groups: {self.groups()}")
        return names

    def _entry(self, group: str, name: str) -> tuple[str, dict]:
        key = f"{group}/{name}"
        if key not in self._arrays:
            raise CacheError(f"array {key!r} is not in {self.path}; arrays: {sorted(self._arrays)}"
                             f". {FIX} if the dump should have written it")
        return key, self._arrays[key]

    def shape(self, group: str, name: str) -> tuple[int, ...]:
        return tuple(self._entry(group, name)[1]["shape"])

    def dtype(self, group: str, name: str) -> np.dtype:
        return np.dtype(self._entry(group, name)[1]["dtype"])

    def read(self, group: str, name: str,
             rows: slice | np.ndarray | None = None) -> np.ndarray:
        """The whole array (``rows=None``), a slice of rows, or rows picked by index/bool mask."""
        key, entry = self._entry(group, name)
        shape = tuple(entry["shape"])
        if not shape:
            return self._impl.read_range(key, 0, 0)
        n = shape[0]
        if rows is None:
            return self._impl.read_range(key, 0, n)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            if step == 1:
                return self._impl.read_range(key, start, max(start, stop))
            rows = np.arange(start, stop, step)
        return self._gather(key, shape, _row_indices(key, rows, n))

    def _gather(self, key: str, shape: tuple, idx: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(uniq), *shape[1:]), np.dtype(self._arrays[key]["dtype"]))
        block = self._impl.block_rows(key)
        pos = 0
        while pos < len(uniq):  # one contiguous read per block that holds selected rows
            end = int(np.searchsorted(uniq, (uniq[pos] // block + 1) * block))
            lo, hi = int(uniq[pos]), int(uniq[end - 1]) + 1
            out[pos:end] = self._impl.read_range(key, lo, hi)[uniq[pos:end] - lo]
            pos = end
        return out[inverse.reshape(-1)]

    def iter_chunks(self, group: str, name: str,
                    rows_per_chunk: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive row blocks that concatenate to :meth:`read` (default: storage blocks)."""
        key, entry = self._entry(group, name)
        shape = tuple(entry["shape"])
        if not shape:
            yield self._impl.read_range(key, 0, 0)
            return
        step = int(rows_per_chunk or self._impl.block_rows(key))
        if step < 1:
            raise LtpipeError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
        for start in range(0, shape[0], step):
            yield self._impl.read_range(key, start, min(shape[0], start + step))

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _row_indices(key: str, rows: Any, n: int) -> np.ndarray:
    idx = np.asarray(rows)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise LtpipeError(f"{key}: boolean row mask has shape {idx.shape}, expected ({n},)")
        return np.flatnonzero(idx)
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise LtpipeError(f"{key}: rows must be a slice, a 1-d integer array or a bool mask, "
                          f"got {idx.dtype} of shape {idx.shape}")
    idx = np.where(idx < 0, idx + n, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise LtpipeError(f"{key}: row indices must lie in [-{n}, {n}), got {rows}")
    return idx.astype(np.int64)


def _normalize(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def open_cache(path: str | os.PathLike, expect: dict | None = None) -> CacheReader:
    """Open a complete cache, checking that ``expect``'s keys match its manifest.

    Raises:
        CacheError: the path is missing, not a cache, incomplete, or differs from ``expect``.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise CacheError(f"no cache at {path}; {FIX}")
    kind = detect_backend(path)
    if kind is None:
        raise CacheError(f"{path} is neither a zarr directory nor an HDF5 file; {FIX}")
    try:
        manifest = _read_manifest(path, kind)
    except (OSError, ValueError) as err:
        raise CacheError(f"cannot read the manifest of {path} ({err}); {FIX}") from err
    if manifest is None:
        raise CacheError(f"{path} is incomplete (no manifest marked complete: the dump did not "
                         f"finish); {FIX}")
    for key, want in (expect or {}).items():
        found = manifest.get(key, "<missing>")
        if _normalize(want) != found:
            raise CacheError(f"{path}: manifest key {key!r} is {found!r}, expected {want!r}; "
                             f"the cache was made with other settings, {FIX}")
    return CacheReader(path, kind, manifest)
