"""Planning at paper-grid size: `snakemake -n` of ltpipe against a bare Snakefile of as many jobs.

For each grid point (``--grid IFSxSEEDS``: the CIFAR-100-LT preset,
workflow/presets/cifar100_lt.yaml, with its first IFS imbalance factors and SEEDS training seeds
on every backbone) the script writes the config (data root: an empty stand-in folder; nothing
is read at planning), runs
``python -m snakemake -n --quiet rules`` on it, counts the planned jobs from the dry run's job
table, then runs the same command on a bare Snakefile of exactly that many one-line jobs (one
``touch`` rule plus ``all``). Each run's wall time and peak RSS (``os.wait4``'s ``ru_maxrss`` of
the Snakemake process) are measured; so is a bare Snakefile of one job: Snakemake's fixed
start-up on this machine, which the "beyond start-up" columns subtract.

``--code`` measures another checkout's Snakefile and ltpipe with this script (a directory, or a
git revision of this repository, exported with ``git archive``), for before/after figures from
one machine. Writes
``planning.md`` (the table) and ``planning.json`` into ``--out``, stamped with the measured
code's git commit and the machine (``ltpipe.provenance.host_label``).

    python benchmarks/planning.py --out OUT [--grid 2x2 4x2 5x3 5x8] [--code DIR] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PRESET = "workflow/presets/cifar100_lt.yaml"


def grid_point(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IFSxSEEDS, e.g. 5x3")
    return int(m.group(1)), int(m.group(2))


def ltpipe_config(code: Path, ifs: int, seeds: int, work: Path) -> Path:
    """The CIFAR-100-LT preset with its first ``ifs`` imbalance factors and ``seeds`` training
    seeds on every backbone; the data root an empty folder."""
    cfg = yaml.safe_load((code / PRESET).read_text())
    for ds in cfg["datasets"].values():
        if len(ds["imbalance_factors"]) < ifs:
            raise SystemExit(f"planning: {PRESET} has {len(ds['imbalance_factors'])} imbalance "
                             f"factors; --grid asks for {ifs}")
        ds["imbalance_factors"] = ds["imbalance_factors"][:ifs]
        ds["root"] = str(work / "data")
    for recipe in cfg["backbones"].values():
        recipe["seeds"] = list(range(seeds))
    (work / "data").mkdir(parents=True, exist_ok=True)
    path = work / f"cifar100_{ifs}x{seeds}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def bare_snakefile(jobs: int, work: Path) -> Path:
    """A Snakefile of ``jobs`` jobs: ``jobs - 1`` one-line ``touch`` jobs and ``all``."""
    path = work / f"bare_{jobs}.smk"
    path.write_text(f'rule all:\n    input: expand("out/{{i}}.txt", i=range({jobs - 1}))\n\n'
                    'rule one:\n    output: "out/{i}.txt"\n    shell: "touch {output}"\n')
    return path


def dry_run(args: list[str], cwd: Path, env: dict) -> dict:
    """Wall time, peak RSS and planned job count of one ``snakemake -n``."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                                 "--quiet", "rules", *args], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"planning: snakemake -n {' '.join(args)} failed:\n{text[-3000:]}")
    total = re.search(r"^total\s+(\d+)\s*$", text, re.M)
    if not total:
        raise SystemExit(f"planning: no job table in the dry run's output:\n{text[-3000:]}")
    return {"s": wall, "mb": usage.ru_maxrss / 1024, "jobs": int(total.group(1))}


def git_commit(code: Path) -> str:
    out = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def checkout(spec: str, work: Path) -> tuple[Path, str]:
    """(the code to measure, its commit): a directory as given, else a git revision of this
    repository exported into ``work``."""
    if Path(spec).is_dir():
        return Path(spec).resolve(), git_commit(Path(spec))
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet",
                          f"{spec}^{{commit}}"], capture_output=True, text=True)
    if rev.returncode != 0:
        raise SystemExit(f"planning: --code {spec!r} is neither a directory nor a git revision "
                         f"of {ROOT}; give a checkout's path or a commit (e.g. HEAD~1)")
    commit, dest = rev.stdout.strip(), work / "code"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest, commit


def median_run(rounds: int, args: list[str], cwd: Path, env: dict) -> dict:
    runs = [dry_run(args, cwd, env) for _ in range(rounds)]
    return {"s": statistics.median(r["s"] for r in runs),
            "mb": statistics.median(r["mb"] for r in runs), "jobs": runs[0]["jobs"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for planning.md and planning.json")
    ap.add_argument("--grid", nargs="+", type=grid_point, default=[(2, 2), (4, 2), (5, 3), (5, 8)],
                    help="IFSxSEEDS per size (default: about 500, 1000, 2000, 5000 jobs)")
    ap.add_argument("--code", default=str(ROOT),
                    help="the checkout to measure: a directory or a git revision (default: this "
                         "checkout)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per measurement (median)")
    args = ap.parse_args(argv)
    from ltpipe.provenance import host_info, host_label

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ltpipe-planning-") as tmp:
        work = Path(tmp)
        code, commit = checkout(args.code, work)
        env = dict(os.environ, PYTHONPATH=str(code))
        start_up = median_run(args.rounds, ["-s", str(bare_snakefile(1, work))], work, env)
        print(f"bare Snakemake start-up (1 job): {start_up['s']:.1f} s, {start_up['mb']:.0f} MB",
              flush=True)
        for ifs, seeds in args.grid:
            run_dir = work / f"run_{ifs}x{seeds}"
            run_dir.mkdir()
            config = ltpipe_config(code, ifs, seeds, run_dir)
            lt = median_run(args.rounds, ["-s", str(code / "Snakefile"), "-d", str(run_dir),
                                          "--configfile", str(config)], run_dir, env)
            bare = median_run(args.rounds, ["-s", str(bare_snakefile(lt["jobs"], work))],
                              work, env)
            assert bare["jobs"] == lt["jobs"], (bare, lt)
            rows.append({"grid": f"{ifs}x{seeds}", "jobs": lt["jobs"], "ltpipe_s": lt["s"],
                         "bare_s": bare["s"], "time_ratio": lt["s"] / bare["s"],
                         "ltpipe_beyond_start_up_s": lt["s"] - start_up["s"],
                         "bare_beyond_start_up_s": bare["s"] - start_up["s"],
                         "ltpipe_mb": lt["mb"],
                         "bare_mb": bare["mb"], "mem_ratio": lt["mb"] / bare["mb"]})
            r = rows[-1]
            print(f"{r['grid']}: {r['jobs']} jobs, ltpipe {r['ltpipe_s']:.1f} s / "
                  f"{r['ltpipe_mb']:.0f} MB, bare {r['bare_s']:.1f} s / {r['bare_mb']:.0f} MB",
                  flush=True)
    host = host_label(host_info())
    lines = [f"`snakemake -n` of the CIFAR-100-LT preset (IFs x training seeds) against a bare "
             f"Snakefile of as many one-line jobs; ltpipe at {commit}; machine: {host} "
             f"({os.cpu_count()} CPUs); median of {args.rounds} run(s) each. Bare Snakemake's "
             f"start-up (1 job): {start_up['s']:.1f} s, {start_up['mb']:.0f} MB.", "",
             "| IFs x seeds | jobs | ltpipe s | bare s | ratio | ltpipe s beyond start-up | "
             "bare s beyond start-up | ltpipe MB | bare MB | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['grid']} | {r['jobs']:,} | {r['ltpipe_s']:.1f} | {r['bare_s']:.1f} | "
              f"{r['time_ratio']:.2f} | {r['ltpipe_beyond_start_up_s']:.1f} | "
              f"{r['bare_beyond_start_up_s']:.1f} | "
              f"{r['ltpipe_mb']:.0f} | {r['bare_mb']:.0f} | {r['mem_ratio']:.2f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (out / "planning.md").write_text(text)
    (out / "planning.json").write_text(json.dumps(
        {"commit": commit, "host": host, "cpus": os.cpu_count(),
         "rounds": args.rounds, "start_up": start_up, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
