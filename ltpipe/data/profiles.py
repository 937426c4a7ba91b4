"""Long-tail profiles: per-class counts, seeded index selection, hold-outs and shot groups.

The exponential profile and the selection follow the protocol of LDAM-DRW's CIFAR-LT (used by
every seed paper): class i keeps ``n_i = int(n_max * (1/IF) ** (i / (C - 1)))`` images; one
``numpy.random.RandomState(seed)`` is shared by all classes, visited in label order, and each
class's indices are shuffled with it before the first ``n_i`` are kept. Calling
``RandomState(seed).shuffle`` is the same stream as the reference's ``np.random.seed(seed)``
followed by ``np.random.shuffle``, so the selected images are the reference's images.
"""

from __future__ import annotations

import numpy as np

from ltpipe.evaluate import GROUPS
from ltpipe.utils import LtpipeError

MANY, MEDIUM, FEW = 0, 1, 2
GROUP_NAMES: tuple[str, ...] = GROUPS  # ltpipe.evaluate's, the one list


def lt_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Per-class training counts of the exponential long-tail profile.

    ``n_i = int(n_max * (1/IF) ** (i / (C - 1)))`` for ``i = 0..C-1``; class 0 is the head.
    ``imbalance_factor = 1`` gives a balanced set of ``n_max`` per class.
    """
    if int(n_max) != n_max or n_max < 1:
        raise LtpipeError(f"n_max={n_max!r} must be a positive integer (the head class's count)")
    if int(num_classes) != num_classes or num_classes < 1:
        raise LtpipeError(f"num_classes={num_classes!r} must be a positive integer")
    if imbalance_factor is None or not np.isfinite(imbalance_factor) or imbalance_factor < 1:
        raise LtpipeError(
            f"imbalance_factor={imbalance_factor!r} must be a number >= 1 (n_max / n_min), "
            "e.g. 10, 50, 100 or 200; use 1 for the balanced set"
        )
    if num_classes == 1:
        return [int(n_max)]
    ratio = 1.0 / float(imbalance_factor)
    return [int(n_max * ratio ** (i / (num_classes - 1.0))) for i in range(int(num_classes))]


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise LtpipeError(
            f"labels must be a 1-d integer array, got dtype {labels.dtype} shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise LtpipeError(
            f"labels span [{labels.min()}, {labels.max()}] but there are {num_classes} classes "
            f"(expected labels in [0, {num_classes}))"
        )
    return labels


def select_lt_indices(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """Indices (into ``labels``) of the long-tailed subset with ``counts[c]`` samples of class c.

    One ``numpy.random.RandomState(seed)`` is shared across classes, visited in label order
    ``0..C-1``; each class's indices (ascending) are shuffled in place and the first
    ``counts[c]`` kept. The result is class-major, in the shuffled order within each class
    (the reference's order). A class with fewer samples than asked for is an error (the
    reference would silently keep fewer).
    """
    return select_lt_and_val(labels, counts, seed, 0)[0]


def select_lt_and_val(
    labels: np.ndarray, counts: list[int], seed: int, val_per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """The long-tailed training subset of :func:`select_lt_indices` and a balanced validation set.

    Class c's indices are shuffled exactly as in :func:`select_lt_indices` (the same
    ``RandomState(seed)`` stream; nothing else draws from it), giving ``perm`` of length
    ``P_c``. Validation takes the *last* ``v = val_per_class`` entries of ``perm``; training
    keeps its first ``min(counts[c], P_c - v)``. So:

    - ``P_c - counts[c] >= v``: validation is ``v`` of the images the profile leaves unused and
      the training selection is the ``v = 0`` selection, index for index;
    - otherwise (the head classes) the ``v`` images are reserved before the profile is applied:
      training keeps the first ``P_c - v`` of the ``v = 0`` selection (a prefix of it), so the
      count drops by ``counts[c] - (P_c - v) <= v``.

    Returns ``(train, val)``: ``train`` class-major in shuffled order (as
    :func:`select_lt_indices`), ``val`` sorted ascending (empty for ``v = 0``). ``v`` must leave
    every class at least one training image.
    """
    labels = _check_labels(labels, len(counts))
    v = int(val_per_class)
    if v != val_per_class or v < 0:
        raise LtpipeError(f"val_per_class={val_per_class!r} must be an integer >= 0 (0: no "
                          "validation split)")
    rng = np.random.RandomState(int(seed))
    keep, val = [], []
    for cls, n in enumerate(counts):
        idx = np.flatnonzero(labels == cls).astype(np.int64)
        if n < 0 or n > idx.size:
            raise LtpipeError(
                f"class {cls} has {idx.size} samples but the profile asks for {n}; "
                "lower n_max (or the imbalance factor) so every class can supply its count"
            )
        if v and idx.size - v < 1:
            raise LtpipeError(
                f"val_per_class={v}: class {cls} has only {idx.size} images to draw from, so "
                f"holding out {v} for validation leaves none for training; lower val_per_class "
                f"below {idx.size}"
            )
        rng.shuffle(idx)
        keep.append(idx[:min(n, idx.size - v)])
        val.append(idx[idx.size - v:])
    if not keep:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(keep), np.sort(np.concatenate(val))


def stratified_holdout(
    labels: np.ndarray, per_class: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``labels`` into a balanced hold-out (``per_class`` per class) and the rest.

    Uses ``RandomState(seed)``, classes in label order, each class's indices shuffled and the
    first ``per_class`` held out. Returns ``(held_out, rest)``, both sorted ascending.
    """
    labels = _check_labels(labels, num_classes)
    if int(per_class) != per_class or per_class < 1:
        raise LtpipeError(f"test_per_class={per_class!r} must be a positive integer")
    rng = np.random.RandomState(int(seed))
    held = []
    for cls in range(num_classes):
        idx = np.flatnonzero(labels == cls).astype(np.int64)
        if idx.size <= per_class:
            raise LtpipeError(
                f"class {cls} has only {idx.size} samples, so {per_class} cannot be held out "
                "for the test set and leave any for training; lower test_per_class"
            )
        rng.shuffle(idx)
        held.append(idx[:per_class])
    held_out = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(labels.size, dtype=np.int64), held_out)
    return held_out, rest


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of samples per class, ``np.int64 [C]`` (zeros for absent classes)."""
    labels = _check_labels(labels, num_classes)
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def shot_groups(counts, many: int = 100, few: int = 20) -> np.ndarray:
    """Shot group per class (Kang et al.): 0 many (``n > many``), 2 few (``n < few``), 1 medium.

    Exactly ``many`` or exactly ``few`` training images is medium. Returns ``np.int8 [C]``.
    """
    if few > many:
        raise LtpipeError(
            f"shot thresholds many={many}, few={few}: 'few' must not exceed 'many' "
            "(defaults: many=100, few=20)"
        )
    counts = np.asarray(counts, dtype=np.int64)
    groups = np.full(counts.shape, MEDIUM, dtype=np.int8)
    groups[counts > many] = MANY
    groups[counts < few] = FEW
    return groups
