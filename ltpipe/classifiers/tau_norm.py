"""tau-norm (Kang et al.): rescale each classifier row, w_j / ||w_j|| ** tau, and drop the bias.

Scores are logit_scale * f W_tau^T, with f the pooled feature (L2-normalized first for a cosine
head, whose rows are normalized anyway, so tau has no effect there). tau = 0 gives the stage-one
head without its bias, tau = 1 a head of unit-norm rows. methods.md sweeps tau over 0..2.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ltpipe.classifiers.common import as_tensor, score_splits
from ltpipe.settings import number

SETTINGS = {
    "tau": number(1.0, 0, doc="exponent of the row norm; 0 = no rescaling, 1 = unit-norm rows"),
}
NEEDS = {"pooled"}
NUM_BACKBONES = 1


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Rows w_j / ||w_j|| ** tau (a zero row stays zero)."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms**tau


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """tau-normalized scores of each evaluated split."""
    (feat,) = inputs
    w = tau_normalize(as_tensor(feat.head_weight, device), float(settings["tau"]))
    cosine = feat.head_kind == "cosine"

    def model(x: torch.Tensor) -> torch.Tensor:
        if cosine:
            x = F.normalize(x, dim=1)
        return feat.logit_scale * (x @ w.t())

    return score_splits(feat, "pooled", "tau_norm", device, model)
