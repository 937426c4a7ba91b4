"""Reliability under faults: killed and interrupted jobs, corrupt caches, full disks, NaN, races.

Every scenario runs the real ``python -m ltpipe ...`` command (or the real Snakemake) in a
subprocess and delivers real signals from outside. To kill a job at an exact point, a
``sitecustomize`` module written into a temporary folder on the subprocess's PYTHONPATH wraps one
ltpipe function and, when an environment variable asks for it, writes a marker file and waits: the
test sees the marker and sends the signal. Nothing in ltpipe is changed; the hook is inert unless
its variable is set. RELIABILITY.md at the repository root summarises what these tests saw.
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
PY = sys.executable
# 8x8 digits, 585 training images, batch 32 -> 18 steps per epoch; 3 epochs = 54 steps.
RECIPE = {"backbone": "resnet8", "backbone_kwargs": {"widths": [8, 8, 16]}, "epochs": 3,
          "batch_size": 32, "lr": 0.1, "warmup_epochs": 1, "augment": "crop",
          "final_eval": False}
SPE = 18
DS = {"source": "digits", "shot_thresholds": {"many": 50, "few": 20}, "test_per_class": 30}
DUMP = {"backend": "zarr", "compression": "none", "fmap_dtype": "float16", "batch_size": 64,
        "augmented_views": 0}

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
    from ltpipe.cache.dump import dump_cache

    out = {}
    for backend, ext in (("zarr", "zarr"), ("hdf5", "h5")):
        out[backend] = stage1 / f"cache.{ext}"
        dump_cache(stage1 / "split.npz", stage1 / "model.pt", out[backend],
                   {**DUMP, "backend": backend}, log=lambda *_: None)
    return out


# ----------------------------------------------------------------- stage one: kill + resume
def _train_cmd(split: Path, out: Path) -> list[str]:
    return [PY, "-m", "ltpipe", "train", "--split", str(split), "--recipe", json.dumps(RECIPE),
            "--seed", "0", "--threads", "1", "--device", "cpu", "--out", str(out)]


def _train_segment(hook_dir: Path, split: Path, out: Path, pause: int | None,
                   sig: signal.Signals) -> tuple[int, str]:
    """Run ``ltpipe train``; if ``pause`` is set, deliver ``sig`` at that global step."""
    mark, release = out.parent / "mark", out.parent / "release"
    for p in (mark, release):
        p.unlink(missing_ok=True)
    env = _env(hook_dir, RELTEST_PAUSE_AT=str(pause or ""), RELTEST_MARK=str(mark),
               RELTEST_RELEASE=str(release))
    proc = subprocess.Popen(_train_cmd(split, out), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    if pause is not None:
        _wait_for(mark, proc)
        os.kill(proc.pid, sig)
        release.touch()
    text, _ = proc.communicate(timeout=300)
    return proc.returncode, text


# (signal, [global steps at which to deliver it, in order]); the run then resumes to the end.
# SIGTERM: early (epoch 0), mid-epoch (epoch 1, step 4), just after the epoch-2 checkpoint.
# SIGKILL: before any checkpoint, between checkpoints, just after a checkpoint.
KILLS = [(signal.SIGTERM, [2, SPE + 4, 2 * SPE + 1]),
         (signal.SIGKILL, [5, SPE + 12, 2 * SPE + 1])]


@pytest.mark.parametrize("sig,points", KILLS, ids=["sigterm", "sigkill"])
def test_train_killed_resumes_to_identical_weights(stage1, hook_dir, tmp_path, sig, points):
    out = tmp_path / "model.pt"
    ckpt = tmp_path / "model.pt.ckpt"
    expect_resume = None  # (epoch, step) the next segment must announce, None = fresh start
    for k in points:
        rc, text = _train_segment(hook_dir, stage1 / "split.npz", out, k, sig)
        if expect_resume is None:
            assert "resuming" not in text, text
        else:
            assert f"resuming model.pt at epoch {expect_resume[0]}, step {expect_resume[1]}" \
                in text, text
        assert not out.exists(), "the final weights must not appear before training ends"
        if sig == signal.SIGTERM:
            assert rc == 75, text  # EX_TEMPFAIL: checkpoint saved, rerun to resume
            assert "interrupted at epoch" in text
            where = (k // SPE, k % SPE)  # the step boundary after the signal
        else:
            assert rc == -signal.SIGKILL
            where = (k // SPE, 0) if k >= SPE else None  # last end-of-epoch checkpoint
        if where is None:
            assert not ckpt.exists()
        else:
            saved = torch.load(ckpt, weights_only=True)
            assert (saved["epoch"], saved["step_in_epoch"]) == where
        assert not list(tmp_path.glob(".model.pt*tmp-*")), "a temp file was left behind"
        expect_resume = where
    rc, text = _train_segment(hook_dir, stage1 / "split.npz", out, None, sig)
    assert rc == 0, text
    assert f"resuming model.pt at epoch {expect_resume[0]}, step {expect_resume[1]}" in text
    assert not ckpt.exists()
    assert _same_weights(out, stage1 / "model.pt"), "resumed weights differ from the reference"
    meta = torch.load(out, map_location="cpu", weights_only=False)
    assert meta["metrics"]["steps"] == 3 * SPE


def test_train_non_finite_loss_cli(stage1, hook_dir, tmp_path):
    """NaN at epoch 1 step 2: exit 2, one readable line, the end-of-epoch-0 checkpoint kept."""
    out = tmp_path / "model.pt"
    env = _env(hook_dir, RELTEST_NAN_AT=str(SPE + 2))
    proc = subprocess.run(_train_cmd(stage1 / "split.npz", out), capture_output=True, text=True,
                          env=env, timeout=300)
    last = assert_readable_error(proc)
    assert proc.returncode == 2
    assert last.startswith("ltpipe train: error: non-finite training loss nan at epoch 1, step 2")
    assert "checkpoint is kept" in last
    saved = torch.load(tmp_path / "model.pt.ckpt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 0) and not out.exists()


# ---------------------------------------------------------------------- dump killed part-way
def test_dump_killed_leaves_nothing_and_reruns(stage1, hook_dir, tmp_path):
    from ltpipe.cache import open_cache, verify_cache
    from ltpipe.cache.store import CacheError

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
    assert len(tmps) == 1 and any(tmps[0].rglob("c/*")), "the dump had not started writing"
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
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert verify_cache(out) == []
    leftovers = list(tmp_path.glob(".cache.zarr.tmp-*"))
    assert leftovers == tmps  # observed: the killed dump's temp folder is never removed


# ------------------------------------------------------------------- corrupted cache on disk
def _corrupt(cache: Path, backend: str) -> None:
    if backend == "zarr":
        shard = cache / "train" / "pooled" / "c" / "0" / "0"
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


@pytest.mark.xfail(strict=True, reason="classify does not re-check chunk checksums on read: a "
                   "corrupted cache gives metrics silently (fix: verify the read chunks in "
                   "ltpipe/classifiers/inputs.py _read_split / CacheReader.read)")
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


# ------------------------------------------------------------- cache of another split/backbone
def test_classify_refuses_cache_of_other_split_or_backbone(stage1, caches, tmp_path):
    proc = ltpipe(*_classify_args(stage1, caches["zarr"], tmp_path / "a", split="split50.npz"))
    last = assert_readable_error(proc, "split_fingerprint", "rerun the cache dump")
    assert last.startswith("ltpipe classify: error:") and proc.returncode == 2
    other = tmp_path / "other.pt"
    other.write_bytes((stage1 / "model.pt").read_bytes() + b"\0")
    proc = ltpipe(*_classify_args(stage1, caches["hdf5"], tmp_path / "b", model=other))
    last = assert_readable_error(proc, "backbone_sha256")
    assert last.startswith("ltpipe classify: error:")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    assert not (tmp_path / "b" / "metrics.json").exists()


# --------------------------------------------------------- many classify jobs on one cache
JOBS = [("ncm", {}), ("tau_norm", {"tau": 1.0}), ("crt", {"epochs": 2})]


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
    for backend, cache in caches.items():  # all six at once, two backends, one cache each
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


def test_disk_full_dump_leaves_nothing(stage1, tmp_path):
    with tmpfs(tmp_path / "mnt", "200k") as mnt:
        keep = mnt / "keep.txt"
        keep.write_text("computed earlier\n")
        out = mnt / "cache.zarr"
        settings = {**DUMP, "fmap_dtype": "float32"}  # ~1 MB of arrays: cannot fit in 200 kB
        proc = ltpipe("dump", "--split", stage1 / "split.npz", "--model", stage1 / "model.pt",
                      "--settings", json.dumps(settings), "--threads", "1", "--device", "cpu",
                      "--out", out)
        assert proc.returncode != 0
        assert "No space left on device" in proc.stderr, proc.stderr[-2000:]
        assert not out.exists() and not list(mnt.glob(".cache.zarr.tmp-*"))
        assert keep.read_text() == "computed earlier\n"
        assert sorted(p.name for p in mnt.iterdir()) == ["keep.txt"]


@pytest.mark.xfail(strict=True, reason="an OSError (ENOSPC) escapes ltpipe.cli.main as a "
                   "traceback; fix: catch OSError in main() and print one line")
def test_disk_full_error_is_one_readable_line(stage1, tmp_path):
    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        _fill(mnt, 2048)
        proc = ltpipe("split", "--dataset", "digits", "--settings", json.dumps(DS),
                      "--imbalance-factor", "10", "--seed", "0", "--out", mnt / "split.npz")
        last = assert_readable_error(proc, "No space left on device")
        assert last.startswith("ltpipe split: error:") and "split.npz" in last


def test_disk_full_split_keeps_the_existing_file(stage1, tmp_path):
    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        old = mnt / "split.npz"
        shutil.copy(stage1 / "split50.npz", old)
        before = old.read_bytes()
        _fill(mnt, 2048)
        proc = ltpipe("split", "--dataset", "digits", "--settings", json.dumps(DS),
                      "--imbalance-factor", "10", "--seed", "0", "--out", old)
        assert proc.returncode != 0 and "No space left on device" in proc.stderr
        assert old.read_bytes() == before, "the existing split was damaged"
        assert not list(mnt.glob(".split*tmp-*"))


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


@contextlib.contextmanager
def _ckpt_on_small_tmpfs(ckpt: Path, tmp_path: Path):
    """A tmpfs holding ``ckpt`` as model.pt.ckpt, with room for about half another copy."""
    pages = -(-ckpt.stat().st_size // 4096) + 4
    with tmpfs(tmp_path / "mnt", f"{(pages + pages // 2) * 4096}") as mnt:
        shutil.copy(ckpt, mnt / "model.pt.ckpt")
        yield mnt


def test_disk_full_checkpoint_keeps_last_good_one(stage1, hook_dir, ckpt_1_2, tmp_path):
    """The end-of-epoch-1 checkpoint save runs out of space: the previous one stays intact."""
    with _ckpt_on_small_tmpfs(ckpt_1_2, tmp_path) as mnt:
        before = (mnt / "model.pt.ckpt").read_bytes()
        rc, text = _train_segment(hook_dir, stage1 / "split.npz", mnt / "model.pt", None,
                                  signal.SIGTERM)
        assert rc not in (0, 75) and "resuming model.pt at epoch 1, step 2" in text, text
        assert (mnt / "model.pt.ckpt").read_bytes() == before, "the last checkpoint was damaged"
        assert sorted(p.name for p in mnt.iterdir()) == ["model.pt.ckpt"], "temp file left"


@pytest.mark.xfail(strict=True, reason="torch.save on a full disk raises RuntimeError "
                   "('unexpected pos ...'), which escapes ltpipe.cli.main as a traceback that "
                   "never says the disk is full; fix: ltpipe/train/checkpoint.py save_atomic")
def test_disk_full_checkpoint_error_says_so(stage1, ckpt_1_2, tmp_path, capsys):
    from ltpipe.cli import main

    with _ckpt_on_small_tmpfs(ckpt_1_2, tmp_path) as mnt:
        try:
            rc = main(["train", "--split", str(stage1 / "split.npz"), "--recipe",
                       json.dumps(RECIPE), "--threads", "1", "--device", "cpu", "--out",
                       str(mnt / "model.pt")])
        except BaseException as err:  # noqa: BLE001 - the CLI must not raise: record it
            pytest.fail(f"ltpipe train raised {type(err).__name__}: {err}")
        err = capsys.readouterr().err
        assert rc == 2 and "No space left on device" in err and "model.pt" in err


# ----------------------------------------------------------------------- Snakemake runs
SM_CONFIG = {
    "results": "results",
    "cache": {"backend": "zarr", "compression": "none", "batch_size": 16},
    "datasets": {"digits": {**DS, "imbalance_factors": [10], "split_seeds": [0]}},
    "backbones": {"ce": {**RECIPE, "epochs": 2, "seeds": [0]}},
    "classifiers": {
        "joint": {"method": "joint", "backbones": ["ce"]},
        "ncm": {"method": "ncm", "backbones": ["ce"]},
        "crt": {"method": "crt", "backbones": ["ce"], "settings": {"epochs": 2}},
        "tau_norm": {"method": "tau_norm", "backbones": ["ce"], "settings": {"tau": [0.0, 1.0]}},
        "logit_adjust": {"method": "logit_adjust", "backbones": ["ce"]},
    },
}
N_CLASSIFY = 6


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
def sm_run(tmp_path_factory, hook_dir) -> dict:
    """A Snakemake run SIGKILLed (whole process group) during the dump, then completed."""
    work = tmp_path_factory.mktemp("sm")
    (work / "config.yaml").write_text(yaml.safe_dump(SM_CONFIG))
    mark, release = work / "mark", work / "release"
    env = _env(hook_dir, RELTEST_DUMP_PAUSE_AFTER="3", RELTEST_MARK=str(mark),
               RELTEST_RELEASE=str(release))
    proc = subprocess.Popen(_snakemake_cmd(work, "--cores", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    _wait_for(mark, proc, timeout=400)
    run_dir = work / "results" / "digits" / "if10" / "s0" / "ce" / "t0"
    seen = {"tmp_at_kill": sorted(p.name for p in run_dir.glob(".cache.zarr.tmp-*"))}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    seen["group_gone"] = _wait_group_gone(proc.pid)
    seen["cache_at_kill"] = (run_dir / "cache.zarr").exists()
    seen["model_at_kill"] = (run_dir / "model.pt").exists()
    _snakemake(work, "--unlock")
    seen["dry"] = _snakemake(work, "-n", "--rerun-incomplete")
    seen["rerun"] = _snakemake(work, "--cores", "2", "--rerun-incomplete")
    seen["work"], seen["run_dir"] = work, run_dir
    return seen


def test_snakemake_killed_during_dump_then_rerun_incomplete(sm_run):
    from ltpipe.cache import verify_cache

    assert sm_run["tmp_at_kill"] and sm_run["group_gone"]
    assert sm_run["model_at_kill"] and not sm_run["cache_at_kill"]
    jobs = planned_jobs(sm_run["dry"])
    assert jobs == {"dump": 1, "classify": N_CLASSIFY, "summary": 1, "all": 1}  # no retraining
    assert verify_cache(sm_run["run_dir"] / "cache.zarr") == []
    with open(sm_run["work"] / "results" / "summary.csv") as fh:
        assert len(list(csv.DictReader(fh))) == N_CLASSIFY
    # observed: the killed dump's temp folder stays behind (not at the final path)
    assert sorted(p.name for p in sm_run["run_dir"].glob(".cache.zarr.tmp-*")) \
        == sm_run["tmp_at_kill"]


def test_snakemake_interrupted_during_classify(sm_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(sm_run["work"], work, symlinks=True)
    results = work / "results"
    reference = (results / "summary.csv").read_bytes()
    shutil.rmtree(results / "digits" / "if10" / "s0" / "cls")
    (results / "summary.csv").unlink()
    logs = results / "logs" / "classify"
    shutil.rmtree(logs, ignore_errors=True)
    proc = subprocess.Popen(_snakemake_cmd(work, "--cores", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)
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
    proc = subprocess.run(_snakemake_cmd(work, "-n", "--rerun-incomplete"), capture_output=True,
                          text=True, env=_env(), timeout=300)
    jobs = planned_jobs(proc)
    assert set(jobs) <= {"classify", "summary", "all"}, jobs  # no split/train/dump again
    assert jobs.get("classify", 0) == N_CLASSIFY - len(done)
    _snakemake(work, "--cores", "2", "--rerun-incomplete")
    assert {p: p.stat().st_mtime_ns for p in done} == stamps, "finished jobs were rerun"
    assert (results / "summary.csv").read_bytes() == reference
