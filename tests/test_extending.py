"""A researcher's own method, own images and own backbone, together, with no edit to ltpipe/:

the example plug-in's method (installed into a folder that only PYTHONPATH reaches), a folder of
PNG images per class, and a torchvision architecture started from a weights file (frozen), run
through the real Snakemake; then touching one image replans exactly the split and what it feeds.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from dryrun import job_counts
from test_backbones import DIGITS_VIT, _digits_vit_file
from test_data_sources import make_folders

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"train": {"boots": 12, "coats": 6, "hats": 3},
           "test": {"boots": 4, "coats": 4, "hats": 4}}


@pytest.mark.slow
def test_own_method_images_and_backbone_together(tmp_path):
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target),
                    str(shutil.copytree(ROOT / "examples" / "ltpipe-example-plugin",
                                        tmp_path / "pkg"))],
                   check=True, capture_output=True, timeout=600)
    images = make_folders(tmp_path / "images", FOLDERS)
    _digits_vit_file(tmp_path / "vit.pth")  # an RGB ViT for 8x8 images, weights written here
    config = {
        "results": "results",
        "datasets": {"mine": {"source": "imagefolder", "root": str(images),
                              "shot_thresholds": {"many": 10, "few": 4}}},
        "backbones": {"vit": {
            "architecture": "vit_b_16", "architecture_kwargs": DIGITS_VIT, "frozen": True,
            "init_weights": str(tmp_path / "vit.pth"), "image_size": 8, "epochs": 2,
            "batch_size": 8, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0,
            "augment": "none", "final_eval": False, "seeds": [0]}},
        "classifiers": {"joint": {"method": "joint", "backbones": ["vit"]},
                        "crt": {"method": "crt", "backbones": ["vit"],
                                "settings": {"epochs": 2, "batch_size": 8}},
                        "bsr": {"method": "bsr", "backbones": ["vit"],
                                "settings": {"epochs": 2, "batch_size": 8}}},
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(target)]))

    def snakemake(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                               "-d", str(work), "results/summary.csv", *args,
                               "--configfile", str(work / "config.yaml")],
                              capture_output=True, text=True, env=env, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout + proc.stderr

    snakemake("--cores", "2")
    with open(work / "results" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"joint", "crt", "bsr"}
    assert {r["dataset"] for r in rows} == {"mine"}
    run = work / "results" / "mine" / "ifnative" / "s0"
    metrics = json.loads(next((run / "cls" / "bsr").rglob("metrics.json")).read_text())
    assert metrics["class_names"] == ["boots", "coats", "hats"]  # the folders' names
    model = torch.load(run / "vit" / "t0" / "model.pt", weights_only=True)
    assert model["recipe"]["frozen"] is True
    assert job_counts(snakemake("-n")) == {}  # nothing to do
    # one image overwritten: the split and everything it feeds, nothing else
    (images / "train" / "coats" / "img00.png").write_bytes(
        (images / "train" / "coats" / "img01.png").read_bytes())
    assert job_counts(snakemake("-n")) == {"split": 1, "train": 1, "dump": 1, "classify": 3,
                                           "summary": 1}
