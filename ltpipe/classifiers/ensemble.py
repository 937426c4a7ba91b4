"""ensemble: the mean of several classifiers' scores, z = (1/K) sum_k z_k, on each evaluated split.

Its inputs are the jobs it is composed on (``reads: [entry, entry, ...]`` in the config: each
input's saved head scores its own features) or backbone caches (``backbones:``: their stage-one
heads). ``combine: logits`` averages the logits (default); ``combine: probs`` averages the
softmax probabilities and returns their log, so that the argmax is that of the mean probability.
Logits of differently scaled heads (a cosine head's s * cos beside a linear head's) weigh
differently in a logit mean: ``probs`` puts every input on the same footing. Closed form in
numpy; trains nothing, so it has no seed and saves no head.
"""

from __future__ import annotations

import numpy as np

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.settings import choice
from ltpipe.utils import LtpipeError

SETTINGS = {
    "combine": choice("logits", ("logits", "probs"), doc="mean of the logits, or of the softmax "
                      "probabilities (scored as their log)"),
}
SPEC = MethodSpec(needs={"logits"}, num_backbones=None, torch=False, settings=SETTINGS)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log softmax in float64 (stable: the row maximum is subtracted first)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def run(inputs: list, settings: dict, seed: int, device) -> dict[str, np.ndarray]:
    """The mean score of the inputs on each evaluated split."""
    first = inputs[0]
    for k, feat in enumerate(inputs[1:], start=1):
        if feat.num_classes != first.num_classes:
            raise LtpipeError(f"ensemble: input {k} scores {feat.num_classes} classes, input 0 "
                              f"{first.num_classes}")
        for split in first.eval_splits():
            if not np.array_equal(getattr(feat, split)["labels"], getattr(first, split)["labels"]):
                raise LtpipeError(f"ensemble: inputs 0 and {k} scored other {split} samples; "
                                  "they must come from the same split")
    out = {}
    for split in first.eval_splits():
        zs = [feat.require(split, "logits", "ensemble") for feat in inputs]
        if settings["combine"] == "probs":
            probs = np.mean([np.exp(log_softmax(z)) for z in zs], axis=0)
            out[split] = np.log(np.maximum(probs, 1e-300)).astype(np.float32)
        else:
            out[split] = np.mean(np.stack([np.asarray(z, np.float64) for z in zs]),
                                 axis=0).astype(np.float32)
    return out
