"""Tests for ltpipe.train.device.lease_device: exclusive GPU slots across processes (simulated)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ltpipe.train.device import lease_device
from ltpipe.utils import LtpipeError

HOLDER = """
import sys, time
from ltpipe.train.device import lease_device
with lease_device(None, timeout=float(sys.argv[1])) as dev:
    print(dev, dev.slot, flush=True)
    sys.stdin.readline()  # hold the lease until the test closes stdin (or kills us)
"""


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LTPIPE_FAKE_GPUS", "2")
    monkeypatch.setenv("LTPIPE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("LTPIPE_LEASED_SLOT", raising=False)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = []

    def spawn(timeout=0.0):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(timeout)], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _slot_of(proc) -> int:
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read()
    assert line[0] == "cpu"
    return int(line[1])


def test_two_processes_never_share_a_slot_and_a_third_fails_clearly(fake_gpus):
    a, b = fake_gpus(), fake_gpus()
    assert {_slot_of(a), _slot_of(b)} == {0, 1}
    start = time.monotonic()
    with pytest.raises(LtpipeError, match="all 2 GPU slot"):
        with lease_device(None, timeout=0.6):
            pass
    assert time.monotonic() - start >= 0.5  # it waited for the timeout before failing


def test_waiting_lease_gets_the_slot_when_a_holder_exits(fake_gpus):
    a, b = fake_gpus(), fake_gpus()
    slots = {_slot_of(a): a, _slot_of(b): b}
    waiter = fake_gpus(timeout=30)
    time.sleep(0.3)
    assert waiter.poll() is None  # still waiting: both slots are held
    slots[1].stdin.close()  # the holder of slot 1 finishes normally
    assert _slot_of(waiter) == 1


def test_killed_holder_releases_its_slot(fake_gpus):
    a = fake_gpus()
    slot = _slot_of(a)
    b = fake_gpus()
    other = _slot_of(b)
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    with lease_device(None, timeout=5) as dev:
        assert dev == "cpu" and dev.slot == slot != other
        assert os.environ["LTPIPE_LEASED_SLOT"] == str(slot)
    assert "LTPIPE_LEASED_SLOT" not in os.environ


def test_explicit_device_and_no_cuda(monkeypatch):
    import torch

    monkeypatch.delenv("LTPIPE_FAKE_GPUS", raising=False)
    with lease_device("cuda:3") as dev:
        assert dev == "cuda:3" and dev.slot is None
    if not torch.cuda.is_available():
        with lease_device(None) as dev:
            assert dev == "cpu" and dev.slot is None


def test_bad_fake_gpu_count(monkeypatch):
    monkeypatch.setenv("LTPIPE_FAKE_GPUS", "two")
    with pytest.raises(LtpipeError, match="positive integer"):
        with lease_device(None):
            pass
