"""Metrics on hand-made predictions, and the summary tables."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from ltpipe.evaluate import accuracy_report
from ltpipe.report.summary import aggregate, write_summary
from ltpipe.utils import read_json, write_json


def _onehot(pred, c):
    s = np.zeros((len(pred), c))
    s[np.arange(len(pred)), pred] = 1.0
    return s


def test_accuracy_report_known_answer():
    # 4 classes: 0 many, 1 many, 2 medium, 3 few; 2 test samples per class.
    groups = np.array([0, 0, 1, 2])
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([0, 0, 1, 0, 2, 0, 0, 0])  # class 0: 2/2, 1: 1/2, 2: 1/2, 3: 0/2
    r = accuracy_report(_onehot(pred, 4), labels, groups)
    assert r["all"] == pytest.approx(100 * 4 / 8)
    assert r["many"] == pytest.approx(100 * 3 / 4)
    assert r["medium"] == pytest.approx(50.0)
    assert r["few"] == pytest.approx(0.0)
    assert r["per_class"] == [100.0, 50.0, 50.0, 0.0]
    assert r["num_samples"] == 8


def test_accuracy_report_empty_group_and_shape_check():
    r = accuracy_report(_onehot(np.array([0, 1]), 2), np.array([0, 1]), np.array([0, 0]))
    assert r["few"] is None and r["medium"] is None and r["many"] == 100.0
    with pytest.raises(ValueError, match="do not match"):
        accuracy_report(np.zeros((2, 3)), np.array([0, 1]), np.array([0, 0]))


def _metrics(path, seed, all_, point="default", host=None):
    write_json(path, {
        "provenance": {"host": host, "caches": [{"train_host": host}]},
        "dataset": "digits", "imbalance_factor": "10", "split_seed": 0, "seed": seed,
        "backbones": ["ce"], "classifier": "crt", "method": "crt", "point": point,
        "settings": {"epochs": 10},
        "metrics": {"test": {"all": all_, "many": all_ + 1, "medium": all_, "few": None}},
    })
    return str(path)


def test_summary_tables(tmp_path):
    paths = [_metrics(tmp_path / f"m{s}.json", s, v) for s, v in [(0, 80.0), (1, 84.0)]]
    paths.append(_metrics(tmp_path / "m2.json", 0, 70.0, point="x=1"))
    rows = write_summary(paths, tmp_path / "s.csv", tmp_path / "s.md")
    assert len(rows) == 3
    with open(tmp_path / "s.csv") as fh:
        table = list(csv.DictReader(fh))
    assert table[0]["dataset"] == "digits" and table[0]["params"] == "epochs=10"
    assert {r["all"] for r in table} == {"80.0000", "84.0000", "70.0000"}
    agg = {a["point"]: a for a in aggregate(rows)}
    mean, std = agg["default"]["all"]
    assert mean == pytest.approx(82.0) and std == pytest.approx(math.sqrt(8.0))
    assert agg["default"]["runs"] == 2
    md = (tmp_path / "s.md").read_text()
    assert "82.00 ± 2.83" in md and "| 70.00 |" in md
    assert "## Machines" not in md  # one kind of machine (here: none recorded)


def test_summary_names_the_machines_and_warns_when_they_differ(tmp_path):
    xeon = {"cpu": {"name": "Intel(R) Xeon(R) Processor", "id": "6/167/1"},
            "torch_cpu_capability": "AVX512"}
    epyc = {"cpu": {"name": "AMD EPYC 7B13 64-Core Processor", "id": "25/1/1"},
            "torch_cpu_capability": "AVX2"}
    paths = [_metrics(tmp_path / "a.json", 0, 80.0, host=xeon),
             _metrics(tmp_path / "b.json", 1, 84.0, host=epyc)]
    write_summary(paths, tmp_path / "s.csv", tmp_path / "s.md")
    with open(tmp_path / "s.csv") as fh:
        table = {r["seed"]: r for r in csv.DictReader(fh)}
    assert table["0"]["host"] == table["0"]["train_host"] == "Intel Xeon 6/167/1/avx512"
    assert table["1"]["host"] == "AMD EPYC 7B13 64-Core 25/1/1/avx2"
    md = (tmp_path / "s.md").read_text()
    assert "## Machines" in md and "more than one kind of machine" in md
    assert "`Intel Xeon 6/167/1/avx512`: 1 rows" in md


def test_sweep_point_chosen_on_validation_only(tmp_path):
    def job(name, point, val, test):
        path = tmp_path / f"{name}.json"
        metrics = {"test": {"all": test, "many": test, "medium": test, "few": test}}
        if val is not None:
            metrics["val"] = {"all": val}
        write_json(path, {"dataset": "imagenet_lt", "imbalance_factor": "native",
                          "split_seed": 0, "seed": 0, "backbones": ["r50"],
                          "classifier": "tau", "method": "tau_norm", "point": point,
                          "settings": {}, "metrics": metrics})
        return str(path)

    # the best test point (tau=2.0) is not the best validation point (tau=1.0)
    paths = [job("a", "tau=0.0", 40.0, 41.0), job("b", "tau=1.0", 48.0, 47.0),
             job("c", "tau=2.0", 45.0, 49.0)]
    rows = write_summary(paths, tmp_path / "s.csv", tmp_path / "s.md")
    assert {r["point"]: r["chosen_on_val"] for r in rows} == {
        "tau=0.0": "no", "tau=1.0": "yes", "tau=2.0": "no"}
    md = (tmp_path / "s.md").read_text()
    assert "| imagenet_lt | native | 0 | r50 | tau | tau=1.0 | 48.00 | 47.00 |" in md
    # the methods table takes each run's chosen point: here one run, tau=1.0
    assert "| imagenet_lt | native | r50 | tau | tau=1.0 | 1 | 47.00 |" in md
    # over seeds: seed 1 chooses tau=2.0 (test 51); the row is the mean of 47 and 51
    paths += [job("f", "tau=0.0", 40.0, 41.0), job("g", "tau=2.0", 49.0, 51.0)]
    for p, seed in zip(paths[3:], (1, 1)):
        m = read_json(p)
        m["seed"] = seed
        write_json(p, m)
    write_summary(paths, tmp_path / "u.csv", tmp_path / "u.md")
    assert "| imagenet_lt | native | r50 | tau | tau=1.0, tau=2.0 | 2 | 49.00 ± 2.83 |" in (
        tmp_path / "u.md").read_text()
    # without validation scores nothing is chosen, and the table says so
    paths = [job("d", "tau=0.0", None, 41.0), job("e", "tau=1.0", None, 47.0)]
    rows = write_summary(paths, tmp_path / "t.csv", tmp_path / "t.md")
    assert all(r["chosen_on_val"] == "" for r in rows)
    assert "none is chosen" in (tmp_path / "t.md").read_text()


def test_sweep_whose_points_predict_the_same_is_reported(tmp_path, capsys):
    def job(point, pred):
        out = tmp_path / point
        out.mkdir()
        np.savez(out / "logits.npz", test=_onehot(np.array(pred), 3).astype(np.float32))
        return _metrics(out / "metrics.json", 0, 50.0, point=point)

    paths = [job("lam=0.01", [0, 1, 2, 2]), job("lam=0.1", [0, 1, 2, 2]),
             job("lam=1.0", [0, 1, 1, 2])]
    write_summary(paths, tmp_path / "s.csv", tmp_path / "s.md")
    warning = capsys.readouterr().out
    assert "points lam=0.01, lam=0.1 predict identical test classes" in warning
    assert "lam=1.0" not in warning
    md = (tmp_path / "s.md").read_text()
    assert "## Sweeps that changed nothing" in md and "lam=0.01, lam=0.1" in md
    # a sweep whose points all differ says nothing
    paths = [job("tau=0", [0, 0, 0, 0]), job("tau=1", [1, 1, 1, 1])]
    write_summary(paths, tmp_path / "t.csv", tmp_path / "t.md")
    assert "changed nothing" not in (tmp_path / "t.md").read_text()


def test_machine_kinds_by_hand():
    """A job that never imported torch (no capability) is the same kind as its processor with
    one; two capabilities or two processors are two kinds."""
    from ltpipe.report.summary import machine_kinds

    xeon = "Intel Xeon 6/167/1"
    assert machine_kinds([f"{xeon}/avx512", xeon, ""]) == 1
    assert machine_kinds([f"{xeon}/avx512", f"{xeon}/avx2"]) == 2
    assert machine_kinds([xeon, "AMD EPYC 7B13 64-Core 25/1/1/avx2"]) == 2
    assert machine_kinds(["NVIDIA H100 80GB HBM3/cuda13.0", f"{xeon}/avx512"]) == 2
