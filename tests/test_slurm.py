"""The ltpipe workflow on a real (single-node) Slurm through snakemake-executor-plugin-slurm.

One run of the real Snakefile with workflow/profiles/slurm on a shrunken default config (one
imbalance factor, 2 epochs), module scoped, checked for: success; every non-local job submitted
through sbatch with the profile's requests (GPU, wall time, memory, requeue) as Slurm recorded
them; the classify jobs batched into few group submissions; and a summary identical to a local
run of the same config (run alongside). A toy workflow checks the profile's checkpoint signal:
the train rule's command gets SIGTERM before its time limit, and the retry resumes from its
checkpoint. The cluster: tests/slurm_cluster.py (skips only without root or Slurm, outside CI).

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
from collections import Counter
from pathlib import Path

import pytest
import yaml
import yte
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
CORES = 2
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def shrink_config(dst: Path) -> Path:
    """The default config, small: one imbalance factor, split seed, backbone recipe (the first)
    and training seed, 2 epochs, and only the classifier entries that read that backbone; a
    speed-only key (checkpoint_every), which reaches the job through the environment."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    for ds in cfg["datasets"].values():
        ds["imbalance_factors"] = ds["imbalance_factors"][:1]
        ds["split_seeds"] = ds.get("split_seeds", [0])[:1]
    name, recipe = next(iter(cfg["backbones"].items()))
    cfg["backbones"] = {name: {**recipe, "epochs": 2, "seeds": recipe.get("seeds", [0])[:1],
                               "checkpoint_every": 2}}
    kept = {k: v for k, v in cfg["classifiers"].items() if v.get("backbones") == [name]}
    while True:  # and the composed entries (reads: ...) whose inputs are all kept
        more = {k: v for k, v in cfg["classifiers"].items() if k not in kept and "reads" in v
                and set([v["reads"]] if isinstance(v["reads"], str) else v["reads"]) <= set(kept)}
        if not more:
            break
        kept.update(more)
    cfg["classifiers"] = kept
    path = dst / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load_profile() -> dict:
    """The profile as Snakemake reads it (YTE-rendered: GPUS from LTPIPE_SLURM_GPUS, 1 unset)."""
    with open(PROFILE / "config.yaml") as fh:
        return yte.process_yaml(fh, require_use_yte=True)


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


def start_snakemake(workdir: Path, args: list[str], env: dict[str, str],
                    snakefile: Path = ROOT / "Snakefile") -> subprocess.Popen:
    """Start Snakemake in workdir; its output goes to workdir/snakemake.out."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), *args]
    with open(workdir / "snakemake.out", "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def run_snakemake(workdir: Path, args: list[str], env: dict[str, str],
                  snakefile: Path = ROOT / "Snakefile") -> str:
    """Run Snakemake in workdir to the end; fail with its output's tail unless it succeeds."""
    proc = start_snakemake(workdir, args, env, snakefile)
    try:
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (workdir / "snakemake.out").read_text()
    assert rc == 0, f"snakemake failed ({rc}):\n{text[-8000:]}"
    return text


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
def runs(slurm_cluster, tmp_path_factory):  # noqa: F811 (pytest fixture argument)
    """The Slurm run, and beside it (it mostly waits on Slurm) a local run of the same config."""
    assert slurm_cluster.cpus >= CORES, f"the test node has {slurm_cluster.cpus} CPUs < {CORES}"
    local_work = tmp_path_factory.mktemp("local_run")
    local_config = shrink_config(local_work)
    # Same threads per job as the Slurm run (profile: classify gets all of --cores).
    local = start_snakemake(local_work, ["--configfile", str(local_config), "--cores", str(CORES),
                                         "--set-threads", f"classify={CORES}"],
                            job_env(dict(os.environ), local_work / "bin"))
    try:
        work = tmp_path_factory.mktemp("slurm_run")
        config = shrink_config(work)
        start = time.monotonic()
        log = run_snakemake(work, ["--configfile", str(config), *slurm_args()],
                            job_env(slurm_cluster.env, work / "bin"))
        seconds = time.monotonic() - start
        local_rc = local.wait(timeout=1200)
    finally:
        if local.poll() is None:
            local.kill()
    return {"work": work, "log": log, "seconds": seconds, "local_work": local_work,
            "local_rc": local_rc}


@pytest.fixture(scope="module")
def slurm_run(runs):
    return runs["work"], runs["log"], runs["seconds"]


@pytest.fixture(scope="module")
def local_run(runs):
    out = (runs["local_work"] / "snakemake.out").read_text()
    assert runs["local_rc"] == 0, f"the local run failed:\n{out[-6000:]}"
    return runs["local_work"]


def planned_classify_jobs(work: Path) -> int:
    from ltpipe.workflow.config import metric_targets

    cfg = yaml.safe_load((work / "config.yaml").read_text())
    return len(metric_targets(cfg))


def test_every_job_went_through_sbatch_with_the_profiles_requests(slurm_run, slurm_cluster):  # noqa: F811
    work, log, _ = slurm_run
    subs = submissions(log)
    # Jobs Snakemake ran remotely on their own print "rule X:" at the start of a line (local
    # ones "localrule X:", grouped ones indented under "Group job"): one sbatch each.
    remote = Counter(re.findall(r"^rule (\w+):", log, re.M))
    assert {"split", "train", "dump"} <= set(remote) and "classify" not in remote, remote
    assert Counter(n[len("rule_"):] for n, _, _ in subs if n.startswith("rule_")) == remote
    profile = load_profile()
    ctld = slurm_cluster.log("slurmctld")
    for name, jobid, slurm_log in subs:
        info = scontrol_job(slurm_cluster, jobid)
        assert info["JobState"] == "COMPLETED", (name, info)
        assert f"_slurm_rpc_submit_batch_job: JobId={jobid} " in ctld
        assert slurm_log.name == f"{jobid}.log" and slurm_log.exists(), slurm_log
        assert info["Requeue"] == "1", "profile: slurm-requeue"
        if name in ("rule_train", "rule_dump"):
            want = profile["set-resources"][name[len("rule_"):]]
            assert info["TresPerJob"] == "gres:gpu:1", info
            assert info["TimeLimit"] == f"{want['runtime'] // 60:02d}:{want['runtime'] % 60:02d}:00"
            assert f"mem={want['mem_mb']}M" in info["TRES"]
            assert info["NumCPUs"] == str(CORES)
    assert (work / "results" / "summary.csv").exists()
    # the cluster-fit check ran on the login node before the first sbatch, and let it pass
    assert re.search(r"ltpipe: all \d+ Slurm submissions fit a node of their partition", log)
    # the speed-only recipe key reached the train job on its node (through the environment
    # that the job's own Snakemake sets, not through params)
    train_logs = list((work / "results" / "logs" / "train").glob("*.log"))
    assert len(train_logs) == 1
    assert 'from the environment (not Snakemake params): {"checkpoint_every": 2}' \
        in train_logs[0].read_text()


def test_classify_jobs_go_out_in_few_group_submissions(slurm_run):
    work, log, _ = slurm_run
    n_jobs = planned_classify_jobs(work)
    per_group = load_profile()["group-components"]["stage2"]
    groups = [(jobid, path) for name, jobid, path in submissions(log) if name.startswith("group_")]
    assert n_jobs > per_group // 2, f"too few classify jobs ({n_jobs}) to show the grouping"
    assert 1 <= len(groups) <= math.ceil(n_jobs / per_group), groups
    carried = []  # the classify jobs each group submission's Snakemake was told to run
    for _, path in groups:
        targets = re.search(r"--target-jobs (.*?) --allowed-rules", path.read_text())
        assert targets, f"no --target-jobs in {path}"
        carried += [t for t in targets.group(1).split() if t.startswith("classify:")]
    assert len(carried) == len(set(carried)) == n_jobs, carried
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



def test_a_run_no_node_can_take_is_refused_before_any_sbatch(slurm_cluster, tmp_path):  # noqa: F811
    """More cores than the node has: the run stops before its first sbatch, naming the setting;
    `ltpipe slurm-check` says the same (and, with LTPIPE_SLURM_GPUS=2, that the node has one
    GPU), and passes the profile with the node's cores and the CPU-only switch."""
    too_many, fits = slurm_cluster.cpus + 1, slurm_cluster.cpus
    config = shrink_config(tmp_path)
    env = job_env(slurm_cluster.env, tmp_path / "bin")
    submitted = slurm_cluster.log("slurmctld").count("_slurm_rpc_submit_batch_job")
    args = ["--configfile", str(config), "--slurm-status-command", "squeue"]
    want = (f"rule classify (group stage2, {planned_classify_jobs(tmp_path)} jobs per sbatch) "
            f"asks {too_many} CPUs; the largest node in partition {slurm_cluster.partition} has "
            f"{fits} CPUs: set cores: {fits} in {PROFILE}/config.yaml (or pass --cores {fits}")

    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                          "--workflow-profile", str(PROFILE), "--cores", str(too_many), *args],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "could never start; nothing was submitted" in run.stderr and want in run.stderr

    def check(cores: int, gpus: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ltpipe", "slurm-check", "--profile",
                               str(PROFILE), "--", "--cores", str(cores), *args], cwd=tmp_path,
                              env=dict(env, LTPIPE_SLURM_GPUS=gpus), capture_output=True,
                              text=True, timeout=300)

    refused, passed = check(too_many, gpus="2"), check(fits, gpus="0")
    assert refused.returncode == 1 and want in refused.stderr, refused.stderr[-3000:]
    assert f"rule train asks 2 GPUs; the largest node in partition {slurm_cluster.partition} " \
           f"has 1 GPU: set set-resources: train: gpu: 1 in {PROFILE}/config.yaml" \
           in refused.stderr
    assert re.search(r"^rule classify \(group stage2.*REFUSED$", refused.stdout, re.M)
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]
    rows = {line.split()[1] for line in passed.stdout.splitlines()[1:]}
    assert {"split", "train", "dump", "classify"} <= rows and "REFUSED" not in passed.stdout
    assert re.search(rf"^rule train +{min(2, fits)} CPUs, 16000 MB, 720 min +"
                     rf"{slurm_cluster.partition}: {fits} CPUs", passed.stdout, re.M), passed.stdout
    # nothing reached Slurm (no submission in slurmctld's log), and no output was made
    assert slurm_cluster.log("slurmctld").count("_slurm_rpc_submit_batch_job") == submitted
    assert not (tmp_path / "results").exists()


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
    open(ckpt, "w").write("checkpoint")
    note("saved")
    sys.exit(3)
signal.signal(signal.SIGTERM, checkpoint)
signal.signal(signal.SIGUSR1, checkpoint)
note("started")
time.sleep(170)
note("no signal")
sys.exit(4)
"""

# Like the real train rule: retries 2, one GPU; the profile's set-resources for train apply.
TOY_SNAKEFILE = """
rule train:
    output: "model.pt"
    retries: 2
    resources: gpu=1
    shell: "{python} {trainer} {{output}}"
"""
RESUMED = ["started", "got SIGTERM", "saved", "resumed from checkpoint"]


def toy_workflow(work: Path) -> Path:
    (work / "trainer.py").write_text(TOY_TRAINER)
    snakefile = work / "Snakefile"
    snakefile.write_text(TOY_SNAKEFILE.format(python=sys.executable, trainer=work / "trainer.py"))
    return snakefile


def test_signal_before_the_time_limit_checkpoints_and_resumes(slurm_cluster, tmp_path):  # noqa: F811
    """The profile's train slurm_extra with a 2-minute limit: SIGTERM at once, save, resume.

    The rule's own `retries` also applies to the Snakemake that runs inside the Slurm job, which
    got no signal (it runs in the batch step): it restarts the command in the same allocation.
    """
    train = load_profile()["set-resources"]["train"]
    assert "--signal=TERM@" in train["slurm_extra"]
    # A command-line --set-resources replaces the profile's table: restate train's, 2 minutes.
    res = [f"train:{k}={v}" for k, v in train.items() if k != "runtime"] + ["train:runtime=2"]
    log = run_snakemake(tmp_path, [*slurm_args(), "--set-resources", *res],
                        dict(slurm_cluster.env), snakefile=toy_workflow(tmp_path))
    assert (tmp_path / "model.pt.trace").read_text().splitlines() == RESUMED
    subs = submissions(log)
    assert len(subs) == 1, subs
    info = scontrol_job(slurm_cluster, subs[0][1])
    assert info["JobState"] == "COMPLETED" and info["TimeLimit"] == "00:02:00", info
    assert "Trying to restart job" in subs[0][2].read_text()
