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
  (iNaturalist 2018's ``val`` list is the test set and there is no val part).

The profile sources have no validation set of their own. ``val_per_class: v`` (default 0: none,
the published splits) holds out ``v`` images per class from the training pool, disjoint from the
training part and the test set (``select_lt_and_val``): from the images the profile leaves
unused where a class has at least ``v`` of them, otherwise reserved before the profile, which
lowers that class's count to ``pool - v``. The list-file sources refuse it.

Indices always point into a pool, and ``ids`` of loaded data are those indices (stable across
runs: the row of the source's own train/test set, or for digits of ``load_digits``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe import plugins
from ltpipe.data import formats
from ltpipe.data.listfile import FileListData, parse_list_file
from ltpipe.data.profiles import class_counts, lt_counts, select_lt_and_val, stratified_holdout
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


class ListSource(Source):
    """A natively long-tailed set given by list files under ``lists`` and images under ``root``."""

    natively_long_tailed = True
    LAYOUTS = {
        "imagenet_lt": (1000, {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt",
                               "test": "ImageNet_LT_test.txt"}),
        "places_lt": (365, {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt",
                            "test": "Places_LT_test.txt"}),
        "inat2018": (8142, {"train": "iNaturalist18_train.txt",
                            "test": "iNaturalist18_val.txt"}),
    }

    def __init__(self, cfg: dict[str, Any], name: str):
        super().__init__(cfg)
        self.name = name
        default_c, files = self.LAYOUTS[name]
        self.num_classes = int(cfg.get("num_classes") or default_c)
        self.root = _root(cfg, name)
        self.lists = Path(cfg.get("lists") or self.root).expanduser()
        self.files = {part: self.lists / fname for part, fname in files.items()}
        self.part_pool = {part: part for part in files}
        self.class_names = [str(i) for i in range(self.num_classes)]
        self.image_shape = (None, None, 3)  # images vary in size; decoded as RGB
        self._parsed: dict[str, tuple[list[str], np.ndarray]] = {}

    def _parse(self, pool: str) -> tuple[list[str], np.ndarray]:
        if pool not in self._parsed:
            self._parsed[pool] = parse_list_file(self.files[pool], self.num_classes)
        return self._parsed[pool]

    def labels(self, pool: str) -> np.ndarray:
        return self._parse(pool)[1]

    def load(self, pool: str, indices: np.ndarray) -> FileListData:
        paths, labels = self._parse(pool)
        idx = np.asarray(indices, dtype=np.int64)
        return FileListData(root=self.root, paths=[paths[i] for i in idx],
                            labels=labels[idx].astype(np.int64), ids=idx.copy())

    def select(self, imbalance_factor: float | None, seed: int) -> dict[str, np.ndarray]:
        self.val_per_class()  # refuses v > 0: the lists define every part
        if imbalance_factor is not None:
            raise LtpipeError(
                f"{self.name} is long-tailed natively: set imbalance_factor to null "
                f"(got {imbalance_factor!r})"
            )
        return {part: np.arange(self.labels(part).size, dtype=np.int64) for part in self.files}

    def fingerprint(self) -> str:
        return stable_hash({"source": self.name, "num_classes": self.num_classes,
                            "files": {p.name: formats.file_digest(p)
                                      for p in self.files.values()}})


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
}
"""The registry of data sources: every other list of sources (the config schema's choices, the
config checks, the report's class counts) is read from here."""
#: the sources of this package; plug-in sources (entry points ``ltpipe.sources``) join SOURCES
BUILTIN_SOURCES: tuple[str, ...] = tuple(SOURCES)
SOURCES.update({name: (lambda cfg, _n=name: source_class(_n)(cfg)) for name in plugins.names(
    "sources") if name not in BUILTIN_SOURCES})

#: the sources that draw a long-tailed profile from a balanced pool (``imbalance_factors`` apply)
PROFILE_SOURCES: tuple[str, ...] = tuple(n for n in SOURCES if n not in ListSource.LAYOUTS)
#: the natively long-tailed sources given by list files (``root`` and ``lists`` apply)
LIST_SOURCES: tuple[str, ...] = tuple(n for n in SOURCES if n in ListSource.LAYOUTS)
#: classes of each source (a list source's ``num_classes`` setting may override its default)
NUM_CLASSES: dict[str, int] = {
    "digits": DigitsSource.num_classes,
    "fashion_mnist": FashionMnistSource.num_classes,
    **{name: layout["num_classes"] for name, layout in formats.CIFAR_LAYOUTS.items()},
    **{name: layout[0] for name, layout in ListSource.LAYOUTS.items()},
}
assert set(NUM_CLASSES) == set(BUILTIN_SOURCES), "every built-in source needs its class count"

DEFAULT_SHOT_THRESHOLDS: dict[str, dict[str, int]] = {
    name: dict(DEFAULT_THRESHOLDS) for name in SOURCES
}
DEFAULT_SHOT_THRESHOLDS["digits"] = {"many": 50, "few": 20}


def num_classes_of(dataset_cfg: dict[str, Any]) -> int:
    """Classes of a data set entry without opening it: its ``num_classes`` or its source's."""
    src = dataset_cfg["source"]
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
    if value == 0 or source not in ListSource.LAYOUTS:
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
