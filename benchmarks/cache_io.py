"""Benchmark of the feature cache's I/O against plain numpy.save / numpy.load.

Writes and reads the same CIFAR-100-LT-sized arrays (ResNet-32 stage one: fmap [N, 64, 8, 8] in
float32 and float16, pooled [N, 64], logits [N, 100]; N = 10847 training images at imbalance
factor 100) with each cache backend/codec and with numpy, and prints MB/s and the ratio to numpy
for the streaming write (batches of 256 rows, as the dump does, sha256 included) and the full
read of every array. Then it measures the streaming write's peak memory (tracemalloc peak and
the RSS high-water mark of a fresh process) for N and 4N rows.

    python benchmarks/cache_io.py [--rows N] [--repeat K] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ltpipe.cache import CacheWriter, open_cache  # noqa: E402

BATCH = 256
#: (label, backend, compression, level); "numpy" is the baseline, "numpy+sha" adds the sha256
#: that the cache computes while writing (an upper bound on the cache's write speed)
FORMATS = [("numpy", None, None, 0), ("numpy+sha", None, "sha256", 0),
           ("zarr", "zarr", "none", 0), ("hdf5", "hdf5", "none", 0),
           ("zarr lz4", "zarr", "lz4", 1), ("zarr zstd1", "zarr", "zstd", 1),
           ("hdf5 lzf", "hdf5", "lzf", 0)]


def make_arrays(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Feature-like data: post-ReLU maps (about half zeros), their means, and logits."""
    rng = np.random.default_rng(seed)
    fmap = np.maximum(rng.standard_normal((rows, 64, 8, 8), dtype=np.float32), 0)
    pooled = fmap.mean(axis=(2, 3))
    logits = pooled @ rng.standard_normal((64, 100), dtype=np.float32)
    return {"fmap": fmap, "fmap16": fmap.astype(np.float16), "pooled": pooled, "logits": logits}


def stream_write(path: Path, backend: str, compression: str, level: int,
                 batches: object) -> None:
    """Stream batches (dicts name -> rows) into a cache, as the dump does."""
    with CacheWriter(path, backend=backend, compression=compression, level=level,
                     overwrite=True) as writer:
        created = False
        for batch in batches:
            if not created:
                for name, rows in batch.items():
                    writer.create("train", name, rows.shape[1:], rows.dtype)
                created = True
            for name, rows in batch.items():
                writer.append("train", name, rows)
        writer.commit({"benchmark": True})


def _batches(arrays: dict[str, np.ndarray]):
    rows = len(next(iter(arrays.values())))
    for lo in range(0, rows, BATCH):
        yield {name: a[lo:lo + BATCH] for name, a in arrays.items()}


def _write(fmt: tuple, arrays: dict, target: Path) -> None:
    label, backend, compression, level = fmt
    if backend is None:
        target.mkdir(parents=True, exist_ok=True)
        for name, a in arrays.items():
            np.save(target / f"{name}.npy", a)
            if compression == "sha256":  # the checksum the cache computes, for reference
                hashlib.sha256(memoryview(a).cast("B")).hexdigest()
    else:
        stream_write(target, backend, compression, level, _batches(arrays))


def _read(fmt: tuple, names: list[str], target: Path) -> None:
    if fmt[1] is None:
        for name in names:
            np.load(target / f"{name}.npy")
    else:
        with open_cache(target) as reader:
            for name in names:
                reader.read("train", name)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _best(fn, repeat: int, before=lambda: None) -> float:
    times = []
    for _ in range(repeat):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def speed_table(rows: int, repeat: int, workdir: Path) -> None:
    arrays = make_arrays(rows)
    mb = sum(a.nbytes for a in arrays.values()) / 1e6
    print(f"arrays: {', '.join(f'{k} {v.dtype}{list(v.shape)}' for k, v in arrays.items())}"
          f" = {mb:.0f} MB; best of {repeat}")
    print(f"{'format':<12}{'write MB/s':>11}{'x numpy':>9}{'read MB/s':>11}{'x numpy':>9}"
          f"{'disk MB':>9}")
    base = None
    for fmt in FORMATS:
        target = workdir / fmt[0].replace(" ", "_")
        target = target.with_suffix({"zarr": ".zarr", "hdf5": ".h5"}.get(fmt[1], ""))
        tw = _best(lambda fmt=fmt, target=target: _write(fmt, arrays, target), repeat,
                   before=lambda target=target: _remove(target))  # deletion is not timed
        tr = _best(lambda fmt=fmt, target=target: _read(fmt, list(arrays), target), repeat)
        base = base or (tw, tr)
        print(f"{fmt[0]:<12}{mb / tw:>11.0f}{base[0] / tw:>9.2f}{mb / tr:>11.0f}"
              f"{base[1] / tr:>9.2f}{_size(target) / 1e6:>9.0f}")
        _remove(target)


def _child(backend: str, rows: int, path: str) -> None:
    """Stream ``rows`` rows generated batch by batch; print memory use as JSON."""
    def gen():
        for lo in range(0, rows, BATCH):
            yield make_arrays(min(BATCH, rows - lo), seed=lo)

    next(iter(gen()))  # warm up imports and the generator's own allocations
    rss0 = _reset_peak_rss()
    tracemalloc.start()
    stream_write(Path(path), backend, "none", 0, gen())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss1 = _peak_rss_kb()
    print(json.dumps({"tracemalloc_peak_mb": peak / 2**20, "rss_delta_mb": (rss1 - rss0) / 1024}))


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Reset the peak-RSS mark (Linux: /proc/self/clear_refs); returns the current RSS in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS") or 0
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kb() -> int:
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_table(rows: int, workdir: Path) -> None:
    print(f"\nstreaming write memory (fresh process; data generated batch by batch, {BATCH} rows)")
    print(f"{'backend':<8}{'rows':>8}{'data MB':>9}{'tracemalloc peak MB':>21}{'RSS delta MB':>14}")
    per_row = (64 * 8 * 8 * 6 + 64 * 4 + 100 * 4) / 1e6
    for backend in ("zarr", "hdf5"):
        for n in (rows, 4 * rows):
            path = workdir / f"mem.{'zarr' if backend == 'zarr' else 'h5'}"
            out = subprocess.run([sys.executable, __file__, "--_child", backend, str(n), str(path)],
                                 check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            print(f"{backend:<8}{n:>8}{n * per_row:>9.0f}{res['tracemalloc_peak_mb']:>21.1f}"
                  f"{res['rss_delta_mb']:>14.1f}")
            _remove(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10847, help="samples (CIFAR-100-LT: 10847)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        _child(args._child[0], int(args._child[1]), args._child[2])
        return
    workdir = Path(tempfile.mkdtemp(prefix="cache_io_", dir=args.dir))
    try:
        speed_table(args.rows, args.repeat, workdir)
        memory_table(args.rows, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
