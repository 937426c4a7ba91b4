"""ltpipe.provenance: the code version (git commit and dirty flag, or a package hash) and the
library versions that artifacts record. What the artifacts hold is tested in test_cache_dump.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ltpipe
from ltpipe.provenance import (
    code_label,
    code_version,
    git_state,
    host_label,
    library_versions,
    package_sha256,
)

PKG = Path(ltpipe.__file__).resolve().parent
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True).stdout


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_code_version_is_the_checkouts_commit():
    """In a git checkout: the commit `git rev-parse HEAD` gives, dirty as `git status` says."""
    try:
        head = git(PKG, "rev-parse", "HEAD").strip()
    except subprocess.CalledProcessError:
        pytest.skip(f"{PKG} is not in a git checkout")
    dirty = bool(git(PKG, "status", "--porcelain", "--", ".").strip())
    code = code_version()
    assert code["git_commit"] == head and code["git_dirty"] is dirty
    assert code["ltpipe"] == ltpipe.__version__ and len(code["package_sha256"]) == 64
    assert code_label(code) == f"{ltpipe.__version__}+g{head[:12]}" + ("-dirty" if dirty else "")


@needs_git
def test_git_state_dirty_flag(tmp_path):
    """Modified, staged and untracked files make the package dirty; ignored ones and changes
    outside the package do not; a package that git does not track has no git state."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("*.pyc\n")
    (tmp_path / "other.txt").write_text("a\n")
    git(tmp_path, "init", "-q")
    assert git_state(pkg) is None  # nothing committed yet
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    head = git(tmp_path, "rev-parse", "HEAD").strip()
    assert git_state(pkg) == {"git_commit": head, "git_dirty": False}
    (pkg / "mod.pyc").write_bytes(b"ignored")
    (tmp_path / "other.txt").write_text("b\n")
    assert git_state(pkg) == {"git_commit": head, "git_dirty": False}
    (pkg / "new.py").write_text("")
    assert git_state(pkg)["git_dirty"] is True
    (pkg / "new.py").unlink()
    (pkg / "__init__.py").write_text("x = 2\n")
    assert git_state(pkg)["git_dirty"] is True
    untracked = tmp_path / "copy"
    shutil.copytree(pkg, untracked)
    assert git_state(untracked) is None  # inside the repository, but not tracked


def test_package_hash_follows_the_code_not_the_place(tmp_path):
    """A copy elsewhere (no git) hashes the same; an edit or a new module changes the hash;
    compiled files do not count."""
    copy = tmp_path / "ltpipe"
    shutil.copytree(PKG, copy)
    assert git_state(copy) is None
    assert package_sha256(copy) == package_sha256(PKG)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "stray.py").write_text("x = 1\n")
    assert package_sha256(copy) == package_sha256(PKG)
    (copy / "extra.py").write_text("")
    assert package_sha256(copy) != package_sha256(PKG)
    (copy / "extra.py").unlink()
    (copy / "utils.py").write_text((copy / "utils.py").read_text() + "\n")
    assert package_sha256(copy) != package_sha256(PKG)


def test_labels_and_versions():
    assert code_label({"ltpipe": "0.1.0", "package_sha256": "ab" * 32}) == "0.1.0+pabababababab"
    assert code_label(None) == ""
    versions = library_versions()
    assert versions["ltpipe"] == ltpipe.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"numpy", "torch", "zarr"} <= set(versions)
    versions["numpy"] = "changed"  # callers get their own copy of the cached record
    assert library_versions()["numpy"] != "changed"


def test_cheap_and_no_torch():
    """Both records come without importing torch (a fresh interpreter)."""
    code = ("import sys; from ltpipe import provenance as p; "
            "p.code_version(); p.library_versions(); p.host_info(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=PKG.parent)
    assert proc.returncode == 0, proc.stderr  # (no time limit: shared machines are noisy)


HOST_CODE = ("import json, sys; from ltpipe.provenance import host_info; "
             "torch = sys.argv[1] == 'torch' and __import__('torch'); "
             "print(json.dumps(host_info('cpu')))")


def host_in_subprocess(*args: str, **env: str) -> dict:
    import json
    import os

    proc = subprocess.run([sys.executable, "-c", HOST_CODE, *args], capture_output=True,
                          text=True, timeout=120, cwd=PKG.parent, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_host_names_the_machine_and_torchs_kernels():
    """Without torch: the processor alone; with it: torch's CPU capability, threads and the
    determinism flag. ATEN_CPU_CAPABILITY (another kind of machine, emulated) changes the label."""
    bare = host_in_subprocess("no-torch")
    assert "torch_cpu_capability" not in bare and bare["cpu"]["name"]
    assert bare["cpus"] >= 1 and bare["machine"]
    full = host_in_subprocess("torch")
    assert full["torch_cpu_capability"] and full["torch_threads"] >= 1
    assert full["deterministic"] is False and "gpu" not in full  # a CPU device
    emulated = host_in_subprocess("torch", ATEN_CPU_CAPABILITY="default")
    assert emulated["torch_cpu_capability"] == "DEFAULT"
    assert emulated["env"] == {"ATEN_CPU_CAPABILITY": "default"} or \
        emulated["env"]["ATEN_CPU_CAPABILITY"] == "default"
    if full["torch_cpu_capability"] != "DEFAULT":
        assert host_label(full) != host_label(emulated)


def test_host_label_by_hand():
    cpu = {"name": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "id": "6/106/6"}
    assert host_label({"cpu": cpu, "torch_cpu_capability": "AVX512"}) == \
        "Intel Xeon Platinum 8375C @ 2.90GHz 6/106/6/avx512"
    assert host_label({"cpu": {"name": "AMD EPYC 7B13 64-Core Processor"}}) == \
        "AMD EPYC 7B13 64-Core"
    gpu = {"name": "NVIDIA H100 80GB HBM3", "cuda": "13.0"}
    assert host_label({"cpu": cpu, "gpu": gpu}) == "NVIDIA H100 80GB HBM3/cuda13.0"
    assert host_label(None) == "" and host_label({}) == ""
