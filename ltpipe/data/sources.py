"""Data sources: where the images come from, and how each source's split indices are chosen.

``SOURCES`` maps a source name to a factory ``open_source(dataset_cfg) -> Source`` (plug-in
sources, entry points ``ltpipe.sources``, join it: docs/extending.md). A source
knows its classes, its image shape, a content fingerprint, its *pools* (the source's own
sets: CIFAR/Fashion-MNIST ``train``/``test``; digits one pool ``all``; list files one pool per
list file) and how the split parts ``train``/``val``/``test`` are drawn from them:

- ``cifar10``, ``cifar100``, ``fashion_mnist``: the exponential profile on the source's train set
  (``select_lt_indices``); the test set is the source's test set, unchanged.
- ``digits``: first a stratified balanced test set of ``test_per_class`` per class (seeded with
  the split seed), then the profile on the rest; ``n_max`` defaults to the smallest remaining
  class (174 - 30 = 144 at the default 30), so every class can supply its ``n_i``.
- ``imagenet_lt``, ``places_lt``, ``inat2018``: long-tailed natively; every listed image is used
  (iNaturalist 2018's ``val`` list is the test set and there is no val part): presets of
  ``listfile``.
- ``listfile`` (the user's own list files) and ``imagefolder`` (``train/<class>/*``,
  ``test/<class>/*``, optional ``val/<class>/*``): every image (``native``), or the profile on
  the train pool with ``n_max`` defaulting to its smallest class (:class:`FileSource`).

Each source also names the files whose changes must rebuild its split (``watched``);
:func:`data_state` digests them for the split rule's params (docs/data-sources.md).

The profile sources have no validation set of their own. ``val_per_class: v`` (default 0: none,
the published splits) holds out ``v`` images per class from the training pool, disjoint from the
training part and the test set (``select_lt_and_val``): from the images the profile leaves
unused where a class has at least ``v`` of them, otherwise reserved before the profile, which
lowers that class's count to ``pool - v``. The published list-file presets refuse it; ``listfile``
and ``imagefolder`` take it with an imbalance factor and without their own val part.

Indices always point into a pool, and ``ids`` of loaded data are those indices (stable across
runs: the row of the source's own train/test set, or for digits of ``load_digits``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe import plugins
from ltpipe.data import formats
from ltpipe.data.listfile import FileListData, parse_list_file
from ltpipe.data.profiles import class_counts, lt_counts, select_lt_and_val, stratified_holdout
from ltpipe.data.watch import files_state
from ltpipe.utils import LtpipeError, sha256_array, stable_hash

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
DEFAULT_THRESHOLDS = {"many": 100, "few": 20}


@dataclass
class InMemoryData:
    """Images held in memory; ``ids`` index the source's own pool (stable across runs)."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    ids: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Source:
    """Base class; subclasses fill the attributes and implement the pool methods."""

    name: str = ""
    num_classes: int = 0
    class_names: list[str]
    image_shape: tuple
    default_n_max: int = 0
    part_pool: dict[str, str] = {"train": "train", "val": "train", "test": "test"}
    natively_long_tailed = False

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = dict(cfg)

    def fingerprint(self) -> str:
        """Cheap but real hash of the source content."""
        raise NotImplementedError

    def watched(self) -> tuple[Path, list[str]]:
        """The files whose changes must rebuild the split: ``(root, paths)``, paths relative to
        ``root`` or absolute (:func:`data_state`)."""
        return Path("."), []

    def labels(self, pool: str) -> np.ndarray:
        """Labels of a whole pool."""
        raise NotImplementedError

    def load(self, pool: str, indices: np.ndarray) -> InMemoryData | FileListData:
        """The samples ``indices`` of ``pool``; their ``ids`` are ``indices``."""
        raise NotImplementedError

    def select(self, imbalance_factor: float | None, seed: int) -> dict[str, np.ndarray]:
        """Split part -> indices into that part's pool."""
        raise NotImplementedError

    def val_per_class(self) -> int:
        """``dataset_cfg['val_per_class']`` (0 when absent); refused where it cannot apply."""
        value = self.cfg.get("val_per_class", 0)
        problem = val_per_class_problem(self.name, value)
        if problem:
            raise LtpipeError(problem)
        return int(value)

    def n_max(self, default: int) -> int:
        """``dataset_cfg['n_max']`` when set, else ``default``."""
        value = self.cfg.get("n_max")
        return default if value is None else value


def _root(cfg: dict[str, Any], source: str, default: str | None = None) -> Path:
    root = cfg.get("root", default)
    if not root:
        raise LtpipeError(
            f"dataset.root is required for source {source!r}: set it to the data folder"
        )
    return Path(root).expanduser()


class ArraySource(Source):
    """An in-memory source whose pools are loaded once and kept (read-only)."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self._pools: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _read_pool(self, pool: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def pool(self, pool: str) -> tuple[np.ndarray, np.ndarray]:
        if pool not in self._pools:
            images, labels = self._read_pool(pool)
            if images.shape[0] != labels.shape[0]:
                raise LtpipeError(
                    f"{self.name} {pool}: {images.shape[0]} images but {labels.shape[0]} labels"
                )
            class_counts(labels, self.num_classes)  # validates the label range
            images.setflags(write=False)
            labels.setflags(write=False)
            self._pools[pool] = (images, labels)
        return self._pools[pool]

    def labels(self, pool: str) -> np.ndarray:
        return self.pool(pool)[1]

    def load(self, pool: str, indices: np.ndarray) -> InMemoryData:
        images, labels = self.pool(pool)
        idx = np.asarray(indices, dtype=np.int64)
        return InMemoryData(images=images[idx], labels=labels[idx].astype(np.int64), ids=idx.copy())

    def select(self, imbalance_factor: float | None, seed: int) -> dict[str, np.ndarray]:
        counts = self.profile_counts(imbalance_factor)
        train, val = select_lt_and_val(self.labels("train"), counts, seed, self.val_per_class())
        return self._parts(train, val, np.arange(self.labels("test").size, dtype=np.int64))

    def _parts(self, train: np.ndarray, val: np.ndarray, test: np.ndarray
               ) -> dict[str, np.ndarray]:
        """The split parts; ``val`` only with ``val_per_class > 0``."""
        parts = {"train": train, "test": test}
        if self.val_per_class():
            parts["val"] = val
        return parts

    def profile_counts(self, imbalance_factor: float | None, default_n_max: int = 0) -> list[int]:
        if imbalance_factor is None:
            raise LtpipeError(
                f"source {self.name!r} needs an imbalance_factor (e.g. 10, 50, 100, 200; 1 for "
                "the balanced set): only list-file data sets are long-tailed natively"
            )
        n_max = self.n_max(default_n_max or self.default_n_max)
        return lt_counts(n_max, self.num_classes, imbalance_factor)


class CifarSource(ArraySource):
    """CIFAR-10/100 from torchvision's python pickles under ``root``."""

    image_shape = (32, 32, 3)

    def __init__(self, cfg: dict[str, Any], name: str):
        super().__init__(cfg)
        self.name = name
        layout = formats.CIFAR_LAYOUTS[name]
        self.num_classes = layout["num_classes"]
        self.default_n_max = 5000 if name == "cifar10" else 500
        self.root = _root(cfg, name)
        self._ensure_files(layout)
        self.class_names = formats.read_cifar_names(self.root, name)

    def _ensure_files(self, layout: dict[str, Any]) -> None:
        missing = formats.cifar_missing(self.root, self.name)
        if missing and self.cfg.get("download", False):
            import torchvision.datasets as tvd  # only on request: it is a heavy import

            cls = tvd.CIFAR10 if self.name == "cifar10" else tvd.CIFAR100
            for train in (True, False):
                cls(str(self.root), train=train, download=True)
            missing = formats.cifar_missing(self.root, self.name)
        if missing:
            raise LtpipeError(
                f"{self.name}: missing {missing} in {self.root / layout['folder']}; put "
                f"torchvision's '{layout['folder']}/' folder (the python pickle version of the "
                f"archive, extracted) inside dataset.root={self.root}, or set "
                "dataset.download: true"
            )

    def _read_pool(self, pool: str) -> tuple[np.ndarray, np.ndarray]:
        return formats.read_cifar(self.root, self.name, pool)

    def watched(self) -> tuple[Path, list[str]]:
        return self.root, [str(p) for p in formats.cifar_files(self.root, self.name)]

    def fingerprint(self) -> str:
        files = formats.cifar_files(self.root, self.name)
        return stable_hash({"source": self.name,
                            "files": {p.name: formats.file_digest(p) for p in files}})


class FashionMnistSource(ArraySource):
    """Fashion-MNIST from its four IDX files (gzipped or raw)."""

    name = "fashion_mnist"
    num_classes = 10
    image_shape = (28, 28, 1)
    default_n_max = 6000
    _STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.root = _root(cfg, self.name, FASHION_MNIST_ROOT)
        if not self.root.is_dir():
            raise LtpipeError(
                f"fashion_mnist: folder {self.root} not found; install the Debian package "
                "dataset-fashion-mnist or set dataset.root to a folder with the IDX files"
            )
        self.class_names = list(FASHION_CLASSES)
        self.files = {p: tuple(formats.find_idx(self.root, s) for s in self._STEMS[p])
                      for p in self._STEMS}

    def _read_pool(self, pool: str) -> tuple[np.ndarray, np.ndarray]:
        img_path, lab_path = self.files[pool]
        images = formats.read_idx(img_path)
        labels = formats.read_idx(lab_path).astype(np.int64)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise LtpipeError(
                f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}"
            )
        return np.ascontiguousarray(images[..., None]), labels

    def watched(self) -> tuple[Path, list[str]]:
        return self.root, [str(p) for pair in self.files.values() for p in pair]

    def fingerprint(self) -> str:
        paths = [p for pair in self.files.values() for p in pair]
        return stable_hash({"source": self.name,
                            "files": {p.name: formats.file_digest(p) for p in paths}})


class DigitsSource(ArraySource):
    """scikit-learn's bundled 8x8 digits (0..16 scaled to uint8 by round(v * 255 / 16))."""

    name = "digits"
    num_classes = 10
    image_shape = (8, 8, 1)
    part_pool = {"train": "all", "val": "all", "test": "all"}

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.class_names = [str(i) for i in range(10)]
        self.test_per_class = int(cfg.get("test_per_class", 30))

    def _read_pool(self, pool: str) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return np.ascontiguousarray(images), bunch.target.astype(np.int64)

    def watched(self) -> tuple[Path, list[str]]:
        from importlib.util import find_spec  # locates scikit-learn without importing it

        spec = find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            return Path("."), []
        folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        return folder, ["digits.csv.gz"]

    def fingerprint(self) -> str:
        images, labels = self.pool("all")
        return stable_hash({"source": self.name, "images": sha256_array(images),
                            "labels": sha256_array(labels)})

    def select(self, imbalance_factor: float | None, seed: int) -> dict[str, np.ndarray]:
        labels = self.labels("all")
        test, rest = stratified_holdout(labels, self.test_per_class, self.num_classes, seed)
        default_n_max = int(class_counts(labels[rest], self.num_classes).min())
        counts = self.profile_counts(imbalance_factor, default_n_max)
        train, val = select_lt_and_val(labels[rest], counts, seed, self.val_per_class())
        return self._parts(rest[train], rest[val], test)


class FileSource(Source):
    """A source of image files named by path under ``root``, one pool per part it has.

    Subclasses list each pool's ``(relative paths, labels)`` in :meth:`_scan`. With no imbalance
    factor (``native``) every image of every pool is used; with one, the long-tailed profile is
    drawn from the ``train`` pool (``n_max`` defaults to the smallest class there), the test
    pool is used whole, and the validation part is the source's own ``val`` pool if it has one,
    else ``val_per_class`` images per class held out from the training pool.
    """

    natively_long_tailed = False  # True: native only (the published list files)

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.image_shape = (None, None, 3)  # images vary in size; decoded as RGB, resized
        self._parsed: dict[str, tuple[list[str], np.ndarray]] = {}

    @property
    def pools(self) -> list[str]:
        """The parts this source has its own images for (train, test, maybe val)."""
        return [p for p in ("train", "val", "test") if self.part_pool.get(p) == p]

    def _scan(self, pool: str) -> tuple[list[str], np.ndarray]:
        raise NotImplementedError

    def _parse(self, pool: str) -> tuple[list[str], np.ndarray]:
        if pool not in self._parsed:
            self._parsed[pool] = self._scan(pool)
        return self._parsed[pool]

    def labels(self, pool: str) -> np.ndarray:
        return self._parse(pool)[1]

    def load(self, pool: str, indices: np.ndarray) -> FileListData:
        paths, labels = self._parse(pool)
        idx = np.asarray(indices, dtype=np.int64)
        return FileListData(root=self.root, paths=[paths[i] for i in idx],
                            labels=labels[idx].astype(np.int64), ids=idx.copy())

    def select(self, imbalance_factor: float | None, seed: int) -> dict[str, np.ndarray]:
        v = self.val_per_class()
        if imbalance_factor is None:
            if v:
                raise LtpipeError(
                    f"{self.name}: val_per_class: {v} needs an imbalance factor (the native "
                    "split uses every image as given): remove val_per_class, or give a "
                    f"{'val/ folder' if self.name == 'imagefolder' else 'val list'}"
                )
            return {p: np.arange(self.labels(p).size, dtype=np.int64) for p in self.pools}
        if self.natively_long_tailed:
            raise LtpipeError(
                f"{self.name} is long-tailed natively: set imbalance_factor to null "
                f"(got {imbalance_factor!r})"
            )
        if v and "val" in self.pools:
            raise LtpipeError(
                f"{self.name}: val_per_class: {v} but the data set has its own validation "
                "images (val/ or a val list); remove one of them"
            )
        labels = self.labels("train")
        present = class_counts(labels, self.num_classes)
        counts = lt_counts(self.n_max(max(int(present.min()), 1)), self.num_classes,
                           imbalance_factor)
        train, val = select_lt_and_val(labels, counts, seed, v)
        parts = {"train": train, "test": np.arange(self.labels("test").size, dtype=np.int64)}
        if "val" in self.pools:
            parts["val"] = np.arange(self.labels("val").size, dtype=np.int64)
        elif v:
            parts["val"] = val
        return parts

    def listing_hash(self) -> str:
        """Hash of the class names and every pool's (path, label) listing."""
        return stable_hash({"source": self.name, "classes": list(self.class_names),
                            "pools": {p: [sha256_array(np.asarray(self._parse(p)[0], dtype=str)),
                                          sha256_array(self._parse(p)[1])]
                                      for p in self.pools}})

    def watched(self) -> tuple[Path, list[str]]:
        paths = [p for pool in self.pools for p in self._parse(pool)[0]]
        return self.root, paths


class ListSource(FileSource):
    """Images under ``root`` named by list files (``relative/path label`` lines) in ``lists``.

    ``listfile``: the user's own lists, ``list_files`` naming them (defaults ``train.txt``,
    ``test.txt``, and ``val.txt`` and ``classes.txt`` when present: ``classes.txt`` has one class
    name per line, line k naming label k). ``imagenet_lt``, ``places_lt``, ``inat2018``: presets
    (:attr:`LAYOUTS`: class count and the published list names), natively long-tailed.
    """

    LAYOUTS = {
        "imagenet_lt": (1000, {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt",
                               "test": "ImageNet_LT_test.txt"}),
        "places_lt": (365, {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt",
                            "test": "Places_LT_test.txt"}),
        "inat2018": (8142, {"train": "iNaturalist18_train.txt",
                            "test": "iNaturalist18_val.txt"}),
    }
    #: the generic source's list names; ``val`` and ``classes`` are used when the file exists
    LIST_FILES = {"train": "train.txt", "test": "test.txt", "val": "val.txt",
                  "classes": "classes.txt"}
    OPTIONAL = ("val", "classes")

    def __init__(self, cfg: dict[str, Any], name: str):
        super().__init__(cfg)
        self.name = name
        self.root = _root(cfg, name)
        self.lists = Path(cfg.get("lists") or self.root).expanduser()
        self.natively_long_tailed = name in self.LAYOUTS
        if name in self.LAYOUTS:
            default_c, names = self.LAYOUTS[name]
        else:
            default_c, names = 0, {**self.LIST_FILES, **(cfg.get("list_files") or {})}
            unknown = sorted(set(names) - set(self.LIST_FILES))
            if unknown:
                raise LtpipeError(f"list_files: unknown key(s) {unknown}; allowed: "
                                  f"{sorted(self.LIST_FILES)}")
        given = cfg.get("list_files") or {}
        self.files = {k: self.lists / f for k, f in names.items()
                      if k not in self.OPTIONAL or k in given or name in self.LAYOUTS
                      or (self.lists / f).is_file()}
        self.part_pool = {part: part for part in ("train", "val", "test") if part in self.files}
        if "val" not in self.files and not self.natively_long_tailed:
            self.part_pool["val"] = "train"  # val_per_class holds out from the training list
        if "classes" in self.files:
            self.class_names = read_class_names(self.files["classes"])
            self.num_classes = len(self.class_names)
            if cfg.get("num_classes") not in (None, self.num_classes):
                raise LtpipeError(
                    f"num_classes: {cfg['num_classes']} but {self.files['classes']} names "
                    f"{self.num_classes} classes; remove num_classes"
                )
        else:
            self.num_classes = int(cfg.get("num_classes") or default_c or self._max_label() + 1)
            self.class_names = [str(i) for i in range(self.num_classes)]

    def _max_label(self) -> int:
        """The largest label of all lists (the class count when neither classes nor
        num_classes is given)."""
        top = -1
        for pool in self.pools:
            top = max(top, int(parse_list_file(self.files[pool], 2**62)[1].max()))
        return top

    def _scan(self, pool: str) -> tuple[list[str], np.ndarray]:
        return parse_list_file(self.files[pool], self.num_classes)

    def fingerprint(self) -> str:
        return stable_hash({"source": self.name, "num_classes": self.num_classes,
                            "files": {p.name: formats.file_digest(p)
                                      for p in self.files.values()}})

    def watched(self) -> tuple[Path, list[str]]:
        lists = [str(p) for p in self.files.values()]  # absolute: os.path.join keeps them
        try:
            _, images = super().watched()
        except LtpipeError:  # a list missing or malformed: the split job says which
            images = []
        return self.root, lists + images


def read_class_names(path: Path) -> list[str]:
    """Class names, one per line (line k names label k); blank or repeated names are errors."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LtpipeError(f"cannot read class names file {path} ({exc}); save it as UTF-8 "
                          "text with one class name per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for lineno, name in enumerate(names, start=1):
        if not name:
            raise LtpipeError(f"{path}:{lineno}: empty class name; one name per line, line k "
                              "naming label k")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LtpipeError(f"{path}: class name(s) {dup} repeated; each class needs its own name")
    if len(names) < 2:
        raise LtpipeError(f"{path}: names {len(names)} class(es); a data set needs at least 2")
    return names


class ImageFolderSource(FileSource):
    """One folder per class: ``root/train/<class>/*``, ``root/test/<class>/*``, optional
    ``root/val/<class>/*``; files in any format PIL reads (hidden files are skipped).

    The classes are the folder names of ``train/``, sorted (torchvision's ``ImageFolder``
    order): label k is the k-th name. Every test (and val) class must be a train class; a train
    class with no test folder is allowed (its test accuracy is reported as none).
    """

    name = "imagefolder"
    PARTS = ("train", "val", "test")

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.root = _root(cfg, self.name)
        for part in ("train", "test"):
            if not (self.root / part).is_dir():
                raise LtpipeError(
                    f"imagefolder: {self.root / part} is not a folder; dataset.root must hold "
                    "train/<class>/* and test/<class>/* (and optionally val/<class>/*)"
                )
        self.part_pool = {p: p for p in self.PARTS if (self.root / p).is_dir()}
        self.part_pool.setdefault("val", "train")  # val_per_class holds out from train/
        self.class_names = self._class_dirs("train")
        if len(self.class_names) < 2:
            raise LtpipeError(f"imagefolder: {self.root / 'train'} has "
                              f"{len(self.class_names)} class folder(s); it needs one folder per "
                              "class, at least 2")
        self.num_classes = len(self.class_names)

    def _class_dirs(self, part: str) -> list[str]:
        with os.scandir(self.root / part) as it:
            entries = sorted(it, key=lambda e: e.name)
        stray = [e.name for e in entries if not e.name.startswith(".") and not e.is_dir()]
        if stray:
            raise LtpipeError(f"imagefolder: {self.root / part} holds file(s) outside any class "
                              f"folder, e.g. {stray[0]!r}; move them into a class folder")
        return [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]

    def _scan(self, pool: str) -> tuple[list[str], np.ndarray]:
        classes = self._class_dirs(pool)
        index = {c: k for k, c in enumerate(self.class_names)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise LtpipeError(
                f"imagefolder: class folder(s) {unknown} in {self.root / pool} have no folder in "
                f"{self.root / 'train'}; every {pool} class needs training images (add "
                f"train/{unknown[0]}/ or remove {pool}/{unknown[0]}/)"
            )
        paths: list[str] = []
        labels: list[int] = []
        for cls in classes:
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root / pool / cls, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = os.path.relpath(dirpath, self.root)
                found += [os.path.join(rel, f) for f in sorted(filenames) if not f.startswith(".")]
            if not found:
                raise LtpipeError(f"imagefolder: class folder {self.root / pool / cls} is empty; "
                                  "put its images there or remove the folder")
            paths += found
            labels += [index[cls]] * len(found)
        return paths, np.asarray(labels, dtype=np.int64)

    def select(self, imbalance_factor: float | None, seed: int) -> dict[str, np.ndarray]:
        parts = super().select(imbalance_factor, seed)
        self.check_images()
        return parts

    def check_images(self) -> None:
        """Open every image's header with PIL; an unreadable one is an error naming the file."""
        from PIL import Image, UnidentifiedImageError

        for pool in self.pools:
            for rel in self._parse(pool)[0]:
                path = self.root / rel
                try:
                    with Image.open(path) as img:
                        img.size  # noqa: B018 - the header is parsed on open
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                    raise LtpipeError(
                        f"imagefolder: {path} is not an image PIL can read ({exc}); replace "
                        "or remove it"
                    ) from None

    def fingerprint(self) -> str:
        return self.listing_hash()

    def watched(self) -> tuple[Path, list[str]]:
        try:
            _, files = super().watched()
        except LtpipeError:  # the split job reports it; a fix changes the listing below
            files = []
            files = [os.path.join(p, d) for p in self.PARTS if (self.root / p).is_dir()
                     for d in sorted(os.listdir(self.root / p))]
        return self.root, files


def _factory(cls: type, *args: Any) -> Callable[[dict[str, Any]], Source]:
    def open_source(cfg: dict[str, Any]) -> Source:
        return cls(cfg, *args)

    open_source.__doc__ = f"Open the {cls.__name__} {args or ''} from a dataset config."
    return open_source


SOURCES: dict[str, Callable[[dict[str, Any]], Source]] = {
    "digits": _factory(DigitsSource),
    "fashion_mnist": _factory(FashionMnistSource),
    "cifar10": _factory(CifarSource, "cifar10"),
    "cifar100": _factory(CifarSource, "cifar100"),
    "imagenet_lt": _factory(ListSource, "imagenet_lt"),
    "places_lt": _factory(ListSource, "places_lt"),
    "inat2018": _factory(ListSource, "inat2018"),
    "listfile": _factory(ListSource, "listfile"),
    "imagefolder": _factory(ImageFolderSource),
}
"""The registry of data sources: every other list of sources (the config schema's choices, the
config checks, the report's class counts) is read from here."""
#: the sources of this package; plug-in sources (entry points ``ltpipe.sources``) join SOURCES
BUILTIN_SOURCES: tuple[str, ...] = tuple(SOURCES)
SOURCES.update({name: (lambda cfg, _n=name: source_class(_n)(cfg)) for name in plugins.names(
    "sources") if name not in BUILTIN_SOURCES})

#: the user's own data (image folders, list files): native counts or a profile, either
USER_SOURCES: tuple[str, ...] = ("listfile", "imagefolder")
#: the sources that draw a long-tailed profile from a balanced pool (``imbalance_factors`` apply)
PROFILE_SOURCES: tuple[str, ...] = tuple(n for n in SOURCES
                                         if n not in ListSource.LAYOUTS and n not in USER_SOURCES)
#: the natively long-tailed sources given by list files (``root`` and ``lists`` apply)
LIST_SOURCES: tuple[str, ...] = tuple(n for n in SOURCES if n in ListSource.LAYOUTS)
#: classes of each source (a list source's ``num_classes`` setting may override its default)
NUM_CLASSES: dict[str, int] = {
    "digits": DigitsSource.num_classes,
    "fashion_mnist": FashionMnistSource.num_classes,
    **{name: layout["num_classes"] for name, layout in formats.CIFAR_LAYOUTS.items()},
    **{name: layout[0] for name, layout in ListSource.LAYOUTS.items()},
    **{name: None for name in USER_SOURCES},  # read from the data (num_classes_of)
}
assert set(NUM_CLASSES) == set(BUILTIN_SOURCES), "every built-in source needs its class count"

DEFAULT_SHOT_THRESHOLDS: dict[str, dict[str, int]] = {
    name: dict(DEFAULT_THRESHOLDS) for name in SOURCES
}
DEFAULT_SHOT_THRESHOLDS["digits"] = {"many": 50, "few": 20}


def num_classes_of(dataset_cfg: dict[str, Any]) -> int:
    """Classes of a data set entry: its ``num_classes`` or its source's; the user's own data
    (``USER_SOURCES``) is opened (class folders or the class names file; no image is read), a
    plug-in source's class is imported (its ``num_classes``)."""
    src = dataset_cfg["source"]
    if src in USER_SOURCES:
        return _opened(json.dumps(dataset_cfg, sort_keys=True)).num_classes
    return int(dataset_cfg.get("num_classes") or NUM_CLASSES.get(src)
               or source_class(src).num_classes)


def source_class(name: str) -> type[Source]:
    """The ``Source`` subclass of plug-in source ``name`` (entry point ``ltpipe.sources``),
    imported on first use; one that is not a ``Source`` subclass with a positive class count
    is an ``LtpipeError`` naming its distribution and the fix."""
    cls, where = plugins.load("sources", name)
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise LtpipeError(f"{where} is not a subclass of ltpipe.data.sources.Source; point the "
                          "entry point at one (e.g. a subclass of ArraySource)")
    if not (isinstance(cls.num_classes, int) and cls.num_classes >= 1):
        raise LtpipeError(f"{where}: num_classes={cls.num_classes!r}; set the class attribute "
                          "num_classes to the number of classes")
    return cls


def val_per_class_problem(source: str, value: Any) -> str | None:
    """Why ``val_per_class: value`` does not apply to ``source`` (a one-line fix), else None.

    It must be an integer >= 0, and above 0 only for a profile source: the list-file sources
    keep their published parts.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return (f"val_per_class: {value!r} must be an integer >= 0 (images per class held out "
                "for validation; 0, the default, holds out none)")
    if value == 0 or source not in ListSource.LAYOUTS:  # USER_SOURCES: checked with the IFs
        return None
    lists = ListSource.LAYOUTS[source][1]
    if "val" in lists:
        why = f"{source} has its own validation split ({lists['val']})"
    else:
        why = f"{source}'s parts are its lists ({lists['test']} is the test set)"
    return (f"val_per_class: {value} is for the profile sources {list(PROFILE_SOURCES)} only; "
            f"{why}: remove val_per_class")


def open_source(dataset_cfg: dict[str, Any]) -> Source:
    """Open the source named by ``dataset_cfg['source']``."""
    name = dataset_cfg.get("source")
    if name not in SOURCES:
        raise LtpipeError(f"dataset.source={name!r} is unknown; expected one of {sorted(SOURCES)}")
    return SOURCES[name](dataset_cfg)


@lru_cache(maxsize=16)
def _opened(cfg_json: str) -> Source:
    """One opened source per data set entry and process (the DAG build opens it twice)."""
    return open_source({**json.loads(cfg_json), "download": False})


@lru_cache(maxsize=64)
def _state(cfg_json: str) -> str:
    cfg = json.loads(cfg_json)
    try:
        root, paths = _opened(cfg_json).watched()
    except LtpipeError as err:  # the split job reports it; fixing it changes this state
        return "unavailable: " + stable_hash(str(err))
    return files_state(root, paths, cfg.get("change_detection", "stat"))


def data_state(dataset_cfg: dict[str, Any]) -> str:
    """Digest of the state of a data set's files (:mod:`ltpipe.data.watch`): the split rule's
    ``data`` param, so that changing, adding or removing a file reruns the split and what it
    feeds. Never raises for missing data (the split job does, with the fix); never downloads."""
    return _state(json.dumps(dataset_cfg, sort_keys=True))
