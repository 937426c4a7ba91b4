"""Tests of the cache's per-chunk checksum algorithms (ltpipe.cache.format) and their fallbacks."""

from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest

from ltpipe.cache import CacheError, CacheWriter, open_cache, verify_cache
from ltpipe.cache.format import CHECKSUMS, checksum_function, default_checksum

xxhash = pytest.importorskip("xxhash")
google_crc32c = pytest.importorskip("google_crc32c")


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((37, 5, 3)).astype(np.float32)
    return [a, a.astype(np.float16), a[:, ::2], a[5:6], a[:0], np.float64(2.5),
            rng.integers(0, 2**60, 1000, dtype=np.int64), np.arange(3 << 18, dtype=np.uint8)]


def test_xxh3_known_answers():
    """xxh3-64-per-chunk is XXH3-64 (seed 0) of the array's C-order bytes, as xxhash computes it
    on the bytes directly; the empty input gives the specification's value."""
    fn = checksum_function("xxh3-64-per-chunk")
    assert fn(np.zeros(0, np.uint8)) == 0x2D06800538D394C2 == xxhash.xxh3_64_intdigest(b"")
    for a in _arrays():
        want = xxhash.xxh3_64(np.asarray(a).tobytes(order="C")).intdigest()
        assert fn(a) == want, (np.asarray(a).shape, np.asarray(a).dtype)
        assert 0 <= fn(a) < 2**64


def test_crc_known_answers():
    """The older algorithms keep their values: the standard check values of "123456789"."""
    digits = np.frombuffer(b"123456789", np.uint8)
    assert checksum_function("crc32c-per-chunk")(digits) == 0xE3069283
    assert checksum_function("crc32-per-chunk")(digits) == 0xCBF43926
    for a in _arrays():
        raw = np.asarray(a).tobytes()
        assert checksum_function("crc32c-per-chunk")(a) == google_crc32c.value(raw)
        assert checksum_function("crc32-per-chunk")(a) == zlib.crc32(raw)


def test_default_and_fallback_chain(monkeypatch):
    assert CHECKSUMS[0] == "xxh3-64-per-chunk" == default_checksum()
    monkeypatch.setitem(sys.modules, "xxhash", None)  # as if xxhash were not installed
    assert default_checksum() == "crc32c-per-chunk"
    monkeypatch.setitem(sys.modules, "google_crc32c", None)
    assert default_checksum() == "crc32-per-chunk"


@pytest.mark.parametrize("algorithm,package,pip", [
    ("xxh3-64-per-chunk", "xxhash", "pip install 'xxhash>=3.0'"),
    ("crc32c-per-chunk", "google_crc32c", "pip install 'google-crc32c>=1.5'")])
@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_missing_package_says_what_to_install(tmp_path, monkeypatch, backend, algorithm, package,
                                               pip):
    """A cache whose algorithm's package is missing: reads and verification fail naming the
    ``pip install`` that fixes it (the data is not returned unchecked)."""
    import ltpipe.cache.store as store

    monkeypatch.setattr(store, "default_checksum", lambda: algorithm)
    path = tmp_path / ("c.zarr" if backend == "zarr" else "c.h5")
    data = np.arange(600, dtype=np.float32).reshape(200, 3)
    with CacheWriter(path, backend=backend, chunk_mb=0.001) as w:
        w.write("train", "x", data)
        w.commit({})
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(CacheError, match=f"{algorithm}.*{pip}"):
        checksum_function(algorithm)
    with open_cache(path) as r, pytest.raises(CacheError, match=pip):
        r.read("train", "x")
    problems = verify_cache(path)
    assert len(problems) == 1 and pip in problems[0] and problems[0].startswith("train/x"), problems
    monkeypatch.delitem(sys.modules, package)
    assert verify_cache(path) == []
    with open_cache(path) as r:
        np.testing.assert_array_equal(r.read("train", "x"), data)


def test_unknown_algorithm():
    with pytest.raises(CacheError, match="'md5-per-chunk' is unknown.*xxh3-64-per-chunk"):
        checksum_function("md5-per-chunk")


def test_write_error_propagates(tmp_path, monkeypatch):
    """A write that fails: the error reaches the caller and nothing is left behind."""
    from ltpipe.cache import zarr_backend

    def fail(self, key, first, block):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarr_backend.Writer, "write_chunks", fail)
    path = tmp_path / "c.zarr"
    with pytest.raises(OSError, match="No space"), CacheWriter(path, chunk_mb=0.001) as w:
        w.write("train", "x", np.ones((100, 8), np.float32))
    assert list(tmp_path.iterdir()) == []
