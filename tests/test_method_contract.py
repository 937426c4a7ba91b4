"""The method contract, checked for every method in the registry (built-ins and any installed
plug-in), as timm checks every model of ``list_models()``: the spec's facts are declared and
valid, the method runs on a tiny synthetic cache on the CPU and returns scores of the right
shape, its memory request and device choice are computed from the spec, and reading every spec
imports no torch. No test here names the method set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_classifiers import synth, write_features

from ltpipe.classifiers import (
    get_method,
    merge_settings,
    method_defaults,
    method_names,
    method_spec,
    run_method,
)
from ltpipe.classifiers import memory as mem
from ltpipe.classifiers.device import wants_gpu
from ltpipe.classifiers.inputs import ARRAYS
from ltpipe.classifiers.spec import MethodSpec, check_method
from ltpipe.utils import LtpipeError

ROOT = Path(__file__).resolve().parents[1]
# the shortest training a method declares settings for (only the keys it has are passed)
TINY = {"epochs": 1, "iterations": 3, "batch_size": 16}


def tiny_settings(name: str) -> dict:
    return {k: v for k, v in TINY.items() if k in method_spec(name).settings}


@pytest.mark.parametrize("name", method_names())
def test_method_declares_its_facts(name):
    spec = check_method(name, get_method(name), name)
    assert isinstance(spec, MethodSpec) and spec.problems() == []
    assert spec.needs and spec.needs <= set(ARRAYS)
    assert merge_settings(name, {}) == method_defaults(name)
    assert wants_gpu("auto", name) is spec.gpu
    assert wants_gpu("cuda", name) and not wants_gpu("cpu", name)


@pytest.mark.parametrize("name", method_names())
def test_method_runs_on_a_tiny_cache(name, tmp_path):
    """On a real zarr cache: scores [N, C] per evaluated split, finite; mem_mb computed from
    the spec's needs."""
    from ltpipe.cache import open_cache
    from ltpipe.classifiers.inputs import features_from_cache

    spec = method_spec(name)
    paths = []
    for i in range(spec.num_backbones or 2):  # same labels in the same order, other features
        path = tmp_path / f"c{i}.zarr"
        write_features(path, synth(i, "cosine" if i else "linear"))
        paths.append(path)
    with open_cache(paths[0]) as reader:
        held = mem.held_bytes(name, reader)
    assert held > 0
    assert mem.classify_mem_mb(name, paths) >= mem.BASE_MB
    readers = [open_cache(p) for p in paths]
    try:
        feats = [features_from_cache(r, spec.needs) for r in readers]
        scores = run_method(name, feats, tiny_settings(name), seed=0, device="cpu")
    finally:
        for r in readers:
            r.close()
    labels = feats[0].test["labels"]
    assert set(scores) >= set(feats[0].eval_splits())
    test = np.asarray(scores["test"])
    assert test.shape == (len(labels), feats[0].num_classes) and np.isfinite(test).all()
    with pytest.raises(LtpipeError, match=f"takes {spec.inputs_text} backbone"):
        run_method(name, feats * 2 if spec.num_backbones else feats[:1], tiny_settings(name),
                   seed=0)


def test_reading_every_spec_imports_no_torch():
    """What DAG building does per classify job (names, specs, settings, memory request, gpu
    resource) in a fresh interpreter: torch stays unimported."""
    code = ("import sys\n"
            "from ltpipe.classifiers import method_names, method_spec, merge_settings\n"
            "from ltpipe.classifiers import memory, device\n"
            "for m in method_names():\n"
            "    method_spec(m); merge_settings(m, {}); device.wants_gpu('auto', m)\n"
            "    memory.classify_mem_mb(m, ['/nonexistent.zarr'])\n"
            "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.strip() == "[]", out.stdout


def test_spec_problems_name_each_bad_fact():
    bad = MethodSpec(needs={"feats"}, num_backbones=0, torch=False, gpu=True,
                     settings={"lr": 0.1}, map_whole_bytes=5)
    text = "; ".join(bad.problems())
    for part in ("needs=['feats']", "num_backbones=0", "gpu=True needs torch=True",
                 "settings ['lr']", "map_whole_bytes=5 applies only"):
        assert part in text, (part, text)
    assert "features=True needs head=True" in "; ".join(
        MethodSpec(needs={"pooled"}, features=True).problems())
    assert "head=True on several inputs needs features=True" in "; ".join(
        MethodSpec(needs={"pooled"}, num_backbones=2, head=True).problems())
    assert MethodSpec(needs={"logits"}, num_backbones=None).problems() == []
    assert "map_chunk_bytes=None" in "; ".join(MethodSpec(needs={"fmap"},
                                                          map_whole_bytes=1).problems())
