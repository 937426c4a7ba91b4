"""A throwaway single-node Slurm cluster (munge, slurmctld, slurmd) for the SLURM tests.

Everything lives under one temporary directory: slurm.conf and gres.conf (filled from the
templates in .ci/slurm/), state, spool, pid and log files. The daemons run in the foreground as
children of the test process and are stopped by their pid at teardown; a munged that was already
running is reused and left alone. Client commands find the cluster through ``SLURM_CONF``
(``SlurmCluster.env``); commands inside jobs (the jobstep executor's ``srun``, which runs with
``SLURM_*`` variables removed) find it through the configless link ``/run/slurm/conf`` that slurmd
maintains. A foreign /etc/slurm/slurm.conf would shadow that link, so it is moved aside for the
session and put back afterwards.

Needs root and the Debian packages slurm-wlm and munge (``.ci/setup --test`` installs them).
``slurm_cluster`` is a session-scoped pytest fixture: it skips only when not root or the binaries
are absent *and* ``CI`` is unset; in CI, or when the binaries are there, any failure to start is a
test failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / ".ci" / "slurm"
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue",
            "sinfo", "scontrol")
MUNGE_KEY = Path("/etc/munge/munge.key")
ETC_CONF = Path("/etc/slurm/slurm.conf")
RUN_CONF = Path("/run/slurm/conf")
PARTITION = "ltpipe"


class SlurmStartError(RuntimeError):
    """The test cluster could not be started; the message says which step failed and why."""


@dataclass
class SlurmCluster:
    """A running test cluster: where its files are and how to talk to it."""

    root: Path
    conf: Path
    node: str
    partition: str
    cpus: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    moved_etc_conf: Path | None = None
    old_run_conf: str | None = None

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise SlurmStartError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def log(self, daemon: str) -> str:
        """Text of a daemon's log file ('slurmctld' or 'slurmd'); '' when there is none."""
        path = self.root / "log" / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def missing_requirements() -> str | None:
    """Why this machine cannot host the test cluster (not root, binaries absent), else None."""
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (it starts munged, slurmctld and slurmd)"
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"Slurm/munge binaries not found: {', '.join(missing)}; install them with "
                "`apt-get install -y slurm-wlm munge` or `.ci/setup --test`")
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _munge_works() -> bool:
    try:
        enc = subprocess.run([_which("munge"), "-n"], capture_output=True, timeout=10)
        dec = subprocess.run([_which("unmunge")], input=enc.stdout, capture_output=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return enc.returncode == 0 and dec.returncode == 0


def _start_munge(cluster: SlurmCluster) -> None:
    """Reuse a working munged; otherwise make a key if missing and start munged as 'munge'."""
    if _munge_works():
        return
    for d in ("/etc/munge", "/var/lib/munge", "/var/log/munge", "/run/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    os.chmod("/etc/munge", 0o700)
    if not MUNGE_KEY.exists():
        with open("/dev/urandom", "rb") as src:
            MUNGE_KEY.write_bytes(src.read(1024))
    shutil.chown(MUNGE_KEY, "munge", "munge")
    os.chmod(MUNGE_KEY, 0o400)
    log = open(cluster.root / "log" / "munged.out", "w")  # noqa: SIM115 (lives with the daemon)
    cluster.procs["munged"] = subprocess.Popen(
        [_which("munged"), "--foreground"], user="munge", group="munge",
        stdout=log, stderr=subprocess.STDOUT)
    _wait(_munge_works, 20, "munged to answer `munge -n | unmunge`", cluster, "munged")


def _hardware(min_memory_mb: int) -> tuple[str, int, bool]:
    """Node hardware from `slurmd -C` (CPUs, sockets, cores, RealMemory) as slurm.conf words.

    RealMemory is raised to min_memory_mb when the machine has less (returned flag True: the
    config must then override the hardware check), so that the workflow's memory requests are
    admissible; with task/none nothing enforces them and the test jobs use little memory.
    """
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=60)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    words = dict(w.split("=", 1) for w in first.split() if "=" in w)
    if "CPUs" not in words or "RealMemory" not in words:
        raise SlurmStartError(f"`slurmd -C` gave no CPUs/RealMemory: {out.stdout!r} {out.stderr!r}")
    raised = int(words["RealMemory"]) < min_memory_mb
    words["RealMemory"] = str(max(int(words["RealMemory"]), min_memory_mb))
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return " ".join(f"{k}={words[k]}" for k in keep if k in words), int(words["CPUs"]), raised


def _write_configs(cluster: SlurmCluster, min_memory_mb: int) -> None:
    hardware, cpus, raised = _hardware(min_memory_mb)
    ctld_port, slurmd_port = _free_ports(2)
    fields = {"root": str(cluster.root), "host": cluster.node, "addr": "127.0.0.1",
              "ctld_port": ctld_port, "slurmd_port": slurmd_port, "hardware": hardware,
              "partition": cluster.partition}
    text = Template((TEMPLATES / "slurm.conf.in").read_text()).substitute(fields)
    if raised:
        text += "# The machine has less memory than the workflow's requests: trust this file.\n"
        text += "SlurmdParameters=config_overrides\n"
    cluster.conf.write_text(text)
    gres = Template((TEMPLATES / "gres.conf.in").read_text()).substitute(fields)
    (cluster.conf.parent / "gres.conf").write_text(gres)
    cluster.cpus = cpus
    cluster.env["LTPIPE_TEST_SLURM_CTLD"] = f"127.0.0.1:{ctld_port}"


def _wait(ready, timeout: float, what: str, cluster: SlurmCluster, daemon: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        proc = cluster.procs.get(daemon)
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = "\n".join(cluster.log(daemon).splitlines()[-15:]) or _out_tail(cluster, daemon)
    raise SlurmStartError(f"timed out waiting for {what}; {daemon} log tail:\n{tail}")


def _out_tail(cluster: SlurmCluster, daemon: str) -> str:
    path = cluster.root / "log" / f"{daemon}.out"
    return "\n".join(path.read_text(errors="replace").splitlines()[-15:]) if path.exists() else ""


def _start_daemon(cluster: SlurmCluster, name: str, args: list[str]) -> None:
    out = open(cluster.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (lives with the daemon)
    cluster.procs[name] = subprocess.Popen([_which(name), "-D", *args], stdout=out,
                                           stderr=subprocess.STDOUT, env=cluster.env)


def _node_state(cluster: SlurmCluster) -> str:
    proc = cluster.run("sinfo", "-h", "-N", "-n", cluster.node, "-o", "%t", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _isolate_client_config(cluster: SlurmCluster) -> None:
    """Move a foreign /etc/slurm/slurm.conf aside; remember what /run/slurm/conf pointed to."""
    if ETC_CONF.exists():
        backup = ETC_CONF.with_name(f"slurm.conf.ltpipe-test-backup-{os.getpid()}")
        ETC_CONF.rename(backup)
        cluster.moved_etc_conf = backup
    if RUN_CONF.is_symlink():
        cluster.old_run_conf = os.readlink(RUN_CONF)


def start_cluster(root: Path, min_memory_mb: int = 32000,
                  timeout: float = 90) -> SlurmCluster:
    """Start munged (if needed), slurmctld and slurmd under root; return once the node is idle."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "run", "log"):
        (root / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = SlurmCluster(root=root, conf=conf, node=node, partition=PARTITION, cpus=0, env=env)
    try:
        _write_configs(cluster, min_memory_mb)
        _isolate_client_config(cluster)
        _start_munge(cluster)
        _start_daemon(cluster, "slurmctld", ["-f", str(conf)])
        _wait(lambda: cluster.run("scontrol", "ping", check=False).returncode == 0, timeout,
              "slurmctld to answer `scontrol ping`", cluster, "slurmctld")
        _start_daemon(cluster, "slurmd", ["-N", node, "--conf-server",
                                          cluster.env["LTPIPE_TEST_SLURM_CTLD"]])
        _wait(lambda: _node_state(cluster) == "idle", timeout,
              f"node {node} to be idle in `sinfo`", cluster, "slurmd")
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel leftover jobs, stop the daemons this module started (by pid), restore configs."""
    if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
        cluster.run("scancel", "--full", "-p", cluster.partition, check=False)
    for name in ("slurmd", "slurmctld", "munged"):
        proc = cluster.procs.get(name)
        if proc is None or proc.poll() is not None:
            continue
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if RUN_CONF.is_symlink() and str(cluster.root) in os.readlink(RUN_CONF):
        RUN_CONF.unlink()
        if cluster.old_run_conf:
            RUN_CONF.symlink_to(cluster.old_run_conf)
    if cluster.moved_etc_conf is not None and not ETC_CONF.exists():
        cluster.moved_etc_conf.rename(ETC_CONF)


def job_ids_in(text: str) -> list[int]:
    """Slurm job ids that Snakemake's SLURM executor reports as submitted in its log text."""
    return [int(m) for m in re.findall(r"external jobid '(\d+)'", text)]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    """A running single-node cluster for the session (skip/fail rules: see the module docs)."""
    reason = missing_requirements()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the Slurm test cannot run: {reason}")
        pytest.skip(reason)
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except (SlurmStartError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"could not start the single-node Slurm test cluster: {exc}")
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
