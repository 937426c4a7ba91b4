"""bsr: balanced-softmax retraining of a linear head on the cached pooled features.

Balanced Softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
NeurIPS 2020, arXiv:2007.10740): train with cross-entropy on ``logits + log(prior)``, where
the prior is the training set's class frequency; predict with the plain logits. Here it
re-trains a new linear head on the frozen stage-one features, like ltpipe's cRT, with
instance (natural) sampling: the log prior in the loss does the re-balancing.

The method contract: ``SPEC`` (facts read at DAG build, so this module imports no torch at
the top) and ``run``.
"""

from __future__ import annotations

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.classifiers.train_settings import trainer_settings
from ltpipe.settings import number

SETTINGS = {
    "prior_power": number(1.0, 0, doc="the loss adds prior_power x log(prior) (1: Balanced "
                          "Softmax; 0: plain cross-entropy)"),
    **trainer_settings(epochs=10, batch_size=128, lr=0.1, lr_min=0.0, schedule="cosine",
                       momentum=0.9, weight_decay=5e-4, sampler="instance"),
}
SPEC = MethodSpec(needs={"pooled"}, num_backbones=1, torch=True, gpu=True, settings=SETTINGS,
                  head=True)


def run(inputs: list, settings: dict, seed: int, device) -> dict:
    """Train a new linear head with the balanced-softmax loss; return its plain logits on each
    evaluated split."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ltpipe.classifiers.common import new_head, score_splits, train_tensors
    from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

    (feat,) = inputs
    cfg = TrainConfig.from_settings(settings)
    gen = make_generator(seed, device)
    x, y = train_tensors(feat, "pooled", "bsr", device)
    counts = np.maximum(np.asarray(feat.class_counts, dtype=np.float64), 1.0)
    shift = torch.as_tensor(float(settings["prior_power"]) * np.log(counts / counts.sum()),
                            dtype=torch.float32, device=device)

    def loss(logits, target, epoch):
        return F.cross_entropy(logits + shift, target)

    head = new_head("linear", feat.num_classes, x.shape[1], gen, device)
    train_head(head, x, y, loss, cfg, gen)
    return score_splits(feat, "pooled", "bsr", device, head)
