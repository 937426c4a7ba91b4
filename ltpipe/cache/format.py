"""What every part of the feature cache agrees on: version, errors, checksums, backend table.

The writer (store.py), the reader (reader.py) and the verifier (verify.py) import this module and
the backends; the backends import only this module and :mod:`ltpipe.cache.rawio`. A backend is a
module with ``Writer``, ``Reader``, ``read_manifest(path)`` and ``check_compression``; it is
imported on first use, through :func:`backend_module`, the one place that maps names to modules.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.utils import LtpipeError, _json_default

#: 2: per-chunk checksums (``checksum``) replace version 1's whole-array ``sha256``
CACHE_FORMAT_VERSION = 2
#: backend name -> module implementing it
BACKENDS = {"zarr": "ltpipe.cache.zarr_backend", "hdf5": "ltpipe.cache.hdf5_backend"}
FIX = "rerun the cache dump (snakemake --forcerun dump)"
#: the precisions a cache may store feature maps in (the config's cache.fmap_dtype)
FMAP_DTYPES = ("float16", "float32")
#: checksum algorithms a manifest may name; the first one available is used for writing
CHECKSUMS = ("xxh3-64-per-chunk", "crc32c-per-chunk", "crc32-per-chunk")
#: algorithm -> (module, the pip requirement that provides it); zlib is in the standard library
_CHECKSUM_PACKAGES = {"xxh3-64-per-chunk": ("xxhash", "xxhash>=3.0"),
                      "crc32c-per-chunk": ("google_crc32c", "google-crc32c>=1.5")}


class CacheError(LtpipeError):
    """A cache is missing, incomplete, corrupted or not the one a job expects."""


def compressions() -> dict[str, tuple[str, ...]]:
    """Backend name -> the compression names it writes (each backend's ``COMPRESSIONS`` table;
    the backends import no zarr or h5py at module level)."""
    return {name: tuple(backend_module(name).COMPRESSIONS) for name in BACKENDS}


def backend_module(name: str) -> Any:
    """The backend module called ``name`` (imported on first use)."""
    if name not in BACKENDS:
        raise LtpipeError(f"cache backend {name!r} is unknown; choose one of {list(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def detect_backend(path: str | os.PathLike) -> str | None:
    """'zarr' for a zarr directory, 'hdf5' for an HDF5 file, None for anything else."""
    path = Path(path)
    if path.is_dir():
        return "zarr" if (path / "zarr.json").is_file() else None
    if path.is_file():
        with open(path, "rb") as fh:
            return "hdf5" if fh.read(8) == b"\x89HDF\r\n\x1a\n" else None
    return None


def read_manifest(path: Path, kind: str) -> dict | None:
    """The manifest of the ``kind`` cache at ``path`` if it is complete, else None."""
    text = backend_module(kind).read_manifest(Path(path))
    manifest = json.loads(text) if text is not None else None
    return manifest if manifest and manifest.get("complete") is True else None


def manifest_sha256(manifest: dict) -> str:
    """The cache's digest: SHA-256 of its manifest as canonical JSON (sorted keys, no spaces).

    The manifest holds a checksum of every chunk of every array besides the backbone's SHA-256,
    the split's fingerprint and the dump settings, so equal digests mean equal caches (up to the
    chunk checksums' strength); the arrays are not read again."""
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()


# ------------------------------------------------------------------- checksums
def default_checksum() -> str:
    """The algorithm new caches are written with: the first of :data:`CHECKSUMS` whose package
    loads (``xxh3-64-per-chunk`` with xxhash; ``crc32c-per-chunk`` with google-crc32c's C
    extension; else ``crc32-per-chunk``, zlib's)."""
    try:
        import xxhash

        if hasattr(xxhash, "xxh3_64_intdigest"):
            return "xxh3-64-per-chunk"
    except ImportError:
        pass
    try:
        import google_crc32c
    except ImportError:
        return "crc32-per-chunk"
    return "crc32c-per-chunk" if google_crc32c.implementation == "c" else "crc32-per-chunk"


def _hash_function(algorithm: str) -> Callable[[Any], int]:
    """The one-shot function of ``algorithm`` over a buffer; CacheError if it cannot be had."""
    if algorithm == "crc32-per-chunk":
        return zlib.crc32
    if algorithm not in _CHECKSUM_PACKAGES:
        raise CacheError(f"checksum algorithm {algorithm!r} is unknown; expected one of "
                         f"{list(CHECKSUMS)}. The cache was written by another ltpipe: {FIX}")
    module, requirement = _CHECKSUM_PACKAGES[algorithm]
    try:
        lib = importlib.import_module(module)
        return lib.xxh3_64_intdigest if module == "xxhash" else lib.value
    except (ImportError, AttributeError) as err:
        raise CacheError(f"this cache's checksums are {algorithm}, which needs the "
                         f"{requirement.split('>')[0]} package ({type(err).__name__}: {err}); "
                         f"pip install '{requirement}'") from err


def checksum_function(algorithm: str) -> Callable[[np.ndarray], int]:
    """The function ``array -> int`` that computes ``algorithm`` over an array's C-order bytes.

    Raises CacheError naming the ``pip install`` that provides the algorithm when its package is
    missing, and for a name this ltpipe does not know."""
    fn = _hash_function(algorithm)
    try:  # google_crc32c takes only buffers without a release hook: ndarrays yes, memoryviews no
        fn(np.zeros(1, np.uint8))
        direct = True
    except TypeError:
        direct = False

    def checksum(array: np.ndarray) -> int:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        return int(fn(data if direct else data.tobytes()))

    return checksum


def bad_chunks(spec: dict, block: np.ndarray, first: int = 0,
               checksum: Callable[[np.ndarray], int] | None = None) -> list[int]:
    """Chunks of ``block`` (rows from chunk ``first`` on) whose checksum differs from ``spec``'s.

    ``spec`` is a manifest's ``checksum`` entry (``algorithm``, ``chunk_rows``, ``values``);
    ``checksum``, its :func:`checksum_function` where the caller has it already.
    """
    checksum = checksum or checksum_function(str(spec.get("algorithm")))
    size, values = int(spec["chunk_rows"]), spec["values"]
    return [first + j // size for j in range(0, len(block), size)
            if checksum(block[j:j + size]) != values[first + j // size]]


def describe_bad_chunks(bad: list[int], size: int, rows: int, algorithm: str,
                        named: int = 5) -> str:
    """``chunk 3 (rows 192:256), ... and 2 more fail their <algorithm> checksum``."""
    shown = ", ".join(f"chunk {i} (rows {i * size}:{min(rows, (i + 1) * size)})"
                      for i in bad[:named])
    more = f" and {len(bad) - named} more" if len(bad) > named else ""
    return f"{shown}{more} fail their {algorithm} checksum"
