"""What a classifier-stage method receives: one stage-one backbone's cached outputs.

``Features`` holds numpy arrays exactly as the cache stores them; ``features_from_cache`` loads
only the arrays a method needs. Feature maps and CAMs are loaded for the train split only: no
method uses them at test time. Feature maps are by far the largest arrays in a cache (2048 x 7
x 7 float16 per ImageNet-LT sample: about 23 GB for its training split), so they are never
loaded whole: ``features_from_cache`` gives a :class:`CachedRows` that reads the rows a method
asks for (:func:`take_rows`), and the reader must stay open while the method runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ltpipe.utils import LtpipeError

SPLITS = ("train", "test", "val")
LAZY = frozenset({"fmap"})  # arrays read row by row on demand (CachedRows), never whole
MAX_GAP = 4  # take_rows reads rows up to this far apart in one contiguous read
ARRAYS = ("pooled", "logits", "fmap", "cam")
TRAIN_ONLY = frozenset({"fmap", "cam"})


class CachedRows:
    """One cached array whose rows are read on demand (the reader must stay open).

    ``shape``, ``dtype`` and ``nbytes`` come from the manifest; :meth:`take` reads the rows
    asked for and nothing else (rows at most ``MAX_GAP`` apart share one contiguous read);
    ``rows_read`` counts the rows read so far.
    """

    def __init__(self, reader: Any, group: str, name: str) -> None:
        self.reader, self.group, self.name = reader, group, name
        self.rows_read = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.reader.shape(self.group, self.name))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.reader.dtype(self.group, self.name))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (1-d integers, any order, repeats allowed) as a numpy array."""
        idx = np.asarray(idx, dtype=np.int64)
        uniq, inverse = np.unique(idx, return_inverse=True)
        if not len(uniq):
            return np.empty((0, *self.shape[1:]), self.dtype)
        cuts = np.flatnonzero(np.diff(uniq) > MAX_GAP) + 1
        parts = []
        for run in np.split(uniq, cuts):
            lo, hi = int(run[0]), int(run[-1]) + 1
            block = self.reader.read(self.group, self.name, rows=slice(lo, hi))
            self.rows_read += hi - lo
            parts.append(block[run - lo])
        return np.concatenate(parts)[inverse.reshape(-1)]

    def read_all(self) -> np.ndarray:
        """The whole array (one read)."""
        self.rows_read += len(self)
        return np.asarray(self.reader.read(self.group, self.name))


def take_rows(array: Any, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of a numpy array or a :class:`CachedRows`."""
    if isinstance(array, CachedRows):
        return array.take(idx)
    return np.asarray(array)[np.asarray(idx, dtype=np.int64)]


@dataclass
class Features:
    """One stage-one backbone's cached outputs (numpy, as stored).

    train / test / val: dicts with "labels" int64 [N] and any of "pooled" float32 [N, D],
    "logits" float32 [N, C], "fmap" [N, D, H, W] (float16 or float32), "cam" float32 [N, H, W]
    (own-class CAM, min-max normalized per sample); read from a cache, "fmap" is a
    :class:`CachedRows` (use :func:`take_rows`). ``val`` is None where there is no val split.
    head_weight [C, D]; head_bias [C] or None (cosine head); head_kind "linear" | "cosine";
    logit_scale: logits = logit_scale * head(pooled) (1 for a linear head, the loss scale for a
    cosine head); class_counts int64 [C] training counts. ``from_cache``: whether "pooled" is a
    cache's own pooled arrays (False where another job's features were read:
    :func:`ltpipe.classifiers.outputs.features_from_job`).
    """

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    val: dict[str, np.ndarray] | None
    head_weight: np.ndarray
    head_bias: np.ndarray | None
    head_kind: str
    logit_scale: float
    class_counts: np.ndarray
    from_cache: bool = True

    @property
    def num_classes(self) -> int:
        return int(self.head_weight.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.head_weight.shape[1])

    def eval_splits(self) -> dict[str, dict[str, np.ndarray]]:
        """The splits a method scores: test, and val where present."""
        out = {"test": self.test}
        if self.val is not None:
            out["val"] = self.val
        return out

    def require(self, split: str, key: str, method: str) -> np.ndarray:
        """The array ``key`` of ``split``, or an error saying the cache lacks it."""
        arrays = getattr(self, split)
        if arrays is None or key not in arrays:
            raise LtpipeError(f"method {method!r} needs array {key!r} of split {split!r}, which "
                              "these features lack; dump the cache with that array or load it "
                              "with features_from_cache(reader, need={...})")
        return arrays[key]


def _read_split(reader: Any, split: str, need: set[str]) -> dict[str, np.ndarray]:
    names = set(reader.names(split))
    wanted = {"labels"} | {k for k in need if split == "train" or k not in TRAIN_ONLY}
    missing = sorted(wanted - names)
    if missing:
        raise LtpipeError(f"cache group {split!r} lacks arrays {missing} (it has {sorted(names)});"
                          " rebuild the cache with those arrays enabled")
    out = {name: (CachedRows(reader, split, name) if name in LAZY
                  else np.asarray(reader.read(split, name))) for name in sorted(wanted)}
    out["labels"] = out["labels"].astype(np.int64, copy=False)
    for name in ("pooled", "logits", "cam"):
        if name in out:
            out[name] = out[name].astype(np.float32, copy=False)
    return out


def features_from_cache(reader: Any, need: set[str]) -> Features:
    """Load a ``Features`` from an open cache, reading only ``need`` (+ labels) per split.

    ``reader`` is what ``ltpipe.cache.open_cache`` returns (``read(group, name)``,
    ``names(group)``, ``manifest``). ``need`` is a subset of {"pooled", "logits", "fmap", "cam"}
    (a method's ``SPEC.needs``); "fmap" and "cam" are read for the train split only, and "fmap" is
    a :class:`CachedRows` that reads rows on demand, so ``reader`` must stay open while the
    features are used.
    """
    unknown = set(need) - set(ARRAYS)
    if unknown:
        raise LtpipeError(f"unknown cached arrays {sorted(unknown)}; expected a subset of "
                          f"{list(ARRAYS)}")
    manifest = reader.manifest
    for key in ("head_kind", "logit_scale"):
        if key not in manifest:
            raise LtpipeError(f"cache manifest lacks {key!r}; rebuild the cache")
    head_kind = str(manifest["head_kind"])
    if head_kind not in ("linear", "cosine"):
        raise LtpipeError(f"cache manifest head_kind={head_kind!r}; expected 'linear' or "
                          "'cosine'")
    has_val = "val" in _groups(reader)
    bias = (np.asarray(reader.read("head", "bias"), dtype=np.float32)
            if head_kind == "linear" else None)
    return Features(
        train=_read_split(reader, "train", need),
        test=_read_split(reader, "test", need),
        val=_read_split(reader, "val", need) if has_val else None,
        head_weight=np.asarray(reader.read("head", "weight"), dtype=np.float32),
        head_bias=bias,
        head_kind=head_kind,
        logit_scale=float(manifest["logit_scale"]),
        class_counts=np.asarray(reader.read("meta", "class_counts"), dtype=np.int64),
    )


def _groups(reader: Any) -> set[str]:
    """Group names of the cache: ``reader.groups()`` when offered, else probe ``names``."""
    if hasattr(reader, "groups"):
        return set(reader.groups())
    try:
        return {"val"} if reader.names("val") else set()
    except (KeyError, LtpipeError, FileNotFoundError):
        return set()
