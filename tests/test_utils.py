"""Atomic writes and the removal of temporaries that killed processes left behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ltpipe.utils import _host, atomic_path, remove_stale_tmps, stale_tmps, tmp_sibling


@pytest.fixture(scope="module")
def dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(proc.stdout)
    try:  # the pid of a process that has exited (reuse within the test is unlikely)
        os.kill(pid, 0)
        pytest.skip(f"pid {pid} was reused already")
    except ProcessLookupError:
        pass
    return pid


def test_tmp_sibling_names_host_and_process(tmp_path):
    tmp = tmp_sibling(tmp_path / "cache.zarr")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(f".cache.zarr.tmp-{_host()}-{os.getpid()}-")


def test_only_this_hosts_temporaries_of_dead_processes_are_stale(tmp_path, dead_pid):
    host = _host()
    dead_dir = tmp_path / f".cache.zarr.tmp-{host}-{dead_pid}-0000abcd"
    (dead_dir / "train").mkdir(parents=True)
    (dead_dir / "train" / "chunk").write_bytes(b"x" * 100)
    dead_file = tmp_path / f".model.pt.tmp-{host}-{dead_pid}-00000001"
    dead_file.write_bytes(b"partial")
    keep = [
        tmp_path / f".cache.zarr.tmp-{host}-{os.getpid()}-00000002",  # this process: writing
        tmp_path / f".cache.zarr.tmp-{host}-{os.getppid()}-00000003",  # a running process
        tmp_path / f".cache.zarr.tmp-otherhost-{dead_pid}-00000004",  # another host's
        tmp_path / f".cache.zarr.tmp-{dead_pid}-00000005",  # an older name without the host
        tmp_path / f".cache.zarr.old.tmp-{host}-{dead_pid}-00000006",  # another output's
        tmp_path / "cache.zarr",  # the output itself
    ]
    for path in keep:
        path.mkdir()
    assert stale_tmps(tmp_path / "cache.zarr") == [dead_dir]
    assert stale_tmps(tmp_path / "model.pt") == [dead_file]
    assert remove_stale_tmps(tmp_path / "cache.zarr") == [dead_dir]
    assert not dead_dir.exists() and dead_file.exists()
    assert all(path.exists() for path in keep)
    assert stale_tmps(tmp_path / "missing_dir" / "x") == []


def test_atomic_write_clears_a_dead_writers_temporary(tmp_path, dead_pid, caplog):
    out = tmp_path / "metrics.json"
    left = tmp_path / f".metrics.json.tmp-{_host()}-{dead_pid}-0badf00d"
    left.write_text("{partial")
    with caplog.at_level("WARNING", logger="ltpipe"):
        with atomic_path(out) as tmp:
            tmp.write_text("{}")
    assert out.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert f"removed {left}" in caplog.text and f"process {dead_pid}" in caplog.text
