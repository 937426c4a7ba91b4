"""The ltpipe workflow on a real (single-node) Slurm through snakemake-executor-plugin-slurm.

One run of the real Snakefile with workflow/profiles/slurm on a shrunken default config (one
imbalance factor, 2 epochs), module scoped, checked for: success; every non-local job submitted
through sbatch with the profile's requests (GPU, wall time, memory, requeue) as Slurm recorded
them; the classify jobs batched into few group submissions; and a summary identical to a local
run of the same config. A second, toy workflow checks the profile's checkpoint signal: the train
rule's command gets SIGTERM before its time limit, and the retry resumes from its checkpoint.

The only command-line additions to the profile are those a one-node test cluster needs:
--cores (its CPU count) and --slurm-status-command squeue (no accounting database), plus a short
first status poll to keep the test quick. The cluster has one count-only GPU, so the profile's
real GPU requests (--gpus=1) are scheduled as written; the jobs find no CUDA and train on CPU.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
CORES = 2
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")

pytestmark = pytest.mark.slurm


def shrink_config(dst: Path) -> Path:
    """Default config with one imbalance factor, split seed and training seed; 2 epochs."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    for ds in cfg["datasets"].values():
        ds["imbalance_factors"] = ds["imbalance_factors"][:1]
        ds["split_seeds"] = ds.get("split_seeds", [0])[:1]
    for rec in cfg["backbones"].values():
        rec["epochs"] = 2
        rec["seeds"] = rec.get("seeds", [0])[:1]
    path = dst / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def job_env(base: dict[str, str], bin_dir: Path) -> dict[str, str]:
    """Environment for Snakemake and (exported by sbatch) for its jobs: this checkout's ltpipe."""
    env = dict(base, PYTHONPATH=os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]))
    if shutil.which("ltpipe") is None:  # not pip-installed: a shim that runs this checkout
        bin_dir.mkdir(parents=True, exist_ok=True)
        shim = bin_dir / "ltpipe"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ltpipe "$@"\n')
        shim.chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def run_snakemake(workdir: Path, args: list[str], env: dict[str, str],
                  snakefile: Path = ROOT / "Snakefile",
                  check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake in workdir; its output is kept in workdir/snakemake.out."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    (workdir / "snakemake.out").write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def slurm_args() -> list[str]:
    return ["--workflow-profile", str(PROFILE), "--cores", str(CORES),
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5"]


def submissions(text: str) -> list[tuple[str, int, Path]]:
    """(rule_<name> or group_<name> log directory, Slurm job id, Slurm log) per sbatch call."""
    out = []
    for _, jobid, log in SUBMITTED.findall(text):
        name = next(p for p in Path(log).parts if p.startswith(("rule_", "group_")))
        out.append((name, int(jobid), Path(log)))
    return out


def scontrol_job(cluster: SlurmCluster, jobid: int) -> dict[str, str]:
    text = cluster.run("scontrol", "show", "job", "-o", str(jobid)).stdout
    return dict(w.split("=", 1) for w in text.split() if "=" in w)


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):  # noqa: F811 (pytest fixture argument)
    assert slurm_cluster.cpus >= CORES, f"the test node has {slurm_cluster.cpus} CPUs < {CORES}"
    work = tmp_path_factory.mktemp("slurm_run")
    config = shrink_config(work)
    env = job_env(slurm_cluster.env, work / "bin")
    start = time.monotonic()
    proc = run_snakemake(work, ["--configfile", str(config), *slurm_args()], env)
    return work, proc.stdout + proc.stderr, time.monotonic() - start


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("local_run")
    config = shrink_config(work)
    env = job_env(dict(os.environ), work / "bin")
    # Same threads per job as the Slurm run (profile: classify gets all of --cores).
    run_snakemake(work, ["--configfile", str(config), "--cores", str(CORES),
                         "--set-threads", f"classify={CORES}"], env)
    return work


def planned_classify_jobs(work: Path) -> int:
    from ltpipe.config import metric_targets

    cfg = yaml.safe_load((work / "config.yaml").read_text())
    return len(metric_targets(cfg))


def test_every_job_went_through_sbatch_with_the_profiles_requests(slurm_run, slurm_cluster):  # noqa: F811
    work, log, _ = slurm_run
    subs = submissions(log)
    names = [name for name, _, _ in subs]
    assert names.count("rule_split") == names.count("rule_train") == names.count("rule_dump") == 1
    assert not any(n.startswith("rule_classify") or n == "rule_summary" for n in names), names
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    ctld = slurm_cluster.log("slurmctld")
    for name, jobid, slurm_log in subs:
        info = scontrol_job(slurm_cluster, jobid)
        assert info["JobState"] == "COMPLETED", (name, info)
        assert f"_slurm_rpc_submit_batch_job: JobId={jobid} " in ctld
        assert slurm_log.name == f"{jobid}.log" and slurm_log.exists(), slurm_log
        assert info["Requeue"] == "1", "profile: slurm-requeue"
        if name in ("rule_train", "rule_dump"):
            rule = name[len("rule_"):]
            want = profile["set-resources"][rule]
            assert info["TresPerJob"] == "gres:gpu:1", info
            assert info["TimeLimit"] == f"{want['runtime'] // 60:02d}:{want['runtime'] % 60:02d}:00"
            assert f"mem={want['mem_mb']}M" in info["TRES"]
            assert info["NumCPUs"] == str(CORES)
    assert (work / "results" / "summary.csv").exists()


def test_classify_jobs_go_out_in_few_group_submissions(slurm_run):
    work, log, _ = slurm_run
    n_jobs = planned_classify_jobs(work)
    per_group = yaml.safe_load((PROFILE / "config.yaml").read_text())["group-components"]["stage2"]
    groups = [(jobid, path) for name, jobid, path in submissions(log) if name.startswith("group_")]
    assert n_jobs == 9  # the shrunken default: joint, crt, lws, 4 x tau_norm, ncm, logit_adjust
    assert 1 <= len(groups) <= math.ceil(n_jobs / per_group), groups
    inside = sum(len(re.findall(r"Finished jobid: \d+ \(Rule: classify\)", p.read_text()))
                 for _, p in groups)
    assert inside == n_jobs, "every classify job ran inside a group submission"
    print(f"\n{len(submissions(log))} sbatch calls, {len(groups)} for {n_jobs} classify jobs; "
          f"Slurm run {slurm_run[2]:.0f} s")


def test_summary_equals_a_local_run(slurm_run, local_run):
    def rows(work: Path) -> list[dict[str, str]]:
        with open(work / "results" / "summary.csv") as fh:
            return sorted(csv.DictReader(fh), key=lambda r: tuple(r.values()))

    slurm_rows, local_rows = rows(slurm_run[0]), rows(local_run)
    assert len(slurm_rows) == planned_classify_jobs(local_run)
    # Same seed, same threads, CPU in both: the trainer and classifiers are deterministic.
    assert slurm_rows == local_rows


TOY_TRAINER = """
import os, signal, sys, time
out = sys.argv[1]
ckpt, trace = out + ".ckpt", out + ".trace"
def note(msg):
    with open(trace, "a") as fh:
        fh.write(msg + "\\n")
if os.path.exists(ckpt):
    note("resumed from " + open(ckpt).read())
    open(out, "w").write("trained")
    sys.exit(0)
def checkpoint(sig, frame):
    note("got " + signal.Signals(sig).name)
    time.sleep(3)  # a save that takes a while
    open(ckpt, "w").write("attempt 1")
    note("saved")
    sys.exit(3)
signal.signal(signal.SIGTERM, checkpoint)
signal.signal(signal.SIGUSR1, checkpoint)
note("started")
time.sleep(170)
note("no signal")
sys.exit(4)
"""

TOY_SNAKEFILE = """
rule train:
    output: "model.pt"
    retries: 2
    resources: gpu=1
    shell: "{python} {trainer} {{output}}"
"""


def test_time_limit_signal_checkpoints_and_the_retry_resumes(slurm_cluster, tmp_path):  # noqa: F811
    """The profile's train slurm_extra, with a 2-minute first attempt: SIGTERM, save, resume."""
    (tmp_path / "trainer.py").write_text(TOY_TRAINER)
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(TOY_SNAKEFILE.format(python=sys.executable,
                                              trainer=tmp_path / "trainer.py"))
    train = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]["train"]
    extra = train["slurm_extra"]
    assert "--signal=TERM@" in extra
    # A command-line --set-resources replaces the profile's table: restate train's, with a
    # 2-minute limit for the first attempt so that the signal comes at once.
    res = [f"train:{k}={v}" for k, v in train.items() if k not in ("runtime", "slurm_extra")]
    res += [f"train:slurm_extra={extra}", "train:runtime=2 if attempt == 1 else 30"]
    start = time.monotonic()
    proc = run_snakemake(tmp_path, [*slurm_args(), "--set-resources", *res],
                         dict(slurm_cluster.env), snakefile=snakefile)
    trace = (tmp_path / "model.pt.trace").read_text().splitlines()
    assert trace == ["started", "got SIGTERM", "saved", "resumed from attempt 1"], trace
    subs = submissions(proc.stdout + proc.stderr)
    assert len(subs) == 2, subs
    first, second = (scontrol_job(slurm_cluster, jobid) for _, jobid, _ in subs)
    assert first["JobState"] == "FAILED" and first["TimeLimit"] == "00:02:00", first
    assert second["JobState"] == "COMPLETED" and second["TimeLimit"] == "00:30:00", second
    print(f"\nsignal/resume test: {time.monotonic() - start:.0f} s")
