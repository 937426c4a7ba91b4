"""joint: the stage-one head's own logits, read from the cache (the baseline row)."""

from __future__ import annotations

import numpy as np

from ltpipe.classifiers.spec import MethodSpec

SETTINGS: dict = {}
SPEC = MethodSpec(needs={"logits"}, torch=False, settings=SETTINGS)  # numpy only


def run(inputs: list, settings: dict, seed: int, device) -> dict[str, np.ndarray]:
    """The cached logits of each evaluated split (settings, seed and device are unused)."""
    (feat,) = inputs
    return {split: np.asarray(feat.require(split, "logits", "joint"), dtype=np.float32)
            for split in feat.eval_splits()}
