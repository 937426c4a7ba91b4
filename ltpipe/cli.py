"""The ``ltpipe`` command: one subcommand per workflow step (what the Snakemake rules call).

Heavy libraries (torch, zarr, h5py) are imported inside the subcommand that needs them, so that a
job pays only for what it uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ltpipe.runtime import RECIPE_KEYS
from ltpipe.utils import LtpipeError


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def cmd_split(args: argparse.Namespace) -> None:
    from ltpipe.data import build_split, write_split

    imb = None if args.imbalance_factor == "native" else float(args.imbalance_factor)
    split = build_split(args.dataset, args.settings, imb, args.seed)
    write_split(args.out, split)
    counts = list(map(int, split.class_counts))
    val = "" if split.val_indices is None else f", {split.val_indices.size} val images"
    print(f"split {args.dataset} IF={args.imbalance_factor} seed={args.seed}: "
          f"{sum(counts)} training images, class counts {counts}{val}")


def cmd_train(args: argparse.Namespace) -> None:
    from ltpipe.train.device import lease_device
    from ltpipe.train.stage1 import train_stage1

    recipe = dict(args.recipe)
    if args.runtime_of is not None:
        from ltpipe.runtime import recipe_runtime

        runtime = recipe_runtime(args.runtime_of)
        print(f"train: speed-only settings of {args.runtime_of!r} from the environment (not "
              f"Snakemake params): {json.dumps(runtime, sort_keys=True)}", flush=True)
        recipe.update(runtime)
    with lease_device(args.device) as device:
        _lease_line("acquired", device)
        metrics = train_stage1(args.split, recipe, args.out, seed=args.seed, device=device,
                               threads=args.threads, deterministic=args.deterministic)
        _lease_line("released", device)
    print(f"train: done: {json.dumps(metrics)}")


def _lease_line(event: str, device) -> None:
    """One parsable log line per lease event (the multi-GPU test reads them)."""
    import time

    slot = getattr(device, "slot", None)
    print(f"lease: {event} device={device} slot={slot} t={time.time():.3f}", flush=True)


def cmd_dump(args: argparse.Namespace) -> None:
    import torch

    from ltpipe.train.device import lease_device
    from ltpipe.train.dump import dump_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    with lease_device(args.device) as device:
        _lease_line("acquired", device)
        dump_cache(args.split, args.model, args.out, args.settings, device=device)
        _lease_line("released", device)


def cmd_classify(args: argparse.Namespace) -> None:
    from ltpipe.classifiers.job import run_classifier_job

    job = args.job
    missing = {"method", "settings"} - set(job)
    if missing:
        raise LtpipeError(f"--job lacks {sorted(missing)}: give {{'method': ..., 'settings': ...}}")
    info = {**args.info, "backbones": job.get("backbones", args.info.get("backbones", []))}
    from ltpipe.classifiers.device import job_device
    from ltpipe.train.device import lease_device

    with lease_device(job_device(args.device, job["method"])) as device:
        if device.slot is not None:
            _lease_line("acquired", device)
        run_classifier_job(split_path=args.split, cache_paths=args.caches, method=job["method"],
                           settings=job["settings"], seed=args.seed, out_dir=args.out_dir,
                           info=info, model_paths=args.models, threads=args.threads,
                           device=str(device), upstream=job.get("on"))
        if device.slot is not None:
            _lease_line("released", device)


def cmd_summarize(args: argparse.Namespace) -> None:
    from ltpipe.report.summary import write_summary

    write_summary(args.metrics, args.csv, args.md, args.paired)


def cmd_report(args: argparse.Namespace) -> None:
    from ltpipe.report.summary import rewrite_report

    rewrite_report(args.results)


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from ltpipe.cache import verify_cache

    problems = verify_cache(args.path)
    if problems:
        for p in problems:
            print(f"FAIL {p}")
        return 1
    print(f"OK {args.path}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> None:
    from ltpipe import bundle

    if args.action == "pack":
        bundle.pack(args.results, args.archive)
    else:
        bundle.unpack(args.archive, args.results, force=args.force)


def cmd_check_config(args: argparse.Namespace) -> None:
    from ltpipe.workflow.config import check_config, validate_schema
    from ltpipe.yamlfile import load_yaml_strict

    for path in args.configs:
        cfg = load_yaml_strict(path)
        validate_schema(cfg)
        check_config(cfg)
        print(f"OK {path}")


def cmd_slurm_check(args: argparse.Namespace) -> int:
    from ltpipe.workflow.slurm_fit import slurm_check

    extra = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    try:
        return slurm_check(args.profile, args.snakefile, extra)
    except ValueError as err:
        raise LtpipeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltpipe", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("split", help="build one long-tailed split")
    s.add_argument("--dataset", required=True)
    s.add_argument("--settings", type=_json_arg, required=True, help="the data set's config (JSON)")
    s.add_argument("--imbalance-factor", required=True, help="a number >= 1, or 'native'")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_split)

    t = sub.add_parser("train", help="train one stage-one backbone (resumes from <out>.ckpt)")
    t.add_argument("--split", required=True)
    t.add_argument("--recipe", type=_json_arg, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: lease a free GPU)")
    t.add_argument("--deterministic", action="store_true",
                   help="torch's deterministic algorithms whatever the recipe's deterministic")
    t.add_argument("--runtime-of", default=None, metavar="BACKBONE",
                   help=f"add BACKBONE's speed-only recipe keys ({', '.join(RECIPE_KEYS)}) from "
                        "the environment variable the Snakefile sets (they are not Snakemake "
                        "params: changing them does not retrain)")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("dump", help="write a backbone's feature cache")
    d.add_argument("--split", required=True)
    d.add_argument("--model", required=True)
    d.add_argument("--settings", type=_json_arg, required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--device", default=None)
    d.set_defaults(func=cmd_dump)

    c = sub.add_parser("classify", help="run one classifier-stage method on cached features")
    c.add_argument("--split", required=True)
    c.add_argument("--caches", nargs="+", required=True, help="cache path(s), one per backbone")
    c.add_argument("--models", nargs="+", default=None,
                   help="the backbones' model.pt files: the caches must have been made from them")
    c.add_argument("--job", type=_json_arg, required=True,
                   help='{"method": ..., "settings": {...}, "backbones": [...]}')
    c.add_argument("--device", default=None,
                   help="torch device; default: the environment's LTPIPE_CLASSIFY_DEVICE "
                   "(cpu | cuda | auto, set from the config's classify_device), cpu if unset")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out-dir", required=True)
    c.add_argument("--info", type=_json_arg, default={}, help="row labels for the summary")
    c.add_argument("--threads", type=int, default=None)
    c.set_defaults(func=cmd_classify)

    m = sub.add_parser("summarize", help="aggregate metrics.json files into tables")
    m.add_argument("--csv", required=True)
    m.add_argument("--md", required=True)
    m.add_argument("--paired", default=None,
                   help="also write the paired comparisons with joint / cRT (paired.csv)")
    m.add_argument("metrics", nargs="*")
    m.set_defaults(func=cmd_summarize)

    r = sub.add_parser("report", help="rewrite summary.csv, summary.md and paired.csv of an "
                                      "existing results folder (no job reruns)")
    r.add_argument("--results", default="results",
                   help="the results folder (config's results:); reads every metrics.json, "
                        "logits.npz and cache under it")
    r.set_defaults(func=cmd_report)

    cache = sub.add_parser("cache", help="feature-cache tools")
    csub = cache.add_subparsers(dest="cache_command", required=True)
    v = csub.add_parser("verify", help="check every array of a cache against its manifest")
    v.add_argument("path")
    v.set_defaults(func=cmd_cache_verify)

    b = sub.add_parser("bundle", help="pack / unpack stage-one artifacts to rerun stage two")
    b.add_argument("action", choices=["pack", "unpack"])
    b.add_argument("archive", help="the .tar file")
    b.add_argument("--results", default="results")
    b.add_argument("--force", action="store_true", help="unpack: overwrite files that differ")
    b.set_defaults(func=cmd_bundle)

    from ltpipe.report.cli import add_subcommands

    add_subcommands(sub)  # plot, compare

    k = sub.add_parser("check-config", help="validate config files (schema and domain checks)")
    k.add_argument("configs", nargs="+")
    k.set_defaults(func=cmd_check_config)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sc = sub.add_parser(
        "slurm-check", help="compare every Slurm job's request with the nodes sinfo lists",
        description="Run from the login node, in the directory of your config.yaml: prints, per "
                    "rule (and group), what its Slurm job asks (CPUs, memory, GPUs, wall time) "
                    "and the largest node of its partition; exits 1, naming the setting to "
                    "change, when some job could never start. Submits nothing.")
    sc.add_argument("--profile", default=os.path.join(root, "workflow", "profiles", "slurm"),
                    help="the Snakemake profile directory (default: %(default)s)")
    sc.add_argument("--snakefile", default=os.path.join(root, "Snakefile"),
                    help="default: %(default)s")
    sc.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                    help="after --: more Snakemake options, e.g. -- --configfile c.yaml --cores 4")
    sc.set_defaults(func=cmd_slurm_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except LtpipeError as err:
        print(f"ltpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a missing or unwritable path: one readable line
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"ltpipe {args.command}: error: {err.strerror or err}{where}; free space or fix "
              "the path, then rerun (nothing finished was overwritten)", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
