"""HDF5 backend of the feature cache (h5py): one file, one dataset per array.

An uncompressed array whose row count is declared up front (the dump declares every one) is a
contiguous dataset: HDF5 allocates its space when it is created, page-aligned, and its rows are
written into that space by offset (no chunk index, no HDF5 call per block) and read by mapping
it (:func:`ltpipe.cache.rawio.map_rows`). Any other streamed dataset grows along axis 0
(``maxshape=(None, ...)``) chunk by chunk: uncompressed chunks are written with
``write_direct_chunk`` and read back by their file offsets (``chunk_iter``), with one ``preadv``
per run of adjacent chunks straight into the output array; compressed ones go through h5py's
ordinary (slower) paths. The manifest is a JSON string attribute on the root group, and a second
root attribute (``ltpipe_complete``) marks the file complete; both are written last.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.cache.rawio import map_rows, pread_into, preallocate
from ltpipe.utils import LtpipeError

#: compression name -> h5py ``compression`` argument (gzip takes the level, lzf none)
COMPRESSIONS: dict[str, str | None] = {"none": None, "gzip": "gzip", "lzf": "lzf"}
CHUNKS_PER_BLOCK = 8
#: objects of at least this many bytes start on a page boundary (so their rows can be mapped)
ALIGN_FROM, PAGE = 1 << 16, 4096
MANIFEST_ATTR = "ltpipe_manifest"
COMPLETE_ATTR = "ltpipe_complete"


class Writer:
    """Writes datasets into a temporary HDF5 file; see :class:`ltpipe.cache.CacheWriter`."""

    def __init__(self, path: Path, compression: str, level: int, chunk_mb: float) -> None:
        import h5py

        self.path = Path(path)
        self.compression, self.level = compression, level
        self._file = h5py.File(self.path, "w", libver="latest", alignment_threshold=ALIGN_FROM,
                               alignment_interval=PAGE)
        self._ds: dict[str, Any] = {}
        self._raw: dict[str, tuple[int, int, int]] = {}  # contiguous: offset, chunk rows, row bytes
        self._fd: int | None = None  # where contiguous datasets' rows are written

    def _opts(self) -> dict[str, Any]:
        comp = COMPRESSIONS[self.compression]
        if comp is None:
            return {}
        return {"compression": comp, "compression_opts": self.level if comp == "gzip" else None}

    def create(self, key: str, tail: tuple[int, ...], dtype: np.dtype, chunk_rows: int,
               expected_rows: int | None = None) -> None:
        """Create an empty dataset: contiguous and allocated for ``expected_rows`` rows where
        they are declared and nothing is compressed, else growable in ``chunk_rows``-row chunks."""
        if expected_rows and COMPRESSIONS[self.compression] is None:
            import h5py

            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # one extent, at a known offset
            self._ds[key] = ds = self._file.create_dataset(
                key, shape=(expected_rows, *tail), dtype=dtype, dcpl=dcpl, fill_time="never")
            row_bytes = dtype.itemsize * int(np.prod(tail))
            self._raw[key] = (int(ds.id.get_offset()), chunk_rows, row_bytes)
            return
        self._ds[key] = self._file.create_dataset(
            key, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
            chunks=(chunk_rows, *tail), **self._opts())

    def write_chunks(self, key: str, first: int, block: np.ndarray) -> None:
        """Write chunks ``first, first+1, ...``: whole chunks, or the dataset's last partial one."""
        if key in self._raw:
            self._write_raw(key, first, block)
            return
        ds = self._ds[key]
        chunk_rows = ds.chunks[0]
        start = first * chunk_rows
        ds.resize(start + len(block), axis=0)
        if COMPRESSIONS[self.compression] is not None:
            ds[start:start + len(block)] = block
            return
        zeros = (0,) * (block.ndim - 1)
        for lo in range(0, len(block), chunk_rows):
            chunk = block[lo:lo + chunk_rows]
            if len(chunk) < chunk_rows:  # chunks are stored full size; pad the last one
                padded = np.zeros((chunk_rows, *chunk.shape[1:]), chunk.dtype)
                padded[:len(chunk)] = chunk
                chunk = padded
            ds.id.write_direct_chunk((start + lo, *zeros), np.ascontiguousarray(chunk))

    def _write_raw(self, key: str, first: int, block: np.ndarray) -> None:
        """Write rows into a contiguous dataset's space: one ``pwrite`` into a preallocated
        range, as ``numpy.save`` writes (HDF5 never caches these rows, so nothing overlaps)."""
        offset, chunk_rows, row_bytes = self._raw[key]
        if self._fd is None:
            self._file.flush()
            self._fd = os.open(self.path, os.O_WRONLY)
        data = memoryview(np.ascontiguousarray(block)).cast("B")
        at = offset + first * chunk_rows * row_bytes
        preallocate(self._fd, at, len(data))
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], at + done)

    def write_small(self, key: str, array: np.ndarray) -> None:
        """Write a 0-d array (contiguous, uncompressed)."""
        self._file.create_dataset(key, data=array)

    def chunks(self, key: str) -> list[int]:
        """The chunk shape of ``key`` (its shape when not chunked)."""
        return list(self._file[key].chunks or self._file[key].shape)

    def finish(self, key: str, rows: int) -> None:
        ds = self._file[key]
        if key not in self._raw and ds.ndim and ds.shape[0] != rows:
            ds.resize(rows, axis=0)

    def finalize(self, manifest_json: str) -> None:
        """Write the manifest attribute, then the completion marker, and flush."""
        self._file.attrs[MANIFEST_ATTR] = manifest_json
        self._file.flush()
        self._file.attrs[COMPLETE_ATTR] = True
        self._file.flush()

    def close(self) -> None:
        self._ds.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file.id.valid:
            self._file.close()


def read_manifest(path: Path) -> str | None:
    """The manifest string, or None unless the file is marked complete."""
    import h5py

    with h5py.File(path, "r") as file:
        attrs = file.attrs
        if not bool(attrs.get(COMPLETE_ATTR, False)) or MANIFEST_ATTR not in attrs:
            return None
        value = attrs[MANIFEST_ATTR]
    return value.decode() if isinstance(value, bytes) else str(value)


class Reader:
    """Reads a committed HDF5 cache; see :class:`ltpipe.cache.reader.CacheReader`."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "r")
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._tables: dict[str, np.ndarray | None] = {}
        self._extents: dict[str, int | None] = {}

    def block_rows(self, key: str) -> int:
        """Rows per read block: ``CHUNKS_PER_BLOCK`` chunks (of a contiguous dataset: 8 MiB)."""
        ds = self._file[key]
        if ds.chunks is None:
            return max(1, (8 << 20) // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
        return max(1, ds.chunks[0]) * CHUNKS_PER_BLOCK

    def mapped(self, key: str) -> np.ndarray | None:
        """A fresh copy-on-write map of the whole dataset, where its rows lie in order in one
        extent (a contiguous dataset, or chunks back to back); else None."""
        if self._extents.get(key, 0) is None:
            return None
        ds = self._file[key]
        offset = self._extent(key, ds) if ds.ndim and ds.shape[0] else None
        return None if offset is None else map_rows(self._raw_fd(), offset, ds.shape, ds.dtype)

    def _extent(self, key: str, ds: Any) -> int | None:
        """File offset of the dataset's rows if they lie in order in one extent, else None."""
        if key not in self._extents:
            self._extents[key] = self._find_extent(key, ds)
        return self._extents[key]

    def _find_extent(self, key: str, ds: Any) -> int | None:
        if ds.dtype.kind not in "iuf" or ds.id.get_create_plist().get_nfilters():
            return None
        if ds.chunks is None:
            offset = ds.id.get_offset()
            return None if offset is None else int(offset)
        table = self._chunk_table(key, ds)
        chunk_bytes = int(np.prod(ds.chunks)) * ds.dtype.itemsize
        if table is None or (table < 0).any() or (np.diff(table) != chunk_bytes).any():
            return None
        return int(table[0])

    def _raw_fd(self) -> int:
        """The descriptor raw reads use (opened once; whole-array reads use it from two
        threads)."""
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` (C-contiguous) with rows ``start:stop`` (a 0-d ``out``: the value);
        raw chunks are read straight into it."""
        ds = self._file[key]
        if ds.ndim == 0:
            out[...] = ds[()]
            return
        if stop <= start:
            return
        if ds.chunks is None:
            offset = self._extent(key, ds)
            if offset is None:
                ds.read_direct(out, source_sel=np.s_[start:stop])
            else:
                pread_into(self._raw_fd(), out, offset + start * out[:1].nbytes)
            return
        table = self._chunk_table(key, ds)
        if table is None or (table[start // ds.chunks[0]:(stop - 1) // ds.chunks[0] + 1] < 0).any():
            ds.read_direct(out, source_sel=np.s_[start:stop])
        else:
            self._read_raw(table, ds.chunks[0], start, stop, out)

    def _chunk_table(self, key: str, ds: Any) -> np.ndarray | None:
        """File offset of every chunk (-1: not allocated), or None if chunks need HDF5 to read."""
        if key in self._tables:
            return self._tables[key]
        table = None
        raw_ok = (ds.chunks is not None and tuple(ds.chunks[1:]) == tuple(ds.shape[1:])
                  and ds.dtype.kind in "iuf" and ds.id.get_create_plist().get_nfilters() == 0
                  and hasattr(ds.id, "chunk_iter"))
        if raw_ok:
            chunk_rows, chunk_bytes = ds.chunks[0], int(np.prod(ds.chunks)) * ds.dtype.itemsize
            table = np.full(-(-ds.shape[0] // chunk_rows), -1, np.int64)

            def record(info: Any) -> None:
                if info.size == chunk_bytes and info.chunk_offset[0] // chunk_rows < len(table):
                    table[info.chunk_offset[0] // chunk_rows] = info.byte_offset

            try:
                ds.id.chunk_iter(record)
            except Exception:  # noqa: BLE001 - an HDF5 without chunk queries: read through h5py
                table = None
        self._tables[key] = table
        return table

    def _read_raw(self, table: np.ndarray, chunk_rows: int, start: int, stop: int,
                  out: np.ndarray) -> None:
        """One ``preadv`` per run of chunks that lie back to back in the file."""
        fd = self._raw_fd()
        row_bytes = out[:1].nbytes
        first, last = start // chunk_rows, (stop - 1) // chunk_rows
        offsets = table[first:last + 1]
        breaks = np.flatnonzero(np.diff(offsets) != chunk_rows * row_bytes) + 1
        for run in np.split(np.arange(first, last + 1), breaks):
            lo = max(start, int(run[0]) * chunk_rows)
            hi = min(stop, (int(run[-1]) + 1) * chunk_rows)
            skip = (lo - int(run[0]) * chunk_rows) * row_bytes
            pread_into(fd, out[lo - start:hi - start], int(table[run[0]]) + skip)

    def meta(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype as stored on disk."""
        ds = self._file[key]
        return tuple(ds.shape), ds.dtype

    def close(self) -> None:
        """Close the file and the raw reading handle."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file.id.valid:
            self._file.close()


def check_compression(compression: str) -> None:
    """Raise LtpipeError unless ``compression`` is an HDF5 choice."""
    if compression not in COMPRESSIONS:
        raise LtpipeError(f"compression {compression!r} is not available for the hdf5 backend; "
                          f"choose one of {sorted(COMPRESSIONS)}")
