"""Dumping a trained backbone into the cache, and a classifier job reading it back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ltpipe.cache import open_cache, verify_cache
from ltpipe.classifiers.job import run_classifier_job
from ltpipe.data import build_split, read_split, split_data, write_split
from ltpipe.train.dump import class_activation_maps, dump_cache
from ltpipe.train.stage1 import load_checkpoint, train_stage1
from ltpipe.utils import LtpipeError

RECIPE = {"architecture": "resnet8", "architecture_kwargs": {"strides": [1, 1, 2]}, "epochs": 1,
          "warmup_epochs": 0,
          "batch_size": 64, "lr": 0.05}
DS = {"source": "digits", "shot_thresholds": {"many": 50, "few": 20}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("dump")
    split = build_split("digits", DS, 10.0, 0)
    write_split(d / "split.npz", split)
    train_stage1(d / "split.npz", RECIPE, d / "model.pt", seed=0, threads=1)
    return d


def test_cam_known_answer():
    fmap = torch.zeros(1, 2, 2, 2)
    fmap[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    fmap[0, 1] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [1.0, -1.0]])
    cam0 = class_activation_maps(fmap, weight, torch.tensor([0]))
    assert torch.allclose(cam0[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    # class 1: M = F0 - F1 = [[-3, 2], [3, 4]] -> (M + 3) / 7
    cam1 = class_activation_maps(fmap, weight, torch.tensor([1]))
    assert torch.allclose(cam1[0], torch.tensor([[0.0, 5 / 7], [6 / 7, 1.0]]))


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_dump_contents(trained, tmp_path, backend):
    ext = "zarr" if backend == "zarr" else "h5"
    out = tmp_path / f"cache.{ext}"
    settings = {"backend": backend, "compression": "none", "fmap_dtype": "float16",
                "batch_size": 100}
    manifest = dump_cache(trained / "split.npz", trained / "model.pt", out, settings,
                          log=lambda *_: None)
    split = read_split(trained / "split.npz")
    assert verify_cache(out) == []
    model, meta = load_checkpoint(trained / "model.pt")
    with open_cache(out, expect={"split_fingerprint": split.fingerprint}) as r:
        n_train = int(split.class_counts.sum())
        assert r.shape("train", "pooled") == (n_train, model.feature_dim)
        assert r.shape("train", "fmap") == (n_train, model.feature_dim, 4, 4)
        assert r.dtype("train", "fmap") == np.float16
        assert r.shape("test", "logits") == (300, 10)
        assert sorted(r.groups()) == ["head", "meta", "test", "train"]
        labels = r.read("test", "labels")
        np.testing.assert_array_equal(labels, split_data(split, "test").labels)
        pooled = r.read("test", "pooled")
        w, b = r.read("head", "weight"), r.read("head", "bias")
        np.testing.assert_allclose(r.read("test", "logits"), pooled @ w.T + b, rtol=1e-4,
                                   atol=1e-4)
        fmap = r.read("test", "fmap").astype(np.float32)
        np.testing.assert_allclose(fmap.mean((2, 3)), pooled, rtol=1e-2, atol=1e-2)
        cam = r.read("test", "cam")
        assert cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6
        np.testing.assert_allclose(cam.reshape(len(cam), -1).max(1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(r.read("meta", "class_counts"), split.class_counts)
    assert manifest["split_fingerprint"] == split.fingerprint
    assert manifest["head_kind"] == "linear" and manifest["num_classes"] == 10
    assert "torch" in manifest["versions"]


def test_dump_refuses_existing_and_leaves_nothing_on_failure(trained, tmp_path):
    settings = {"backend": "zarr", "compression": "none", "fmap_dtype": "float32",
                "batch_size": 64}
    out = tmp_path / "cache.zarr"
    other = build_split("digits", DS, 10.0, 1)
    write_split(tmp_path / "other.npz", other)
    with pytest.raises(LtpipeError, match="trained on split"):
        dump_cache(tmp_path / "other.npz", trained / "model.pt", out, settings)
    assert not out.exists() and list(tmp_path.glob(".cache.zarr*")) == []


def test_classifier_job_checks_split_and_backbone(trained, tmp_path):
    settings = {"backend": "zarr", "compression": "none", "fmap_dtype": "float16",
                "batch_size": 128}
    cache = tmp_path / "cache.zarr"
    dump_cache(trained / "split.npz", trained / "model.pt", cache, settings)
    res = run_classifier_job(split_path=str(trained / "split.npz"), cache_paths=[str(cache)],
                             method="tau_norm", settings={"tau": 1.0}, seed=0,
                             out_dir=str(tmp_path / "job"), info={"dataset": "digits"},
                             model_paths=[str(trained / "model.pt")])
    saved = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert saved["metrics"]["test"]["all"] == res["metrics"]["test"]["all"]
    assert np.load(tmp_path / "job" / "logits.npz")["test"].shape == (300, 10)
    # a cache from another split is refused, naming the key
    other = build_split("digits", DS, 50.0, 0)
    write_split(tmp_path / "other.npz", other)
    with pytest.raises(LtpipeError, match="split_fingerprint"):
        run_classifier_job(split_path=str(tmp_path / "other.npz"), cache_paths=[str(cache)],
                           method="joint", settings={}, seed=0, out_dir=str(tmp_path / "j2"))
    # a cache made from another backbone file is refused
    fake = tmp_path / "other_model.pt"
    fake.write_bytes((trained / "model.pt").read_bytes() + b"x")
    with pytest.raises(LtpipeError, match="backbone_sha256"):
        run_classifier_job(split_path=str(trained / "split.npz"), cache_paths=[str(cache)],
                           method="joint", settings={}, seed=0, out_dir=str(tmp_path / "j3"),
                           model_paths=[str(fake)])
    assert not (tmp_path / "j2" / "metrics.json").exists()


def test_artifacts_record_provenance(trained, tmp_path):
    """model.pt, the cache manifest and a real classify job's metrics.json name the code, the
    library versions and the digests of what they read; the digests are the files' own."""
    import hashlib
    import subprocess
    from pathlib import Path

    import ltpipe
    from ltpipe.provenance import code_version, host_label
    from ltpipe.report.summary import rows_from_metrics

    code = code_version()
    pkg = Path(ltpipe.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # a git checkout: the commit it is at
        assert code["git_commit"] == head.stdout.strip()
    split = read_split(trained / "split.npz")
    model_sha = hashlib.sha256((trained / "model.pt").read_bytes()).hexdigest()
    _, meta = load_checkpoint(trained / "model.pt")
    assert meta["code"] == code and meta["split_fingerprint"] == split.fingerprint
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "init_weights" in meta
    # the machine: torch's kernels and threads of the process that trained
    assert meta["host"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert meta["host"]["cpu"]["name"] and meta["host"]["deterministic"] in (True, False)

    cache = tmp_path / "cache.zarr"
    manifest = dump_cache(trained / "split.npz", trained / "model.pt", cache,
                          {"backend": "zarr", "compression": "none", "fmap_dtype": "float16",
                           "batch_size": 128}, log=lambda *_: None)
    assert manifest["code"] == code and manifest["backbone_sha256"] == model_sha
    assert manifest["train_host"] == meta["host"] and manifest["host"]["cpu"] == meta["host"]["cpu"]
    run_classifier_job(split_path=str(trained / "split.npz"), cache_paths=[str(cache)],
                       method="joint", settings={}, seed=0, out_dir=str(tmp_path / "job"),
                       model_paths=[str(trained / "model.pt")])
    metrics_path = tmp_path / "job" / "metrics.json"
    prov = json.loads(metrics_path.read_text())["provenance"]
    assert prov["code"] == code
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0]
    assert prov["split"] == {"path": str(trained / "split.npz"), "fingerprint": split.fingerprint}
    assert prov["models"] == [{"path": str(trained / "model.pt"), "sha256": model_sha}]
    on_disk = json.loads((cache / "manifest.json").read_text())
    canonical = json.dumps(on_disk, sort_keys=True, separators=(",", ":")).encode()
    assert prov["caches"] == [{"path": str(cache),
                               "digest": hashlib.sha256(canonical).hexdigest(),
                               "backbone_sha256": model_sha, "code": code,
                               "train_host": meta["host"], "dump_host": manifest["host"]}]
    assert prov["host"]["cpu"] == meta["host"]["cpu"]
    # another cache (other dump settings) has another digest
    other = tmp_path / "other.zarr"
    dump_cache(trained / "split.npz", trained / "model.pt", other,
               {"backend": "zarr", "compression": "none", "fmap_dtype": "float32",
                "batch_size": 128}, log=lambda *_: None)
    with open_cache(other) as r:
        assert r.digest != prov["caches"][0]["digest"]
    (row,) = rows_from_metrics([metrics_path])
    assert row["code"].startswith(f"{ltpipe.__version__}+")
    assert row["train_host"] == host_label(meta["host"]) and row["host"] == host_label(prov["host"])


@pytest.mark.parametrize("choice,method,leased", [("cuda", "joint", True), ("auto", "fsa", True),
                                                  ("auto", "tau_norm", False),
                                                  ("cpu", "crt", False)])
def test_classify_cli_leases_a_gpu_where_configured(trained, tmp_path, monkeypatch, capsys,
                                                    choice, method, leased):
    """The GPU classify path on a CPU machine: LTPIPE_FAKE_GPUS simulates a slot, the job leases
    it as train and dump do, and its results equal the plain CPU job's (same code, same
    device here). FSA reads its maps from the real cache on demand."""
    from ltpipe.cli import main

    cache = tmp_path / "cache.zarr"
    dump_cache(trained / "split.npz", trained / "model.pt", cache,
               {"backend": "zarr", "compression": "none", "fmap_dtype": "float16",
                "batch_size": 128}, log=lambda *_: None)
    settings = {"iterations": 20} if method == "fsa" else {}
    job = json.dumps({"method": method, "settings": settings})
    monkeypatch.setenv("LTPIPE_FAKE_GPUS", "1")
    monkeypatch.setenv("LTPIPE_LOCK_DIR", str(tmp_path / "locks"))
    outs = {}
    for env in (choice, "cpu"):
        monkeypatch.setenv("LTPIPE_CLASSIFY_DEVICE", env)
        out = tmp_path / env
        assert main(["classify", "--split", str(trained / "split.npz"), "--caches", str(cache),
                     "--job", job, "--seed", "1", "--out-dir", str(out)]) in (0, None)
        outs[env] = np.load(out / "logits.npz")["test"]
        printed = capsys.readouterr().out
        assert ("lease: acquired" in printed) == (leased and env != "cpu"), printed
    np.testing.assert_array_equal(outs[choice], outs["cpu"])


def test_classify_device_choice_is_checked(monkeypatch):
    from ltpipe.classifiers.device import job_device, wants_gpu

    assert job_device("cuda:1", "joint") == "cuda:1"
    monkeypatch.setenv("LTPIPE_CLASSIFY_DEVICE", "gpu")
    with pytest.raises(LtpipeError, match="classify_device='gpu'.*cpu.*cuda.*auto"):
        job_device(None, "crt")
    assert wants_gpu("auto", "bwlm") and not wants_gpu("auto", "ncm")


def test_classify_memory_request_follows_the_cache(trained, tmp_path):
    """mem_mb grows with the arrays a method holds; FSA counts its gathered map rows, not the
    whole map array, once that is larger than the spec's map_whole_bytes (fsa.WHOLE_BYTES)."""
    from ltpipe.classifiers import fsa, method_spec
    from ltpipe.classifiers import memory as mem

    cache = tmp_path / "cache.zarr"
    dump_cache(trained / "split.npz", trained / "model.pt", cache,
               {"backend": "zarr", "compression": "none", "fmap_dtype": "float16",
                "batch_size": 128}, log=lambda *_: None)
    with open_cache(cache) as reader:
        joint, fsa_bytes = mem.held_bytes("joint", reader), mem.held_bytes("fsa", reader)
        n, d, h, w = reader.shape("train", "fmap")
        assert fsa_bytes >= joint + 2 * n * d * h * w * 2  # small maps: read whole
        assert mem.classify_mem_mb("joint", [cache]) >= mem.BASE_MB
        assert mem.classify_mem_mb("joint", [tmp_path / "missing.zarr"]) == mem.FALLBACK_MB
        with pytest.raises(LtpipeError, match="unknown classifier method 'nope'"):
            mem.held_bytes("nope", reader)
    spec = method_spec("fsa")
    assert mem._lazy_bytes(10 * fsa.WHOLE_BYTES, (1, 2), spec) == \
        mem.MAP_CHUNK_FACTOR * fsa.CHUNK_BYTES


@pytest.mark.slow  # subprocesses: 15 s in the fast-tier run of docs/testing.md
def test_closed_form_jobs_never_import_torch(trained, tmp_path):
    """joint, tau_norm, ncm and logit_adjust jobs run in numpy: torch (~3 s of a job's start)
    is never imported, and a trained method's job still does."""
    import subprocess
    import sys
    from pathlib import Path

    cache = tmp_path / "cache.zarr"
    dump_cache(trained / "split.npz", trained / "model.pt", cache,
               {"backend": "zarr", "compression": "none", "fmap_dtype": "float16",
                "batch_size": 128}, log=lambda *_: None)
    root = Path(__file__).resolve().parent.parent
    for method, uses_torch in (("joint", False), ("tau_norm", False), ("ncm", False),
                               ("logit_adjust", False), ("lws", True)):
        code = ("import sys, json; from ltpipe.cli import main; "
                f"main(['classify', '--split', {str(trained / 'split.npz')!r}, '--caches', "
                f"{str(cache)!r}, '--job', json.dumps({{'method': {method!r}, 'settings': "
                f"{{}}}}), '--out-dir', {str(tmp_path / method)!r}]); "
                "print('TORCH', 'torch' in sys.modules)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONPATH": str(root),
                                   "LTPIPE_CLASSIFY_DEVICE": "cpu"})
        assert proc.returncode == 0, proc.stderr
        assert f"TORCH {uses_torch}" in proc.stdout, (method, proc.stdout)
        assert (tmp_path / method / "metrics.json").exists()
