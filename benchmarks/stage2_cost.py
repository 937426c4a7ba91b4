"""Classifier-stage cost, measured side by side in one run (issue 5).

Three figures, each with the number it is compared against:

1. The whole classifier stage of one backbone: every method at its default settings, each as its
   own ``python -m ltpipe classify`` process (start-up, imports, cache load, fit, scoring,
   writing results; one thread each, run one after the other), relative to that backbone's
   stage-one training (wall time of ``python -m ltpipe train``, the run recipe's schedule). The
   cache dump (``python -m ltpipe dump``) is timed too and reported with and without. Goal: < 5%.
   FFN reads two backbones; it is counted when the run has the second (cosine) backbone.
   An info row gives the stage in stage-one epochs and, extrapolated, as a share of a
   200-epoch schedule (a short real-data schedule makes the measured share large).
2. cRT on the cache against cRT that re-runs the frozen backbone over the images every epoch, as
   the reference decoupling code does: the same head (same initial weights), epochs, class-
   balanced sampler (the same index stream), batch size, SGD and cosine schedule; the reference
   loop feeds the in-memory training images through a ``DataLoader`` into the backbone in eval
   mode under ``torch.no_grad`` (no augmentation, which only makes the reference cheaper), then
   scores the test images the same way. Both in one process, from loading to test scores.
   Goal: >= 50x.
3. Fixed cost per classify job: bare ``python -c pass``, ``import torch``, ``import
   ltpipe.classifiers.job`` and a ``joint`` job end to end (medians); then jobs per minute for a
   fan-out of N tau-norm jobs (taus evenly over 0..2), ``--cores`` subprocesses at a time.

Usage (device auto: CUDA for training, the dump and the part-2 loops when present; classify
jobs run on the CPU, as the workflow's rule does)::

    python benchmarks/stage2_cost.py --reuse /tmp/fmnist/results   # report on an existing run
    python benchmarks/stage2_cost.py [--epochs N]                  # split, train, dump, measure
    python benchmarks/stage2_cost.py --quick                       # digits-LT smoke run (~2 min)

Options: --config (default benchmarks/fmnist_lt.yaml; --quick: config.yaml), --backbone (ce),
--second (kps, FFN's KPS backbone, reuse only), --threads (2, training and dump),
--fanout (50), --cores (2), --repeat (3), --device (auto), --workdir, --json OUT.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ltpipe.classifiers import method_names, method_spec  # noqa: E402
from ltpipe.paths import imb_tag  # noqa: E402
from ltpipe.workflow.config import dump_settings, recipe_settings, split_settings  # noqa: E402
from ltpipe.yamlfile import load_yaml_strict  # noqa: E402

PAPER_EPOCHS = 200  # the CIFAR-LT papers' stage-one schedule, for the extrapolated row
# the methods of one backbone, from the registry (plug-ins included)
SINGLE_METHODS = tuple(m for m in method_names() if method_spec(m).num_backbones == 1)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


# ---------------------------------------------------------------------------------- helpers
def run_timed(cmd: list[str], log: Path | None = None) -> float:
    """Run ``cmd`` (cwd: the repository), fail loudly on a non-zero exit; return its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def median_wall(cmd: list[str], repeat: int) -> float:
    return statistics.median(run_timed(cmd) for _ in range(repeat))


def ltpipe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ltpipe", *args]


def pick_device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


class Run:
    """Where the split, models and caches of the measured run are, and the stage-one time."""

    def __init__(self, cfg: dict, args: argparse.Namespace, work: Path) -> None:
        self.cfg, self.args, self.work = cfg, args, work
        self.dataset = next(iter(cfg["datasets"]))
        ds = cfg["datasets"][self.dataset]
        self.imb = imb_tag(ds["imbalance_factors"][0])
        self.split_seed = int(ds.get("split_seeds", [0])[0])
        self.ext = "h5" if cfg.get("cache", {}).get("backend") == "hdf5" else "zarr"
        if args.reuse:
            self.results = Path(args.reuse)
            self.split_dir = self.results / self.dataset / f"if{self.imb}" / f"s{self.split_seed}"
        else:
            self.results = None
            self.split_dir = work / "run"
        self.split = self.split_dir / "split.npz"

    def model(self, backbone: str) -> Path:
        return self.split_dir / backbone / "t0" / "model.pt"

    def cache(self, backbone: str) -> Path:
        return self.split_dir / backbone / "t0" / f"cache.{self.ext}"

    def train_seconds_from_log(self, backbone: str) -> float:
        """Snakemake's benchmark file of the train job (column ``s``: wall seconds)."""
        tsv = (self.results / "logs" / "train" /
               f"{self.dataset}_if{self.imb}_s{self.split_seed}_{backbone}_t0.tsv")
        if not tsv.is_file():
            sys.exit(f"{tsv} not found: --reuse needs the Snakemake run's train benchmark file; "
                     "run without --reuse to train (and time) a backbone here")
        with open(tsv) as fh:
            return float(next(csv.DictReader(fh, delimiter="\t"))["s"])

    def make(self, backbone: str, epochs: int | None) -> float:
        """Split (if needed) and train ``backbone`` here; return the train wall time."""
        logs = self.work / "logs"
        if not self.split.is_file():
            ds = self.cfg["datasets"][self.dataset]
            run_timed(ltpipe_cmd("split", "--dataset", self.dataset, "--settings",
                                 json.dumps(split_settings(self.cfg, self.dataset)),
                                 "--imbalance-factor", str(ds["imbalance_factors"][0]),
                                 "--seed", str(self.split_seed), "--out", str(self.split)),
                      logs / "split.log")
        recipe = recipe_settings(self.cfg, backbone)
        if epochs is not None:
            recipe["epochs"] = epochs
            recipe["warmup_epochs"] = min(recipe.get("warmup_epochs", 5), epochs)
        device = [] if self.args.device == "auto" else ["--device", self.args.device]
        return run_timed(ltpipe_cmd("train", "--split", str(self.split), "--recipe",
                                    json.dumps(recipe), "--seed", "0", "--threads",
                                    str(self.args.threads), "--out", str(self.model(backbone)),
                                    *device), logs / f"train_{backbone}.log")

    def dump(self, backbone: str, out: Path) -> float:
        device = [] if self.args.device == "auto" else ["--device", self.args.device]
        return run_timed(ltpipe_cmd("dump", "--split", str(self.split), "--model",
                                    str(self.model(backbone)), "--settings",
                                    json.dumps(dump_settings(self.cfg)), "--threads",
                                    str(self.args.threads), "--out", str(out), *device),
                         self.work / "logs" / f"dump_{backbone}.log")


def classify_cmd(run: Run, method: str, settings: dict, backbones: list[str],
                 out_dir: Path) -> list[str]:
    job = {"method": method, "settings": settings, "backbones": backbones}
    return ltpipe_cmd("classify", "--split", str(run.split), "--job", json.dumps(job),
                      "--caches", *[str(run.cache(b)) for b in backbones],
                      "--models", *[str(run.model(b)) for b in backbones],
                      "--seed", "0", "--threads", "1", "--out-dir", str(out_dir))


# ------------------------------------------------------------------------ 1. the whole stage
def stage_cost(run: Run, backbone: str, second: str | None) -> list[dict]:
    """Run every method once as its own process; per job: wall seconds and test accuracy."""
    jobs = [(m, [backbone]) for m in SINGLE_METHODS]
    if second and run.cache(second).exists():
        jobs.append(("ffn", [second, backbone]))
    rows = []
    for method, backbones in jobs:
        out = run.work / "cls" / method
        wall = run_timed(classify_cmd(run, method, {}, backbones, out),
                         run.work / "logs" / f"classify_{method}.log")
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append({"method": method, "wall_s": wall, "inner_s": metrics["seconds"],
                     "test": metrics["metrics"]["test"]})
        print(f"  {method:13s} {wall:7.1f} s   test all {metrics['metrics']['test']['all']:.2f}",
              flush=True)
    return rows


# ------------------------------------------------------------------------------ 2. cRT
def crt_on_cache(run: Run, backbone: str, device: str) -> tuple[float, float]:
    """ltpipe's cRT in-process: cache load + fit + test scores. Returns (seconds, test acc)."""
    import torch

    from ltpipe.classifiers import merge_settings, run_method
    from ltpipe.classifiers.inputs import features_from_cache
    from ltpipe.classifiers.job import open_checked
    from ltpipe.data import read_split

    t0 = time.perf_counter()
    split = read_split(run.split)
    with open_checked(run.cache(backbone), split.fingerprint) as reader:
        feat = features_from_cache(reader, {"pooled"})
    scores = run_method("crt", [feat], merge_settings("crt", {}), 0, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return wall, 100.0 * float((scores["test"].argmax(1) == feat.test["labels"]).mean())


def crt_reference(run: Run, backbone: str, device: str, threads: int) -> tuple[float, float]:
    """cRT as the reference decoupling code runs it: the frozen backbone over the images every
    epoch. Same head init, sampler stream, epochs, batch, SGD and cosine lr as ltpipe's cRT."""
    import torch
    import torch.nn.functional as F

    from ltpipe.classifiers import merge_settings
    from ltpipe.classifiers.common import new_head
    from ltpipe.classifiers.trainer import TrainConfig, make_generator
    from ltpipe.data import read_split, split_data
    from ltpipe.data.batches import normalize_nchw
    from ltpipe.data.samplers import LabelSampler
    from ltpipe.models.modelfile import load_checkpoint

    torch.set_num_threads(threads)
    cfg = TrainConfig.from_settings(merge_settings("crt", {}))
    dev = torch.device(device)
    t0 = time.perf_counter()
    split = read_split(run.split)
    model, meta = load_checkpoint(run.model(backbone), device=dev)  # eval mode, frozen
    for p in model.parameters():
        p.requires_grad_(False)
    mean = torch.tensor(meta["normalization"]["mean"], device=dev)
    std = torch.tensor(meta["normalization"]["std"], device=dev)

    def loader(part: str, order: list[int] | None) -> torch.utils.data.DataLoader:
        data = split_data(split, part)
        ds = torch.utils.data.TensorDataset(torch.from_numpy(data.images).permute(0, 3, 1, 2),
                                            torch.from_numpy(np.asarray(data.labels)))
        return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=order,
                                           pin_memory=dev.type == "cuda")

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.forward_features(normalize_nchw(x.to(dev, non_blocking=True), mean,
                                                         std)).mean((2, 3)).float()

    train = split_data(split, "train")
    y_all = torch.as_tensor(np.asarray(train.labels), device=dev)
    gen = make_generator(0, dev)
    head = new_head("linear", int(split.num_classes), int(model.head.weight.shape[1]), gen, dev)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sampler = LabelSampler(y_all, cfg.sampler)
    steps = math.ceil(len(y_all) / cfg.batch_size)
    total, step = cfg.epochs * steps, 0
    head.train()
    for _ in range(cfg.epochs):
        order = sampler.sample(steps * cfg.batch_size, gen).tolist()
        for xb, yb in loader("train", order):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step, total)
            loss = F.cross_entropy(head(features(xb)), yb.to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    correct = n = 0
    with torch.no_grad():
        for xb, yb in loader("test", None):
            correct += int((head(features(xb)).argmax(1).cpu() == yb).sum())
            n += len(yb)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, 100.0 * correct / n


# --------------------------------------------------------------------------- 3. fixed costs
def fixed_costs(run: Run, backbone: str, repeat: int) -> dict[str, float]:
    py = sys.executable
    out = {
        "python -c pass": median_wall([py, "-c", "pass"], repeat),
        "python -c 'import torch'": median_wall([py, "-c", "import torch"], repeat),
        "python -c 'import ltpipe.classifiers.job'":
            median_wall([py, "-c", "import ltpipe.classifiers.job"], repeat),
        "classify joint (end to end)": median_wall(
            classify_cmd(run, "joint", {}, [backbone], run.work / "fixed" / "joint"), repeat),
    }
    return out


def fanout(run: Run, backbone: str, n: int, cores: int) -> float:
    """Wall time of ``n`` tau-norm jobs, ``cores`` at a time."""
    taus = np.linspace(0.0, 2.0, n)
    cmds = [classify_cmd(run, "tau_norm", {"tau": round(float(t), 4)}, [backbone],
                         run.work / "fanout" / f"tau{i}") for i, t in enumerate(taus)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cores) as pool:
        list(pool.map(run_timed, cmds))
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------- report
def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    head = ("figure", "measured", "against", "ratio", "goal")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    fmt = " | ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), "-+-".join("-" * w for w in widths),
                      *(fmt.format(*r) for r in rows)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reuse", help="results/ folder of a finished Snakemake run of --config")
    p.add_argument("--config", help="the run's config (default benchmarks/fmnist_lt.yaml)")
    p.add_argument("--backbone", default="ce")
    p.add_argument("--second", default="kps", help="FFN's KPS backbone (reuse: if cached)")
    p.add_argument("--epochs", type=int, help="stage-one epochs (default: the recipe's)")
    p.add_argument("--threads", type=int, default=2, help="torch threads: train, dump, part 2")
    p.add_argument("--fanout", type=int, default=50)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="digits-LT, 2 epochs, fan-out 8")
    p.add_argument("--workdir")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.quick:
        args.config = args.config or str(ROOT / "config.yaml")
        args.epochs = args.epochs or 2
        args.fanout, args.repeat = min(args.fanout, 8), min(args.repeat, 2)
    cfg = load_yaml_strict(args.config or ROOT / "benchmarks" / "fmnist_lt.yaml")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="stage2_cost_"))
    work.mkdir(parents=True, exist_ok=True)
    run, device, t_start = Run(cfg, args, work), pick_device(args.device), time.perf_counter()
    print(f"stage2_cost: {run.dataset} IF{run.imb} s{run.split_seed}, backbone {args.backbone}, "
          f"device {device}, work dir {work}", flush=True)

    if args.reuse:
        t_train = run.train_seconds_from_log(args.backbone)
        epochs = recipe_settings(cfg, args.backbone).get("epochs")
    else:
        t_train = run.make(args.backbone, args.epochs)
        epochs = args.epochs or recipe_settings(cfg, args.backbone).get("epochs")
    print(f"[1] stage-one training ({epochs} epochs): {t_train:.1f} s", flush=True)
    dump_out = work / "dump_timed" / f"cache.{run.ext}" if args.reuse else run.cache(args.backbone)
    t_dump = run.dump(args.backbone, dump_out)
    print(f"[1] cache dump: {t_dump:.1f} s; classify jobs (1 thread each, one at a time):",
          flush=True)
    jobs = stage_cost(run, args.backbone, args.second if args.reuse else None)
    t_stage = sum(j["wall_s"] for j in jobs)

    print("[2] cRT on the cache vs the reference loop over the images ...", flush=True)
    t_cache, acc_cache = crt_on_cache(run, args.backbone, device)
    t_ref, acc_ref = crt_reference(run, args.backbone, device, args.threads)
    crt_job = next(j["wall_s"] for j in jobs if j["method"] == "crt")

    print("[3] fixed costs and fan-out ...", flush=True)
    fixed = fixed_costs(run, args.backbone, args.repeat)
    t_fan = fanout(run, args.backbone, args.fanout, args.cores)
    bare = fixed["python -c pass"]

    pct = lambda a, b: f"{100 * a / b:.2f}%"  # noqa: E731
    rows = [
        (f"1. classifier stage, {len(jobs)} jobs", f"{t_stage:.1f} s",
         f"train {t_train:.1f} s", pct(t_stage, t_train), "< 5%"),
        ("1. classifier stage + cache dump", f"{t_stage + t_dump:.1f} s",
         f"train {t_train:.1f} s", pct(t_stage + t_dump, t_train), "(info)"),
        (f"1. same, in stage-one epochs ({epochs} in {t_train:.0f} s)",
         f"{t_stage / (t_train / epochs):.1f} ep", f"at {PAPER_EPOCHS} epochs (extrapolated)",
         pct(t_stage, t_train / epochs * PAPER_EPOCHS), "(info)"),
        ("2. cRT on cache, in-process", f"{t_cache:.2f} s", f"reference {t_ref:.1f} s",
         f"{t_ref / t_cache:.0f}x", ">= 50x"),
        ("2. cRT classify job, whole process", f"{crt_job:.2f} s", f"reference {t_ref:.1f} s",
         f"{t_ref / crt_job:.0f}x", "(info)"),
        *((f"3. {k}", f"{v:.2f} s", f"python -c pass {bare:.2f} s", f"{v / bare:.1f}x", "")
          for k, v in fixed.items()),
        (f"3. fan-out: {args.fanout} tau_norm jobs, {args.cores} at a time", f"{t_fan:.1f} s",
         "", f"{60 * args.fanout / t_fan:.1f} jobs/min", ""),
    ]
    print()
    print("per job (s): " + ", ".join(f"{j['method']} {j['wall_s']:.1f}" for j in jobs))
    print(f"cRT test top-1: cache {acc_cache:.2f}, reference {acc_ref:.2f} (same head, sampler, "
          "schedule)")
    print(table(rows))
    print(f"total benchmark wall time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"train_s": t_train, "dump_s": t_dump, "jobs": jobs, "stage_s": t_stage,
             "crt_cache_s": t_cache, "crt_ref_s": t_ref, "crt_acc": [acc_cache, acc_ref],
             "fixed_s": fixed, "fanout_s": t_fan, "fanout_n": args.fanout}, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
