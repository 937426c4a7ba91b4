"""The classifier-stage trainer's settings, declared once (no torch import).

Methods pick the ones they use with ``trainer_settings`` in their ``SPEC``; reading a method's
settings (config checks, DAG building) must not import torch, so they live apart from the
training loop (``ltpipe.classifiers.trainer``, which re-exports them).
"""

from __future__ import annotations

from typing import Any

from ltpipe.settings import Setting, choice, number
from ltpipe.utils import LtpipeError

EPOCH_SAMPLES = ("data", "class_aware")
SAMPLERS = ("instance", "class_balanced", "sqrt", "inverse")

# Every optimization setting a method may expose, declared once; a method picks the ones it uses
# and sets its own defaults with ``trainer_settings``.
TRAINER_SETTINGS: dict[str, Setting] = {
    "epochs": number(10, 1, integer=True, doc="epochs of epoch_samples samples each"),
    "iterations": number(None, 1, integer=True, optional=True,
                         doc="total SGD steps; replaces epochs when set"),
    "epoch_samples": choice("data", EPOCH_SAMPLES, doc=(
        "one epoch: 'data' = N samples (a pass over the training set; also torch's "
        "WeightedRandomSampler(weights, N)); 'class_aware' = n_max x C, the nominal length of "
        "Kang et al.'s ClassAwareSampler")),
    "batch_size": number(128, 1, integer=True, doc="samples per SGD step"),
    "lr": number(0.1, 0, doc="start learning rate"),
    "lr_min": number(0.0, 0, doc="cosine schedule end"),
    "schedule": choice("cosine", ("cosine", "constant"), doc="per step: cosine to lr_min"),
    "momentum": number(0.9, 0, 1, hi_open=True, doc="SGD momentum"),
    "weight_decay": number(5e-4, 0, doc="SGD weight decay on every trained parameter"),
    "sampler": choice("class_balanced", SAMPLERS, optional=True,
                      doc="None when the method's augment hook builds whole batches"),
}


def trainer_settings(**own_defaults: Any) -> dict[str, Setting]:
    """The trainer settings named in ``own_defaults``, each with the method's own default."""
    unknown = sorted(set(own_defaults) - set(TRAINER_SETTINGS))
    if unknown:
        raise LtpipeError(f"trainer_settings: {unknown} are not trainer settings; known: "
                          f"{sorted(TRAINER_SETTINGS)}")
    return {k: TRAINER_SETTINGS[k].with_default(v) for k, v in own_defaults.items()}
