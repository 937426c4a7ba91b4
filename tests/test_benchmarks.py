"""The benchmark scripts' command lines (not their figures): small, quick runs."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cache_io_creates_a_missing_dir_and_refuses_a_file(tmp_path, capsys):
    cache_io = _load("cache_io")
    target = tmp_path / "not" / "yet"
    cache_io.main(["--rows", "64", "--repeat", "1", "--formats", "zarr", "--no-memory",
                   "--dir", str(target), "--json", str(tmp_path / "out.json")])
    assert target.is_dir() and list(target.iterdir()) == []  # its work directory was removed
    assert (tmp_path / "out.json").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        cache_io.main(["--dir", str(tmp_path / "file")])
    assert exc.value.code == 2
    assert "--dir " + str(tmp_path / "file") + ": exists and is not a directory" \
        in capsys.readouterr().err


@pytest.mark.slow  # 39 s in the fast-tier run of docs/testing.md
def test_stage2_scale_memory_prints_request_and_peak(tmp_path, capsys):
    """A tiny ImageNet-shaped run (0.5% of the samples): each method's row names its request,
    its measured peak RSS and whether it fits; --clean removes the work directory."""
    stage2_scale = _load("stage2_scale")
    work = tmp_path / "work"
    stage2_scale.main(["memory", "--work", str(work), "--scale", "0.005", "--methods", "joint",
                       "fsa", "--clean"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| fsa |")
            or line.startswith("| joint |")]
    assert len(rows) == 2, out
    assert "EXCEEDS" not in out and out.count(" fits ") == 2, out
    assert not work.exists()


def test_planning_grid_configs_and_bare_snakefile(tmp_path):
    """benchmarks/planning.py's inputs, without running Snakemake: a grid point gives the
    preset's first imbalance factors and that many training seeds on every backbone; the bare
    Snakefile asks for exactly the given number of jobs; bad arguments are refused by name."""
    planning = _load("planning")
    cfg = yaml.safe_load(planning.ltpipe_config(ROOT, 2, 3, tmp_path).read_text())
    preset = yaml.safe_load((ROOT / planning.PRESET).read_text())
    (ds_name,) = cfg["datasets"]
    assert cfg["datasets"][ds_name]["imbalance_factors"] == \
        preset["datasets"][ds_name]["imbalance_factors"][:2]
    assert cfg["datasets"][ds_name]["root"] == str(tmp_path / "data")
    assert {tuple(r["seeds"]) for r in cfg["backbones"].values()} == {(0, 1, 2)}
    text = planning.bare_snakefile(5, tmp_path).read_text()
    assert "i=range(4)" in text  # 4 touch jobs + all = 5
    assert planning.grid_point("5x8") == (5, 8)
    with pytest.raises(argparse.ArgumentTypeError, match="'5': expected IFSxSEEDS"):
        planning.grid_point("5")
    with pytest.raises(SystemExit, match="'no-such-rev' is neither a directory nor a git"):
        planning.checkout("no-such-rev", tmp_path)
