"""Stage-one and classifier-stage losses, behind a name -> class registry.

``build_loss(name, counts, **settings)`` builds one from the train split's per-class counts;
``loss_settings(name)`` gives its settings' defaults. Registered: ce, focal, ldam,
balanced_softmax, kps, bfs. ``mixup_loss`` wraps any of them.

Importing this package does not import torch: the names and declared settings of the built-in
losses live in :mod:`ltpipe.losses.spec` (what the config check reads while Snakemake builds the
DAG); every other name below is imported on first use (PEP 562), with every built-in loss
registered.
"""

from __future__ import annotations

from ltpipe.losses.spec import LOSS_SPECS, default_settings, loss_names, settings_of
from ltpipe.utils import lazy_getattr

#: name -> the module that defines it (imported, with every built-in loss, on first use)
_LAZY = {
    **dict.fromkeys(("LOSSES", "LTLoss", "build_loss", "loss_settings", "mixup_loss",
                     "register_loss"), "ltpipe.losses.base"),
    "BFSLoss": "ltpipe.losses.bfs",
    "KPSLoss": "ltpipe.losses.kps",
    **dict.fromkeys(("BalancedSoftmaxLoss", "CELoss", "FocalLoss", "LDAMLoss",
                     "ReweightedLoss"), "ltpipe.losses.standard"),
    **dict.fromkeys(("class_balanced_weights", "kps_margins", "kps_mirrored_scales",
                     "kps_scales", "ldam_margins"), "ltpipe.losses.weights"),
}


__getattr__ = lazy_getattr(__name__, _LAZY, "ltpipe.losses.base:register_builtins")

__all__ = ["LOSS_SPECS", "default_settings", "loss_names", "settings_of", *_LAZY]
