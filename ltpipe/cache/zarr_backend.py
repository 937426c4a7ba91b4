"""zarr v3 backend of the feature cache: sharded arrays chunked along axis 0.

The metadata (``zarr.json``) is written by zarr itself; the shards of streamed arrays are encoded
here, chunk by chunk as rows arrive, in the zarr v3 sharding layout (inner codecs ``bytes`` + the
chosen compressor, index ``bytes`` + ``crc32c`` at the end of the shard). Going around zarr's
per-chunk async machinery makes writes and whole-array reads several times faster: uncompressed
shards are read with one ``preadv`` straight into the output array. Any zarr v3 reader opens the
result (a test checks this). Arrays in another layout are read through zarr.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.utils import LtpipeError

#: compression name -> (zarr codec class name, its keyword arguments without the level)
COMPRESSIONS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None,
    "zstd": ("ZstdCodec", {}),
    "lz4": ("BloscCodec", {"cname": "lz4", "shuffle": "noshuffle"}),
    "blosc": ("BloscCodec", {"cname": "zstd", "shuffle": "shuffle"}),
}
CHUNKS_PER_SHARD = 8
_EMPTY = 2**64 - 1


def _zarr_codec(compression: str, level: int) -> Any:
    spec = COMPRESSIONS[compression]
    if spec is None:
        return None
    import zarr.codecs

    cls_name, kwargs = spec
    key = "level" if cls_name == "ZstdCodec" else "clevel"
    return getattr(zarr.codecs, cls_name)(**{key: level}, **kwargs)


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
    import google_crc32c

    return struct.pack("<I", google_crc32c.value(bytes(data)))


def _shard_path(array_dir: Path, shard_index: int, ndim: int) -> Path:
    return array_dir.joinpath("c", str(shard_index), *(["0"] * (ndim - 1)))


@dataclass
class _Shard:
    """The shard file being written: its number, handle and chunk index (offset, nbytes)."""

    number: int
    fh: Any
    index: np.ndarray = field(default_factory=lambda: np.full((CHUNKS_PER_SHARD, 2), _EMPTY,
                                                              "<u8"))
    offset: int = 0


class ZarrWriter:
    """Writes arrays under a temporary zarr v3 directory; see :class:`ltpipe.cache.CacheWriter`.

    Chunks go to their shard file as they come; a shard's index is written when the next shard
    starts or the array is finished.
    """

    def __init__(self, root: Path, compression: str, level: int, chunk_mb: float) -> None:
        import zarr

        self.root = Path(root)
        self.compression, self.level, self.chunk_mb = compression, level, chunk_mb
        self._group = zarr.open_group(str(self.root), mode="w", zarr_format=3)
        self._arrays: dict[str, Any] = {}
        self._codec: dict[str, Any] = {}
        self._shard: dict[str, _Shard] = {}

    def create(self, key: str, tail: tuple[int, ...], dtype: np.dtype, chunk_rows: int) -> None:
        """Create an empty array of ``chunk_rows``-row chunks, ``CHUNKS_PER_SHARD`` per shard."""
        group, name = key.split("/")
        arr = self._group.require_group(group).create_array(
            name, shape=(0, *tail), dtype=dtype, chunks=(chunk_rows, *tail),
            shards=(chunk_rows * CHUNKS_PER_SHARD, *tail),
            compressors=_zarr_codec(self.compression, self.level), fill_value=0)
        self._arrays[key] = arr
        self._codec[key] = _numcodec(_inner_codecs(arr.metadata.to_dict())[1])

    def write_chunks(self, key: str, first: int, block: np.ndarray) -> None:
        """Write chunks ``first, first+1, ...``: whole chunks, or the array's last partial one."""
        chunk_rows = self._arrays[key].chunks[0]
        block = np.ascontiguousarray(block.astype(block.dtype.newbyteorder("<"), copy=False))
        for j, lo in enumerate(range(0, len(block), chunk_rows)):
            self._write_chunk(key, first + j, block[lo:lo + chunk_rows], chunk_rows)

    def _write_chunk(self, key: str, number: int, chunk: np.ndarray, chunk_rows: int) -> None:
        shard_number, slot = divmod(number, CHUNKS_PER_SHARD)
        shard = self._shard.get(key)
        if shard is None or shard.number != shard_number:
            self._close_shard(key)
            path = _shard_path(self.root / key, shard_number, chunk.ndim)
            path.parent.mkdir(parents=True, exist_ok=True)
            shard = self._shard[key] = _Shard(shard_number, open(path, "wb"))
        if len(chunk) < chunk_rows:  # the array's last chunk is stored full size, zero padded
            padded = np.zeros((chunk_rows, *chunk.shape[1:]), chunk.dtype)
            padded[:len(chunk)] = chunk
            chunk = padded
        codec = self._codec[key]
        data = memoryview(chunk).cast("B") if codec is None else codec.encode(chunk)
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
        """Write a 0-d array through zarr itself."""
        group, name = key.split("/")
        arr = self._group.require_group(group).create_array(
            name, shape=array.shape, dtype=array.dtype, fill_value=0)
        arr[...] = array
        self._arrays[key] = arr

    def chunks(self, key: str) -> list[int]:
        """The inner chunk shape of ``key``."""
        return list(self._arrays[key].chunks)

    def finish(self, key: str, rows: int) -> None:
        """Close the last shard and set the final number of rows of a streamed array."""
        self._close_shard(key)
        arr = self._arrays[key]
        if arr.ndim:
            arr.resize((rows, *arr.shape[1:]))

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
        self._arrays.clear()


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
    sep_ok = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator") == "/"
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

    def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` (rows ``start:stop``, C-contiguous) shard by shard, without copies."""
        if stop <= start:
            return
        for shard in range(start // self.shard_rows, (stop - 1) // self.shard_rows + 1):
            fd = os.open(_shard_path(self.dir, shard, len(self.shape)), os.O_RDONLY)
            try:
                self._read_shard(fd, shard, start, stop, out)
            finally:
                os.close(fd)

    def _read_shard(self, fd: int, shard: int, start: int, stop: int, out: np.ndarray) -> None:
        from ltpipe.cache.reader import pread_into

        nidx = 16 * self.per_shard
        size = os.fstat(fd).st_size
        raw = os.pread(fd, nidx + 4, size - nidx - 4) if size >= nidx + 4 else b""
        if len(raw) != nidx + 4 or _crc32c(raw[:nidx]) != raw[nidx:]:
            raise OSError(f"shard index checksum mismatch in {self.dir} shard {shard}")
        index = np.frombuffer(raw[:nidx], "<u8").reshape(-1, 2)
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


class ZarrReader:
    """Reads a committed zarr cache; see :class:`ltpipe.cache.store.CacheReader`."""

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
        fast = self._array(key)
        return fast.shard_rows if fast else max(1, (self._slow(key).shards or
                                                    self._slow(key).chunks or (1,))[0])

    def read_range(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``key`` (the value itself for a 0-d array)."""
        fast = self._array(key)
        if fast is not None:
            out = np.empty((stop - start, *fast.shape[1:]), fast.dtype)
            fast.read_into(start, stop, out)
            return out
        arr = self._slow(key)
        return np.asarray(arr[...] if arr.ndim == 0 else arr[start:stop])

    def meta(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype as stored on disk."""
        meta = json.loads((self.root / key / "zarr.json").read_text())
        return tuple(meta["shape"]), np.dtype(meta["data_type"]).newbyteorder("<")

    def chunks(self, key: str) -> list[int]:
        meta = json.loads((self.root / key / "zarr.json").read_text())
        codecs = meta.get("codecs", [])
        if codecs and codecs[0].get("name") == "sharding_indexed":
            return list(codecs[0]["configuration"]["chunk_shape"])
        return list(meta["chunk_grid"]["configuration"]["chunk_shape"])

    def close(self) -> None:
        self._fast.clear()
        self._zarr.clear()


def check_compression(compression: str) -> None:
    """Raise LtpipeError unless ``compression`` is a zarr choice."""
    if compression not in COMPRESSIONS:
        raise LtpipeError(f"compression {compression!r} is not available for the zarr backend; "
                          f"choose one of {sorted(COMPRESSIONS)}")
