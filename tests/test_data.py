"""Tests for ltpipe.data: LT profiles, sources (CIFAR pickles, IDX, digits, list files), splits."""

from __future__ import annotations

import dataclasses
import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ltpipe.data import (
    SOURCES,
    FileListData,
    InMemoryData,
    Split,
    build_split,
    lt_counts,
    read_split,
    select_lt_indices,
    shot_groups,
    split_data,
    write_split,
)
from ltpipe.data.formats import read_idx
from ltpipe.data.listfile import parse_list_file
from ltpipe.utils import LtpipeError

FASHION_REAL = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- fake CIFAR on disk
def _cifar_rows(rng: np.random.Generator, per_class: int, num_classes: int):
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
    return data, labels


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    """torchvision's cifar-10-batches-py layout, str keys; 5000/1000 per class."""
    root = tmp_path_factory.mktemp("c10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data, labels = _cifar_rows(rng, 5000, 10)
    for b in range(5):
        rows = slice(b * 10000, (b + 1) * 10000)
        _dump(folder / f"data_batch_{b + 1}", {"data": data[rows], "labels": labels[rows].tolist()})
    tdata, tlabels = _cifar_rows(rng, 1000, 10)
    _dump(folder / "test_batch", {"data": tdata, "labels": tlabels.tolist()})
    _dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return root, data, labels


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    """cifar-100-python layout with bytes keys (as the original Python 2 pickles load)."""
    root = tmp_path_factory.mktemp("c100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    data, labels = _cifar_rows(rng, 500, 100)
    _dump(folder / "train", {b"data": data, b"fine_labels": labels.tolist()})
    tdata, tlabels = _cifar_rows(rng, 100, 100)
    _dump(folder / "test", {b"data": tdata, b"fine_labels": tlabels.tolist()})
    _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return root, data, labels


def _plain_counts(n_max, c, imb):
    return [int(n_max * (1 / imb) ** (i / (c - 1))) for i in range(c)]


# ---------------------------------------------------------------- profiles
def test_lt_counts_known_values():
    assert lt_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert lt_counts(500, 100, 100)[0] == 500 and lt_counts(500, 100, 100)[-1] == 5
    assert lt_counts(500, 100, 1) == [500] * 100
    with pytest.raises(LtpipeError, match="imbalance_factor"):
        lt_counts(500, 10, 0.5)


@pytest.mark.parametrize("imb,total", [(10, 20431), (50, 13996), (100, 12406), (200, 11203)])
def test_cifar10_lt_totals(cifar10_root, imb, total):
    root, _, labels = cifar10_root
    split = build_split("c10", {"source": "cifar10", "root": str(root)}, imb, 0)
    assert split.train_indices.size == total == sum(_plain_counts(5000, 10, imb))
    assert split.class_counts.tolist() == _plain_counts(5000, 10, imb)
    selected = np.bincount(labels[split.train_indices], minlength=10)
    assert selected.tolist() == split.class_counts.tolist()
    assert split.test_indices.tolist() == list(range(10000)) and split.val_indices is None


@pytest.mark.parametrize("imb,total", [(10, 19573), (50, 12608), (100, 10847), (200, 9502)])
def test_cifar100_lt_totals(cifar100_root, imb, total):
    root, _, _ = cifar100_root
    split = build_split("c100", {"source": "cifar100", "root": str(root)}, imb, 0)
    assert split.train_indices.size == total == sum(_plain_counts(500, 100, imb))
    assert split.class_names[:2] == ["f0", "f1"] and split.image_shape == (32, 32, 3)


def test_selection_matches_ldam_global_rng_protocol(cifar10_root):
    """Re-implements the reference: np.random.seed(seed), np.random.shuffle per class in order."""
    root, _, labels = cifar10_root
    counts = _plain_counts(5000, 10, 100)
    state = np.random.get_state()
    try:
        np.random.seed(3)
        expected = []
        for c, n in enumerate(counts):
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            expected.extend(idx[:n].tolist())
    finally:
        np.random.set_state(state)
    assert select_lt_indices(labels, counts, 3).tolist() == expected
    split = build_split("c10", {"source": "cifar10", "root": str(root)}, 100, 3)
    assert split.train_indices.tolist() == expected


def test_selection_deterministic_and_seed_dependent():
    labels = np.repeat(np.arange(4), 50)
    counts = [50, 20, 10, 5]
    a, b = select_lt_indices(labels, counts, 0), select_lt_indices(labels, counts, 0)
    c = select_lt_indices(labels, counts, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == counts and len(set(a.tolist())) == a.size
    with pytest.raises(LtpipeError, match="class 0 has 50 samples"):
        select_lt_indices(labels, [51, 1, 1, 1], 0)


def test_shot_group_boundaries():
    groups = shot_groups([101, 100, 50, 20, 19, 0])
    assert groups.tolist() == [0, 1, 1, 1, 2, 2] and groups.dtype == np.int8
    assert shot_groups([11, 10, 5, 4], many=10, few=5).tolist() == [0, 1, 1, 2]


def test_cifar_images_nhwc_and_ids(cifar10_root):
    root, data, labels = cifar10_root
    split = build_split("c10", {"source": "cifar10", "root": str(root)}, 100, 0)
    train = split_data(split, "train")
    assert isinstance(train, InMemoryData) and train.images.shape == (12406, 32, 32, 3)
    assert np.array_equal(train.ids, split.train_indices)
    assert np.array_equal(train.labels, labels[split.train_indices])
    k, row = 7, split.train_indices[7]
    for y, x, ch in [(0, 0, 0), (5, 31, 1), (31, 2, 2)]:
        assert train.images[k, y, x, ch] == data[row, ch * 1024 + y * 32 + x]
    with pytest.raises(LtpipeError, match="no 'val' part"):
        split_data(split, "val")


def test_missing_cifar_root_names_folder(tmp_path):
    with pytest.raises(LtpipeError, match="cifar-10-batches-py"):
        build_split("c10", {"source": "cifar10", "root": str(tmp_path)}, 100, 0)
    with pytest.raises(LtpipeError, match="cifar-100-python"):
        build_split("c100", {"source": "cifar100", "root": str(tmp_path)}, 100, 0)
    with pytest.raises(LtpipeError, match="dataset.root is required"):
        SOURCES["cifar10"]({"source": "cifar10"})


def test_unknown_source_and_missing_if(cifar10_root):
    with pytest.raises(LtpipeError, match="unknown"):
        build_split("x", {"source": "mnist"}, 10, 0)
    with pytest.raises(LtpipeError, match="needs an imbalance_factor"):
        build_split("x", {"source": "cifar10", "root": str(cifar10_root[0])}, None, 0)


# ---------------------------------------------------------------- digits
def test_digits_split_counts_and_balanced_test():
    from sklearn.datasets import load_digits

    y = load_digits().target
    split = build_split("digits", {"source": "digits"}, 10, 0)
    n_max = int(np.bincount(y).min()) - 30  # smallest class after holding out 30 per class
    assert n_max == 144
    assert split.class_counts.tolist() == _plain_counts(n_max, 10, 10)
    assert np.bincount(y[split.test_indices]).tolist() == [30] * 10
    assert np.bincount(y[split.train_indices], minlength=10).tolist() == split.class_counts.tolist()
    assert not set(split.train_indices.tolist()) & set(split.test_indices.tolist())
    assert split.thresholds == {"many": 50, "few": 20}
    assert split.shot_groups.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    test = split_data(split, "test")
    assert test.images.shape == (300, 8, 8, 1) and test.images.dtype == np.uint8
    assert test.images.max() == 255 and np.array_equal(test.labels, y[test.ids])
    other = build_split("digits", {"source": "digits", "test_per_class": 20}, 10, 0)
    assert np.bincount(y[other.test_indices]).tolist() == [20] * 10
    assert other.class_counts[0] == 154


# ---------------------------------------------------------------- Fashion-MNIST / IDX
def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def _fake_fashion(root: Path, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    tr_y = rng.permutation(np.repeat(np.arange(10), 8))
    tr_x = rng.integers(0, 256, size=(80, 28, 28), dtype=np.uint8)
    _write_idx(root / f"train-images-idx3-ubyte{sfx}", tr_x)
    _write_idx(root / f"train-labels-idx1-ubyte{sfx}", tr_y)
    _write_idx(root / f"t10k-images-idx3-ubyte{sfx}", tr_x[:20])
    _write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", tr_y[:20])
    return tr_x, tr_y


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_idx_reader_and_split(tmp_path, gz):
    tr_x, tr_y = _fake_fashion(tmp_path, gz)
    sfx = ".gz" if gz else ""
    x = read_idx(tmp_path / f"train-images-idx3-ubyte{sfx}")
    assert x.shape == (80, 28, 28) and np.array_equal(x, tr_x)
    cfg = {"source": "fashion_mnist", "root": str(tmp_path), "n_max": 8}
    split = build_split("fm", cfg, 4, 0)
    assert split.class_counts.tolist() == _plain_counts(8, 10, 4)
    train = split_data(split, "train")
    assert train.images.shape[1:] == (28, 28, 1)
    assert np.array_equal(train.images[..., 0], tr_x[split.train_indices])
    assert np.array_equal(train.labels, tr_y[split.train_indices])


def test_idx_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "trunc-idx1-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01" * 5)
    with pytest.raises(LtpipeError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(LtpipeError, match="not an IDX file"):
        read_idx(bad)
    with pytest.raises(LtpipeError, match="train-images-idx3-ubyte"):
        build_split("fm", {"source": "fashion_mnist", "root": str(tmp_path)}, 10, 0)


@pytest.mark.skipif(not FASHION_REAL.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_files():
    assert read_idx(FASHION_REAL / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
    split = build_split("fm", {"source": "fashion_mnist"}, 100, 0)
    assert split.train_indices.size == sum(_plain_counts(6000, 10, 100))
    assert split.test_indices.size == 10000
    assert read_idx(FASHION_REAL / "train-labels-idx1-ubyte.gz").shape == (60000,)
    # val_per_class 20: only the head class (6000 images, all used) drops, to 5980
    val = build_split("fm", {"source": "fashion_mnist", "val_per_class": 20}, 100, 0)
    assert val.class_counts.tolist() == [5980, *split.class_counts.tolist()[1:]]
    assert val.train_indices.size == 14886 - 20 and val.val_indices.size == 200


# ---------------------------------------------------------------- list files
def _write_lists(folder: Path, stem: str, parts: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for part, lines in parts.items():
        (folder / f"{stem}_{part}.txt").write_text("\n".join(lines) + "\n")


def test_list_file_parsing_and_bad_lines(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("a/x.jpg 3\n\nb/y.jpg 0\n")
    paths, labels = parse_list_file(f, 5)
    assert paths == ["a/x.jpg", "b/y.jpg"] and labels.tolist() == [3, 0]
    assert labels.dtype == np.int64
    bad = {"a.jpg 1 2": "two fields", "a.jpg": "two fields", "a.jpg one": "not an integer",
           "a.jpg -1": r"outside \[0, 5\)", "a.jpg 5": r"outside \[0, 5\)"}
    for line, msg in bad.items():
        f.write_text(f"ok.jpg 0\n{line}\n")
        with pytest.raises(LtpipeError, match=rf"l\.txt:2: .*{msg}"):
            parse_list_file(f, 5)
    with pytest.raises(LtpipeError, match="not found"):
        parse_list_file(tmp_path / "none.txt", 5)


def _imagenet_lists(tmp_path: Path) -> Path:
    lists = tmp_path / "lists"
    _write_lists(lists, "ImageNet_LT", {
        "train": [f"train/{c}/{i}.jpg {c}" for c in range(3) for i in range(10 - 4 * c)],
        "val": [f"val/{c}.jpg {c}" for c in range(3)],
        "test": [f"test/{c}_{i}.jpg {c}" for c in range(3) for i in range(2)],
    })
    return lists


def test_imagenet_lt_split_and_fingerprint_ignores_location(tmp_path):
    lists = _imagenet_lists(tmp_path)
    cfg = {"source": "imagenet_lt", "root": str(tmp_path / "img"), "lists": str(lists)}
    split = build_split("inlt", cfg, None, 0)
    assert split.class_counts[:3].tolist() == [10, 6, 2] and split.num_classes == 1000
    assert split.val_indices.tolist() == [0, 1, 2] and split.imbalance_factor is None
    test = split_data(split, "test")
    assert isinstance(test, FileListData) and test.paths[1] == "test/0_1.jpg"
    assert test.root == tmp_path / "img" and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    moved = tmp_path / "moved"
    lists.rename(moved)
    again = build_split("inlt", {**cfg, "lists": str(moved)}, None, 0)
    assert again.fingerprint == split.fingerprint
    (moved / "ImageNet_LT_test.txt").write_text("test/x.jpg 1\n")
    with pytest.raises(LtpipeError, match="changed since split"):
        split_data(again, "test")
    with pytest.raises(LtpipeError, match="long-tailed natively"):
        build_split("inlt", {**cfg, "lists": str(moved)}, 100, 0)


def test_inat_val_is_test_and_places_lists(tmp_path):
    _write_lists(tmp_path, "iNaturalist18", {"train": ["a.jpg 0", "b.jpg 1"], "val": ["c.jpg 1"]})
    split = build_split("inat", {"source": "inat2018", "root": str(tmp_path)}, None, 0)
    assert split.val_indices is None and split_data(split, "test").paths == ["c.jpg"]
    with pytest.raises(LtpipeError, match="no 'val' part"):
        split_data(split, "val")
    _write_lists(tmp_path, "Places_LT", {"train": ["a.jpg 364"], "val": ["b.jpg 0"],
                                         "test": ["c.jpg 400"]})
    with pytest.raises(LtpipeError, match=r"Places_LT_test\.txt:1: label 400"):
        build_split("places", {"source": "places_lt", "root": str(tmp_path)}, None, 0)


def test_file_list_dataset_decodes_and_names_corrupt_file(tmp_path):
    from PIL import Image

    from ltpipe.data import FileListDataset

    Image.new("L", (5, 4), color=7).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    data = FileListData(root=tmp_path, paths=["ok.png", "bad.jpg", "gone.png"],
                        labels=np.array([2, 1, 0]), ids=np.array([0, 1, 2]))
    ds = FileListDataset(data, transform=lambda im: np.asarray(im))
    img, label = ds[0]
    assert img.shape == (4, 5, 3) and img[0, 0].tolist() == [7, 7, 7] and label == 2
    with pytest.raises(LtpipeError, match="bad.jpg"):
        ds[1]
    with pytest.raises(LtpipeError, match="gone.png"):
        ds[2]


# ---------------------------------------------------------------- the split artifact
def _assert_same(a: Split, b: Split) -> None:
    for f in dataclasses.fields(Split):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


def test_write_read_round_trip(tmp_path):
    lists = _imagenet_lists(tmp_path)
    cfg = {"source": "imagenet_lt", "root": str(tmp_path), "lists": str(lists),
           "shot_thresholds": {"many": 6, "few": 3}}
    split = build_split("inlt", cfg, None, 0)
    path = tmp_path / "splits" / "inlt.npz"
    write_split(path, split)
    back = read_split(path)
    _assert_same(split, back)
    assert back.shot_groups[:3].tolist() == [0, 1, 2]
    summary = json.loads((tmp_path / "splits" / "inlt.json").read_text())
    assert summary["fingerprint"] == split.fingerprint and summary["class_counts"]["1"] == 6
    assert sorted(p.name for p in path.parent.iterdir()) == ["inlt.json", "inlt.npz"]


def test_round_trip_digits_and_fingerprint_sensitivity(tmp_path):
    base = build_split("d", {"source": "digits"}, 10, 0)
    write_split(tmp_path / "d.npz", base)
    _assert_same(base, read_split(tmp_path / "d.npz"))
    assert build_split("d", {"source": "digits"}, 10, 0).fingerprint == base.fingerprint
    assert build_split("d", {"source": "digits"}, 10, 1).fingerprint != base.fingerprint
    assert build_split("d", {"source": "digits"}, 20, 0).fingerprint != base.fingerprint


def test_read_split_errors(tmp_path):
    with pytest.raises(LtpipeError, match=r"missing\.npz not found.*rebuild"):
        read_split(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(LtpipeError, match=r"junk\.npz is corrupt.*rebuild"):
        read_split(tmp_path / "junk.npz")
    split = build_split("d", {"source": "digits"}, 10, 0)
    path = tmp_path / "d.npz"
    write_split(path, split)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["class_counts"] = arrays["class_counts"] + 1
    np.savez(path, **arrays)
    with pytest.raises(LtpipeError, match="fingerprint check"):
        read_split(path)
    with pytest.raises(LtpipeError, match=r"must end in \.npz"):
        write_split(tmp_path / "d.bin", split)
    edited = dataclasses.replace(split, seed=5)
    with pytest.raises(LtpipeError, match="modified after it was built"):
        write_split(tmp_path / "e.npz", edited)
    edited.fingerprint = ""
    write_split(tmp_path / "e.npz", edited)
    assert read_split(tmp_path / "e.npz").fingerprint not in ("", split.fingerprint)


# ---------------------------------------------------------------- val_per_class: a validation split
def _per_class(indices: np.ndarray, labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """``indices`` grouped by class, each in its given order."""
    return [indices[labels[indices] == c] for c in range(num_classes)]


def _check_val_split(base: Split, split: Split, labels: np.ndarray, pool_sizes: list[int],
                     v: int, changed: list[int]) -> None:
    """Known answers of a split with ``val_per_class = v`` against its ``v = 0`` split ``base``.

    ``changed`` (worked out by hand in each test) are the classes whose count drops; the plain
    formula ``min(n_c, P_c - v)`` gives every count, and every other class's training selection
    must be ``base``'s, index for index.
    """
    c = base.num_classes
    n = base.class_counts.tolist()
    assert split.class_counts.tolist() == [min(n[i], pool_sizes[i] - v) for i in range(c)]
    assert [i for i in range(c) if split.class_counts[i] != n[i]] == changed
    assert all(0 < n[i] - split.class_counts[i] <= v for i in changed)
    # balance: exactly v per class; disjoint from train and test; test untouched
    val, train, test = split.val_indices, split.train_indices, split.test_indices
    assert np.bincount(labels[val], minlength=c).tolist() == [v] * c
    assert np.unique(val).size == val.size and np.array_equal(val, np.sort(val))
    assert not set(val.tolist()) & set(train.tolist())
    assert np.array_equal(test, base.test_indices)
    if base.source == "digits":  # test and val come from one pool there
        assert not set(val.tolist()) & set(test.tolist())
    # unchanged classes: the v = 0 selection, same order; val drawn from the images it leaves
    # unused. Changed classes: a prefix of the v = 0 selection (the profile applied after the
    # reservation).
    old, new = _per_class(base.train_indices, labels, c), _per_class(train, labels, c)
    vals = _per_class(val, labels, c)
    for i in range(c):
        if i in changed:
            assert np.array_equal(new[i], old[i][:pool_sizes[i] - v])
        else:
            assert np.array_equal(new[i], old[i])
            assert not set(vals[i].tolist()) & set(old[i].tolist())
    assert split.shot_groups.tolist() == shot_groups(split.class_counts,
                                                     **split.thresholds).tolist()


@pytest.mark.parametrize("imb,v,changed,total", [
    (100, 20, [0], 10847 - 20),           # n_1 = 477 <= 480: only the head (500 -> 480)
    (10, 20, [0, 1], 19573 - 20 - 8),     # n_1 = 488 > 480 too (488 -> 480)
    (100, 50, [0, 1, 2], 10847 - 50 - 27 - 5),  # 500, 477, 455 -> 450; n_3 = 434
])
def test_val_split_cifar100_known_counts(cifar100_root, imb, v, changed, total):
    root, _, labels = cifar100_root
    cfg = {"source": "cifar100", "root": str(root)}
    base = build_split("c100", cfg, imb, 0)
    split = build_split("c100", {**cfg, "val_per_class": v}, imb, 0)
    assert split.train_indices.size == total and split.val_indices.size == 100 * v
    _check_val_split(base, split, labels, [500] * 100, v, changed)


def test_val_split_cifar10_and_fashion_head_only(cifar10_root, tmp_path):
    root, _, labels = cifar10_root
    cfg = {"source": "cifar10", "root": str(root)}
    base = build_split("c10", cfg, 100, 3)
    split = build_split("c10", {**cfg, "val_per_class": 20}, 100, 3)
    assert split.class_counts.tolist() == [4980, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    _check_val_split(base, split, labels, [5000] * 10, 20, [0])
    # 8 images per class, n = [8, 6, 5, 5, ...]: with v = 3, class 1 has 2 unused (< 3) and
    # drops to 5; class 2 has exactly 3 unused and keeps its 5
    _, fy = _fake_fashion(tmp_path, gz=True)
    fcfg = {"source": "fashion_mnist", "root": str(tmp_path), "n_max": 8}
    fbase = build_split("fm", fcfg, 4, 0)
    fsplit = build_split("fm", {**fcfg, "val_per_class": 3}, 4, 0)
    assert fbase.class_counts.tolist() == [8, 6, 5, 5, 4, 3, 3, 2, 2, 2]
    assert fsplit.class_counts.tolist() == [5, 5, 5, 5, 4, 3, 3, 2, 2, 2]
    _check_val_split(fbase, fsplit, fy, [8] * 10, 3, [0, 1])
    val = split_data(fsplit, "val")
    assert np.array_equal(val.labels, fy[fsplit.val_indices])
    assert np.array_equal(val.ids, fsplit.val_indices)


def test_val_split_digits_counts_and_round_trip(tmp_path):
    from sklearn.datasets import load_digits

    y = load_digits().target  # class sizes 178 182 177 183 181 182 181 179 174 180
    base = build_split("d", {"source": "digits"}, 10, 0)
    split = build_split("d", {"source": "digits", "val_per_class": 10}, 10, 0)
    pools = (np.bincount(y) - 30).tolist()  # after the 30-per-class test set
    # n = [144, 111, ...]; class 0 has 148 - 144 = 4 unused (< 10): 144 -> 138
    assert split.class_counts.tolist() == [138, 111, 86, 66, 51, 40, 31, 24, 18, 14]
    _check_val_split(base, split, y, pools, 10, [0])
    val = split_data(split, "val")
    assert val.images.shape == (100, 8, 8, 1) and np.array_equal(val.labels, y[val.ids])
    write_split(tmp_path / "d.npz", split)
    back = read_split(tmp_path / "d.npz")
    _assert_same(split, back)
    summary = json.loads((tmp_path / "d.json").read_text())
    assert summary["sizes"]["val"] == 100 and summary["dataset_cfg"]["val_per_class"] == 10


def test_val_split_deterministic_per_seed():
    cfg = {"source": "digits", "val_per_class": 10}
    a, b, c = (build_split("d", cfg, 10, s) for s in (0, 0, 1))
    _assert_same(a, b)
    assert not np.array_equal(a.val_indices, c.val_indices)
    assert a.fingerprint != build_split("d", {"source": "digits"}, 10, 0).fingerprint
    assert a.fingerprint != build_split("d", {**cfg, "val_per_class": 11}, 10, 0).fingerprint


def test_val_per_class_zero_is_todays_split(cifar10_root):
    root, _, _ = cifar10_root
    cfg = {"source": "cifar10", "root": str(root)}
    for name, c in (("c10", cfg), ("d", {"source": "digits"})):
        base = build_split(name, c, 100, 0)
        zero = build_split(name, {**c, "val_per_class": 0}, 100, 0)
        _assert_same(base, zero)  # indices, counts, dataset_cfg and fingerprint
        assert zero.val_indices is None and "val_per_class" not in zero.dataset_cfg


def test_val_per_class_refused_where_it_cannot_apply(tmp_path):
    lists = _imagenet_lists(tmp_path)
    cfg = {"source": "imagenet_lt", "root": str(tmp_path), "lists": str(lists)}
    assert build_split("inlt", {**cfg, "val_per_class": 0}, None, 0).val_indices.size == 3
    with pytest.raises(LtpipeError, match=r"imagenet_lt has its own validation split "
                       r"\(ImageNet_LT_val\.txt\): remove val_per_class"):
        build_split("inlt", {**cfg, "val_per_class": 5}, None, 0)
    _write_lists(tmp_path, "iNaturalist18", {"train": ["a.jpg 0"], "val": ["c.jpg 1"]})
    with pytest.raises(LtpipeError, match=r"iNaturalist18_val\.txt is the test set"):
        build_split("inat", {"source": "inat2018", "root": str(tmp_path),
                             "val_per_class": 1}, None, 0)
    for bad in (-1, True, 2.5):
        with pytest.raises(LtpipeError, match=rf"val_per_class: {bad!r} must be an integer >= 0"):
            build_split("d", {"source": "digits", "val_per_class": bad}, 10, 0)
    # class 8 has 174 - 30 = 144 images after the test set: 144 would leave it none
    with pytest.raises(LtpipeError, match=r"val_per_class=144: class 8 has only 144 images.*"
                       r"lower val_per_class below 144"):
        build_split("d", {"source": "digits", "val_per_class": 144}, 10, 0)
