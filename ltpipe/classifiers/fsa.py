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

import numpy as np
import torch

from ltpipe.classifiers.common import (
    as_tensor,
    make_loss,
    score_splits,
    stage_one_head,
    train_tensors,
)
from ltpipe.classifiers.fsa_parts import (
    confusing_classes,
    head_class_mask,
    position_sets,
    recombine,
    usable_positions,
)
from ltpipe.classifiers.inputs import CachedRows, Features, take_rows
from ltpipe.classifiers.trainer import (
    TrainConfig,
    make_generator,
    train_head,
    trainer_settings,
)
from ltpipe.data.samplers import LabelSampler
from ltpipe.settings import choice, number
from ltpipe.utils import LtpipeError

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
NEEDS = {"pooled", "logits", "fmap", "cam"}
NUM_BACKBONES = 1
# batches are generated this many bytes of gathered maps at a time (amortizes per-op overhead;
# the augmentation does not depend on the head being trained, so this changes nothing else)
CHUNK_BYTES = 32 << 20  # (memory.FSA_CHUNK_BYTES)
MAX_CHUNK = 64  # batches per chunk at most
# a cached map array up to this size is read whole once (CIFAR-100-LT's: 89 MB); a larger one
# (ImageNet-LT's: 23 GB) is read per chunk of batches, only the rows they sample
WHOLE_BYTES = 512 << 20  # (memory.FSA_WHOLE_BYTES)


class _Pool:
    """Uniform draws over a subset of samples, or over its classes then within a class."""

    def __init__(self, members: torch.Tensor, by_class: LabelSampler, class_balanced: bool):
        self.members, self.by_class = members, by_class
        self.classes = by_class.labels[members].unique()
        self.class_balanced = class_balanced

    def draw(self, num: int, gen: torch.Generator) -> torch.Tensor:
        if self.class_balanced:
            pick = torch.randint(len(self.classes), (num,), generator=gen, device=gen.device)
            return self.by_class.draw_within(self.classes[pick], gen)
        pick = torch.randint(len(self.members), (num,), generator=gen, device=gen.device)
        return self.members[pick]


def _map_rows(fmap, device: torch.device):
    """``gather(idx)`` -> (vectors [U, L, D] of the unique rows of ``idx``, position-major in the
    cached dtype; index of each ``idx`` entry into them; non-zero mask [U, L]).

    A cached map array (:class:`CachedRows`) of at most ``WHOLE_BYTES`` is read once; a larger
    one is read a chunk of batches at a time, only the rows those batches sample.
    """
    whole = not isinstance(fmap, CachedRows) or fmap.nbytes <= WHOLE_BYTES
    if whole:
        arr = fmap.read_all() if isinstance(fmap, CachedRows) else fmap
        vectors = torch.as_tensor(np.ascontiguousarray(arr)).to(device).flatten(2)
        vectors = vectors.transpose(1, 2).contiguous()
        nonzero = vectors.ne(0).any(2)

        def gather(idx: torch.Tensor):
            return vectors, idx, nonzero
        return gather

    def gather(idx: torch.Tensor):
        uniq, local = torch.unique(idx, return_inverse=True)
        rows = take_rows(fmap, uniq.cpu().numpy())
        vec = torch.as_tensor(rows).to(device).flatten(2).transpose(1, 2).contiguous()
        return vec, local, vec.ne(0).any(2)
    return gather


def make_augment(feat: Features, settings: dict, device: torch.device):
    """The trainer hook returning one FSA batch per call (ignores the trainer's indices).

    Maps are gathered per chunk of batches (see ``_map_rows``); position sets are made usable
    (``usable_positions``, row-wise) for the gathered rows only, which gives the same batches
    as doing it for every row up front.
    """
    fmap = feat.require("train", "fmap", "fsa")
    shape = tuple(fmap.shape)
    gather = _map_rows(fmap, device)
    cam = as_tensor(feat.require("train", "cam", "fsa"), device).flatten(1)  # [N, L]
    y = as_tensor(feat.train["labels"], device, torch.long)
    counts = torch.bincount(y, minlength=feat.num_classes)
    head = head_class_mask(counts, float(settings["h_r"]))
    is_head = head[y]
    if is_head.all():
        raise LtpipeError(f"fsa: h_r={settings['h_r']} leaves no tail classes; lower h_r")
    by_class = LabelSampler(y, num_classes=feat.num_classes)
    tails = _Pool(torch.nonzero(~is_head).squeeze(1), by_class,
                  settings["tail_sampler"] == "class_balanced")
    heads = _Pool(torch.nonzero(is_head).squeeze(1), by_class, False)
    logits = as_tensor(feat.require("train", "logits", "fsa"), device)
    confusing = confusing_classes(logits, y, feat.num_classes, int(settings["n_f"]))
    n_t, n_a, n_f = int(settings["n_t"]), int(settings["n_a"]), int(settings["n_f"])
    slot = torch.arange(n_a, device=device) % n_f
    spec, generic = position_sets(cam, float(settings["tau_s"]), float(settings["tau_g"]))

    batch_bytes = n_t * n_a * int(np.prod(shape[1:])) * 4
    chunk = max(1, min(MAX_CHUNK, CHUNK_BYTES // batch_bytes))

    def build(k: int, x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator):
        """``k`` batches at once: [k, B, D] features and [k, B] labels."""
        tail = tails.draw(k * n_t, gen)
        c = labels[tail]
        other = by_class.draw_within(confusing[c][:, slot].reshape(-1), gen)
        rep = tail.repeat_interleave(n_a)
        ratio = torch.rand(len(rep), generator=gen, device=x.device)
        vectors, local, nonzero = gather(torch.cat([rep, other]))
        lr, lo = local[:len(rep)], local[len(rep):]
        aug = recombine(vectors, lr, usable_positions(spec[rep], nonzero[lr]), lo,
                        usable_positions(generic[other], nonzero[lo]), ratio, gen)
        head_idx = heads.draw(k * n_t * (1 + n_a), gen).view(k, -1)
        xb = torch.cat([x[tail].view(k, n_t, -1), aug.view(k, n_t * n_a, -1), x[head_idx]], 1)
        yb = torch.cat([c.view(k, n_t), c.repeat_interleave(n_a).view(k, -1),
                        labels[head_idx]], 1)
        return list(zip(xb.unbind(0), yb.unbind(0), strict=True))

    queue: list = []

    def augment(idx, x, labels, gen):
        if not queue:
            queue.extend(reversed(build(chunk, x, labels, gen)))
        return queue.pop()

    return augment


def run(inputs: list, settings: dict, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Fine-tune the stage-one head on FSA batches; return logits per evaluated split."""
    (feat,) = inputs
    batch = 2 * int(settings["n_t"]) * (1 + int(settings["n_a"]))
    cfg = TrainConfig.from_settings(settings, sampler=None, batch_size=batch)
    gen = make_generator(seed, device)
    x, y = train_tensors(feat, "pooled", "fsa", device)
    head = stage_one_head(feat, device)
    train_head(head, x, y, make_loss("ce", feat.class_counts, device), cfg, gen,
               augment=make_augment(feat, settings, device))
    return score_splits(feat, "pooled", "fsa", device, head)
