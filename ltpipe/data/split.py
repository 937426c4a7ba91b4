"""The split artifact: which images of a source form train / val / test, with counts and groups.

A split is one ``.npz`` (index arrays, counts, shot groups and a JSON ``meta`` string; no pickles)
plus a human-readable ``.json`` sibling. Its ``fingerprint`` hashes everything that defines the
split (data set name, source and its content fingerprint, imbalance factor, seed, classes,
indices, counts, shot groups, thresholds and the data-defining part of the config), so it
changes iff the split changes. Keys that only say where the data lives (``root``, ``lists``,
``download``) are left out of it: moving the data does not change the split. ``val_per_class:
0`` is the default written out and is dropped (:func:`data_settings`), so it leaves a split and
its fingerprint exactly as without the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltpipe.data.listfile import FileListData
from ltpipe.data.profiles import GROUP_NAMES, class_counts, shot_groups
from ltpipe.data.sources import DEFAULT_SHOT_THRESHOLDS, InMemoryData, open_source
from ltpipe.utils import LtpipeError, atomic_path, sha256_array, stable_hash, write_json

FORMAT_VERSION = 1
LOCATION_KEYS = ("root", "lists", "download")
PARTS = ("train", "val", "test")
_ARRAYS = ("train_indices", "test_indices", "val_indices", "class_counts", "shot_groups")


@dataclass
class Split:
    """A train/val/test split of one source, with per-class training counts and shot groups."""

    dataset: str
    source: str
    source_fingerprint: str
    imbalance_factor: float | None
    seed: int
    num_classes: int
    class_names: list[str]
    image_shape: tuple
    train_indices: np.ndarray
    test_indices: np.ndarray
    val_indices: np.ndarray | None
    class_counts: np.ndarray
    shot_groups: np.ndarray
    thresholds: dict[str, int]
    dataset_cfg: dict[str, Any]
    fingerprint: str = field(default="")

    def indices(self, part: str) -> np.ndarray:
        """Indices of ``part`` (train/val/test) into the source's pool for that part."""
        if part not in PARTS:
            raise LtpipeError(f"split part {part!r} is unknown; expected one of {list(PARTS)}")
        idx = getattr(self, f"{part}_indices")
        if idx is None:
            raise LtpipeError(
                f"data set {self.dataset!r} ({self.source}) has no {part!r} part; use 'test' "
                "(or 'train') instead"
            )
        return idx


def compute_fingerprint(split: Split) -> str:
    """Hash of every field of ``split`` except ``fingerprint`` and location-only config keys."""
    cfg = {k: v for k, v in split.dataset_cfg.items() if k not in LOCATION_KEYS}
    arrays = {name: None if getattr(split, name) is None else sha256_array(getattr(split, name))
              for name in _ARRAYS}
    return stable_hash({
        "dataset": split.dataset, "source": split.source,
        "source_fingerprint": split.source_fingerprint,
        "imbalance_factor": (None if split.imbalance_factor is None
                             else float(split.imbalance_factor)),
        "seed": int(split.seed), "num_classes": int(split.num_classes),
        "class_names": list(split.class_names), "image_shape": list(split.image_shape),
        "thresholds": split.thresholds, "dataset_cfg": cfg, "arrays": arrays,
    })


def _thresholds(dataset_cfg: dict[str, Any], source: str) -> dict[str, int]:
    given = dataset_cfg.get("shot_thresholds") or {}
    out = {**DEFAULT_SHOT_THRESHOLDS[source], **given}
    if set(out) != {"many", "few"} or not all(isinstance(v, int) and v >= 0 for v in out.values()):
        raise LtpipeError(
            f"shot_thresholds={given!r}: expected {{'many': int, 'few': int}} with non-negative "
            "integers, e.g. {'many': 100, 'few': 20}"
        )
    return out


def data_settings(dataset_cfg: dict[str, Any]) -> dict[str, Any]:
    """``dataset_cfg`` without settings written out at their no-op default (``val_per_class:
    0``): what the split records and the split job's params, so writing the default changes
    neither the split's fingerprint nor Snakemake's view of the job."""
    return {k: v for k, v in dataset_cfg.items()
            if not (k == "val_per_class" and v == 0 and not isinstance(v, bool))}


def build_split(
    name: str, dataset_cfg: dict[str, Any], imbalance_factor: float | None, seed: int
) -> Split:
    """Build the split of data set ``name`` from ``dataset_cfg`` (see ``sources`` for the rules)."""
    source = open_source(dataset_cfg)
    thresholds = _thresholds(dataset_cfg, source.name)
    parts = source.select(imbalance_factor, int(seed))
    train_labels = source.labels(source.part_pool["train"])[parts["train"]]
    counts = class_counts(train_labels, source.num_classes)
    split = Split(
        dataset=str(name), source=source.name, source_fingerprint=source.fingerprint(),
        imbalance_factor=None if imbalance_factor is None else float(imbalance_factor),
        seed=int(seed), num_classes=source.num_classes, class_names=list(source.class_names),
        image_shape=tuple(source.image_shape),
        train_indices=parts["train"].astype(np.int64), test_indices=parts["test"].astype(np.int64),
        val_indices=parts["val"].astype(np.int64) if "val" in parts else None,
        class_counts=counts, shot_groups=shot_groups(counts, **thresholds),
        thresholds=thresholds, dataset_cfg=data_settings(dataset_cfg),
    )
    split.fingerprint = compute_fingerprint(split)
    return split


def _meta(split: Split) -> dict[str, Any]:
    from ltpipe import __version__

    return {
        "format_version": FORMAT_VERSION, "ltpipe_version": __version__,
        "dataset": split.dataset, "source": split.source,
        "source_fingerprint": split.source_fingerprint,
        "imbalance_factor": split.imbalance_factor, "seed": split.seed,
        "num_classes": split.num_classes, "class_names": split.class_names,
        "image_shape": list(split.image_shape), "thresholds": split.thresholds,
        "dataset_cfg": split.dataset_cfg, "fingerprint": split.fingerprint,
    }


def _summary(split: Split) -> dict[str, Any]:
    groups = {g: [split.class_names[c] for c in np.flatnonzero(split.shot_groups == i)]
              for i, g in enumerate(GROUP_NAMES)}
    sizes = {p: None if getattr(split, f"{p}_indices") is None
             else int(getattr(split, f"{p}_indices").size) for p in PARTS}
    counts = split.class_counts
    return {
        **_meta(split), "sizes": sizes,
        "n_max": int(counts.max()), "n_min": int(counts.min()),
        "actual_imbalance": float(counts.max() / max(int(counts.min()), 1)),
        "class_counts": {n: int(c) for n, c in zip(split.class_names, counts)},
        "shot_group_sizes": {g: len(v) for g, v in groups.items()},
        "shot_groups": groups,
    }


def write_split(path: str | Path, split: Split) -> None:
    """Write ``split`` to ``path`` (``*.npz``, atomic) and a readable ``*.json`` beside it.

    A split made by hand with ``fingerprint=""`` gets its fingerprint filled in; a non-empty
    fingerprint that no longer matches the fields is an error.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise LtpipeError(f"split path {path} must end in .npz (e.g. splits/cifar100_if100.npz)")
    if not split.fingerprint:
        split.fingerprint = compute_fingerprint(split)
    if split.fingerprint != compute_fingerprint(split):
        raise LtpipeError(
            f"split {split.dataset!r} was modified after it was built (fingerprint mismatch); "
            "rebuild it with build_split instead of editing fields"
        )
    arrays = {n: np.asarray(getattr(split, n)) for n in _ARRAYS if getattr(split, n) is not None}
    write_json(path.with_suffix(".json"), _summary(split))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(_meta(split), sort_keys=True)), **arrays)


def read_split(path: str | Path) -> Split:
    """Read a split written by :func:`write_split`; a missing or corrupt file is an LtpipeError."""
    path = Path(path)
    fix = "rebuild it with the split step (ltpipe split / snakemake's split rule)"
    if not path.is_file():
        raise LtpipeError(f"split file {path} not found; {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"][()]))
            arrays = {n: npz[n] for n in _ARRAYS if n in npz.files}
        split = Split(
            dataset=meta["dataset"], source=meta["source"],
            source_fingerprint=meta["source_fingerprint"],
            imbalance_factor=meta["imbalance_factor"], seed=int(meta["seed"]),
            num_classes=int(meta["num_classes"]), class_names=list(meta["class_names"]),
            image_shape=tuple(meta["image_shape"]),
            train_indices=arrays["train_indices"], test_indices=arrays["test_indices"],
            val_indices=arrays.get("val_indices"), class_counts=arrays["class_counts"],
            shot_groups=arrays["shot_groups"], thresholds=dict(meta["thresholds"]),
            dataset_cfg=dict(meta["dataset_cfg"]), fingerprint=meta["fingerprint"],
        )
    except Exception as exc:  # noqa: BLE001 - any failure to decode means a corrupt file
        raise LtpipeError(f"split file {path} is corrupt or not a split ({exc!r}); {fix}") from exc
    if split.fingerprint != compute_fingerprint(split):
        raise LtpipeError(f"split file {path} fails its fingerprint check (corrupt); {fix}")
    return split


def split_data(split: Split, part: str) -> InMemoryData | FileListData:
    """Load the images of ``part`` (train/val/test) of ``split`` from its source.

    The source must still hold the same content the split was built from.
    """
    idx = split.indices(part)
    source = open_source(split.dataset_cfg)
    current = source.fingerprint()
    if current != split.source_fingerprint:
        raise LtpipeError(
            f"the {split.source} data under {split.dataset_cfg.get('root')} changed since split "
            f"{split.dataset!r} was built (source fingerprint {current} != "
            f"{split.source_fingerprint}); restore the original files or rebuild the split"
        )
    return source.load(source.part_pool[part], idx)
