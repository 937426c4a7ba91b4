"""Read side of the feature cache: :func:`open_cache` and :class:`CacheReader`.

:func:`open_cache` refuses anything without a complete manifest of the format version this code
writes, and checks the manifest values a job expects. An array the backend can map (stored
uncompressed in one extent, as the dump writes it) is read as a copy-on-write memory map: its
checksums are computed on the page cache's own pages and nothing is copied. Any other array is
read through the backend's ``read_into``, which fills one preallocated array from the files.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.cache.format import (
    CACHE_FORMAT_VERSION,
    FIX,
    CacheError,
    backend_module,
    bad_chunks,
    checksum_function,
    describe_bad_chunks,
    detect_backend,
    manifest_sha256,
    read_manifest,
)
from ltpipe.cache.rawio import empty_aligned
from ltpipe.utils import LtpipeError, _json_default


class CacheReader:
    """Read access to a committed cache; get one from :func:`open_cache`."""

    def __init__(self, path: Path, backend: str, manifest: dict, mapped: bool = True) -> None:
        self.path, self.backend, self.manifest, self.mapped = path, backend, manifest, mapped
        self._impl = backend_module(backend).Reader(path)
        self._arrays: dict[str, dict] = manifest.get("arrays", {})
        self._verified: dict[str, set[int]] = {}  # per array: chunks whose checksum matched

    @property
    def digest(self) -> str:
        """The cache's digest (:func:`ltpipe.cache.format.manifest_sha256` of its manifest)."""
        return manifest_sha256(self.manifest)

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
        """Shape of ``group/name``."""
        return tuple(self._entry(group, name)[1]["shape"])

    def dtype(self, group: str, name: str) -> np.dtype:
        """Dtype of ``group/name``."""
        return np.dtype(self._entry(group, name)[1]["dtype"])

    def read(self, group: str, name: str, rows: slice | np.ndarray | None = None, *,
             check: bool = True) -> np.ndarray:
        """The whole array (``rows=None``), a slice of rows, or rows picked by index/bool mask.

        Every chunk the read touches is compared with the manifest's checksum (once per reader
        for row reads, see :meth:`_range_checked`); ``check=False`` skips that (the verifier,
        which compares every chunk itself to name all the bad ones).
        """
        key, entry = self._entry(group, name)
        shape = tuple(entry["shape"])
        if not shape:
            return self._range(key, 0, 0)
        n = shape[0]
        if rows is None:
            return self._read_checked(key, entry) if check else self._range(key, 0, n)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            if step == 1:
                ranged = self._range_checked if check else self._range
                return ranged(key, start, max(start, stop))
            rows = np.arange(start, stop, step)
        return self._gather(key, shape, _row_indices(key, rows, n), check)

    def _range(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``key`` (its value for a 0-d array), unchecked: a view of the
        array mapped copy-on-write where the backend can map it, else read into new memory."""
        shape, dtype = self._arrays[key]["shape"], self._arrays[key]["dtype"]
        src = self._map(key) if shape else None
        if src is not None:
            return src[start:stop]
        out = empty_aligned((stop - start, *shape[1:]) if shape else (), dtype)
        self._impl.read_into(key, start, stop, out)
        return out

    def _map(self, key: str) -> np.ndarray | None:
        """A fresh copy-on-write map of the whole array ``key``, or None (read it instead)."""
        return self._impl.mapped(key) if self.mapped else None

    def _check(self, key: str, block: np.ndarray, first: int) -> None:
        """Raise CacheError unless every chunk of ``block`` (whole chunks from chunk ``first``;
        the array's last one may be short) matches the manifest; remember the ones checked."""
        spec = self._arrays[key]["checksum"]
        bad = bad_chunks(spec, block, first)
        if bad:
            raise self._corrupted(key, bad)
        size = int(spec["chunk_rows"])
        self._verified.setdefault(key, set()).update(range(first, first + -(-len(block) // size)))

    def _corrupted(self, key: str, bad: list[int]) -> CacheError:
        """The error for chunks ``bad`` of ``key`` failing their checksums."""
        spec = self._arrays[key]["checksum"]
        what = describe_bad_chunks(bad, int(spec["chunk_rows"]), self._rows(key),
                                   spec["algorithm"])
        return CacheError(f"{key} in {self.path}: {what}: the cache is corrupted; {FIX}")

    def _rows(self, key: str) -> int:
        return int(self._arrays[key]["shape"][0])

    def _chunk_rows(self, key: str) -> int:
        """Rows per checksummed chunk of ``key``; 0 where its manifest has no checksums."""
        spec = self._arrays[key].get("checksum") or {}
        return int(spec.get("chunk_rows", 0)) if spec.get("values") else 0

    def _range_checked(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``key``, each chunk they touch checked once per reader.

        The first read that touches a chunk reads all of it and compares its checksum with the
        manifest's (a row can only be checked with its chunk); later reads of checked chunks
        read just their rows. So sampled reads (FSA's feature maps) are checked too, and read
        at most the whole array once more than the rows they ask for. A mapped array's chunks
        are checksummed where they lie (pages of the page cache), without a copy.
        """
        size = self._chunk_rows(key)
        if stop <= start or size <= 0:
            return self._range(key, start, stop)
        first, last = start // size, (stop - 1) // size
        done = self._verified.setdefault(key, set())
        src = self._map(key)
        todo = [c for c in range(first, last + 1) if c not in done]
        if src is not None:
            for c in todo:
                self._check(key, src[c * size:(c + 1) * size], c)
            return src[start:stop]
        if not todo:
            return self._range(key, start, stop)
        lo, hi = first * size, min(self._rows(key), (last + 1) * size)
        block = self._range(key, lo, hi)
        self._check(key, block, first)
        return block[start - lo:stop - lo]

    def _read_checked(self, key: str, entry: dict) -> np.ndarray:
        """The whole array, if every chunk matches the manifest's checksum.

        Where the backend can map the array (uncompressed, stored in one extent), the result is
        that map (copy-on-write: writing to it changes neither the file nor any other read) and
        the checksum pass over it is the only time spent. Otherwise it is read into new memory.
        Either way two threads, this one and a worker, take storage blocks in turn and each
        checksums a block (reading it first where nothing is mapped). File reads release the GIL
        and so does an xxh3 checksum, so with a core free the two threads share the work; with
        none free, each block costs what one thread alone would pay. A mismatch raises
        ``CacheError`` naming the array and the chunks.
        """
        shape = tuple(entry["shape"])
        n = shape[0]
        out = self._map(key)
        mapped = out is not None
        if not mapped:
            out = empty_aligned(shape, entry["dtype"])
        size = self._chunk_rows(key)
        if size <= 0:
            if not mapped:
                self._impl.read_into(key, 0, n, out)
            return out
        values = entry["checksum"]["values"]
        if len(values) != -(-n // size):
            raise CacheError(f"{key} in {self.path}: the manifest has {len(values)} "
                             f"checksums for {n} rows in chunks of {size}; {FIX}")
        spec = entry["checksum"]
        checksum = checksum_function(str(spec.get("algorithm")))
        step = size * max(1, self._impl.block_rows(key) // size)
        spans = deque((lo, min(n, lo + step)) for lo in range(0, n, step))
        stop: list[bool] = []  # set when a thread fails: the other one stops after its block

        def work() -> list[int]:
            bad: list[int] = []
            try:
                while spans and not stop:
                    try:
                        lo, hi = spans.popleft()  # thread-safe: each block goes to one thread
                    except IndexError:
                        break
                    if not mapped:
                        self._impl.read_into(key, lo, hi, out[lo:hi])
                    bad += bad_chunks(spec, out[lo:hi], lo // size, checksum)
            except BaseException:
                stop.append(True)
                raise
            return bad

        if n <= step:
            bad = work()
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="cache-read") as pool:
                helper = pool.submit(work)
                try:
                    bad = work()
                except BaseException:
                    wait([helper])
                    raise
                bad = sorted(bad + helper.result())
        if bad:
            raise self._corrupted(key, bad)
        self._verified[key] = set(range(len(values)))
        return out

    def _gather(self, key: str, shape: tuple, idx: np.ndarray, check: bool) -> np.ndarray:
        """Rows ``idx`` (in that order, repeats allowed) in new memory. From a mapped array,
        the chunks they touch are checked once per reader and only the rows are copied."""
        src = self._map(key)
        if src is not None:
            size = self._chunk_rows(key) if check else 0
            if size:
                done = self._verified.setdefault(key, set())
                for c in np.unique(idx // size).tolist():
                    if c not in done:
                        self._check(key, src[c * size:(c + 1) * size], c)
            return src[idx]
        ranged = self._range_checked if check else self._range
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(uniq), *shape[1:]), np.dtype(self._arrays[key]["dtype"]))
        # checked: per chunk, so that only the chunks holding selected rows are checked
        block = (self._chunk_rows(key) if check else 0) or self._impl.block_rows(key)
        pos = 0
        while pos < len(uniq):  # one contiguous read per block that holds selected rows
            end = int(np.searchsorted(uniq, (uniq[pos] // block + 1) * block))
            lo, hi = int(uniq[pos]), int(uniq[end - 1]) + 1
            out[pos:end] = ranged(key, lo, hi)[uniq[pos:end] - lo]
            pos = end
        return out[inverse.reshape(-1)]

    def stored(self, group: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of ``group/name`` as the backend's files hold them (for verifying)."""
        return self._impl.meta(self._entry(group, name)[0])

    def close(self) -> None:
        """Release the backend's files."""
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


def open_cache(path: str | os.PathLike, expect: dict | None = None, *,
               mapped: bool = True) -> CacheReader:
    """Open a complete cache, checking that ``expect``'s keys match its manifest.

    ``mapped`` (default): arrays stored in one extent are returned as copy-on-write maps of the
    file (no copy; the pages a caller writes are copied then). ``mapped=False``: every read is
    copied into new memory, the faster choice for a caller that writes its whole input in place.

    Raises:
        CacheError: the path is missing, not a cache, incomplete, of another format version, or
            differs from ``expect``.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise CacheError(f"no cache at {path}; {FIX}")
    kind = detect_backend(path)
    if kind is None:
        raise CacheError(f"{path} is neither a zarr directory nor an HDF5 file; {FIX}")
    try:
        manifest = read_manifest(path, kind)
    except (OSError, ValueError) as err:
        raise CacheError(f"cannot read the manifest of {path} ({err}); {FIX}") from err
    if manifest is None:
        raise CacheError(f"{path} is incomplete (no manifest marked complete: the dump did not "
                         f"finish); {FIX}")
    version = manifest.get("format_version", "<missing>")
    if version != CACHE_FORMAT_VERSION:
        raise CacheError(f"{path} has cache format_version {version!r}, but this ltpipe reads "
                         f"only version {CACHE_FORMAT_VERSION}; {FIX} with this ltpipe")
    for key, want in (expect or {}).items():
        found = manifest.get(key, "<missing>")
        if _normalize(want) != found:
            raise CacheError(f"{path}: manifest key {key!r} is {found!r}, expected {want!r}; "
                             f"the cache was made with other settings, {FIX}")
    return CacheReader(path, kind, manifest, mapped)
