"""tau-norm (Kang et al.): rescale each classifier row, w_j / ||w_j|| ** tau, and drop the bias.

Scores are logit_scale * f W_tau^T, with f the pooled feature (L2-normalized first for a cosine
head, whose rows are normalized anyway, so tau has no effect there). tau = 0 gives the stage-one
head without its bias, tau = 1 a head of unit-norm rows. The presets sweep tau over 0..2
(docs/methods.md#tau-norm).
Closed form in numpy (float32): a job of this method never imports torch (~3 s per job).
"""

from __future__ import annotations

import numpy as np

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.settings import number

SETTINGS = {
    "tau": number(1.0, 0, doc="exponent of the row norm; 0 = no rescaling, 1 = unit-norm rows"),
}
SPEC = MethodSpec(needs={"pooled"}, torch=False, settings=SETTINGS, head=True)  # numpy only


def tau_normalize(weight: np.ndarray, tau: float) -> np.ndarray:
    """Rows w_j / ||w_j|| ** tau (a zero row stays zero), float32."""
    weight = np.asarray(weight, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), np.float32(1e-12))
    return (weight / norms ** np.float32(tau)).astype(np.float32, copy=False)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows x / max(||x||, 1e-12) (torch.nn.functional.normalize's rule), float32."""
    norms = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return (x / norms).astype(np.float32, copy=False)


def run(inputs: list, settings: dict, seed: int, device) -> dict[str, np.ndarray]:
    """tau-normalized scores of each evaluated split, and the head (seed and device are unused):
    scale x (f W_tau^T), f L2-normalized first for a cosine head."""
    from ltpipe.classifiers.outputs import Head

    (feat,) = inputs
    head = Head(tau_normalize(feat.head_weight, float(settings["tau"])), None, feat.logit_scale,
                normalize_input=feat.head_kind == "cosine")
    out = {split: head.scores(feat.require(split, "pooled", "tau_norm"))
           for split in feat.eval_splits()}
    out["head"] = head
    return out
