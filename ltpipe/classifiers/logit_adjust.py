"""Post-hoc logit adjustment (Menon et al.): z_j - tau * log(n_j / N) on the cached logits.

A class with no training samples is treated as having one (its log prior would be -inf).
"""

from __future__ import annotations

import numpy as np

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.settings import number

SETTINGS = {
    "tau": number(1.0, doc="strength of the prior correction; 0 = the joint head unchanged"),
}
SPEC = MethodSpec(needs={"logits"}, torch=False, settings=SETTINGS)  # numpy only


def log_prior(counts: np.ndarray) -> np.ndarray:
    """log(n_j / N) with empty classes counted as one sample."""
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return np.log(counts / counts.sum())


def run(inputs: list, settings: dict, seed: int, device) -> dict[str, np.ndarray]:
    """Adjusted logits of each evaluated split."""
    (feat,) = inputs
    shift = (float(settings["tau"]) * log_prior(feat.class_counts)).astype(np.float32)
    return {split: feat.require(split, "logits", "logit_adjust") - shift[None, :]
            for split in feat.eval_splits()}
