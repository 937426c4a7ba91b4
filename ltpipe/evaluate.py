"""Top-1 accuracy on the balanced test set: overall, per shot group and per class."""

from __future__ import annotations

import numpy as np

#: the shot groups, in the order of their codes (0 many, 1 medium, 2 few): every other list of
#: them (the split's counts, summary columns, plots) reads this one
GROUPS = ("many", "medium", "few")


def accuracy_report(scores: np.ndarray, labels: np.ndarray, shot_groups: np.ndarray) -> dict:
    """Accuracies (in %) from class scores.

    ``scores`` [N, C] (logits or any score, argmax taken), ``labels`` [N], ``shot_groups`` [C]
    with 0 = many, 1 = medium, 2 = few. Group accuracy is over the samples whose class is in
    the group (the usual definition, equal to the mean of per-class accuracies on a balanced test
    set); a group with no class is reported as None.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64)
    groups = np.asarray(shot_groups)
    num_classes = groups.shape[0]
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0] or scores.shape[1] != num_classes:
        raise ValueError(f"scores {scores.shape} do not match labels {labels.shape} and "
                         f"{num_classes} classes")
    correct = scores.argmax(axis=1) == labels
    per_class = np.full(num_classes, np.nan)
    hits = np.bincount(labels, weights=correct, minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    seen = total > 0
    per_class[seen] = 100.0 * hits[seen] / total[seen]
    out: dict = {"all": 100.0 * float(correct.mean()) if len(correct) else None}
    for gid, name in enumerate(GROUPS):
        mask = groups[labels] == gid
        out[name] = 100.0 * float(correct[mask].mean()) if mask.any() else None
    out["per_class"] = [None if np.isnan(v) else float(v) for v in per_class]
    out["num_samples"] = int(len(labels))
    return out
