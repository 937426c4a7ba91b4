"""zarr v3 backend of the feature cache: sharded arrays chunked along axis 0.

The metadata (``zarr.json``) is written by zarr itself; the shards of streamed arrays are encoded
here, one whole shard per write, in the zarr v3 sharding layout (inner codecs ``bytes`` + the
chosen compressor, index ``bytes`` + ``crc32c`` at the end of the shard). Going around zarr's
per-chunk async machinery makes writes and whole-array reads several times faster; any zarr v3
reader opens the result (a test checks this). Arrays in another layout are read through zarr.
"""

from __future__ import annotations

import json
import os
import struct
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


class ZarrWriter:
    """Writes arrays under a temporary zarr v3 directory; see :class:`ltpipe.cache.CacheWriter`."""

    def __init__(self, root: Path, compression: str, level: int, chunk_mb: float) -> None:
        import zarr

        self.root = Path(root)
        self.compression, self.level, self.chunk_mb = compression, level, chunk_mb
        self._group = zarr.open_group(str(self.root), mode="w", zarr_format=3)
        self._arrays: dict[str, Any] = {}
        self._codec: dict[str, Any] = {}

    def create(self, key: str, tail: tuple[int, ...], dtype: np.dtype, chunk_rows: int) -> int:
        """Create an empty array of ``chunk_rows``-row chunks; returns the rows per write block."""
        group, name = key.split("/")
        shard_rows = chunk_rows * CHUNKS_PER_SHARD
        arr = self._group.require_group(group).create_array(
            name, shape=(0, *tail), dtype=dtype, chunks=(chunk_rows, *tail),
            shards=(shard_rows, *tail), compressors=_zarr_codec(self.compression, self.level),
            fill_value=0)
        self._arrays[key] = arr
        self._codec[key] = _numcodec(_inner_codecs(arr.metadata.to_dict())[1])
        return shard_rows

    def write_block(self, key: str, start: int, block: np.ndarray) -> None:
        """Write one whole shard: ``block`` holds rows ``start:start+len(block)`` of the array."""
        arr = self._arrays[key]
        chunk_rows, shard_rows = arr.chunks[0], arr.shards[0]
        codec = self._codec[key]
        block = block.astype(block.dtype.newbyteorder("<"), copy=False)
        parts, index, offset = [], np.full((CHUNKS_PER_SHARD, 2), _EMPTY, "<u8"), 0
        for i, lo in enumerate(range(0, len(block), chunk_rows)):
            chunk = block[lo:lo + chunk_rows]
            if len(chunk) < chunk_rows:  # the array's last chunk is stored full size, zero padded
                chunk = np.concatenate([chunk, np.zeros((chunk_rows - len(chunk), *chunk.shape[1:]),
                                                        chunk.dtype)])
            data = memoryview(np.ascontiguousarray(chunk)).cast("B")
            data = data if codec is None else codec.encode(data)
            parts.append(data)
            index[i] = offset, len(data)
            offset += len(data)
        index_bytes = index.tobytes()
        parts += [index_bytes, _crc32c(index_bytes)]
        path = _shard_path(self.root / key, start // shard_rows, block.ndim)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.writelines(parts)

    def write_small(self, key: str, array: np.ndarray) -> None:
        """Write a 0-d array through zarr itself."""
        group, name = key.split("/")
        arr = self._group.require_group(group).create_array(
            name, shape=array.shape, dtype=array.dtype, fill_value=0)
        arr[...] = array
        self._arrays[key] = arr

    def chunks(self, key: str) -> list[int]:
        arr = self._arrays[key]
        return list(arr.chunks)

    def finish(self, key: str, rows: int) -> None:
        """Set the final number of rows of a streamed array."""
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

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        c0, c1 = start // self.chunk_rows, -(-stop // self.chunk_rows)
        for shard in range(c0 // self.per_shard, (c1 - 1) // self.per_shard + 1 if c1 > c0 else 0):
            self._read_shard(shard, start, stop, out)
        return out

    def _read_shard(self, shard: int, start: int, stop: int, out: np.ndarray) -> None:
        path = _shard_path(self.dir, shard, len(self.shape))
        nidx = 16 * self.per_shard
        with open(path, "rb") as fh:
            fh.seek(-(nidx + 4), os.SEEK_END)
            raw = fh.read(nidx + 4)
            if _crc32c(raw[:nidx]) != raw[nidx:]:
                raise OSError(f"shard index checksum mismatch in {path}")
            index = np.frombuffer(raw[:nidx], "<u8").reshape(-1, 2)
            if self._read_contiguous(fh, index, shard, start, stop, out):
                return
            for j, (off, nbytes) in enumerate(index):
                lo = (shard * self.per_shard + j) * self.chunk_rows
                a, b = max(lo, start), min(lo + self.chunk_rows, stop)
                if a >= b:
                    continue
                if off == _EMPTY:
                    out[a - start:b - start] = 0
                    continue
                fh.seek(int(off))
                self._decode_into(fh, int(nbytes), lo, a, b, out[a - start:b - start])

    def _read_contiguous(self, fh: Any, index: np.ndarray, shard: int, start: int, stop: int,
                         out: np.ndarray) -> bool:
        """One read for uncompressed chunks stored back to back (what ZarrWriter writes)."""
        lo = shard * self.shard_rows
        chunk_bytes = self.chunk_rows * out[:1].nbytes
        a, b = max(lo, start), min(lo + self.shard_rows, stop)
        first, last = (a - lo) // self.chunk_rows, (b - 1 - lo) // self.chunk_rows
        wanted = index[first:last + 1]
        expect = np.arange(first, last + 1, dtype="<u8") * chunk_bytes
        if self.codec is not None or not (np.array_equal(wanted[:, 0], expect)
                                          and (wanted[:, 1] == chunk_bytes).all()):
            return False
        fh.seek((a - lo) * out[:1].nbytes)
        fh.readinto(memoryview(out[a - start:b - start]).cast("B"))
        return True

    def _decode_into(self, fh: Any, nbytes: int, lo: int, a: int, b: int, dst: np.ndarray) -> None:
        whole = a == lo and b - a == self.chunk_rows
        if self.codec is None and whole:
            fh.readinto(memoryview(dst).cast("B"))
            return
        data = fh.read(nbytes)
        if self.codec is None:
            chunk = np.frombuffer(data, self.dtype).reshape(self.chunk_rows, *self.shape[1:])
        elif whole:
            self.codec.decode(data, out=dst)
            return
        else:
            chunk = np.empty((self.chunk_rows, *self.shape[1:]), self.dtype)
            self.codec.decode(data, out=chunk)
        dst[...] = chunk[a - lo:b - lo]


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
        fast = self._array(key)
        if fast is not None:
            return fast.read(start, stop)
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
