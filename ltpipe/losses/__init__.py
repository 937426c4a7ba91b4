"""Stage-one and classifier-stage losses, behind a name -> class registry.

``build_loss(name, counts, **settings)`` builds one from the train split's per-class counts;
``loss_settings(name)`` gives its settings' defaults. Registered: ce, focal, ldam,
balanced_softmax, kps, bfs. ``mixup_loss`` wraps any of them.
"""

from ltpipe.losses.base import (
    LOSSES,
    LTLoss,
    build_loss,
    loss_settings,
    mixup_loss,
    register_loss,
)
from ltpipe.losses.bfs import BFSLoss
from ltpipe.losses.kps import KPSLoss
from ltpipe.losses.standard import (
    BalancedSoftmaxLoss,
    CELoss,
    FocalLoss,
    LDAMLoss,
    ReweightedLoss,
)
from ltpipe.losses.weights import (
    class_balanced_weights,
    kps_margins,
    kps_mirrored_scales,
    kps_scales,
    ldam_margins,
)

__all__ = [
    "LOSSES",
    "BFSLoss",
    "BalancedSoftmaxLoss",
    "CELoss",
    "FocalLoss",
    "KPSLoss",
    "LDAMLoss",
    "LTLoss",
    "ReweightedLoss",
    "build_loss",
    "class_balanced_weights",
    "kps_margins",
    "kps_mirrored_scales",
    "kps_scales",
    "ldam_margins",
    "loss_settings",
    "mixup_loss",
    "register_loss",
]
