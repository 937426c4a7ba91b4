"""FSA building blocks: head/tail split, confusing classes, CAM position sets, recombination.

All functions are batched torch (no Python loops over samples or positions).
"""

from __future__ import annotations

import torch

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
