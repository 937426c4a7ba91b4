"""Reliability under faults: killed and interrupted jobs, corrupt caches, full disks, NaN, races.

Every scenario runs the real ``python -m ltpipe ...`` command (or the real Snakemake) in a
subprocess and delivers real signals from outside. To kill a job at an exact point, a
``sitecustomize`` module written into a temporary folder on the subprocess's PYTHONPATH wraps one
ltpipe function and, when an environment variable asks for it, writes a marker file and waits: the
test sees the marker and sends the signal. Nothing in ltpipe is changed; the hook is inert unless
its variable is set. docs/reliability.md summarises what these tests saw.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_workflow import planned_jobs

ROOT = Path(__file__).resolve().parent.parent

# Every test here runs Snakemake or trains in a subprocess: the slow tier (docs/testing.md).
pytestmark = pytest.mark.slow
PY = sys.executable
# 8x8 digits, 585 training images, batch 32 -> 18 steps per epoch; 3 epochs = 54 steps.
RECIPE = {"architecture": "resnet8", "architecture_kwargs": {"widths": [8, 8, 16]}, "epochs": 3,
          "batch_size": 32, "lr": 0.1, "warmup_epochs": 1, "augment": "crop",
          "final_eval": False}
SPE = 18
DS = {"source": "digits", "shot_thresholds": {"many": 50, "few": 20}, "test_per_class": 30}
DUMP = {"backend": "zarr", "compression": "none", "fmap_dtype": "float16", "batch_size": 64}

HOOK = '''
"""Test-only fault hooks for tests/test_reliability.py (inert unless RELTEST_* is set)."""
import os
import time
from pathlib import Path


def _pause(tag):
    Path(os.environ["RELTEST_MARK"]).write_text(str(tag))
    release = Path(os.environ["RELTEST_RELEASE"])
    deadline = time.time() + 120
    while not release.exists() and time.time() < deadline:
        time.sleep(0.02)


if os.environ.get("RELTEST_PAUSE_AT") or os.environ.get("RELTEST_NAN_AT"):
    from ltpipe.train import loop as _loop

    _at = int(os.environ.get("RELTEST_PAUSE_AT") or -1)
    _nan = int(os.environ.get("RELTEST_NAN_AT") or -1)
    _epoch, _step = _loop.Stage1Trainer.train_epoch, _loop.Stage1Trainer._step

    def _train_epoch(self, epoch, start_step=0, *, on_step=None, **kw):
        def hook(g):
            if on_step is not None:
                on_step(g)
            if g == _at:
                _pause(g)
        return _epoch(self, epoch, start_step, on_step=hook, **kw)

    def _nan_step(self, *args):
        loss, logits = _step(self, *args)
        if self.global_step == _nan:
            loss = loss * float("nan")
        return loss, logits

    _loop.Stage1Trainer.train_epoch = _train_epoch
    _loop.Stage1Trainer._step = _nan_step

if os.environ.get("RELTEST_DUMP_PAUSE_AFTER"):
    from ltpipe.cache import store as _store

    _after = int(os.environ["RELTEST_DUMP_PAUSE_AFTER"])
    _put = _store.CacheWriter._put
    _count = [0]

    def _counting_put(self, *args):
        _put(self, *args)
        _count[0] += 1
        if _count[0] == _after:
            _pause(_count[0])

    _store.CacheWriter._put = _counting_put
'''


# ------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hook")
    (d / "sitecustomize.py").write_text(HOOK)
    return d


def _env(hook_dir: Path | None = None, **extra: str) -> dict:
    path = [str(hook_dir)] if hook_dir else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELTEST_")}
    env.update(PYTHONPATH=os.pathsep.join([*path, str(ROOT)]), OMP_NUM_THREADS="1", **extra)
    return env


def ltpipe(*args: str, env: dict | None = None, timeout: int = 300,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ltpipe", *map(str, args)], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout, cwd=cwd)


def assert_readable_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, no traceback, and a last stderr line that names the problem."""
    assert proc.returncode not in (0, None), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    for frag in fragments:
        assert frag in proc.stderr, f"{frag!r} not in stderr:\n{proc.stderr[-3000:]}"
    return last


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended ({proc.returncode}) before {path}:\n{out}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.02)


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model_state"]


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """A digits IF-10 split and an uninterrupted 3-epoch CPU run of RECIPE (the reference)."""
    from ltpipe.data import build_split, write_split
    from ltpipe.train.stage1 import train_stage1

    d = tmp_path_factory.mktemp("stage1")
    write_split(d / "split.npz", build_split("digits", DS, 10, 0))
    write_split(d / "split50.npz", build_split("digits", DS, 50, 0))
    train_stage1(d / "split.npz", RECIPE, d / "model.pt", seed=0, device="cpu", threads=1,
                 log=open(os.devnull, "w"))
    return d


@pytest.fixture(scope="module")
def caches(stage1) -> dict[str, Path]:
    """zarr and HDF5 caches of the reference backbone."""
    from ltpipe.train.dump import dump_cache

    out = {}
    for backend, ext in (("zarr", "zarr"), ("hdf5", "h5")):
        out[backend] = stage1 / f"cache.{ext}"
        dump_cache(stage1 / "split.npz", stage1 / "model.pt", out[backend],
                   {**DUMP, "backend": backend}, log=lambda *_: None)
    return out


# ------------------------------------------------- stage one: signals, NaN, resume
def _train_cmd(split: Path, out: Path) -> list[str]:
    return [PY, "-m", "ltpipe", "train", "--split", str(split), "--recipe", json.dumps(RECIPE),
            "--seed", "0", "--threads", "1", "--device", "cpu", "--out", str(out)]


def _train_segment(hook_dir: Path, split: Path, out: Path, action: str | None = None,
                   step: int = -1) -> subprocess.CompletedProcess:
    """Run ``ltpipe train``; ``action`` term / kill delivers SIGTERM / SIGKILL from outside at
    global step ``step``, nan makes the loss of that step NaN."""
    mark, release = out.parent / "mark", out.parent / "release"
    for p in (mark, release):
        p.unlink(missing_ok=True)
    env = _env(hook_dir, RELTEST_PAUSE_AT=str(step) if action in ("term", "kill") else "",
               RELTEST_NAN_AT=str(step) if action == "nan" else "",
               RELTEST_MARK=str(mark), RELTEST_RELEASE=str(release))
    cmd = _train_cmd(split, out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    if action in ("term", "kill"):
        _wait_for(mark, proc)
        os.kill(proc.pid, signal.SIGTERM if action == "term" else signal.SIGKILL)
        release.touch()
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


# One run interrupted five times, each rerun resuming: (action, global step, the checkpoint's
# (epoch, step) afterwards). SIGKILL before any checkpoint (the rerun starts afresh); SIGTERM
# early in epoch 0; SIGKILL between the end-of-epoch-1
# checkpoint and the next (resumes from it: steps 18-29 are redone); SIGTERM mid-epoch 1; a NaN
# loss in epoch 2 (exit 2, the end-of-epoch-2 checkpoint kept); then the run is finished.
CHAIN = [("kill", 5, None), ("term", 2, (0, 2)), ("kill", SPE + 12, (1, 0)),
         ("term", SPE + 4, (1, 4)), ("nan", 2 * SPE + 2, (2, 0))]


def test_train_interrupted_resumes_to_identical_weights(stage1, hook_dir, tmp_path):
    out = tmp_path / "model.pt"
    ckpt = tmp_path / "model.pt.ckpt"
    resume = None  # (epoch, step) the next segment must announce; None = a fresh start
    for action, step, where in CHAIN:
        proc = _train_segment(hook_dir, stage1 / "split.npz", out, action, step)
        text = proc.stdout + proc.stderr
        if resume is None:
            assert "resuming" not in text, text
        else:
            assert f"resuming model.pt at epoch {resume[0]}, step {resume[1]}" in text, text
        if action == "term":
            assert proc.returncode == 75, text  # EX_TEMPFAIL: checkpoint saved, rerun resumes
            assert "interrupted at epoch" in text and "Traceback" not in text
            assert where == (step // SPE, step % SPE)  # the step boundary after the signal
        elif action == "kill":
            assert proc.returncode == -signal.SIGKILL
        else:
            last = assert_readable_error(proc)
            assert proc.returncode == 2
            assert last.startswith("ltpipe train: error: non-finite training loss nan at "
                                   f"epoch {step // SPE}, step {step % SPE}"), last
            assert "checkpoint is kept" in last
        assert not out.exists(), "the final weights must not appear before training ends"
        if where is None:
            assert not ckpt.exists()
        else:
            saved = torch.load(ckpt, weights_only=True)
            assert (saved["epoch"], saved["step_in_epoch"]) == where, action
        assert not list(tmp_path.glob(".model.pt*")), "a temp file was left behind"
        resume = where
    proc = _train_segment(hook_dir, stage1 / "split.npz", out)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming model.pt at epoch {resume[0]}, step {resume[1]}" in proc.stdout
    assert not ckpt.exists()
    assert _same_weights(out, stage1 / "model.pt"), "resumed weights differ from the reference"
    meta = torch.load(out, map_location="cpu", weights_only=False)
    assert meta["metrics"]["steps"] == 3 * SPE


# ---------------------------------------------------------------------- dump killed part-way
def test_dump_killed_leaves_nothing_and_reruns(stage1, hook_dir, tmp_path, caplog):
    from ltpipe.cache import open_cache, verify_cache
    from ltpipe.cache.format import CacheError

    out = tmp_path / "cache.zarr"
    mark, release = tmp_path / "mark", tmp_path / "release"
    env = _env(hook_dir, RELTEST_DUMP_PAUSE_AFTER="3", RELTEST_MARK=str(mark),
               RELTEST_RELEASE=str(release))
    cmd = [PY, "-m", "ltpipe", "dump", "--split", str(stage1 / "split.npz"), "--model",
           str(stage1 / "model.pt"), "--settings", json.dumps(DUMP), "--threads", "1",
           "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    _wait_for(mark, proc)
    tmps = list(tmp_path.glob(".cache.zarr.tmp-*"))
    assert len(tmps) == 1 and any(tmps[0].rglob("c.*")), "the dump had not started writing"
    proc.kill()
    proc.wait(60)
    assert not out.exists(), "a killed dump left something at the final path"
    with pytest.raises(CacheError, match="no cache at"):
        open_cache(out)
    assert "no cache at" in verify_cache(out)[0]
    # the temp sibling is still named for what it is; opening it directly is refused too
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(tmps[0])
    assert "incomplete" in verify_cache(tmps[0])[0]
    from ltpipe.cli import main

    with caplog.at_level("WARNING", logger="ltpipe"):
        assert main(cmd[3:]) == 0  # the same command again, in this process
    assert verify_cache(out) == []
    # the rerun removed the killed dump's temp folder, and said so
    assert list(tmp_path.glob(".cache.zarr.tmp-*")) == []
    assert f"removed {tmps[0]}" in caplog.text and f"process {proc.pid}" in caplog.text


# ------------------------------------------------------------------- corrupted cache on disk
def _corrupt(cache: Path, backend: str) -> None:
    if backend == "zarr":
        shard = cache / "train" / "pooled" / "c.0.0"
        data = bytearray(shard.read_bytes())
        mid = len(data) // 3
        data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
        shard.write_bytes(bytes(data))
    else:
        import h5py

        with h5py.File(cache, "r+") as f:
            ds = f["train/pooled"]
            ds[3] = ds[3] + 1.0


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_cache_verify_names_corrupted_array(caches, tmp_path, backend):
    src = caches[backend]
    bad = tmp_path / src.name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, bad)
    _corrupt(bad, backend)
    proc = ltpipe("cache", "verify", bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert fails and all("train/pooled" in line for line in fails), proc.stdout
    assert "checksum" in proc.stdout and "Traceback" not in proc.stderr
    assert ltpipe("cache", "verify", src).returncode == 0


def _classify_args(stage1: Path, cache: Path, out: Path, method: str = "ncm",
                   settings: dict | None = None, split: str = "split.npz",
                   model: Path | None = None) -> list[str]:
    return ["classify", "--split", str(stage1 / split), "--caches", str(cache),
            "--models", str(model or stage1 / "model.pt"),
            "--job", json.dumps({"method": method, "settings": settings or {}}),
            "--seed", "0", "--threads", "1", "--out-dir", str(out)]


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_classify_refuses_corrupted_cache(stage1, caches, tmp_path, backend, capsys):
    from ltpipe.cli import main

    src = caches[backend]
    bad = tmp_path / src.name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, bad)
    _corrupt(bad, backend)
    rc = main(_classify_args(stage1, bad, tmp_path / "job"))
    err = capsys.readouterr().err
    assert rc != 0 and "train/pooled" in err, "a corrupted cache was used without a word"
    assert not (tmp_path / "job" / "metrics.json").exists()


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_truncated_cache_is_refused(stage1, caches, tmp_path, backend, capsys):
    """A cache file cut short (the zarr shard of train/pooled; the HDF5 file) is refused with
    a readable error by verify and by a classify job: reads map the files, and a map of bytes
    that are not there must never be handed out (nor crash the process)."""
    from ltpipe.cli import main

    src = caches[backend]
    bad = tmp_path / src.name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, bad)
    cut = bad / "train" / "pooled" / "c.0.0" if backend == "zarr" else bad
    os.truncate(cut, cut.stat().st_size - 4096)
    proc = ltpipe("cache", "verify", bad)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert ("train/pooled" if backend == "zarr" else "cannot read the manifest") in proc.stdout
    rc = main(_classify_args(stage1, bad, tmp_path / "job"))
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err, err
    assert not (tmp_path / "job" / "metrics.json").exists()


# ------------------------------------------------------------- cache of another split/backbone
def test_classify_refuses_cache_of_other_split_or_backbone(stage1, caches, tmp_path,
                                                            capsys):
    proc = ltpipe(*_classify_args(stage1, caches["zarr"], tmp_path / "a", split="split50.npz"))
    last = assert_readable_error(proc, "split_fingerprint", "rerun the cache dump")
    assert last.startswith("ltpipe classify: error:") and proc.returncode == 2
    other = tmp_path / "other.pt"
    other.write_bytes((stage1 / "model.pt").read_bytes() + b"\0")
    from ltpipe.cli import main

    assert main(_classify_args(stage1, caches["hdf5"], tmp_path / "b", model=other)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltpipe classify: error:") and "backbone_sha256" in err, err
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    assert not (tmp_path / "b" / "metrics.json").exists()


# --------------------------------------------------------- many classify jobs on one cache
JOBS = [("ncm", {}), ("crt", {"epochs": 2})]


def test_concurrent_classify_jobs_match_serial(stage1, caches, tmp_path):
    from ltpipe.classifiers.job import run_classifier_job

    threads = torch.get_num_threads()
    serial = {}
    try:
        for backend, cache in caches.items():
            for method, settings in JOBS:
                out = tmp_path / "serial" / backend / method
                run_classifier_job(split_path=str(stage1 / "split.npz"),
                                   cache_paths=[str(cache)], method=method, settings=settings,
                                   seed=0, out_dir=str(out), threads=1,
                                   model_paths=[str(stage1 / "model.pt")])
                serial[backend, method] = out
    finally:
        torch.set_num_threads(threads)
    procs = {}
    for backend, cache in caches.items():  # all four at once, two backends, one cache each
        for method, settings in JOBS:
            out = tmp_path / "parallel" / backend / method
            args = _classify_args(stage1, cache, out, method, settings)
            procs[backend, method] = (out, subprocess.Popen(
                [PY, "-m", "ltpipe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=_env()))
    for key, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (key, err)
        a, b = np.load(serial[key] / "logits.npz"), np.load(out / "logits.npz")
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{key} {name}")
        ma = json.loads((serial[key] / "metrics.json").read_text())["metrics"]
        mb = json.loads((out / "metrics.json").read_text())["metrics"]
        assert ma == mb, key


# ------------------------------------------------------------------------------ full disk
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); run as root")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(mnt: Path, leave: int) -> None:
    """Fill the tmpfs until about ``leave`` bytes remain."""
    free = shutil.disk_usage(mnt).free
    with open(mnt / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def _split_args(out: Path) -> list:
    return ["split", "--dataset", "digits", "--settings", json.dumps(DS), "--imbalance-factor",
            "10", "--seed", "0", "--out", out]


@pytest.fixture(scope="module")
def ckpt_1_2(stage1, tmp_path_factory) -> Path:
    """A checkpoint of RECIPE at epoch 1, step 2 (SIGTERM in-process, as test_train does)."""
    from ltpipe.train.stage1 import TrainingInterrupted, train_stage1

    out = tmp_path_factory.mktemp("ckpt") / "model.pt"

    def hook(global_step):
        if global_step == SPE + 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train_stage1(stage1 / "split.npz", RECIPE, out, seed=0, device="cpu", threads=1,
                     on_step=hook, log=open(os.devnull, "w"))
    return Path(str(out) + ".ckpt")


@pytest.fixture(scope="module")
def full_disk(stage1, ckpt_1_2, tmp_path_factory) -> dict:
    """Dump, split and a checkpoint save, each on a (nearly) full tmpfs, through the CLI's
    entry point in this process: (status or the exception that escaped main(), stderr), and
    what each left on that disk."""
    return _full_disk_runs(stage1, ckpt_1_2, tmp_path_factory.mktemp("full"))


def _full_disk_runs(stage1: Path, ckpt: Path, base: Path) -> dict:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from ltpipe.cli import main

    def run(args):
        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            try:
                result = main([str(a) for a in args])
            except BaseException as exc:  # noqa: BLE001 - a process would die with a traceback
                result = exc
        return result, err.getvalue()

    seen = {}
    with tmpfs(base / "dump", "200k") as mnt:
        (mnt / "keep.txt").write_text("computed earlier\n")
        settings = {**DUMP, "fmap_dtype": "float32"}  # ~1 MB of arrays: cannot fit in 200 kB
        seen["dump"] = run(["dump", "--split", stage1 / "split.npz", "--model",
                            stage1 / "model.pt", "--settings", json.dumps(settings),
                            "--threads", "1", "--device", "cpu", "--out", mnt / "cache.zarr"])
        seen["dump_left"] = sorted(p.name for p in mnt.iterdir())
        seen["dump_keep"] = (mnt / "keep.txt").read_text()
    with tmpfs(base / "split", "64k") as mnt:
        old = mnt / "split.npz"
        shutil.copy(stage1 / "split50.npz", old)
        before = old.read_bytes()
        _fill(mnt, 2048)
        seen["split"] = run(_split_args(old))
        seen["split_kept"] = old.read_bytes() == before
        seen["split_left"] = sorted(p.name for p in mnt.iterdir())
    pages = -(-ckpt.stat().st_size // 4096) + 4  # room for the checkpoint and half another
    with tmpfs(base / "ckpt", f"{(pages + pages // 2) * 4096}") as mnt:
        shutil.copy(ckpt, mnt / "model.pt.ckpt")
        before = (mnt / "model.pt.ckpt").read_bytes()
        seen["ckpt"] = run(["train", "--split", stage1 / "split.npz", "--recipe",
                            json.dumps(RECIPE), "--threads", "1", "--device", "cpu", "--out",
                            mnt / "model.pt"])
        seen["ckpt_kept"] = (mnt / "model.pt.ckpt").read_bytes() == before
        seen["ckpt_left"] = sorted(p.name for p in mnt.iterdir())
    return seen


def _failed(result) -> bool:
    return isinstance(result, BaseException) or result != 0


def _says_disk_full(result, err: str) -> bool:
    return "No space left on device" in err + (str(result) if isinstance(result, BaseException)
                                               else "")


def test_disk_full_dump_leaves_nothing(full_disk):
    result, err = full_disk["dump"]
    assert _failed(result) and _says_disk_full(result, err), (result, err)
    assert full_disk["dump_left"] == ["keep.txt"], "a partial cache or temp folder was left"
    assert full_disk["dump_keep"] == "computed earlier\n"


def test_disk_full_split_keeps_the_existing_file(full_disk):
    result, err = full_disk["split"]
    assert _failed(result) and _says_disk_full(result, err), (result, err)
    assert full_disk["split_kept"], "the existing split.npz was damaged"
    assert full_disk["split_left"] == ["filler.bin", "split.npz"], "a temp file was left"


def test_disk_full_checkpoint_keeps_last_good_one(full_disk):
    """The end-of-epoch-1 checkpoint save runs out of space: the previous one stays intact."""
    result, _ = full_disk["ckpt"]
    assert _failed(result)
    assert full_disk["ckpt_kept"], "the last good checkpoint was damaged"
    assert full_disk["ckpt_left"] == ["model.pt.ckpt"], "a temp file or model.pt was left"


@pytest.mark.parametrize("what", ["dump", "split", "ckpt"])
def test_disk_full_error_is_one_readable_line(full_disk, what):
    result, err = full_disk[what]
    assert result == 2, f"{type(result).__name__}: {result}"
    command = {"ckpt": "train"}.get(what, what)
    assert err.startswith(f"ltpipe {command}: error:") and "No space left on device" in err, err


# ----------------------------------------------------------------------- Snakemake runs
SM_CONFIG = {
    "results": "results",
    "cache": {"backend": "zarr", "compression": "none", "batch_size": 16},
    "datasets": {"digits": {**DS, "imbalance_factors": [10], "split_seeds": [0]}},
    "backbones": {"ce": {**RECIPE, "seeds": [0]}},
    "classifiers": {
        "joint": {"method": "joint", "backbones": ["ce"]},
        "ncm": {"method": "ncm", "backbones": ["ce"]},
        "tau_norm": {"method": "tau_norm", "backbones": ["ce"], "settings": {"tau": [0.0, 1.0]}},
    },
}
N_CLASSIFY = 4
TARGET = "results/summary.csv"  # the figures of `rule all` are not what these tests are about


def _snakemake_cmd(work: Path, *args: str) -> list[str]:
    return [PY, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
            "--configfile", str(work / "config.yaml"), *args]


def _snakemake(work: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(_snakemake_cmd(work, *args), capture_output=True, text=True,
                          env=env or _env(), timeout=900)
    assert proc.returncode == 0, f"snakemake {args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _wait_group_gone(pgid: int, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def sm_run(tmp_path_factory, hook_dir, stage1) -> dict:
    """A Snakemake run SIGKILLed (whole process group) during the dump, then completed.

    Stage one is the reference backbone copied in (split and model: Snakemake builds on them as
    if it had made them), so the run starts at the dump.
    """
    work = tmp_path_factory.mktemp("sm")
    (work / "config.yaml").write_text(yaml.safe_dump(SM_CONFIG))
    split_dir = work / "results" / "digits" / "if10" / "s0"
    run_dir = split_dir / "ce" / "t0"
    run_dir.mkdir(parents=True)
    for name in ("split.npz", "split.json"):
        shutil.copy(stage1 / name, split_dir / name)
    shutil.copy(stage1 / "model.pt", run_dir / "model.pt")
    mark, release = work / "mark", work / "release"
    env = _env(hook_dir, RELTEST_DUMP_PAUSE_AFTER="3", RELTEST_MARK=str(mark),
               RELTEST_RELEASE=str(release))
    proc = subprocess.Popen(_snakemake_cmd(work, "--cores", "2", TARGET), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    _wait_for(mark, proc, timeout=400)
    seen = {"tmp_at_kill": sorted(p.name for p in run_dir.glob(".cache.zarr.tmp-*"))}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    seen["group_gone"] = _wait_group_gone(proc.pid)
    seen["cache_at_kill"] = (run_dir / "cache.zarr").exists()
    seen["locked"] = subprocess.run(_snakemake_cmd(work, "--cores", "1", TARGET),
                                    capture_output=True, text=True, env=_env(), timeout=300)
    _snakemake(work, "--unlock")
    seen["dry"] = _snakemake(work, "-n", "--rerun-incomplete", TARGET)
    seen["rerun"] = _snakemake(work, "--cores", "2", "--rerun-incomplete", TARGET)
    seen["work"], seen["run_dir"] = work, run_dir
    return seen


def test_snakemake_killed_during_dump_then_rerun_incomplete(sm_run):
    from ltpipe.cache import verify_cache

    assert sm_run["tmp_at_kill"] and sm_run["group_gone"] and not sm_run["cache_at_kill"]
    locked = sm_run["locked"]  # observed: a SIGKILLed Snakemake leaves its lock: --unlock first
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    jobs = planned_jobs(sm_run["dry"])
    assert jobs == {"dump": 1, "classify": N_CLASSIFY, "summary": 1}  # no split, no training
    assert verify_cache(sm_run["run_dir"] / "cache.zarr") == []
    with open(sm_run["work"] / "results" / "summary.csv") as fh:
        assert len(list(csv.DictReader(fh))) == N_CLASSIFY
    # the rerun's dump removed the killed dump's temp folder (it was never at the final path)
    assert list(sm_run["run_dir"].glob(".cache.zarr.tmp-*")) == []


def test_snakemake_interrupted_during_classify(sm_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(sm_run["work"], work, symlinks=True)
    results = work / "results"
    reference = (results / "summary.csv").read_bytes()
    shutil.rmtree(results / "digits" / "if10" / "s0" / "cls")
    (results / "summary.csv").unlink()
    logs = results / "logs" / "classify"
    shutil.rmtree(logs, ignore_errors=True)
    proc = subprocess.Popen(_snakemake_cmd(work, "--cores", "2", TARGET),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), start_new_session=True)
    deadline = time.time() + 300
    while len(list(logs.glob("*.log"))) < 2:  # two classify jobs have started
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert _wait_group_gone(proc.pid), "classify jobs outlived the interrupted snakemake"
    done = sorted(results.glob("digits/if10/s0/cls/*/t0/*/metrics.json"))
    assert len(done) < N_CLASSIFY, "the interrupt came too late to test anything"
    stamps = {p: p.stat().st_mtime_ns for p in done}
    proc = subprocess.run(_snakemake_cmd(work, "-n", "--rerun-incomplete", TARGET),
                          capture_output=True, text=True, env=_env(), timeout=300)
    jobs = planned_jobs(proc)
    assert jobs == {"classify": N_CLASSIFY - len(done), "summary": 1}, jobs  # nothing else
    _snakemake(work, "--cores", "2", "--rerun-incomplete", TARGET)
    assert {p: p.stat().st_mtime_ns for p in done} == stamps, "finished jobs were rerun"
    assert (results / "summary.csv").read_bytes() == reference
