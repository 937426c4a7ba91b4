"""Local multi-GPU runs: `--resources gpu=2` with simulated slots; no two concurrent jobs share one.

Snakemake only counts GPUs; which device a job gets is decided by ltpipe's lease (a file lock
per slot). ``LTPIPE_FAKE_GPUS=2`` makes the lease hand out two simulated slots on CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# Every test here runs Snakemake or trains in a subprocess: the slow tier (docs/testing.md).
pytestmark = pytest.mark.slow
LEASE = re.compile(r"lease: (acquired|released) device=\S+ slot=(\d+) t=([\d.]+)")


def _intervals(log_dir: Path) -> list[tuple[int, float, float, str]]:
    out = []
    for log in sorted(log_dir.rglob("*.log")):
        events = LEASE.findall(log.read_text())
        if not events:
            continue
        acquired = [(int(s), float(t)) for e, s, t in events if e == "acquired"]
        released = [(int(s), float(t)) for e, s, t in events if e == "released"]
        assert len(acquired) == len(released) == 1, f"{log}: {events}"
        assert acquired[0][0] == released[0][0]
        out.append((acquired[0][0], acquired[0][1], released[0][1], log.name))
    return out


def test_concurrent_gpu_jobs_never_share_a_slot(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["datasets"]["digits"]["imbalance_factors"] = [10]
    cfg["backbones"]["ce"].update(epochs=2, warmup_epochs=0, seeds=[0, 1, 2])
    cfg["classifiers"] = {"joint": {"method": "joint", "backbones": ["ce"]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(ROOT), LTPIPE_FAKE_GPUS="2",
               LTPIPE_LOCK_DIR=str(tmp_path / "locks"), LTPIPE_LEASE_TIMEOUT="600")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
         "--cores", "4", "--resources", "gpu=2"],
        capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    intervals = _intervals(tmp_path / "results" / "logs")
    assert len(intervals) == 6  # 3 trainings + 3 dumps, each leased one slot
    assert {slot for slot, *_ in intervals} <= {0, 1}
    for i, (slot_a, start_a, end_a, name_a) in enumerate(intervals):
        for slot_b, start_b, end_b, name_b in intervals[i + 1:]:
            overlap = start_a < end_b and start_b < end_a
            assert not (overlap and slot_a == slot_b), f"{name_a} and {name_b} shared slot {slot_a}"
    # Snakemake never ran more than gpu=2 leased jobs at once
    events = sorted([(s, 1) for _, s, _, _ in intervals] + [(e, -1) for _, _, e, _ in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2
