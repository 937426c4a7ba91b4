"""HDF5 backend of the feature cache (h5py): one file, datasets chunked along axis 0.

Streamed datasets grow along axis 0 (``maxshape=(None, ...)``) one block of whole chunks at a
time. The manifest is a JSON string attribute on the root group, and a second root attribute
(``ltpipe_complete``) marks the file complete; both are written last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.utils import LtpipeError

#: compression name -> h5py ``compression`` argument (gzip takes the level, lzf none)
COMPRESSIONS: dict[str, str | None] = {"none": None, "gzip": "gzip", "lzf": "lzf"}
CHUNKS_PER_BLOCK = 8
MANIFEST_ATTR = "ltpipe_manifest"
COMPLETE_ATTR = "ltpipe_complete"


class Hdf5Writer:
    """Writes datasets into a temporary HDF5 file; see :class:`ltpipe.cache.CacheWriter`."""

    def __init__(self, path: Path, compression: str, level: int, chunk_mb: float) -> None:
        import h5py

        self.path = Path(path)
        self.compression, self.level = compression, level
        self._file = h5py.File(self.path, "w", libver="latest")

    def _opts(self) -> dict[str, Any]:
        comp = COMPRESSIONS[self.compression]
        if comp is None:
            return {}
        return {"compression": comp, "compression_opts": self.level if comp == "gzip" else None}

    def create(self, key: str, tail: tuple[int, ...], dtype: np.dtype, chunk_rows: int) -> int:
        """Create an empty growable dataset; returns the rows per write block."""
        self._file.create_dataset(key, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                                  chunks=(chunk_rows, *tail), **self._opts())
        return chunk_rows * CHUNKS_PER_BLOCK

    def write_block(self, key: str, start: int, block: np.ndarray) -> None:
        """Append rows ``start:start+len(block)`` (start is the current length)."""
        ds = self._file[key]
        ds.resize(start + len(block), axis=0)
        ds[start:start + len(block)] = block

    def write_small(self, key: str, array: np.ndarray) -> None:
        """Write a 0-d array (contiguous, uncompressed)."""
        self._file.create_dataset(key, data=array)

    def chunks(self, key: str) -> list[int]:
        return list(self._file[key].chunks or self._file[key].shape)

    def finish(self, key: str, rows: int) -> None:
        ds = self._file[key]
        if ds.ndim and ds.shape[0] != rows:
            ds.resize(rows, axis=0)

    def finalize(self, manifest_json: str) -> None:
        """Write the manifest attribute, then the completion marker, and flush."""
        self._file.attrs[MANIFEST_ATTR] = manifest_json
        self._file.flush()
        self._file.attrs[COMPLETE_ATTR] = True
        self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


class Hdf5Reader:
    """Reads a committed HDF5 cache; see :class:`ltpipe.cache.store.CacheReader`."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "r")

    def manifest_json(self) -> str | None:
        """The manifest string, or None unless the file is marked complete."""
        attrs = self._file.attrs
        if not bool(attrs.get(COMPLETE_ATTR, False)) or MANIFEST_ATTR not in attrs:
            return None
        value = attrs[MANIFEST_ATTR]
        return value.decode() if isinstance(value, bytes) else str(value)

    def block_rows(self, key: str) -> int:
        ds = self._file[key]
        return max(1, (ds.chunks or ds.shape or (1,))[0]) * CHUNKS_PER_BLOCK

    def read_range(self, key: str, start: int, stop: int) -> np.ndarray:
        ds = self._file[key]
        if ds.ndim == 0:
            return np.asarray(ds[()])
        out = np.empty((stop - start, *ds.shape[1:]), ds.dtype)
        if stop > start:
            ds.read_direct(out, source_sel=np.s_[start:stop])
        return out

    def meta(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype as stored on disk."""
        ds = self._file[key]
        return tuple(ds.shape), ds.dtype

    def chunks(self, key: str) -> list[int]:
        ds = self._file[key]
        return list(ds.chunks or ds.shape)

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


def check_compression(compression: str) -> None:
    """Raise LtpipeError unless ``compression`` is an HDF5 choice."""
    if compression not in COMPRESSIONS:
        raise LtpipeError(f"compression {compression!r} is not available for the hdf5 backend; "
                          f"choose one of {sorted(COMPRESSIONS)}")
