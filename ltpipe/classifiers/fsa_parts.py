"""FSA building blocks: head/tail split, confusing classes, CAM position sets, recombination,
and the batch builder (``make_augment``) that ``ltpipe.classifiers.fsa.run`` trains with.

All functions are batched torch (no Python loops over samples or positions).
"""

from __future__ import annotations

import numpy as np
import torch

from ltpipe.classifiers import fsa  # its constants, read at call time (tests patch them)
from ltpipe.classifiers.common import as_tensor
from ltpipe.classifiers.inputs import CachedRows, Features, take_rows
from ltpipe.data.samplers import LabelSampler
from ltpipe.utils import LtpipeError


def head_class_mask(counts: torch.Tensor, h_r: float) -> torch.Tensor:
    """Bool [C]: the fewest most-frequent classes holding at least ``h_r`` of the samples.

    Classes are ranked by descending count (ties by class index).
    """
    counts = counts.long()
    order = torch.argsort(-counts, stable=True)
    share = torch.cumsum(counts[order], 0).double() / counts.sum().double()
    k = int(torch.nonzero(share >= h_r - 1e-12)[0]) + 1
    mask = torch.zeros(len(counts), dtype=torch.bool, device=counts.device)
    mask[order[:k]] = True
    return mask


def mean_class_scores(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C]: row c is the mean softmax vector over the training samples of class c."""
    probs = torch.softmax(logits.float(), dim=1)
    sums = torch.zeros(num_classes, num_classes, device=logits.device).index_add_(0, labels, probs)
    n = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    return sums / n[:, None]


def confusing_classes(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      n_f: int) -> torch.Tensor:
    """Long [C, n_f]: for each class c the top ``n_f`` classes u != c by mean softmax score of u
    over the samples of c; classes without samples are never chosen."""
    scores = mean_class_scores(logits, labels, num_classes)
    empty = torch.bincount(labels, minlength=num_classes) == 0
    scores = scores.masked_fill(empty[None, :], -1.0)
    scores.fill_diagonal_(-1.0)
    available = int((~empty).sum()) - 1
    if n_f > available:
        raise LtpipeError(f"fsa: n_f={n_f} confusing classes requested but only {available} other "
                          "classes have training samples; lower n_f")
    return torch.topk(scores, n_f, dim=1).indices


def position_sets(cam: torch.Tensor, tau_s: float,
                  tau_g: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(specific, generic) bool masks shaped like ``cam``: CAM > tau_s and CAM < tau_g."""
    return cam > tau_s, cam < tau_g


def usable_positions(mask: torch.Tensor, nonzero: torch.Tensor) -> torch.Tensor:
    """Bool [N, L]: positions in ``mask`` whose vector is not all zero (``nonzero`` [N, L]),
    falling back to all non-zero positions where that leaves none, and to every position for
    an all-zero map (whose draws then average to zero anyway)."""
    use = mask & nonzero
    use = torch.where(use.any(1, keepdim=True), use, nonzero)
    return torch.where(use.any(1, keepdim=True), use, torch.ones_like(use))


def recombine(vectors: torch.Tensor, spec_src: torch.Tensor, spec_use: torch.Tensor,
              gen_src: torch.Tensor, gen_use: torch.Tensor, ratio: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
    """Augmented pooled features [B, D] (float32).

    Row b is the mean of L position vectors of ``vectors`` [N, L, D] (maps stored position-
    major): round(g_b L) drawn with repetition from the positions ``spec_use[b]`` of sample
    ``spec_src[b]`` and the other L - round(g_b L) from the positions ``gen_use[b]`` of sample
    ``gen_src[b]``. Position sets are [B, L] bool (see ``usable_positions``), ``ratio`` g [B].
    One multinomial call and one gather for the whole batch.
    """
    b, length = spec_use.shape
    n_spec = torch.round(ratio * length).long().clamp(0, length)
    weights = torch.cat([spec_use, gen_use]).float()                     # [2B, L]
    draws = torch.multinomial(weights, length, replacement=True, generator=generator)
    slot = torch.arange(length, device=vectors.device)
    from_spec = slot[None, :] < n_spec[:, None]                          # [B, L]
    pos = torch.where(from_spec, draws[:b], draws[b:])
    src = torch.where(from_spec, spec_src[:, None], gen_src[:, None])
    return vectors[src, pos].float().mean(1)


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
    whole = not isinstance(fmap, CachedRows) or fmap.nbytes <= fsa.WHOLE_BYTES
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
    chunk = max(1, min(fsa.MAX_CHUNK, fsa.CHUNK_BYTES // batch_bytes))

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
