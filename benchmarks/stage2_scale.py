"""The classifier stage at scale: memory per method, seconds per job, fan-out cost.

Synthetic caches written through ltpipe's own cache writer (``ltpipe.cache.CacheWriter``) with
hand-made splits (``ltpipe.data.split.Split``), at two sizes:

* ``imagenet``: ImageNet-LT's shapes: 115,846 train / 20,000 val / 50,000 test samples, 1000
  classes, pooled 2048 float32, logits 1000 float32, CAM 7 x 7, feature maps 2048 x 7 x 7
  float16 (23 GB raw). The maps are sparse (``--map-density`` of non-zero values, as after a
  ReLU) and the cache is zstd-compressed so that the full-shape array fits the disk; FSA reads
  rows exactly as from an uncompressed cache (one decoded chunk of ``--map-chunk-rows`` rows
  per row read). ``--scale`` shrinks every sample count (for a quick look); figures are at 1.
* ``cifar``: CIFAR-100-LT (IF 100): 10,847 train / 10,000 test, 100 classes, pooled 64,
  maps 64 x 8 x 8 float16, uncompressed (the pipeline's default).

``memory``: every method once, each a fresh ``python -m ltpipe classify`` process with a short
budget (peak memory does not depend on epochs); prints its peak RSS (``wait4``'s ru_maxrss)
beside the rule's request (``ltpipe.classifiers.memory.classify_mem_mb``, the same function the
classify rule calls), and the job's seconds split into start / read / compute.

``fanout``: a sample of the CIFAR-100-LT preset's classify jobs (``--every``) on the CIFAR-size
cache, ``--cores`` at a time, each a ``python -m ltpipe classify`` process as Snakemake starts
them, with this checkout's code run directly (``LTPIPE_WORKER=off``: each job imports what it
needs) and through the warm worker (``ltpipe/worker.py``: a fresh worker per round, started by the
round's first job, idle exit after 2 s), and optionally with the code of ``--before`` (a git
revision of this repository, exported into the work directory, or the path of another checkout;
run directly); prints wall time and core-seconds against the sum of the jobs' useful work
(reading their arrays + computing, from their metrics.json) side by side. Core-seconds: the
client processes' user + system CPU (``/usr/bin/time``), plus, for the worker path, each forked
child's own CPU (``seconds.cpu`` of its metrics.json: a forked child's counters start at zero, and
``wait4`` never sees the worker's children) and the worker's own CPU (its imports; from its
exit line).

    PYTHONPATH=. python benchmarks/stage2_scale.py memory --work /tmp/s2s
    PYTHONPATH=. python benchmarks/stage2_scale.py fanout --work /tmp/s2s --every 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ltpipe.cache import CacheWriter  # noqa: E402
from ltpipe.classifiers import method_names, method_spec  # noqa: E402
from ltpipe.classifiers.memory import classify_mem_mb  # noqa: E402
from ltpipe.data.split import Split, write_split  # noqa: E402

SIZES = {
    # n_max, classes, imbalance, val, test per class, D, C-map H=W
    "imagenet": {"classes": 1000, "n_train": 115846, "n_max": 1280, "n_min": 5, "val": 20,
                 "test": 50, "dim": 2048, "hw": 7},
    "cifar": {"classes": 100, "n_train": 10847, "n_max": 500, "n_min": 5, "val": 0,
              "test": 100, "dim": 64, "hw": 8},
}
# Short budgets: peak memory does not depend on how long a method trains.
SHORT = {"crt": {"epochs": 1}, "lws": {"epochs": 1}, "ffn": {"epochs": 1},
         "h2t": {"epochs": 1}, "fsa": {"iterations": 64}, "bwlm": {"iterations": 64}}
# every method in the registry (plug-ins included), closed forms (torch=False) first
METHODS = tuple(sorted(method_names(), key=lambda m: method_spec(m).torch))
CLOSED_FORM = tuple(m for m in METHODS if not method_spec(m).torch)


def class_counts(size: dict, scale: float) -> np.ndarray:
    """Exponential profile n_max .. n_min over the classes, the largest adjusted to the total."""
    c = size["classes"]
    counts = np.floor(size["n_max"] * (size["n_min"] / size["n_max"]) ** (np.arange(c) / (c - 1)))
    counts = np.maximum(1, np.round(counts * scale)).astype(np.int64)
    counts[0] += max(0, round(size["n_train"] * scale) - int(counts.sum()))
    return counts


def make_split(path: Path, counts: np.ndarray, size: dict, scale: float) -> Split:
    """A hand-made split with these training counts (shot groups: >100 many, <20 few)."""
    c = len(counts)
    n_val = max(1, round(size["val"] * scale)) if size["val"] else 0
    n_test = max(1, round(size["test"] * scale))
    groups = np.where(counts > 100, 0, np.where(counts < 20, 2, 1)).astype(np.int8)
    split = Split(dataset="synthetic", source="synthetic", source_fingerprint="synthetic",
                  imbalance_factor=float(counts.max() / counts.min()), seed=0, num_classes=c,
                  class_names=[f"c{i}" for i in range(c)], image_shape=(3, 32, 32),
                  train_indices=np.arange(int(counts.sum())),
                  test_indices=np.arange(c * n_test),
                  val_indices=np.arange(c * n_val) if n_val else None,
                  class_counts=counts, shot_groups=groups,
                  thresholds={"many": 100, "few": 20}, dataset_cfg={})
    write_split(path, split)
    return split


def write_cache(path: Path, split: Split, size: dict, maps: bool, compression: str,
                density: float, chunk_rows: int) -> float:
    """Write the synthetic cache block by block (never the whole maps in memory); seconds."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    c, d, hw = split.num_classes, size["dim"], size["hw"]
    means = rng.normal(0, 1, (c, d)).astype(np.float32)
    weight = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
    bias = np.zeros(c, np.float32)
    row_mb = d * hw * hw * 2 / 2**20
    w = CacheWriter(path, backend="zarr", compression=compression,
                    chunk_mb=chunk_rows * row_mb if maps else 1.0)
    # a pool of sparse maps to copy from (keeps the writing fast; content does not matter)
    pool = None
    if maps:
        pool = rng.normal(0, 1, (64, d, hw, hw)).astype(np.float16)
        pool[rng.random(pool.shape) > density] = 0
    parts = {"train": np.repeat(np.arange(c), split.class_counts),
             "test": np.repeat(np.arange(c), len(split.test_indices) // c)}
    if split.val_indices is not None:
        parts["val"] = np.repeat(np.arange(c), len(split.val_indices) // c)
    block = 4096
    for part, labels in parts.items():
        n = len(labels)
        w.create(part, "pooled", (d,), np.float32, expected_rows=n)
        w.create(part, "logits", (c,), np.float32, expected_rows=n)
        if maps and part == "train":
            w.create(part, "fmap", (d, hw, hw), np.float16, expected_rows=n)
            w.create(part, "cam", (hw, hw), np.float32, expected_rows=n)
        for lo in range(0, n, block):
            y = labels[lo:lo + block]
            x = means[y] + rng.normal(0, 1.5, (len(y), d)).astype(np.float32)
            w.append(part, "pooled", x)
            w.append(part, "logits", (x @ weight.T + bias).astype(np.float32))
            if maps and part == "train":
                w.append(part, "fmap", pool[rng.integers(0, len(pool), len(y))])
                w.append(part, "cam", rng.random((len(y), hw, hw), dtype=np.float32))
        w.write(part, "labels", labels.astype(np.int64))
    w.write("head", "weight", weight)
    w.write("head", "bias", bias)
    w.write("meta", "class_counts", split.class_counts)
    w.commit({"split_fingerprint": split.fingerprint, "head_kind": "linear", "logit_scale": 1.0})
    return time.perf_counter() - t0


def du_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def classify(pythonpath: Path, split: Path, caches: list[Path], method: str, settings: dict,
             out: Path, threads: int, env: dict | None = None) -> dict:
    """One ``python -m ltpipe classify`` process: wall, peak RSS (MB), the client process's CPU
    seconds, its metrics.json."""
    job = json.dumps({"method": method, "settings": settings})
    # /usr/bin/time (a small fresh process) reports the job's peak RSS: ru_maxrss of a direct
    # child would include this benchmark's own RSS at fork time (Linux keeps it across exec)
    rss_file = out / "maxrss_kb"
    cmd = ["/usr/bin/time", "-f", "%U %S %M", "-o", str(rss_file),
           sys.executable, "-m", "ltpipe", "classify", "--split", str(split), "--job", job,
           "--seed", "0", "--threads", str(threads), "--out-dir", str(out),
           "--caches", *map(str, caches)]
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "LTPIPE_CLASSIFY_DEVICE": "cpu",
           "LTPIPE_WORKER": "off", **(env or {})}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        # cwd: `python -m` puts the working directory before PYTHONPATH on sys.path
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=str(pythonpath)).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{method} failed: {(out / 'log.txt').read_text()[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    user, system, rss_kb = rss_file.read_text().split()[-3:]
    return {"wall": wall, "rss_mb": int(rss_kb) / 1024, "client_cpu": float(user) + float(system),
            "seconds": metrics["seconds"],
            "acc": metrics["metrics"]["test"]["all"]}


def prepare(work: Path, name: str, scale: float, args: argparse.Namespace) -> tuple[Path, Path]:
    size = SIZES[name]
    root = work / f"{name}_x{scale:g}"
    split_path, cache = root / "split.npz", root / "cache.zarr"
    if not (cache / "manifest.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        split = make_split(split_path, class_counts(size, scale), size, scale)
        big = name == "imagenet"
        secs = write_cache(cache, split, size, maps=True,
                           compression="zstd" if big else "none",
                           density=args.map_density if big else 1.0,
                           chunk_rows=args.map_chunk_rows if big else 16)
        print(f"wrote {cache} ({du_gb(cache):.1f} GB on disk) in {secs:.0f} s", flush=True)
    return split_path, cache


def cmd_memory(args: argparse.Namespace) -> None:
    split, cache = prepare(Path(args.work), "imagenet", args.scale, args)
    rows = []
    for method in args.methods:
        caches = [cache, cache] if method == "ffn" else [cache]
        r = classify(ROOT, split, caches, method, SHORT.get(method, {}),
                     Path(args.work) / "mem" / method, args.threads)
        req = classify_mem_mb(method, caches)
        s = r["seconds"]
        rows.append((method, req, r["rss_mb"], s.get("start"), s["load"], s["fit"]))
        print(f"{method:13s} request {req:6d} MB  peak RSS {r['rss_mb']:7.0f} MB  "
              f"{'fits' if r['rss_mb'] <= req else 'EXCEEDS'}  start {s.get('start') or 0:5.1f} s"
              f"  read {s['load']:6.1f} s  compute {s['fit']:6.1f} s", flush=True)
    print("\n| method | mem_mb requested | peak RSS (MB) | start (s) | read (s) | compute (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, req, rss, st, ld, ft in rows:
        print(f"| {m} | {req} | {rss:.0f} | {st or 0:.1f} | {ld:.1f} | {ft:.1f} |")


def fan_jobs(every: int) -> list[tuple[str, dict]]:
    """The CIFAR-100-LT preset's classify points of one imbalance factor (111: bwlm 60, tau_norm
    21, ffn 12, h2t 6, joint 5, crt 2, fsa 2, lws, ncm, logit_adjust), every ``every``-th point of
    each entry (at least one per entry), with the preset's own settings."""
    import yaml

    from ltpipe.workflow.config import sweep_points

    cfg = yaml.safe_load((ROOT / "workflow/presets/cifar100_lt.yaml").read_text())
    jobs = []
    for entry in cfg["classifiers"].values():
        points = list(sweep_points(entry.get("settings", {})))
        jobs += [(entry["method"], settings) for _, settings in points[::every]]
    return jobs


def worker_exit_cpu(wdir: Path, bound_s: float = 600) -> float:
    """The CPU seconds of the workers started in ``wdir`` (their exit lines; waits for them)."""
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        logs = [p.read_text() for p in wdir.glob("*.log")]
        done = [t for t in logs if "cpu_self" in t]
        if logs and len(done) == len(logs):
            return sum(float(x) for t in done for x in re.findall(r"cpu_self ([0-9.]+) s", t))
        time.sleep(0.2)
    raise RuntimeError(f"the workers in {wdir} did not exit: {logs}")


def run_fan(code: Path, split: Path, cache: Path, jobs: list, work: Path, cores: int,
            worker: bool = False) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    env = None
    if worker:  # a fresh worker for this round: its start is part of the round
        wdir = work / "w"
        wdir.mkdir(parents=True, mode=0o700)
        env = {"LTPIPE_WORKER": "on", "LTPIPE_WORKER_DIR": str(wdir), "LTPIPE_WORKER_IDLE": "2"}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        res = list(pool.map(lambda ij: classify(code, split, [cache] * (2 if ij[1][0] == "ffn"
                                                                        else 1),
                                                ij[1][0], ij[1][1], work / str(ij[0]), 1, env),
                            enumerate(jobs)))
    wall = time.perf_counter() - t0
    cpu = sum(r["client_cpu"] for r in res)
    if worker:
        fallbacks = sum("no warm worker" in (work / str(i) / "log.txt").read_text()
                        for i in range(len(res)))
        if fallbacks:
            raise RuntimeError(f"{fallbacks} jobs ran without the worker; see {work}/*/log.txt")
        cpu += sum(r["seconds"]["cpu"] for r in res) + worker_exit_cpu(wdir)
    useful = sum(r["seconds"]["load"] + r["seconds"]["fit"] for r in res)
    per = {k: float(np.mean([r["seconds"].get(k) or 0 for r in res])) for k in ("load", "fit")}
    closed = [r["wall"] - r["seconds"]["load"] - r["seconds"]["fit"]
              for (m, _), r in zip(jobs, res) if m in CLOSED_FORM]
    per["start"] = float(np.mean([r["wall"] - r["seconds"]["load"] - r["seconds"]["fit"]
                                  for r in res]))
    per["start_closed"] = float(np.mean(closed)) if closed else 0.0
    return {"wall": wall, "useful": useful, "ratio": wall * cores / max(useful, 1e-9),
            "per_job": per, "n": len(res), "cpu": cpu}


def before_code(spec: str, work: Path) -> Path:
    """The code to compare with: an existing directory as given, else a git revision of this
    repository exported (``git archive``) into ``work/before-<commit>``."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet",
                          f"{spec}^{{commit}}"], capture_output=True, text=True)
    if rev.returncode != 0:
        raise SystemExit(f"stage2_scale: --before {spec!r} is neither a directory nor a git "
                         f"revision of {ROOT}; give a commit (e.g. HEAD~1) or a checkout's path")
    commit = rev.stdout.strip()
    dest = work / f"before-{commit[:12]}"
    if not (dest / "ltpipe").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def cmd_fanout(args: argparse.Namespace) -> None:
    split, cache = prepare(Path(args.work), "cifar", 1.0, args)
    jobs = fan_jobs(args.every)
    print(f"{len(jobs)} jobs: " + ", ".join(f"{m} x{sum(j[0] == m for j in jobs)}"
                                           for m in sorted({j[0] for j in jobs})), flush=True)
    order = [("direct", ROOT, False), ("worker", ROOT, True)]
    if args.before:
        order.insert(0, ("before", before_code(args.before, Path(args.work)), False))
    totals: dict[str, list] = {label: [] for label, _, _ in order}
    for rnd in range(args.rounds):  # alternate the order: the machine's load drifts
        for label, code, worker in (order if rnd % 2 == 0 else order[::-1]):
            r = run_fan(code, split, cache, jobs, Path(args.work) / f"fan_{label}", args.cores,
                        worker)
            totals[label].append(r)
            p = r["per_job"]
            print(f"round {rnd} {label:6s} ({code}): {r['n']} jobs in {r['wall']:.1f} s on "
                  f"{args.cores} cores; core-seconds {r['cpu']:.1f}; useful work (read + compute,"
                  f" summed) {r['useful']:.1f} s; per job: start {p['start']:.2f} s (closed-form "
                  f"jobs {p['start_closed']:.2f} s), read {p['load']:.2f} s, compute "
                  f"{p['fit']:.2f} s", flush=True)
    # useful work: read + compute per job, the denominator of every row: the smaller of the
    # direct and worker paths' means (a fresh process times some lazy imports inside its read)
    useful = min(float(np.mean([r["useful"] for r in totals[k]])) for k in ("direct", "worker"))
    print(f"\nuseful work of the {len(jobs)} jobs (read + compute, summed; the smaller of the "
          f"direct and worker paths' means over {args.rounds} rounds): {useful:.1f} s")
    print("| code | wall (s), mean of rounds | wall / useful | wall x cores / useful | "
          "core-seconds | core-seconds / useful | start per job (s) | closed-form start (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, rs in totals.items():
        wall = float(np.mean([r["wall"] for r in rs]))
        cpu = float(np.mean([r["cpu"] for r in rs]))
        st = np.mean([r["per_job"]["start"] for r in rs])
        sc = np.mean([r["per_job"]["start_closed"] for r in rs])
        print(f"| {label} | {wall:.1f} | {wall / useful:.2f} | {wall * args.cores / useful:.2f} |"
              f" {cpu:.1f} | {cpu / useful:.2f} | {st:.2f} | {sc:.2f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    for name in ("memory", "fanout"):
        p = sub.add_parser(name)
        p.add_argument("--work", required=True, help="scratch directory (deleted with --clean)")
        p.add_argument("--scale", type=float, default=1.0, help="sample counts x this")
        p.add_argument("--map-density", type=float, default=0.05)
        p.add_argument("--map-chunk-rows", type=int, default=1)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--clean", action="store_true", help="delete --work afterwards")
    sub.choices["memory"].add_argument("--methods", nargs="+", default=list(METHODS))
    sub.choices["fanout"].add_argument("--every", type=int, default=4,
                                       help="every n-th sweep point of each preset entry")
    sub.choices["fanout"].add_argument("--cores", type=int, default=2)
    sub.choices["fanout"].add_argument("--rounds", type=int, default=2)
    sub.choices["fanout"].add_argument(
        "--before", default=None,
        help="also the code to compare with, run directly: a git revision of this repository "
             "(e.g. HEAD~1) or the path of another checkout")
    args = ap.parse_args(argv)
    args.work = str(Path(args.work).resolve())
    try:
        (cmd_memory if args.part == "memory" else cmd_fanout)(args)
    finally:
        if args.clean:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
