"""Tests of the feature cache store (ltpipe.cache): both backends, integrity and atomicity."""

from __future__ import annotations

import json
import re
import tracemalloc
import zlib

import numpy as np
import pytest

from ltpipe.cache import CACHE_FORMAT_VERSION, CacheError, CacheWriter, open_cache, verify_cache
from ltpipe.utils import LtpipeError

BACKENDS = ["zarr", "hdf5"]
CODECS = [("zarr", "none"), ("zarr", "zstd"), ("zarr", "lz4"), ("zarr", "blosc"),
          ("hdf5", "none"), ("hdf5", "gzip"), ("hdf5", "lzf")]
TINY = 0.0005  # MB: 524 bytes -> chunks of ceil(524 / 48) = 11 rows of (3, 4) float32
SIZES = [5, 13, 100, 0, 1, 81]  # uneven appends crossing chunk and block boundaries (200 rows)


def _path(tmp_path, backend):
    return tmp_path / ("cache.zarr" if backend == "zarr" else "cache.h5")


def _chunk_sums(a: np.ndarray, rows: int, algorithm: str) -> list[int]:
    """Checksums of consecutive ``rows``-row pieces of ``a`` (one for a 0-d array), by hand."""
    import google_crc32c
    import xxhash

    fn = {"xxh3-64-per-chunk": xxhash.xxh3_64_intdigest, "crc32c-per-chunk": google_crc32c.value,
          "crc32-per-chunk": zlib.crc32}[algorithm]
    if a.ndim == 0:
        return [fn(a.tobytes())]
    return [fn(a[lo:lo + rows].tobytes()) for lo in range(0, len(a), rows)]


def _data():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((200, 3, 4)).astype(np.float32),
            "h": rng.standard_normal((200, 5)).astype(np.float16),
            "labels": rng.integers(0, 10, 200).astype(np.int64)}


def _write(path, backend, compression="none", manifest=None, declared=False, data=None, **kw):
    """The arrays of :func:`_data` in uneven appends; ``declared``: with their row counts
    declared up front, as the dump declares them (one extent each where uncompressed), else
    undeclared (zarr: 8 chunks per shard; HDF5: growable chunked datasets)."""
    data = data or _data()
    with CacheWriter(path, backend=backend, compression=compression, chunk_mb=TINY, **kw) as w:
        for name, a in data.items():
            w.create("train", name, a.shape[1:], a.dtype,
                     expected_rows=len(a) if declared else None)
        lo = 0
        for n in SIZES:
            for name, a in data.items():
                w.append("train", name, a[lo:lo + n])
            lo += n
        w.write("head", "weight", np.arange(12, dtype=np.float32).reshape(3, 4))
        w.write("meta", "counts", np.array([5, 3, 1], dtype=np.int64))
        w.write("meta", "scale", np.float64(2.5))
        out = w.commit(manifest or {"kind": "test", "n": 200})
    return data, out


@pytest.mark.parametrize("backend,compression", CODECS)
def test_round_trip(tmp_path, backend, compression):
    path = _path(tmp_path, backend)
    data, _ = _write(path, backend, compression)
    with open_cache(path) as r:
        assert r.groups() == ["head", "meta", "train"]
        assert r.names("train") == ["h", "labels", "x"]
        for name, a in data.items():
            got = r.read("train", name)
            assert got.dtype == a.dtype and got.shape == a.shape == r.shape("train", name)
            assert r.dtype("train", name) == a.dtype
            np.testing.assert_array_equal(got, a)
        np.testing.assert_array_equal(r.read("head", "weight"),
                                      np.arange(12, dtype=np.float32).reshape(3, 4))
        np.testing.assert_array_equal(r.read("meta", "counts"), [5, 3, 1])
        scale = r.read("meta", "scale")
        assert scale.shape == () and scale.dtype == np.float64 and float(scale) == 2.5
    assert verify_cache(path) == []  # checksums are of the decoded bytes, whatever the codec


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_subsets(tmp_path, backend):
    path = _path(tmp_path, backend)
    data, _ = _write(path, backend)
    x = data["x"]
    with open_cache(path) as r:
        for rows in (slice(3, 150), slice(None, None, 7), slice(195, None), slice(9, 11),
                     slice(50, 50)):
            np.testing.assert_array_equal(r.read("train", "x", rows), x[rows])
        idx = np.array([199, 3, 3, -1, 0, 85, 12, 11])
        np.testing.assert_array_equal(r.read("train", "x", idx), x[idx])
        mask = np.zeros(200, bool)
        mask[[0, 10, 79, 80, 150]] = True
        np.testing.assert_array_equal(r.read("train", "labels", mask), data["labels"][mask])
        with pytest.raises(LtpipeError, match="200"):
            r.read("train", "x", np.array([200]))


@pytest.mark.parametrize("backend,algorithm", [
    ("zarr", "xxh3-64-per-chunk"), ("hdf5", "xxh3-64-per-chunk"),
    ("zarr", "crc32c-per-chunk"), ("hdf5", "crc32c-per-chunk"), ("zarr", "crc32-per-chunk")])
def test_manifest_and_checksums(tmp_path, monkeypatch, backend, algorithm):
    """Every chunk's checksum as computed by hand, whichever algorithm wrote the cache: the
    default (xxh3, with xxhash installed), crc32c (caches written before xxh3, or without
    xxhash) or crc32 (neither package)."""
    import ltpipe.cache.store as store

    if algorithm != "xxh3-64-per-chunk":  # what older ltpipes or machines without xxhash write
        monkeypatch.setattr(store, "default_checksum", lambda: algorithm)
    path = _path(tmp_path, backend)
    data, out = _write(path, backend)
    with open_cache(path) as r:
        m = r.manifest
    assert m == out
    assert m["kind"] == "test" and m["n"] == 200
    assert m["format_version"] == CACHE_FORMAT_VERSION == 2 and m["backend"] == backend
    assert m["complete"] is True
    expected = {f"train/{k}": v for k, v in data.items()}
    expected["head/weight"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected["meta/counts"] = np.array([5, 3, 1], dtype=np.int64)
    expected["meta/scale"] = np.float64(2.5)
    assert sorted(m["arrays"]) == sorted(expected)
    # rows per chunk: ceil(524 bytes / row bytes), capped by the rows of a whole-array write
    chunk_rows = {"train/x": 11, "train/h": 53, "train/labels": 66, "head/weight": 3,
                  "meta/counts": 3, "meta/scale": 1}
    for key, a in expected.items():
        entry = m["arrays"][key]
        a = np.asarray(a)
        assert entry["checksum"]["algorithm"] == algorithm, key
        assert entry["checksum"]["chunk_rows"] == chunk_rows[key], key
        assert entry["checksum"]["values"] == _chunk_sums(a, chunk_rows[key], algorithm), key
        assert entry["shape"] == list(a.shape) and np.dtype(entry["dtype"]) == a.dtype
    assert len(m["arrays"]["train/x"]["checksum"]["values"]) == 19  # ceil(200 / 11)
    assert m["arrays"]["train/x"]["chunks"] == [11, 3, 4]  # at least chunk_mb: ceil(524 / 48)
    if backend == "zarr":
        assert json.loads((path / "manifest.json").read_text()) == m
    assert verify_cache(path) == []


@pytest.mark.parametrize("compression", ["none", "zstd", "lz4", "blosc"])
def test_zarr_store_is_standard_zarr(tmp_path, compression):
    """zarr itself reads what ZarrWriter writes (metadata and shards are written by hand)."""
    import zarr

    path = _path(tmp_path, "zarr")
    data, _ = _write(path, "zarr", compression)
    group = zarr.open_group(str(path), mode="r")
    for name, a in data.items():
        np.testing.assert_array_equal(group[f"train/{name}"][:], a)
    np.testing.assert_array_equal(group["head/weight"][:], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(group["meta/counts"][:], [5, 3, 1])
    assert group["meta/scale"][()] == 2.5 and group["meta/scale"].dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_or_no_commit_leaves_nothing(tmp_path, backend):
    path = _path(tmp_path, backend)
    with pytest.raises(RuntimeError, match="boom"):
        with CacheWriter(path, backend=backend, chunk_mb=TINY) as w:
            w.create("train", "x", (3,), np.float32)
            w.append("train", "x", np.ones((100, 3), np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with CacheWriter(path, backend=backend, chunk_mb=TINY) as w:
        w.write("train", "x", np.ones((100, 3), np.float32))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LtpipeError, match="expected_rows"):
        with CacheWriter(path, backend=backend) as w:
            w.create("train", "x", (3,), np.float32, expected_rows=10)
            w.append("train", "x", np.ones((9, 3), np.float32))
            w.commit({})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_missing_or_incomplete(tmp_path, backend):
    path = _path(tmp_path, backend)
    with pytest.raises(CacheError, match="forcerun") as err:
        open_cache(path)
    assert str(path) in str(err.value)
    _write(path, backend)
    if backend == "zarr":
        (path / "manifest.json").unlink()
    else:
        import h5py

        with h5py.File(path, "r+") as f:
            del f.attrs["ltpipe_complete"]
    with pytest.raises(CacheError, match="incomplete") as err:
        open_cache(path)
    assert str(path) in str(err.value)
    assert len(verify_cache(path)) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_expect(tmp_path, backend):
    path = _path(tmp_path, backend)
    _write(path, backend, manifest={"split_fingerprint": "abc", "dims": [3, 4]})
    open_cache(path, expect={"split_fingerprint": "abc", "dims": (3, 4)}).close()
    with pytest.raises(CacheError, match="split_fingerprint") as err:
        open_cache(path, expect={"split_fingerprint": "xyz"})
    assert "abc" in str(err.value) and "xyz" in str(err.value)
    with pytest.raises(CacheError, match="backbone_sha256"):
        open_cache(path, expect={"backbone_sha256": "0"})


@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_detects_corruption(tmp_path, backend):
    path = _path(tmp_path, backend)
    _write(path, backend)
    if backend == "zarr":
        shard = path / "train" / "x" / "c.1.0.0"
        raw = bytearray(shard.read_bytes())
        raw[100:104] = bytes(b ^ 0xFF for b in raw[100:104])  # inside the first chunk's data
        shard.write_bytes(bytes(raw))
    else:
        import h5py

        with h5py.File(path, "r+") as f:
            f["train/x"][90:92] = -7.0
    problems = verify_cache(path)
    assert len(problems) == 1 and problems[0].startswith("train/x:"), problems
    # rows 88-98 hold chunk 8 (11 rows per chunk); zarr: first chunk of shard 1 (8 per shard)
    assert "chunk 8 (rows 88:99) fail their xxh3-64-per-chunk checksum" in problems[0], problems


def _flip_bytes(file, offset: int, n: int = 4) -> None:
    with open(file, "r+b") as fh:
        fh.seek(offset)
        raw = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in raw))


@pytest.mark.parametrize("backend,algorithm", [("zarr", "xxh3-64-per-chunk"),
                                               ("hdf5", "xxh3-64-per-chunk"),
                                               ("zarr", "crc32c-per-chunk"),
                                               ("hdf5", "crc32c-per-chunk")])
def test_verify_names_the_corrupted_chunk(tmp_path, monkeypatch, backend, algorithm):
    """Flip 4 bytes of chunk 13 (rows 143:154) of train/x in the file itself; only it is named,
    with the default checksum (xxh3) and with the crc32c of caches written before it."""
    import ltpipe.cache.store as store

    monkeypatch.setattr(store, "default_checksum", lambda: algorithm)
    path = _path(tmp_path, backend)
    data, manifest = _write(path, backend)
    assert manifest["arrays"]["train/x"]["checksum"]["algorithm"] == algorithm
    chunk_bytes = 11 * 3 * 4 * 4
    if backend == "zarr":  # chunk 13 = shard 1, slot 5; uncompressed chunks lie back to back
        _flip_bytes(path / "train" / "x" / "c.1.0.0", 5 * chunk_bytes + 40)
    else:
        import h5py

        with h5py.File(path, "r") as f:
            info = f["train/x"].id.get_chunk_info_by_coord((143, 0, 0))
        assert info.size == chunk_bytes
        _flip_bytes(path, info.byte_offset + 40)
    problems = verify_cache(path)
    assert len(problems) == 1 and problems[0].startswith(
        f"train/x: chunk 13 (rows 143:154) fail their {algorithm} checksum"), problems
    assert len(re.findall(r"chunk \d+", problems[0])) == 1, problems
    _assert_chunk_13_refused(path, data)


def _assert_chunk_13_refused(path, data, mapped=None):
    """Reads of train/x whose chunk 13 (rows 143:154) is corrupted: a whole-array read and the
    row reads that touch chunk 13 are refused naming it; the other rows read. ``mapped``: also
    check that train/h, which is clean, is (not) read as a map."""
    with open_cache(path) as r:
        if mapped is not None:
            assert _mapped_base(r.read("train", "h")) == mapped
        with pytest.raises(CacheError, match=r"train/x .*chunk 13 \(rows 143:154\)"):
            r.read("train", "x")  # a whole-array read checks every chunk
        # row reads check the chunks they touch: the clean ones read, the bad one refused
        np.testing.assert_array_equal(r.read("train", "x", rows=slice(0, 143)), data["x"][:143])
        np.testing.assert_array_equal(r.read("train", "x", rows=np.array([199, 0, 154])),
                                      data["x"][[199, 0, 154]])
        for rows in (slice(150, 151), np.array([3, 145]), slice(140, 160)):
            with pytest.raises(CacheError, match=r"train/x .*chunk 13 \(rows 143:154\)"):
                r.read("train", "x", rows=rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_reads_check_each_chunk_once(tmp_path, backend):
    """A row read reads (and checks) the whole chunks it touches the first time, then only its
    rows: 11 rows per chunk here, so row 12 first costs rows 11:22."""
    path = _path(tmp_path, backend)
    data, _ = _write(path, backend)
    with open_cache(path) as r:
        calls, read_into = [], r._impl.read_into

        def spy(key, start, stop, out):
            calls.append((key, start, stop))
            return read_into(key, start, stop, out)

        r._impl.read_into = spy
        for rows in (slice(12, 13), slice(12, 14), slice(20, 23)):
            np.testing.assert_array_equal(r.read("train", "x", rows=rows), data["x"][rows])
    assert calls == [("train/x", 11, 22), ("train/x", 12, 14), ("train/x", 11, 33)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_refuses_another_format_version(tmp_path, backend):
    path = _path(tmp_path, backend)
    _, manifest = _write(path, backend)
    manifest["format_version"] = 1
    if backend == "zarr":
        (path / "manifest.json").write_text(json.dumps(manifest))
    else:
        import h5py

        with h5py.File(path, "r+") as f:
            f.attrs["ltpipe_manifest"] = json.dumps(manifest)
    with pytest.raises(CacheError, match=r"format_version 1.*only version 2.*forcerun") as err:
        open_cache(path)
    assert str(path) in str(err.value)
    assert len(verify_cache(path)) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_big_endian_and_strided_input(tmp_path, backend):
    """Big-endian and non-contiguous rows are stored little-endian; verify still passes."""
    path = _path(tmp_path, backend)
    a = np.arange(300 * 6, dtype=">f4").reshape(300, 6)
    with CacheWriter(path, backend=backend, chunk_mb=TINY) as w:
        w.create("g", "a", (6,), ">f4")
        w.append("g", "a", a[:150])
        w.append("g", "a", np.asfortranarray(a[150:]))
        w.write("g", "t", a[:, ::-2])
        w.write("g", "s", np.array(7.5, ">f8"))
        w.commit({})
    with open_cache(path) as r:
        got = r.read("g", "a")
        assert got.dtype == np.dtype("<f4") == r.dtype("g", "a")
        np.testing.assert_array_equal(got, a)
        np.testing.assert_array_equal(r.read("g", "t"), a[:, ::-2])
        assert float(r.read("g", "s")) == 7.5
    assert verify_cache(path) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_refuses_to_overwrite(tmp_path, backend):
    path = _path(tmp_path, backend)
    _write(path, backend)
    with pytest.raises(LtpipeError, match="overwrite=True") as err:
        CacheWriter(path, backend=backend)
    assert str(path) in str(err.value)
    with CacheWriter(path, backend=backend, overwrite=True) as w:
        w.write("g", "a", np.array([1, 2, 3]))
        w.commit({"kind": "second"})
    with open_cache(path) as r:
        assert r.manifest["kind"] == "second" and r.groups() == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs(tmp_path, backend):
    path = _path(tmp_path, backend)
    bad = "lzf" if backend == "zarr" else "zstd"
    with pytest.raises(LtpipeError, match="choose one of") as err:
        CacheWriter(path, backend=backend, compression=bad)
    assert "none" in str(err.value)
    with pytest.raises(LtpipeError, match="unknown"):
        CacheWriter(path, backend="npz")
    with CacheWriter(path, backend=backend) as w:
        w.create("g", "a", (3,), np.float32)
        with pytest.raises(LtpipeError, match=r"\(7, 4\)"):
            w.append("g", "a", np.ones((7, 4), np.float32))
        with pytest.raises(LtpipeError, match="float32"):
            w.append("g", "a", np.ones((7, 3), np.complex64))
        with pytest.raises(LtpipeError, match="already"):
            w.create("g", "a", (3,), np.float32)


def _peak_streaming(path, backend, rows):
    tracemalloc.start()
    try:
        with CacheWriter(path, backend=backend, chunk_mb=0.01, overwrite=True) as w:
            w.create("train", "f", (64,), np.float32)
            for lo in range(0, rows, 50):
                w.append("train", "f", np.full((min(50, rows - lo), 64), lo, np.float32))
            w.commit({})
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_streaming_memory_does_not_grow(tmp_path, backend):
    path = _path(tmp_path, backend)
    _peak_streaming(path, backend, 100)  # warm up imports and caches
    small = _peak_streaming(path, backend, 2000)  # 0.5 MB of data
    large = _peak_streaming(path, backend, 8000)  # 2 MB of data
    # only the per-chunk checksums may grow (writer list, manifest text and dict at commit):
    # 41-row chunks (ceil(0.01 MB / 256 bytes)), allow 128 bytes for each extra chunk
    extra_chunks = -(-8000 // 41) - -(-2000 // 41)
    assert large < 1.5 * small + 128 * extra_chunks, (small, large)
    assert large < 8000 * 64 * 4 / 2, (small, large)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checked_read_shares_blocks_and_fails_cleanly(tmp_path, monkeypatch, backend):
    """A whole-array read splits its blocks between two threads: every block is read exactly
    once, and a block that cannot be read fails the read with that error."""
    from ltpipe.cache.format import backend_module

    path = _path(tmp_path, backend)
    data, _ = _write(path, backend)
    impl = backend_module(backend).Reader
    calls = []
    real = impl.read_into

    def spy(self, key, start, stop, out):
        calls.append((key, start, stop))
        if fail_at is not None and start == fail_at:
            raise OSError(5, f"Input/output error at row {start}")
        real(self, key, start, stop, out)

    monkeypatch.setattr(impl, "read_into", spy)
    fail_at = None
    with open_cache(path) as r:
        np.testing.assert_array_equal(r.read("train", "x"), data["x"])
    assert sorted(calls) == [("train/x", 0, 88), ("train/x", 88, 176), ("train/x", 176, 200)]
    fail_at = 88
    with open_cache(path) as r, pytest.raises(OSError, match="at row 88"):
        r.read("train", "x")


def test_preallocate_is_best_effort(tmp_path):
    """The writer's preallocation grows the file where the system allows it, reads as zeros,
    and never raises (a closed descriptor, a zero length)."""
    import os
    import sys

    from ltpipe.cache.rawio import preallocate

    file = tmp_path / "f"
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"abc")
        preallocate(fd, 3, 8189)
        preallocate(fd, 0, 0)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    preallocate(fd, 0, 4096)  # closed: refused quietly
    assert size in (3, 8192) and (size == 8192 or not sys.platform.startswith("linux"))
    assert file.read_bytes() == b"abc" + bytes(size - 3)


# ------------------------------------------------ arrays of declared size: one extent, mapped
def _mapped_base(array: np.ndarray) -> bool:
    """Whether ``array`` is (a view of) a memory map rather than memory of its own."""
    import mmap

    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array.obj if isinstance(array, memoryview) else array, mmap.mmap)


def _no_maps(monkeypatch, backend):
    """Make the backend refuse every map, as a file system without mmap would."""
    from ltpipe.cache.format import backend_module

    monkeypatch.setattr(backend_module(backend).Reader, "mapped", lambda self, key: None)


@pytest.mark.parametrize("backend,compression", CODECS)
def test_declared_arrays_are_one_extent_and_mapped(tmp_path, backend, compression):
    """With row counts declared (the dump's way), uncompressed arrays are stored in one extent
    (zarr: one shard; HDF5: a contiguous dataset) and every read maps them; compressed ones are
    read as before. Values, zarr's and h5py's own reads and verify agree either way."""
    path = _path(tmp_path, backend)
    data, _ = _write(path, backend, compression, declared=True)
    raw = compression == "none"
    if backend == "zarr":
        import zarr

        assert sorted(p.name for p in (path / "train" / "x").iterdir()) == ["c.0.0.0",
                                                                           "zarr.json"]
        group = zarr.open_group(str(path), mode="r")
        for name, a in data.items():
            np.testing.assert_array_equal(group[f"train/{name}"][:], a)
    else:
        import h5py

        with h5py.File(path, "r") as f:
            assert (f["train/x"].chunks is None) == raw
            for name, a in data.items():
                np.testing.assert_array_equal(f[f"train/{name}"][()], a)
    rows = [None, slice(12, 150), slice(3, 190, 7), np.array([199, 0, 154, 0])]
    with open_cache(path) as r:
        for name, a in data.items():
            for sel in rows:
                got = r.read("train", name, sel)
                np.testing.assert_array_equal(got, a if sel is None else a[sel])
                assert got.dtype == a.dtype
            assert _mapped_base(r.read("train", name)) == raw
            assert _mapped_base(r.read("train", name, slice(5, 9))) == raw
            assert not _mapped_base(r.read("train", name, np.array([4, 2])))  # a gather copies
        assert not _mapped_base(r.read("meta", "scale"))
    assert verify_cache(path) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_mapped_reads_are_private(tmp_path, backend):
    """A mapped array is copy-on-write: writing to it changes neither the file nor any other
    read, from the same reader or another."""
    path = _path(tmp_path, backend)
    data, _ = _write(path, backend, declared=True)
    with open_cache(path) as r:
        whole = r.read("train", "x")
        assert _mapped_base(whole) and whole.flags.writeable
        whole[:] = 0
        part = r.read("train", "x", slice(10, 40))
        np.testing.assert_array_equal(part, data["x"][10:40])
        part *= -1
        np.testing.assert_array_equal(r.read("train", "x"), data["x"])
        np.testing.assert_array_equal(r.read("train", "x", slice(10, 40)), data["x"][10:40])
        assert (whole == 0).all()
    assert verify_cache(path) == []
    with open_cache(path) as r:
        np.testing.assert_array_equal(r.read("train", "x"), data["x"])
    with open_cache(path, mapped=False) as r:  # the caller's choice: memory of its own
        for rows in (None, slice(3, 30)):
            got = r.read("train", "x", rows)
            assert not _mapped_base(got)
            np.testing.assert_array_equal(got, data["x"] if rows is None else data["x"][rows])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mapped_read_outlives_the_cache_it_came_from(tmp_path, backend):
    """An array read from a cache keeps its values when the cache is then replaced (a rerun of
    the dump renames a new cache into place) or removed."""
    import shutil

    path = _path(tmp_path, backend)
    data, _ = _write(path, backend, declared=True)
    with open_cache(path) as r:
        old = r.read("train", "x")
        old_rows = r.read("train", "x", slice(0, 30))
    assert _mapped_base(old)
    doubled = {name: a * 2 for name, a in _data().items()}
    _write(path, backend, declared=True, data=doubled, overwrite=True)
    with open_cache(path) as r:
        np.testing.assert_array_equal(r.read("train", "x"), doubled["x"])
    shutil.rmtree(path) if backend == "zarr" else path.unlink()
    np.testing.assert_array_equal(old, data["x"])
    np.testing.assert_array_equal(old_rows, data["x"][:30])


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_declared_layout_refuses_a_corrupted_chunk(tmp_path, monkeypatch, backend, mapped):
    """Chunk 13 (rows 143:154) of train/x flipped in the file of a one-extent array: whole
    reads, row reads that touch it and verify name it; the other rows read. Mapped, and read
    where nothing can be mapped."""
    path = _path(tmp_path, backend)
    data, _ = _write(path, backend, declared=True)
    chunk_bytes = 11 * 3 * 4 * 4
    if backend == "zarr":
        _flip_bytes(path / "train" / "x" / "c.0.0.0", 13 * chunk_bytes + 40)
    else:
        import h5py

        with h5py.File(path, "r") as f:
            offset = f["train/x"].id.get_offset()
        _flip_bytes(path, offset + 13 * chunk_bytes + 40)
    if not mapped:
        _no_maps(monkeypatch, backend)
    problems = verify_cache(path)
    assert len(problems) == 1 and problems[0].startswith(
        "train/x: chunk 13 (rows 143:154) fail their xxh3-64-per-chunk checksum"), problems
    _assert_chunk_13_refused(path, data, mapped)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mapped_row_reads_check_each_chunk_once(tmp_path, backend):
    """Row reads of a mapped array checksum each chunk they touch the first time only (11 rows
    per chunk: rows 12:13 check chunk 1, rows 20:23 then chunk 2 alone), and a whole read
    leaves nothing to check."""
    path = _path(tmp_path, backend)
    data, _ = _write(path, backend, declared=True)
    with open_cache(path) as r:
        checked, check = [], r._check
        r._check = lambda key, block, first: (checked.append((first, len(block))),
                                              check(key, block, first))
        for rows in (slice(12, 13), slice(12, 14), slice(20, 23), np.array([13, 45, 46])):
            np.testing.assert_array_equal(r.read("train", "x", rows=rows), data["x"][rows])
        assert checked == [(1, 11), (2, 11), (4, 11)]
        r.read("train", "h")
        r.read("train", "h", slice(0, 200))
        assert checked == [(1, 11), (2, 11), (4, 11)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_appending_past_the_declared_rows_is_refused(tmp_path, backend):
    """More rows than declared are refused when appended (a one-extent array has no room for
    them), naming the array and the counts; nothing is left behind."""
    path = _path(tmp_path, backend)
    with pytest.raises(LtpipeError, match=r"train/x: appending 3 rows to the 8 already written "
                                          r"would exceed expected_rows=10"):
        with CacheWriter(path, backend=backend, chunk_mb=TINY) as w:
            w.create("train", "x", (3,), np.float32, expected_rows=10)
            w.append("train", "x", np.ones((8, 3), np.float32))
            w.append("train", "x", np.ones((3, 3), np.float32))
    assert list(tmp_path.iterdir()) == []
