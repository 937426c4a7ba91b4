"""FSA (feature space augmentation): tail features rebuilt from their own class-specific
positions and the class-generic positions of confusing classes, then the head fine-tuned.

Head classes: the fewest most-frequent classes holding >= h_r of the training samples; the rest
are tail. Each iteration (Algorithm 1 of the paper): draw n_t tail samples; for each, draw n_a
samples of its confusing classes (the a-th from the (a mod n_f)-th confusing class, so with
n_a = n_f each confusing class once, as in the paper's loop); specific positions of the tail map
have own-class CAM > tau_s, generic positions of the other map have its own-class CAM < tau_g;
with g ~ U(0, 1), round(g L) specific and L - round(g L) generic vectors are drawn with
repetition (never an all-zero vector) and averaged into one augmented pooled feature labelled
with the tail class. n_t (1 + n_a) head samples are added, so a batch has 2 n_t (1 + n_a)
samples (128 with the defaults). The stage-one head is fine-tuned with CE, lr 0.001 fixed,
6400 iterations (paper, CIFAR). tau_s / tau_g are unstated in the paper; 0.8 / 0.2 follow the
public re-implementation. Tail and head samples are drawn uniformly over samples (the paper's
"draw one sample from tail classes"); ``tail_sampler: class_balanced`` draws tail classes
uniformly instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ltpipe.classifiers.spec import MethodSpec
from ltpipe.classifiers.train_settings import trainer_settings
from ltpipe.settings import choice, number

if TYPE_CHECKING:  # torch is imported by run() only: reading SPEC must not import it
    import numpy as np
    import torch

SETTINGS = {
    "h_r": number(0.9, 0, 1, lo_open=True, doc="share of training samples held by head classes"),
    "n_t": number(16, 1, integer=True, doc="tail samples per iteration (batch 2 n_t (1 + n_a))"),
    "n_a": number(3, 1, integer=True, doc="augmented samples per tail sample (paper: 3)"),
    "n_f": number(3, 1, integer=True, doc="confusing classes per tail class (paper: 3)"),
    "tau_s": number(0.8, 0, 1, doc="CAM above this: class-specific position"),
    "tau_g": number(0.2, 0, 1, doc="CAM below this: class-generic position"),
    "tail_sampler": choice("instance", ("instance", "class_balanced"),
                           doc="uniform over tail samples, or over tail classes"),
    **trainer_settings(
        iterations=6400,      # fine-tuning steps (paper, CIFAR)
        lr=0.001,             # fixed learning rate (paper)
        schedule="constant",  # paper: constant
        momentum=0.9,         # SGD momentum (unstated in the paper)
        weight_decay=5e-4,    # SGD weight decay (unstated in the paper)
    ),
}
# batches are generated this many bytes of gathered maps at a time (amortizes per-op overhead;
# the augmentation does not depend on the head being trained, so this changes nothing else)
CHUNK_BYTES = 32 << 20
MAX_CHUNK = 64  # batches per chunk at most
# a cached map array up to this size is read whole once (CIFAR-100-LT's: 89 MB); a larger one
# (ImageNet-LT's: 23 GB) is read per chunk of batches, only the rows they sample
WHOLE_BYTES = 512 << 20
SPEC = MethodSpec(needs={"pooled", "logits", "fmap", "cam"}, gpu=True, settings=SETTINGS,
                  head=True, map_whole_bytes=WHOLE_BYTES, map_chunk_bytes=CHUNK_BYTES)


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Fine-tune the stage-one head on FSA batches; return logits per evaluated split."""
    from ltpipe.classifiers.common import make_loss, score_splits, stage_one_head, train_tensors
    from ltpipe.classifiers.fsa_parts import make_augment
    from ltpipe.classifiers.trainer import TrainConfig, make_generator, train_head

    (feat,) = inputs
    batch = 2 * int(settings["n_t"]) * (1 + int(settings["n_a"]))
    cfg = TrainConfig.from_settings(settings, sampler=None, batch_size=batch)
    gen = make_generator(seed, device)
    x, y = train_tensors(feat, "pooled", "fsa", device)
    head = stage_one_head(feat, device)
    train_head(head, x, y, make_loss("ce", feat.class_counts, device), cfg, gen,
               augment=make_augment(feat, settings, device))
    return score_splits(feat, "pooled", "fsa", device, head)
