"""The set-up README.md promises: its two commands, .ci/run and .ci/setup agree on the virtual
environment, .ci/setup refuses what it cannot use, and the workflow's jobs run with the Python
that runs Snakemake (no activated venv, no ``python`` on PATH)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / ".ci" / "setup"


def readme_commands() -> list[str]:
    """The commands of README's Quick start block (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_ci_and_setup_agree():
    run_cmd, test_cmd = readme_commands()
    venv = re.search(r"^VENV=(\S+)$", SETUP.read_text(), re.M).group(1)
    assert run_cmd == f"bash .ci/setup && {venv}/bin/python -m snakemake --cores 2"
    assert test_cmd == f"bash .ci/setup --test && {venv}/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    # .ci/run runs README's test command verbatim (then the linters, with the venv's tools)
    assert any(ln == test_cmd or ln.startswith(test_cmd + " ||") for ln in ci), ci
    assert f"{venv}/bin/python -m ruff check ." in "\n".join(ci)
    assert f"{venv}/bin/python -m snakemake --lint" in "\n".join(ci)
    assert f"/{venv}/" in (ROOT / ".gitignore").read_text().splitlines()


def run_setup(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """.ci/setup from a copy in an empty tree (it must stop before touching any venv)."""
    (tmp_path / ".ci").mkdir(exist_ok=True)
    shutil.copy(SETUP, tmp_path / ".ci" / "setup")
    return subprocess.run(["bash", str(tmp_path / ".ci" / "setup"), *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_setup_refuses_bad_arguments_and_pythons(tmp_path):
    proc = run_setup(tmp_path, "--tests")
    assert proc.returncode == 2 and "unknown argument '--tests'" in proc.stderr
    proc = run_setup(tmp_path, PYTHON=str(tmp_path / "no-python3"))
    assert proc.returncode == 1
    assert f"no Python '{tmp_path / 'no-python3'}'" in proc.stderr and "PYTHON=" in proc.stderr
    old = tmp_path / "python3.10"  # answers the version questions like a Python 3.10
    old.write_text('#!/bin/sh\ncase "$2" in *version_info*) exit 1;; *) echo 3.10.12;; esac\n')
    old.chmod(0o755)
    proc = run_setup(tmp_path, PYTHON=str(old))
    assert proc.returncode == 1 and "is Python 3.10.12; ltpipe needs 3.11+" in proc.stderr
    assert not (tmp_path / ".venv").exists()


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
def test_jobs_use_the_python_that_runs_snakemake(tmp_path):
    """Snakemake started by absolute path with a PATH that has no `python` at all: the split
    jobs (`python -m ltpipe split ...`) still run, with this interpreter."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    path = os.pathsep.join(d for d in ("/usr/bin", "/bin")
                           if not (Path(d) / "python").exists())
    env = {**os.environ, "PATH": path,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                           "-d", str(tmp_path), "--cores", "1", "--until", "split"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    splits = sorted(tmp_path.glob("results/*/if*/s*/split.npz"))
    assert len(splits) == sum(len(d["imbalance_factors"]) * len(d.get("split_seeds", [0]))
                              for d in cfg["datasets"].values())
