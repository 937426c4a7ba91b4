"""The user's own data: image folders and list files as sources, and data changes that replan.

Unit tests build tiny data sets with PIL in tmp; the ``slow`` test runs the real Snakemake on an
image-folder data set beside digits, then changes the images and reads the dry runs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ltpipe.data import sources
from ltpipe.data.sources import data_state, open_source
from ltpipe.data.split import build_split
from ltpipe.utils import LtpipeError

# class -> images per part; names out of alphabetical order on disk is irrelevant: sorted
COUNTS = {"train": {"zebra": 3, "ant": 12, "moth": 6}, "test": {"zebra": 2, "ant": 2, "moth": 2}}


def _png(path: Path, seed: int, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def make_folders(root: Path, counts: dict = COUNTS) -> Path:
    seed = 0
    for part, classes in counts.items():
        for cls, n in classes.items():
            for i in range(n):
                seed += 1
                _png(root / part / cls / f"img{i:02d}.png", seed)
    return root


def _fresh_state(cfg: dict) -> str:
    """data_state without the per-process memo (the DAG build is one process; tests are not)."""
    sources._state.cache_clear()
    sources._opened.cache_clear()
    return data_state(cfg)


# ------------------------------------------------------------------------------ image folders
def test_imagefolder_classes_are_the_sorted_folder_names_native(tmp_path):
    cfg = {"source": "imagefolder", "root": str(make_folders(tmp_path))}
    split = build_split("mine", cfg, None, 0)
    assert split.class_names == ["ant", "moth", "zebra"]
    assert split.class_counts.tolist() == [12, 6, 3]  # every image: the native counts
    assert split.test_indices.size == 6 and split.val_indices is None
    data = sources.open_source(cfg).load("train", split.train_indices)
    assert data.paths[0] == os.path.join("train", "ant", "img00.png") and data.labels[0] == 0
    assert data.paths[-1] == os.path.join("train", "zebra", "img02.png") and data.labels[-1] == 2


def test_imagefolder_profile_and_val(tmp_path):
    cfg = {"source": "imagefolder", "root": str(make_folders(tmp_path)), "n_max": 8}
    # IF 4 over 3 classes: n_i = round(8 * 4 ** (-i / 2)) = 8, 4, 2
    assert build_split("mine", cfg, 4.0, 0).class_counts.tolist() == [8, 4, 2]
    held = build_split("mine", {**cfg, "val_per_class": 1}, 4.0, 0)
    assert held.val_indices.size == 3  # one per class, from the training folders
    assert not set(held.val_indices) & set(held.train_indices)
    _png(tmp_path / "val" / "ant" / "v.png", 99)  # an own val/ folder: used whole, as given
    assert build_split("mine", cfg, 4.0, 0).val_indices.tolist() == [0]
    with pytest.raises(LtpipeError, match="own validation images"):
        build_split("mine", {**cfg, "val_per_class": 1}, 4.0, 0)


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "train" / "owl").mkdir(), "train/owl is empty"),
    (lambda r: _png(r / "test" / "owl" / "a.png", 5), "class folder(s) ['owl'] in"),
    (lambda r: (r / "train" / "moth" / "broken.png").write_bytes(b"not a png"),
     "train/moth/broken.png is not an image PIL can read"),
    (lambda r: _png(r / "train" / "loose.png", 5), "outside any class folder, e.g. 'loose.png'"),
    (lambda r: shutil.rmtree(r / "test"), "test is not a folder"),
])
def test_imagefolder_bad_layout_named(tmp_path, breakage, message):
    root = make_folders(tmp_path)
    breakage(root)
    with pytest.raises(LtpipeError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        build_split("mine", {"source": "imagefolder", "root": str(root)}, None, 0)


def test_imagefolder_mixed_sizes_and_modes_are_fine(tmp_path):
    """Images are decoded as RGB and resized to the recipe's image_size (as list files)."""
    from PIL import Image

    root = make_folders(tmp_path)
    _png(root / "train" / "ant" / "big.png", 7, size=20)
    Image.new("L", (5, 9), 128).save(root / "train" / "moth" / "gray.jpg")
    split = build_split("mine", {"source": "imagefolder", "root": str(root)}, None, 0)
    assert split.class_counts.tolist() == [13, 7, 3]


# --------------------------------------------------------------------------------- list files
def test_listfile_with_class_names_and_optional_val(tmp_path):
    (tmp_path / "train.txt").write_text("a.png 0\nb.png 1\nc.png 1\nd.png 2\n")
    (tmp_path / "test.txt").write_text("e.png 0\nf.png 2\n")
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    cfg = {"source": "listfile", "root": str(tmp_path)}
    split = build_split("lists", cfg, None, 0)
    assert split.class_names == ["red", "green", "blue"]
    assert split.class_counts.tolist() == [1, 2, 1] and split.val_indices is None
    (tmp_path / "val.txt").write_text("g.png 1\n")
    assert build_split("lists", cfg, None, 0).val_indices.tolist() == [0]
    (tmp_path / "classes.txt").unlink()  # no names: the labels, and the count from the lists
    split = build_split("lists", cfg, None, 0)
    assert split.class_names == ["0", "1", "2"]


def test_listfile_renamed_lists_and_presets_share_it(tmp_path):
    (tmp_path / "mine_tr.lst").write_text("a.png 0\nb.png 1\n")
    (tmp_path / "mine_te.lst").write_text("c.png 1\n")
    cfg = {"source": "listfile", "root": str(tmp_path),
           "list_files": {"train": "mine_tr.lst", "test": "mine_te.lst"}}
    assert build_split("lists", cfg, None, 0).class_counts.tolist() == [1, 1]
    assert type(open_source({"source": "inat2018", "root": str(tmp_path)})) is type(
        open_source(cfg))


# ---------------------------------------------------------------------------- change detection
def test_data_state_follows_changes_and_only_them(tmp_path):
    root = make_folders(tmp_path)
    cfg = {"source": "imagefolder", "root": str(root)}
    first = _fresh_state(cfg)
    assert _fresh_state(cfg) == first  # no change: the same state
    img = root / "train" / "moth" / "img00.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    touched = _fresh_state(cfg)
    assert touched != first
    _png(root / "train" / "moth" / "new.png", 123)  # added
    added = _fresh_state(cfg)
    assert added not in (first, touched)
    (root / "train" / "moth" / "new.png").unlink()  # removed again
    assert _fresh_state(cfg) == touched
    # content mode: a touch with the same bytes is no change, new bytes are
    content = _fresh_state({**cfg, "change_detection": "content"})
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    assert _fresh_state({**cfg, "change_detection": "content"}) == content
    _png(img, 4242)
    assert _fresh_state({**cfg, "change_detection": "content"}) != content


def test_data_state_of_list_files_sees_images_and_lists(tmp_path):
    for name in ("a", "b", "c"):
        _png(tmp_path / f"{name}.png", ord(name))
    (tmp_path / "train.txt").write_text("a.png 0\nb.png 1\n")
    (tmp_path / "test.txt").write_text("c.png 1\n")
    cfg = {"source": "listfile", "root": str(tmp_path)}
    first = _fresh_state(cfg)
    _png(tmp_path / "b.png", 77)
    second = _fresh_state(cfg)
    assert second != first
    (tmp_path / "val.txt").write_text("c.png 0\n")  # a new optional list
    assert _fresh_state(cfg) != second


def test_data_state_of_missing_data_does_not_raise(tmp_path):
    """Presets are dry-run without their data: the state says 'unavailable', no error."""
    for cfg in ({"source": "imagefolder", "root": str(tmp_path / "none")},
                {"source": "imagenet_lt", "root": str(tmp_path), "lists": str(tmp_path)},
                {"source": "cifar10", "root": str(tmp_path), "download": True}):
        assert _fresh_state(cfg)
    assert not list(tmp_path.iterdir())  # nothing downloaded


def test_builtin_source_files_are_watched(tmp_path):
    """Fashion-MNIST's four IDX files: replacing one changes the state."""
    from ltpipe.data.sources import FashionMnistSource

    stems = [s for pair in FashionMnistSource._STEMS.values() for s in pair]
    for stem in stems:
        (tmp_path / stem).write_bytes(b"\0\0\x08\x01\0\0\0\0")
    cfg = {"source": "fashion_mnist", "root": str(tmp_path)}
    first = _fresh_state(cfg)
    time.sleep(0.01)
    (tmp_path / stems[0]).write_bytes(b"\0\0\x08\x01\0\0\0\1\7")
    assert _fresh_state(cfg) != first


def test_config_check_reports_wrong_root(tmp_path):
    from ltpipe.workflow.config import check_config

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    cfg["datasets"] = {"mine": {"source": "imagefolder", "root": str(tmp_path / "nope")}}
    with pytest.raises(LtpipeError, match=r"datasets\.mine: imagefolder: .*nope/train is not"):
        check_config(cfg)
    cfg["datasets"]["mine"] = {"source": "imagefolder", "root": str(make_folders(tmp_path)),
                               "imbalance_factors": ["native"], "val_per_class": 2}
    with pytest.raises(LtpipeError, match="val_per_class: 2 needs an imbalance factor"):
        check_config(cfg)


# ------------------------------------------------------------------------ the real Snakemake
TINY = {"architecture": "resnet8", "architecture_kwargs": {"widths": [4, 4, 8]}, "epochs": 1,
        "warmup_epochs": 0, "batch_size": 8, "image_size": 8, "loader_workers": 0,
        "augment": "none", "seeds": [0]}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from test_workflow import snakemake

    work = tmp_path_factory.mktemp("imagefolder_run")
    make_folders(work / "pets")
    cfg = {
        "datasets": {
            "pets": {"source": "imagefolder", "root": str(work / "pets"),
                     "shot_thresholds": {"many": 10, "few": 4}},
            "digits": {"source": "digits", "imbalance_factors": [10],
                       "shot_thresholds": {"many": 50, "few": 20}},
        },
        "backbones": {"ce": TINY},
        "classifiers": {"joint": {"method": "joint", "backbones": ["ce"]},
                        "ncm": {"method": "ncm", "backbones": ["ce"]}},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(work, "--cores", "2", config=work / "config.yaml")
    return work


def _dry(work: Path, *args: str) -> dict[str, int]:
    from test_workflow import planned_jobs, snakemake

    return planned_jobs(snakemake(work, "-n", *args, config=work / "config.yaml"))


@pytest.mark.slow
def test_imagefolder_runs_to_the_end_with_class_names(folder_run):
    res = folder_run / "results" / "pets" / "ifnative" / "s0"
    metrics = json.loads((res / "cls" / "ncm" / "t0" / "default" / "metrics.json").read_text())
    assert metrics["class_names"] == ["ant", "moth", "zebra"]
    assert metrics["class_counts"] == [12, 6, 3]
    assert len(metrics["metrics"]["test"]["per_class"]) == 3
    split = json.loads((res / "split.json").read_text())
    assert split["class_counts"] == {"ant": 12, "moth": 6, "zebra": 3}
    assert (folder_run / "results" / "pets" / "ifnative" / "plots" / "perclass_ce.png").exists()
    assert _dry(folder_run) == {}  # no change: nothing to do


@pytest.mark.slow
def test_changed_or_added_image_replans_split_and_downstream_only(folder_run):
    pets_split = "results/pets/ifnative/s0/split.npz"
    # what a forced split rebuild of pets plans: that split and everything it feeds
    downstream = _dry(folder_run, "--forcerun", pets_split)
    assert downstream["split"] == 1 and downstream["train"] == 1 and downstream["dump"] == 1
    assert downstream["classify"] == 2  # joint, ncm on pets; none on digits
    img = folder_run / "pets" / "train" / "moth" / "img03.png"
    _png(img, 31337)  # overwritten
    assert _dry(folder_run) == downstream
    _png(folder_run / "pets" / "test" / "zebra" / "extra.png", 4)  # added
    assert _dry(folder_run) == downstream
