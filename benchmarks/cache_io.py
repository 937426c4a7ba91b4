"""Benchmark of the feature cache's I/O against plain numpy.save / numpy.load.

Writes and reads the same CIFAR-100-LT-sized arrays (ResNet-32 stage one: fmap [N, 64, 8, 8] in
float32 and float16, pooled [N, 64], logits [N, 100]; N = 10847 training images at imbalance
factor 100) with each cache backend/codec and with numpy, and prints MB/s and the ratio to numpy
for the streaming write (batches of 256 rows, as the dump does, per-chunk checksums included)
and the full read of every array (the cache's reads check every chunk's checksum, the algorithm
new caches are written with: xxh3-64-per-chunk where xxhash is installed): the ratio of
the median times, ("best x") the ratio of the fastest rounds, the figure that other
processes on a shared machine move least, and ("cpu x") the ratio of the median CPU times
(this process, all its threads: what the step costs, whatever else runs; a step that uses two
threads can run faster than its CPU time says). Each round runs every format once, one after the
other, so load from other processes hits all formats alike; an untimed warm-up round first pays
for imports and first touches. Every timed write and read starts after an untimed ``os.sync()``, so
no format pays for the write-back of the files the one before it wrote; reads are from the page
cache (the files were just written) for numpy and the cache alike. An uncompressed cache array
is returned as a copy-on-write map of the file (nothing copied); ``--then-write`` adds, to every
format's timed read, writing every element of what it read in place, where such a map pays for
the pages it did not copy. Then it measures the
streaming write's peak memory (tracemalloc peak and the RSS high-water mark of a fresh process)
for N and 4N rows.

    python benchmarks/cache_io.py [--rows N] [--repeat K] [--formats F ...] [--then-write]
                                  [--json OUT] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from ltpipe.cache.format import checksum_function, default_checksum  # noqa: E402
from ltpipe.paths import CACHE_EXT  # noqa: E402

BATCH = 256
#: (label, backend, compression, level, rows declared); "numpy" is the baseline, "numpy+crc"
#: adds the per-chunk checksums that the cache computes, one after the other, to the write and to
#: the read. The caches declare their row counts up front as the dump does (uncompressed arrays:
#: one extent, read by mapping it), except "zarr 8/shard" and "hdf5 chunked": the layout of
#: writers that do not declare them, and of every cache written before that existed
FORMATS = [("numpy", None, None, 0, False), ("numpy+crc", None, "checksum", 0, False),
           ("zarr", "zarr", "none", 0, True), ("hdf5", "hdf5", "none", 0, True),
           ("zarr 8/shard", "zarr", "none", 0, False), ("hdf5 chunked", "hdf5", "none", 0, False),
           ("zarr lz4", "zarr", "lz4", 1, True), ("zarr zstd1", "zarr", "zstd", 1, True),
           ("hdf5 lzf", "hdf5", "lzf", 0, True)]


def make_arrays(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Feature-like data: post-ReLU maps (about half zeros), their means, and logits."""
    rng = np.random.default_rng(seed)
    fmap = np.maximum(rng.standard_normal((rows, 64, 8, 8), dtype=np.float32), 0)
    pooled = fmap.mean(axis=(2, 3))
    logits = pooled @ rng.standard_normal((64, 100), dtype=np.float32)
    return {"fmap": fmap, "fmap16": fmap.astype(np.float16), "pooled": pooled, "logits": logits}


def stream_write(path: Path, backend: str, compression: str, level: int,
                 batches: object, rows: int | None = None) -> None:
    """Stream batches (dicts name -> rows) into a cache, as the dump does (which declares the
    ``rows`` every array will have; None: not declared)."""
    with CacheWriter(path, backend=backend, compression=compression, level=level,
                     overwrite=True) as writer:
        created = False
        for batch in batches:
            if not created:
                for name, part in batch.items():
                    writer.create("train", name, part.shape[1:], part.dtype, expected_rows=rows)
                created = True
            for name, part in batch.items():
                writer.append("train", name, part)
        writer.commit({"benchmark": True})


def _batches(arrays: dict[str, np.ndarray]):
    rows = len(next(iter(arrays.values())))
    for lo in range(0, rows, BATCH):
        yield {name: a[lo:lo + BATCH] for name, a in arrays.items()}


def _write(fmt: tuple, arrays: dict, target: Path) -> None:
    label, backend, compression, level, declared = fmt
    if backend is None:
        target.mkdir(parents=True, exist_ok=True)
        for name, a in arrays.items():
            np.save(target / f"{name}.npy", a)
            if compression == "checksum":  # the checksums the cache computes, for reference
                fn, step = checksum_function(default_checksum()), max(1, 2**20 // a[:1].nbytes)
                [fn(a[lo:lo + step]) for lo in range(0, len(a), step)]
    else:
        rows = len(next(iter(arrays.values()))) if declared else None
        stream_write(target, backend, compression, level, _batches(arrays), rows)


def _read(fmt: tuple, names: list[str], target: Path, then_write: bool = False) -> None:
    """Read every array whole; ``then_write``: then write every element of it in place, which
    is where a mapped (copy-on-write) read pays for the pages it did not copy."""
    reader = open_cache(target) if fmt[1] is not None else None
    try:
        for name in names:
            if reader is not None:
                a = reader.read("train", name)
            else:
                a = np.load(target / f"{name}.npy")
                if fmt[2] == "checksum":
                    fn, step = checksum_function(default_checksum()), max(1, 2**20 // a[:1].nbytes)
                    [fn(a[lo:lo + step]) for lo in range(0, len(a), step)]
            if then_write:
                np.negative(a, out=a)
    finally:
        if reader is not None:
            reader.close()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _warm_memory(nbytes: int) -> None:
    """Touch and free ``nbytes`` of fresh memory, so that the next step's allocations reuse
    pages touched just now.

    On this project's VM a page not touched for a while costs the first process that touches
    it again up to 10x the usual (274 MB of fresh memory: 0.2-0.4 s instead of 0.05 s, then
    0.05 s when freed and allocated again: the host has taken the idle pages back). Whichever
    step met such pages first paid for them, numpy or the cache, at random; every timed step
    now starts with pages just touched."""
    block = np.empty(nbytes, np.uint8)
    block[::4096] = 0
    del block


def _timed(fn, *args, warm: int = 0) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all its threads) of ``fn(*args)``."""
    if warm:
        _warm_memory(warm)  # untimed
    os.sync()  # untimed: write-back of earlier files is not charged to this step
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def machine() -> str:
    """One line saying where the figures were taken: CPU, cores, memory, load, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**30
    gpu = "a GPU" if Path("/dev/nvidia0").exists() else "no GPU"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}, "
            f"load average {load}")


def speed_table(rows: int, repeat: int, workdir: Path, formats: list[tuple],
                then_write: bool = False) -> list[dict]:
    """Median write/read time per format over ``repeat`` interleaved rounds; prints a table."""
    arrays = make_arrays(rows)
    nbytes = sum(a.nbytes for a in arrays.values())
    mb = nbytes / 1e6
    print(f"arrays: {', '.join(f'{k} {v.dtype}{list(v.shape)}' for k, v in arrays.items())}"
          f" = {mb:.0f} MB; median of {repeat} interleaved rounds; checksum "
          f"{default_checksum()}")
    targets = {f[0]: (workdir / f[0].replace(" ", "_").replace("+", "_")).with_suffix(
        f".{CACHE_EXT[f[1]]}" if f[1] in CACHE_EXT else "") for f in formats}
    times: dict[str, dict[str, list[float]]] = {f[0]: {"write": [], "read": []} for f in formats}
    cpu: dict[str, dict[str, list[float]]] = {f[0]: {"write": [], "read": []} for f in formats}
    sizes: dict[str, int] = {}
    for round_ in range(repeat + 1):  # round 0: untimed warm-up
        for fmt in formats:
            target = targets[fmt[0]]
            _remove(target)  # deletion is not timed
            write = _timed(_write, fmt, arrays, target, warm=nbytes)
            read = _timed(_read, fmt, list(arrays), target, then_write, warm=nbytes)
            if round_:
                for step, (wall, used) in (("write", write), ("read", read)):
                    times[fmt[0]][step].append(wall)
                    cpu[fmt[0]][step].append(used)
            sizes[fmt[0]] = _size(target)
    for target in targets.values():
        _remove(target)
    base = {k: float(np.median(times["numpy"][k])) for k in ("write", "read")}
    best = {k: min(times["numpy"][k]) for k in ("write", "read")}
    base_cpu = {k: float(np.median(cpu["numpy"][k])) for k in ("write", "read")}
    print(f"{'format':<12}{'write MB/s':>11}{'x numpy':>9}{'best x':>8}{'cpu x':>7}"
          f"{'read MB/s':>11}{'x numpy':>9}{'best x':>8}{'cpu x':>7}{'disk MB':>9}")
    results = []
    for fmt in formats:
        tw, tr = (float(np.median(times[fmt[0]][k])) for k in ("write", "read"))
        bw, br = (best[k] / min(times[fmt[0]][k]) for k in ("write", "read"))
        cw, cr = (base_cpu[k] / max(1e-9, float(np.median(cpu[fmt[0]][k])))
                  for k in ("write", "read"))
        results.append({"format": fmt[0], "write_s": tw, "read_s": tr, "write_x_numpy":
                        base["write"] / tw, "read_x_numpy": base["read"] / tr,
                        "write_x_numpy_best": bw, "read_x_numpy_best": br,
                        "write_x_numpy_cpu": cw, "read_x_numpy_cpu": cr,
                        "write_times_s": times[fmt[0]]["write"],
                        "read_times_s": times[fmt[0]]["read"],
                        "write_cpu_s": cpu[fmt[0]]["write"], "read_cpu_s": cpu[fmt[0]]["read"],
                        "disk_bytes": sizes[fmt[0]]})
        print(f"{fmt[0]:<12}{mb / tw:>11.0f}{base['write'] / tw:>9.2f}{bw:>8.2f}{cw:>7.2f}"
              f"{mb / tr:>11.0f}{base['read'] / tr:>9.2f}{br:>8.2f}{cr:>7.2f}"
              f"{sizes[fmt[0]] / 1e6:>9.0f}")
    return results


def _child(backend: str, rows: int, path: str) -> None:
    """Stream ``rows`` rows generated batch by batch; print memory use as JSON."""
    def gen():
        for lo in range(0, rows, BATCH):
            yield make_arrays(min(BATCH, rows - lo), seed=lo)

    next(iter(gen()))  # warm up imports and the generator's own allocations
    rss0 = _reset_peak_rss()
    tracemalloc.start()
    stream_write(Path(path), backend, "none", 0, gen(), rows)
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


def memory_table(rows: int, workdir: Path) -> list[dict]:
    print(f"\nstreaming write memory (fresh process; data generated batch by batch, {BATCH} rows)")
    print(f"{'backend':<8}{'rows':>8}{'data MB':>9}{'tracemalloc peak MB':>21}{'RSS delta MB':>14}")
    per_row = (64 * 8 * 8 * 6 + 64 * 4 + 100 * 4) / 1e6
    results = []
    for backend in ("zarr", "hdf5"):
        for n in (rows, 4 * rows):
            path = workdir / f"mem.{'zarr' if backend == 'zarr' else 'h5'}"
            out = subprocess.run([sys.executable, __file__, "--_child", backend, str(n), str(path)],
                                 check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            print(f"{backend:<8}{n:>8}{n * per_row:>9.0f}{res['tracemalloc_peak_mb']:>21.1f}"
                  f"{res['rss_delta_mb']:>14.1f}")
            results.append({"backend": backend, "rows": n, **res})
            _remove(path)
    return results


def _make_dir(parser: argparse.ArgumentParser, path: Path) -> None:
    """Create --dir (and its parents) if missing; refuse in one line what cannot be one."""
    if path.exists() and not path.is_dir():
        parser.error(f"--dir {path}: exists and is not a directory; name a directory (it is "
                     "created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"--dir {path}: cannot create it ({err.strerror}); name a directory you "
                     "can write to")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10847, help="samples (CIFAR-100-LT: 10847)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="interleaved rounds (the median per format is kept)")
    parser.add_argument("--formats", nargs="+", default=None, metavar="F",
                        help=f"formats to time (numpy always): {[f[0] for f in FORMATS]}")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory table")
    parser.add_argument("--then-write", action="store_true",
                        help="the timed read also writes every element it read, in place (what "
                             "a job that changes its inputs pays for a copy-on-write map)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write results as JSON")
    parser.add_argument("--dir", default=None,
                        help="where the work directory goes, created if missing (default: the "
                             "system's temporary directory)")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        _child(args._child[0], int(args._child[1]), args._child[2])
        return
    formats = [f for f in FORMATS if f[0] == "numpy" or args.formats is None
               or f[0] in args.formats]
    unknown = sorted(set(args.formats or []) - {f[0] for f in FORMATS})
    if unknown:
        parser.error(f"unknown formats {unknown}; choose from {[f[0] for f in FORMATS]}")
    if args.dir is not None:
        _make_dir(parser, Path(args.dir))
    workdir = Path(tempfile.mkdtemp(prefix="cache_io_", dir=args.dir))
    try:
        print(machine())
        out = {"rows": args.rows, "repeat": args.repeat, "checksum": default_checksum(),
               "machine": machine(),
               "then_write": args.then_write,
               "speed": speed_table(args.rows, args.repeat, workdir, formats, args.then_write)}
        if not args.no_memory:
            out["memory"] = memory_table(args.rows, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
