"""The warm classify worker (ltpipe/worker.py) with real processes, real sockets and a real zarr
cache: results equal the direct path's bit for bit, a failing job fails alone, a killed client
takes its job with it, the fallback, the idle exit, two jobs side by side. No timed assertions:
the waits below are bounds on how long to look, never what a test checks."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SLOW_CRT = {"epochs": 1000000}  # runs until killed
TINY = {"classes": 4, "n_train": 100, "n_max": 50, "n_min": 5, "val": 0, "test": 10, "dim": 8,
        "hw": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """A hand-made split and a real zarr cache written by ltpipe's CacheWriter (the benchmark's
    synthetic cache, 4 classes)."""
    spec = importlib.util.spec_from_file_location(
        "stage2_scale", ROOT / "benchmarks" / "stage2_scale.py")
    s2s = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(s2s)
    root = tmp_path_factory.mktemp("wdata")
    split = s2s.make_split(root / "split.npz", s2s.class_counts(TINY, 1.0), TINY, 1.0)
    s2s.write_cache(root / "cache.zarr", split, TINY, maps=False, compression="none",
                    density=1.0, chunk_rows=16)
    return root / "split.npz", root / "cache.zarr"


@pytest.fixture
def wdir():
    """A short private socket directory (AF_UNIX paths are limited to ~107 bytes); the workers
    started in it are ended afterwards (SIGTERM by pid, read from their logs)."""
    path = Path(tempfile.mkdtemp(prefix="ltw", dir="/tmp"))
    yield path
    for pid in worker_pids(path):
        with _quiet():
            os.kill(pid, signal.SIGTERM)
    shutil.rmtree(path, ignore_errors=True)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def worker_pids(wdir: Path) -> list[int]:
    return [int(m) for log in wdir.glob("*.log")
            for m in re.findall(r"pid (\d+): listening", log.read_text())]


def env_of(wdir: Path | None, **extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LTPIPE_CLASSIFY_DEVICE": "cpu",
           "LTPIPE_WORKER_IDLE": "30", **extra}
    if wdir is not None:
        env["LTPIPE_WORKER_DIR"] = str(wdir)
    return env


def start(data, out: Path, method: str, settings: dict, env: dict,
          caches: list[str] | None = None, job: str | None = None) -> subprocess.Popen:
    """``python -m ltpipe classify`` as the classify rule runs it, output into ``out``/log."""
    split, cache = data
    out.mkdir(parents=True, exist_ok=True)
    job = job or json.dumps({"method": method, "settings": settings})
    cmd = [sys.executable, "-m", "ltpipe", "classify", "--split", str(split), "--job", job,
           "--seed", "0", "--threads", "1", "--out-dir", str(out),
           "--caches", *(caches or [str(cache)])]
    log = open(out / "log", "w")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    finally:
        log.close()


def run(*args, **kw) -> tuple[int, str]:
    proc = start(*args, **kw)
    rc = proc.wait(timeout=600)
    return rc, (args[1] / "log").read_text()


def wait_until(cond, what: str, bound: float = 300):
    end = time.monotonic() + bound
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("method,settings", [("crt", {"epochs": 2}), ("tau_norm", {})])
def test_worker_results_equal_the_direct_paths(data, wdir, tmp_path, method, settings):
    rc, log = run(data, tmp_path / "direct", method, settings, env_of(wdir, LTPIPE_WORKER="off"))
    assert rc == 0, log
    assert not list(wdir.glob("*.sock"))  # off: no worker
    runs = {"fork1": {}, "fork2": {}, "serial1": {"LTPIPE_WORKER": "serial"},
            "serial2": {"LTPIPE_WORKER": "serial"}}
    for name, extra in runs.items():
        rc, log = run(data, tmp_path / name, method, settings, env_of(wdir, **extra))
        assert rc == 0, log
        assert "no warm worker" not in log
    logs = {p.name: p.read_text() for p in wdir.glob("*.log")}
    # one fork worker and one serial worker (slot 0), each started once and reused
    assert sorted(n.split(".", 1)[1] for n in logs) == ["f.log", "s0.log"], logs
    assert all(text.count("listening") == 1 for text in logs.values()), logs
    ref = np.load(tmp_path / "direct" / "logits.npz")
    ref_metrics = json.loads((tmp_path / "direct" / "metrics.json").read_text())
    for name in runs:
        got = np.load(tmp_path / name / "logits.npz")
        assert sorted(got.files) == sorted(ref.files)
        for key in ref.files:
            assert got[key].dtype == ref[key].dtype
            assert np.array_equal(got[key], ref[key]), (name, key)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["metrics"] == ref_metrics["metrics"], name
        assert metrics["provenance"]["code"] == ref_metrics["provenance"]["code"]
        # the machine record does not depend on the path either (a numpy method's job in a
        # worker that imported torch records no torch fields, as the direct job)
        assert metrics["provenance"]["host"] == ref_metrics["provenance"]["host"], name
        assert metrics["seconds"]["cpu"] > 0


def test_a_failing_job_fails_alone(data, wdir, tmp_path):
    env = env_of(wdir)
    rc, log = run(data, tmp_path / "ok0", "tau_norm", {}, env)  # starts the worker
    assert rc == 0, log
    rc, log = run(data, tmp_path / "badjob", "", {}, env, job='{"method": "tau_norm"}')
    assert rc == 2 and "--job lacks ['settings']" in log, log
    rc, log = run(data, tmp_path / "nocache", "tau_norm", {}, env,
                  caches=[str(tmp_path / "missing.zarr")])
    assert rc == 2 and "missing.zarr" in log, log
    rc, log = run(data, tmp_path / "badsetting", "tau_norm", {"no_such_key": 1}, env)
    assert rc != 0 and "no_such_key" in log, log
    rc, log = run(data, tmp_path / "ok1", "tau_norm", {}, env)
    assert rc == 0 and "test all" in log, log
    assert (tmp_path / "ok1" / "metrics.json").exists()
    for bad in ("badjob", "nocache", "badsetting"):
        assert not (tmp_path / bad / "metrics.json").exists()
    assert len(worker_pids(wdir)) == 1  # the same worker ran all five


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_client_kills_its_job(data, wdir, tmp_path, how):
    env = env_of(wdir)
    rc, log = run(data, tmp_path / "warm", "tau_norm", {}, env)
    assert rc == 0, log
    (worker,) = worker_pids(wdir)
    client = start(data, tmp_path / "slow", "crt", SLOW_CRT, env)
    (child,) = wait_until(lambda: children(worker), "the worker's child")
    client.send_signal(how)
    assert client.wait(timeout=60) == -how
    wait_until(lambda: not alive(child), "the child's end")
    assert not (tmp_path / "slow" / "metrics.json").exists()
    assert not (tmp_path / "slow" / "logits.npz").exists()
    assert alive(worker)  # the worker lives on and takes the next job
    rc, log = run(data, tmp_path / "after", "tau_norm", {}, env)
    assert rc == 0, log
    assert worker_pids(wdir) == [worker]


def test_killing_the_client_ends_a_serial_job(data, wdir, tmp_path):
    env = env_of(wdir, LTPIPE_WORKER="serial")
    rc, log = run(data, tmp_path / "warm", "tau_norm", {}, env)
    assert rc == 0, log
    (worker,) = worker_pids(wdir)
    client = start(data, tmp_path / "slow", "crt", SLOW_CRT, env)
    (wlog,) = wdir.glob("*.s0.log")
    wait_until(lambda: "job 2 starts" in wlog.read_text(), "the serial job's start")
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == -signal.SIGTERM
    wait_until(lambda: not alive(worker), "the serial worker's end (it held the job)")
    assert not (tmp_path / "slow" / "metrics.json").exists()
    rc, log = run(data, tmp_path / "after", "tau_norm", {}, env)  # a new serial worker
    assert rc == 0 and "no warm worker" not in log, log


def test_fallback_when_no_worker_can_start(data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    env = env_of(None, LTPIPE_WORKER_DIR=str(blocker / "sockets"))
    rc, log = run(data, tmp_path / "out", "tau_norm", {}, env)
    assert rc == 0, log
    assert "no warm worker" in log and "running the job in this process" in log, log
    assert (tmp_path / "out" / "metrics.json").exists()
    # a directory another user could read is refused too
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    rc, log = run(data, tmp_path / "out2", "tau_norm", {}, env_of(shared))
    assert rc == 0 and "not a private directory" in log, log


def test_no_worker_inside_a_slurm_job_step(data, wdir, tmp_path):
    rc, log = run(data, tmp_path / "out", "tau_norm", {}, env_of(wdir, SLURM_STEP_ID="3"))
    assert rc == 0 and "test all" in log, log
    assert "no warm worker" not in log  # not a failure: the direct path by design
    assert not list(wdir.iterdir())  # no worker, no socket


def test_the_worker_exits_when_idle(data, wdir, tmp_path):
    rc, log = run(data, tmp_path / "out", "tau_norm", {}, env_of(wdir, LTPIPE_WORKER_IDLE="1"))
    assert rc == 0, log
    (worker,) = worker_pids(wdir)
    wait_until(lambda: not alive(worker), "the idle exit")
    (wlog,) = wdir.glob("*.f.log")
    assert "exit after 1 s idle; 1 jobs" in wlog.read_text()
    assert not list(wdir.glob("*.sock"))
    rc, log = run(data, tmp_path / "again", "tau_norm", {}, env_of(wdir, LTPIPE_WORKER_IDLE="1"))
    assert rc == 0 and "no warm worker" not in log, log  # a new worker
    assert len(worker_pids(wdir)) == 2


def test_two_clients_run_two_children(data, wdir, tmp_path):
    env = env_of(wdir)
    rc, log = run(data, tmp_path / "warm", "tau_norm", {}, env)
    assert rc == 0, log
    (worker,) = worker_pids(wdir)
    clients = [start(data, tmp_path / f"slow{i}", "crt", SLOW_CRT, env) for i in range(2)]
    kids = wait_until(lambda: len(children(worker)) == 2 and children(worker), "two children")
    assert len(set(kids)) == 2
    for c in clients:
        c.send_signal(signal.SIGTERM)
        c.wait(timeout=60)
    wait_until(lambda: not any(alive(k) for k in kids), "the children's end")
