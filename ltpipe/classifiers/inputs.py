"""What a classifier-stage method receives: one stage-one backbone's cached outputs.

``Features`` holds numpy arrays exactly as the cache stores them; ``features_from_cache`` loads
only the arrays a method needs. Feature maps and CAMs are loaded for the train split only: no
method uses them at test time, and they are by far the largest arrays in a cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ltpipe.utils import LtpipeError

SPLITS = ("train", "test", "val")
ARRAYS = ("pooled", "logits", "fmap", "cam")
TRAIN_ONLY = frozenset({"fmap", "cam"})


@dataclass
class Features:
    """One stage-one backbone's cached outputs (numpy, as stored).

    train / test / val: dicts with "labels" int64 [N] and any of "pooled" float32 [N, D],
    "logits" float32 [N, C], "fmap" [N, D, H, W] (float16 or float32), "cam" float32 [N, H, W]
    (own-class CAM, min-max normalized per sample). ``val`` is None where there is no val split.
    head_weight [C, D]; head_bias [C] or None (cosine head); head_kind "linear" | "cosine";
    logit_scale: logits = logit_scale * head(pooled) (1 for a linear head, the loss scale for a
    cosine head); class_counts int64 [C] training counts.
    """

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    val: dict[str, np.ndarray] | None
    head_weight: np.ndarray
    head_bias: np.ndarray | None
    head_kind: str
    logit_scale: float
    class_counts: np.ndarray

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
    out = {name: np.asarray(reader.read(split, name)) for name in sorted(wanted)}
    out["labels"] = out["labels"].astype(np.int64, copy=False)
    for name in ("pooled", "logits", "cam"):
        if name in out:
            out[name] = out[name].astype(np.float32, copy=False)
    return out


def features_from_cache(reader: Any, need: set[str]) -> Features:
    """Load a ``Features`` from an open cache, reading only ``need`` (+ labels) per split.

    ``reader`` is what ``ltpipe.cache.open_cache`` returns (``read(group, name)``,
    ``names(group)``, ``manifest``). ``need`` is a subset of {"pooled", "logits", "fmap", "cam"}
    (a method's ``NEEDS``); "fmap" and "cam" are read for the train split only.
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
