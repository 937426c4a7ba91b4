"""zarr v3 backend of the feature cache: sharded arrays chunked along axis 0.

The metadata (``zarr.json``) is written here, and the shards of streamed arrays are encoded
here too, chunk by chunk as rows arrive, in the zarr v3 sharding layout (inner codecs
``bytes`` + the chosen compressor, index ``bytes`` + ``crc32c`` at the end of the shard). An
array whose row count is declared up front (the dump declares every one) is one shard: its
uncompressed rows lie back to back in one file from offset 0, so a read maps them
(:func:`ltpipe.cache.rawio.map_rows`) instead of copying them. Going around zarr's per-chunk
async machinery makes writes and reads several times faster; any zarr v3 reader opens the
result (a test checks this). Arrays in another layout are read through zarr; caches written
before arrays were one shard (8 chunks per shard) are read with one ``preadv`` per shard
straight into the output array.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.cache.format import CacheError
from ltpipe.cache.rawio import map_rows, pread_into, preallocate
from ltpipe.utils import LtpipeError

#: compression name -> (zarr v3 codec name, its configuration without level and typesize)
COMPRESSIONS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None,
    "zstd": ("zstd", {"checksum": False}),
    "lz4": ("blosc", {"cname": "lz4", "shuffle": "noshuffle", "blocksize": 0}),
    "blosc": ("blosc", {"cname": "zstd", "shuffle": "shuffle", "blocksize": 0}),
}
#: chunks per shard of an array whose row count is not declared up front (one shard holds them
#: all otherwise): the layout of every array in caches written before that
CHUNKS_PER_SHARD = 8
#: chunks per read block (a whole-array read's unit of work, two threads taking blocks in turn)
CHUNKS_PER_BLOCK = 8
#: chunk key separator written ("/", zarr's default, is read too): shard i of a 4-d array is the
#: file c.i.0.0.0 in the array's folder ("/" would need 3 new folders per shard: 10% of a write)
SEPARATOR = "."
_EMPTY = 2**64 - 1
_GROUP_META = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def _bytes_codec(dtype: np.dtype) -> dict[str, Any]:
    if dtype.itemsize == 1:
        return {"name": "bytes"}
    return {"name": "bytes", "configuration": {"endian": "little"}}


def _compressor(compression: str, level: int, dtype: np.dtype) -> dict[str, Any] | None:
    """The zarr v3 codec entry of a compression choice (None for "none")."""
    spec = COMPRESSIONS[compression]
    if spec is None:
        return None
    name, cfg = spec
    if name == "zstd":
        return {"name": name, "configuration": {"level": level, **cfg}}
    return {"name": name, "configuration": {"typesize": dtype.itemsize, "clevel": level, **cfg}}


def _fill_value(dtype: np.dtype) -> Any:
    return {"b": False, "c": [0.0, 0.0], "f": 0.0}.get(dtype.kind, 0)


def _array_meta(shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int, per_shard: int,
                compressor: dict | None) -> dict[str, Any]:
    """zarr v3 metadata of an array sharded along axis 0 as Writer writes it."""
    tail = list(shape[1:])
    inner = [_bytes_codec(dtype)] + ([compressor] if compressor else [])
    return {
        "shape": list(shape), "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {
            "chunk_shape": [chunk_rows * per_shard, *tail]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": SEPARATOR}},
        "fill_value": _fill_value(dtype),
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [chunk_rows, *tail], "codecs": inner,
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                             {"name": "crc32c"}],
            "index_location": "end"}}],
        "attributes": {}, "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _numcodec(codec_meta: dict | None) -> Any:
    """numcodecs codec that encodes/decodes the same bytes as a zarr v3 compressor entry."""
    if codec_meta is None:
        return None
    name, cfg = codec_meta["name"], codec_meta.get("configuration", {})
    if name == "zstd":
        from numcodecs import Zstd

        return Zstd(level=cfg.get("level", 0), checksum=cfg.get("checksum", False))
    if name == "blosc":
        from numcodecs import Blosc

        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                   "bitshuffle": Blosc.BITSHUFFLE}[cfg.get("shuffle", "noshuffle")]
        return Blosc(cname=cfg.get("cname", "lz4"), clevel=cfg.get("clevel", 5), shuffle=shuffle,
                     blocksize=cfg.get("blocksize", 0))
    raise KeyError(name)


def _crc32c(data: bytes | memoryview) -> bytes:
    """The CRC-32C that zarr's sharding codec appends to a shard's index."""
    try:
        import google_crc32c
    except ImportError as err:
        raise CacheError("zarr shard indexes carry a CRC-32C, which needs the google-crc32c "
                          "package; pip install 'google-crc32c>=1.5'") from err
    return struct.pack("<I", google_crc32c.value(bytes(data)))


def _shard_path(array_dir: Path, shard_index: int, ndim: int, sep: str = SEPARATOR) -> Path:
    """Path of a shard under zarr v3's default chunk key encoding with separator ``sep``."""
    return array_dir / sep.join(["c", str(shard_index), *(["0"] * (ndim - 1))])


@dataclass
class _Shard:
    """The shard file being written: its number, handle and chunk index (offset, nbytes)."""

    number: int
    fh: Any
    index: np.ndarray
    offset: int = 0


class Writer:
    """Writes arrays under a temporary zarr v3 directory; see :class:`ltpipe.cache.CacheWriter`.

    Writes the zarr metadata itself (zarr is not imported). Chunks go to their shard file as
    they come; a shard's index is written when the next shard starts or the array is finished.
    """

    def __init__(self, root: Path, compression: str, level: int, chunk_mb: float) -> None:
        self.root = Path(root)
        self.compression, self.level, self.chunk_mb = compression, level, chunk_mb
        _write_json(self.root / "zarr.json", _GROUP_META)
        self._meta: dict[str, dict[str, Any]] = {}
        self._codec: dict[str, Any] = {}
        self._shard: dict[str, _Shard] = {}

    def create(self, key: str, tail: tuple[int, ...], dtype: np.dtype, chunk_rows: int,
               expected_rows: int | None = None) -> None:
        """Create an empty array of ``chunk_rows``-row chunks: one shard for ``expected_rows``
        rows where they are declared, else ``CHUNKS_PER_SHARD`` chunks per shard."""
        group = self.root / key.split("/")[0]
        if not (group / "zarr.json").is_file():
            _write_json(group / "zarr.json", _GROUP_META)
        compressor = _compressor(self.compression, self.level, dtype)
        per_shard = (max(1, -(-expected_rows // chunk_rows)) if expected_rows is not None
                     else CHUNKS_PER_SHARD)
        self._meta[key] = _array_meta((0, *tail), dtype, chunk_rows, per_shard, compressor)
        self._codec[key] = _numcodec(compressor)
        _write_json(self.root / key / "zarr.json", self._meta[key])

    def write_chunks(self, key: str, first: int, block: np.ndarray) -> None:
        """Write chunks ``first, first+1, ...``: whole chunks, or the array's last partial one.

        Uncompressed chunks that go to the same shard are written with one call."""
        chunk_rows, per_shard = self._layout(key)
        block = np.ascontiguousarray(block.astype(block.dtype.newbyteorder("<"), copy=False))
        if self._codec[key] is not None:
            for j, lo in enumerate(range(0, len(block), chunk_rows)):
                self._write_encoded(key, first + j, block[lo:lo + chunk_rows], chunk_rows,
                                    per_shard)
            return
        chunk_bytes = chunk_rows * block[:1].nbytes
        lo, number = 0, first
        while lo < len(block):
            shard_number, slot = divmod(number, per_shard)
            count = min(per_shard - slot, -(-(len(block) - lo) // chunk_rows))
            hi = min(len(block), lo + count * chunk_rows)
            shard = self._open_shard(key, shard_number, block.ndim, per_shard)
            preallocate(shard.fh.fileno(), shard.offset, count * chunk_bytes)
            shard.fh.write(memoryview(block[lo:hi]).cast("B"))
            padding = count * chunk_bytes - block[lo:hi].nbytes
            if padding:  # the array's last chunk is stored full size: its padding is skipped,
                shard.fh.seek(padding, os.SEEK_CUR)  # preallocated or a hole, read as zeros
            for i in range(count):
                shard.index[slot + i] = shard.offset, chunk_bytes
                shard.offset += chunk_bytes
            lo, number = hi, number + count

    def _layout(self, key: str) -> tuple[int, int]:
        """(rows per chunk, chunks per shard) of ``key``."""
        meta = self._meta[key]
        chunk_rows = meta["codecs"][0]["configuration"]["chunk_shape"][0]
        return chunk_rows, meta["chunk_grid"]["configuration"]["chunk_shape"][0] // chunk_rows

    def _open_shard(self, key: str, shard_number: int, ndim: int, per_shard: int) -> _Shard:
        """The shard being written, after closing the one before if it is another."""
        shard = self._shard.get(key)
        if shard is None or shard.number != shard_number:
            self._close_shard(key)
            path = _shard_path(self.root / key, shard_number, ndim)  # no folder to make
            shard = self._shard[key] = _Shard(shard_number, open(path, "wb"),
                                              np.full((per_shard, 2), _EMPTY, "<u8"))
        return shard

    def _write_encoded(self, key: str, number: int, chunk: np.ndarray, chunk_rows: int,
                       per_shard: int) -> None:
        shard_number, slot = divmod(number, per_shard)
        shard = self._open_shard(key, shard_number, chunk.ndim, per_shard)
        if len(chunk) < chunk_rows:  # the array's last chunk is encoded full size, zero padded
            chunk = np.concatenate([chunk, np.zeros((chunk_rows - len(chunk),
                                                     *chunk.shape[1:]), chunk.dtype)])
        data = self._codec[key].encode(chunk)
        shard.fh.write(data)
        shard.index[slot] = shard.offset, len(data)
        shard.offset += len(data)

    def _close_shard(self, key: str) -> None:
        shard = self._shard.pop(key, None)
        if shard is None:
            return
        index_bytes = shard.index.tobytes()
        with shard.fh:
            shard.fh.write(index_bytes + _crc32c(index_bytes))

    def write_small(self, key: str, array: np.ndarray) -> None:
        """Write a 0-d array: one uncompressed chunk, key ``c``."""
        group = self.root / key.split("/")[0]
        if not (group / "zarr.json").is_file():
            _write_json(group / "zarr.json", _GROUP_META)
        dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        self._meta[key] = {
            "shape": [], "data_type": dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": []}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": _fill_value(dtype), "codecs": [_bytes_codec(dtype)], "attributes": {},
            "zarr_format": 3, "node_type": "array", "storage_transformers": []}
        _write_json(self.root / key / "zarr.json", self._meta[key])
        (self.root / key / "c").write_bytes(np.asarray(array, dtype).tobytes())

    def chunks(self, key: str) -> list[int]:
        """The inner chunk shape of ``key`` ([] for a 0-d array)."""
        codecs = self._meta[key]["codecs"]
        return list(codecs[0]["configuration"]["chunk_shape"]) if self._meta[key]["shape"] else []

    def finish(self, key: str, rows: int) -> None:
        """Close the last shard and write the final number of rows into the array's metadata."""
        self._close_shard(key)
        self._meta[key]["shape"][0] = rows
        _write_json(self.root / key / "zarr.json", self._meta[key])

    def finalize(self, manifest_json: str) -> None:
        """Write manifest.json, the last file of the store."""
        with open(self.root / "manifest.json", "w") as fh:
            fh.write(manifest_json)
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        """Close open shard files (an aborted write leaves them to be removed)."""
        for shard in self._shard.values():
            shard.fh.close()
        self._shard.clear()


def _inner_codecs(meta: dict) -> tuple[dict, dict | None] | None:
    """(sharding config, compressor entry) if ``meta`` has the layout this module writes."""
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    cfg = codecs[0]["configuration"]
    inner = cfg["codecs"]
    index_ok = [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"]
    chunk_ok = list(cfg["chunk_shape"][1:]) == list(meta["shape"][1:])
    shard_ok = list(meta["chunk_grid"]["configuration"]["chunk_shape"][1:]) == list(
        meta["shape"][1:])
    encoding = meta.get("chunk_key_encoding", {})
    sep_ok = encoding.get("name") == "default" and encoding.get("configuration", {}).get(
        "separator") in ("/", ".")
    if not (index_ok and chunk_ok and shard_ok and sep_ok and cfg["index_location"] == "end"):
        return None
    if inner[0]["name"] != "bytes" or inner[0].get("configuration", {}).get(
            "endian", "little") != "little" or len(inner) > 2:
        return None
    comp = inner[1] if len(inner) == 2 else None
    if comp is not None and comp["name"] not in ("zstd", "blosc"):
        return None
    return cfg, comp


class _FastArray:
    """Reads an axis-0 sharded array of the layout above straight from its shard files."""

    def __init__(self, array_dir: Path, meta: dict, cfg: dict, comp: dict | None) -> None:
        self.dir, self.shape = array_dir, tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.chunk_rows = cfg["chunk_shape"][0]
        self.shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        self.per_shard = self.shard_rows // self.chunk_rows
        self.codec = _numcodec(comp)
        self.sep = meta["chunk_key_encoding"]["configuration"]["separator"]
        self._mappable: bool | None = None  # decided on the first map (the files never change)

    def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` (rows ``start:stop``, C-contiguous) shard by shard, without copies."""
        if stop <= start:
            return
        for shard in range(start // self.shard_rows, (stop - 1) // self.shard_rows + 1):
            fd = os.open(_shard_path(self.dir, shard, len(self.shape), self.sep), os.O_RDONLY)
            try:
                self._read_shard(fd, shard, start, stop, out)
            finally:
                os.close(fd)

    def mapped(self) -> np.ndarray | None:
        """The whole array mapped copy-on-write, if it is one shard of uncompressed chunks
        stored in order from offset 0 (as the writer stores an array of declared size)."""
        n = self.shape[0]
        if self.codec is not None or n == 0 or n > self.shard_rows or self._mappable is False:
            return None
        fd = os.open(_shard_path(self.dir, 0, len(self.shape), self.sep), os.O_RDONLY)
        try:
            if self._mappable is None:
                chunk_bytes = self.chunk_rows * self.dtype.itemsize * int(np.prod(self.shape[1:]))
                self._mappable = self._back_to_back(self._index(fd, 0), 0,
                                                    (n - 1) // self.chunk_rows, chunk_bytes)
            return map_rows(fd, 0, self.shape, self.dtype) if self._mappable else None
        finally:
            os.close(fd)

    def _index(self, fd: int, shard: int) -> np.ndarray:
        """The shard's chunk index, rows (offset, nbytes), after checking its CRC-32C."""
        nidx = 16 * self.per_shard
        size = os.fstat(fd).st_size
        raw = os.pread(fd, nidx + 4, size - nidx - 4) if size >= nidx + 4 else b""
        if len(raw) != nidx + 4 or _crc32c(raw[:nidx]) != raw[nidx:]:
            raise OSError(f"shard index checksum mismatch in {self.dir} shard {shard}")
        return np.frombuffer(raw[:nidx], "<u8").reshape(-1, 2)

    def _read_shard(self, fd: int, shard: int, start: int, stop: int, out: np.ndarray) -> None:
        index = self._index(fd, shard)
        lo = shard * self.shard_rows
        a, b = max(lo, start), min(lo + self.shard_rows, stop)
        row_bytes = out[:1].nbytes
        if self._back_to_back(index, (a - lo) // self.chunk_rows, (b - 1 - lo) // self.chunk_rows,
                              self.chunk_rows * row_bytes):
            pread_into(fd, out[a - start:b - start], (a - lo) * row_bytes)
            return
        for j, (off, nbytes) in enumerate(index):
            c0 = lo + j * self.chunk_rows
            ca, cb = max(c0, start), min(c0 + self.chunk_rows, stop)
            if ca >= cb:
                continue
            dst = out[ca - start:cb - start]
            if off == _EMPTY:
                dst[...] = 0
            elif self.codec is None:
                pread_into(fd, dst, int(off) + (ca - c0) * row_bytes)
            else:
                chunk = np.empty((self.chunk_rows, *self.shape[1:]), self.dtype)
                self.codec.decode(os.pread(fd, int(nbytes), int(off)), out=chunk)
                dst[...] = chunk[ca - c0:cb - c0]

    def _back_to_back(self, index: np.ndarray, first: int, last: int, chunk_bytes: int) -> bool:
        """Whether chunks first..last are uncompressed and stored in order from offset 0."""
        wanted = index[first:last + 1]
        expect = np.arange(first, last + 1, dtype="<u8") * chunk_bytes
        return self.codec is None and bool(np.array_equal(wanted[:, 0], expect)
                                           and (wanted[:, 1] == chunk_bytes).all())


def read_manifest(path: Path) -> str | None:
    """The text of ``manifest.json`` (written last), or None where there is none yet."""
    file = Path(path) / "manifest.json"
    return file.read_text() if file.is_file() else None


class Reader:
    """Reads a committed zarr cache; see :class:`ltpipe.cache.reader.CacheReader`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._fast: dict[str, _FastArray | None] = {}
        self._zarr: dict[str, Any] = {}

    def _array(self, key: str) -> _FastArray | None:
        if key not in self._fast:
            meta = json.loads((self.root / key / "zarr.json").read_text())
            layout = _inner_codecs(meta) if meta.get("shape") else None
            self._fast[key] = _FastArray(self.root / key, meta, *layout) if layout else None
        return self._fast[key]

    def _slow(self, key: str) -> Any:
        if key not in self._zarr:
            import zarr

            self._zarr[key] = zarr.open_array(str(self.root / key), mode="r")
        return self._zarr[key]

    def block_rows(self, key: str) -> int:
        """Rows per read block: ``CHUNKS_PER_BLOCK`` chunks, at most one shard."""
        fast = self._array(key)
        if fast:
            return min(fast.shard_rows, fast.chunk_rows * CHUNKS_PER_BLOCK)
        return max(1, (self._slow(key).shards or self._slow(key).chunks or (1,))[0])

    def mapped(self, key: str) -> np.ndarray | None:
        """A fresh copy-on-write map of the whole array, or None where it must be read."""
        fast = self._array(key)
        return fast.mapped() if fast else None

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` (C-contiguous) with rows ``start:stop`` (a 0-d ``out``: the value);
        uncompressed shards are read straight into it."""
        fast = self._array(key)
        if fast is not None:
            fast.read_into(start, stop, out)
        else:
            arr = self._slow(key)
            out[...] = arr[...] if arr.ndim == 0 else arr[start:stop]

    def meta(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype as stored on disk."""
        meta = json.loads((self.root / key / "zarr.json").read_text())
        return tuple(meta["shape"]), np.dtype(meta["data_type"]).newbyteorder("<")

    def close(self) -> None:
        """Forget the arrays' metadata (no file stays open between reads)."""
        self._fast.clear()
        self._zarr.clear()


def check_compression(compression: str) -> None:
    """Raise LtpipeError unless ``compression`` is a zarr choice."""
    if compression not in COMPRESSIONS:
        raise LtpipeError(f"compression {compression!r} is not available for the zarr backend; "
                          f"choose one of {sorted(COMPRESSIONS)}")
