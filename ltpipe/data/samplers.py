"""Index samplers for long-tailed training: instance, class-balanced, square-root, inverse, power.

Every sampler is a two-step draw: pick a class with probability q_j, then a sample uniformly
within that class (instance sampling is a plain permutation instead). The per-class
probabilities are q_j ∝ n_j ** p with

    instance        p = 1    (every sample equally likely)
    sqrt            p = 1/2
    class_balanced  p = 0    (every class equally likely; this is also what per-sample
                              resampling weights 1/n_y give, e.g. FFN's reference code)
    inverse         p = -1   (rare classes over-represented, BBN's "reversed" sampler)
    power           p = ``power`` (any exponent)

Classes with no samples get probability 0. Pure torch; works on any device as long as the
``torch.Generator`` lives on the same device as the labels.
"""

from __future__ import annotations

import torch

from ltpipe.utils import LtpipeError

KIND_POWERS: dict[str, float] = {"instance": 1.0, "sqrt": 0.5, "class_balanced": 0.0,
                                 "inverse": -1.0}
SAMPLER_KINDS: tuple[str, ...] = (*KIND_POWERS, "power")


def _exponent(kind: str, power: float | None) -> float:
    if kind == "power":
        if power is None:
            raise LtpipeError("sampler kind 'power' needs an exponent: pass power=<float>")
        return float(power)
    if kind not in KIND_POWERS:
        raise LtpipeError(f"unknown sampler kind {kind!r}; expected one of {list(SAMPLER_KINDS)}")
    if power is not None:
        raise LtpipeError(f"power={power} is only used with kind='power', not {kind!r}")
    return KIND_POWERS[kind]


def class_probabilities(counts, kind: str, power: float | None = None) -> torch.Tensor:
    """Probability of drawing each class, q_j ∝ n_j ** p (p from ``kind``); 0 for empty classes.

    ``counts`` is any 1-d array-like of per-class sample counts. Returns float64 [C] summing to 1.
    """
    p = _exponent(kind, power)
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise LtpipeError(f"counts must be a 1-d array of non-negative integers, got {counts}")
    present = counts > 0
    if not present.any():
        raise LtpipeError("counts are all zero: there is nothing to sample from")
    weights = torch.where(present, counts.clamp(min=1.0) ** p, torch.zeros_like(counts))
    return weights / weights.sum()


class LabelSampler:
    """Draws indices of a labelled set; precomputes the per-class index lists once.

    ``labels`` int64 [N] on the device to sample on. ``sample(num, generator)`` returns int64 [num]
    indices; ``draw_within(classes, generator)`` returns one uniform index of each given class.
    """

    def __init__(self, labels: torch.Tensor, kind: str = "instance",
                 power: float | None = None, num_classes: int | None = None) -> None:
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.numel() == 0:
            raise LtpipeError(f"labels must be a non-empty 1-d tensor, got shape {labels.shape}")
        self.labels = labels.long()
        self.kind = kind
        c = int(self.labels.max()) + 1 if num_classes is None else int(num_classes)
        self.counts = torch.bincount(self.labels, minlength=c)
        self.order = torch.argsort(self.labels, stable=True)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.class_probs = class_probabilities(self.counts.cpu(), kind, power).to(
            device=self.labels.device, dtype=torch.float32)

    def draw_within(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One index drawn uniformly from each class in ``classes`` (int64 [K]); classes must
        be non-empty."""
        n = self.counts[classes]
        if (n == 0).any():
            bad = classes[n == 0].unique().tolist()
            raise LtpipeError(f"cannot draw a sample of classes {bad}: they have no samples")
        u = torch.rand(classes.shape, generator=generator, device=self.labels.device)
        pos = (u * n).long().clamp(max=n - 1)
        return self.order[self.offsets[classes] + pos]

    def sample(self, num_samples: int, generator: torch.Generator) -> torch.Tensor:
        """``num_samples`` indices: concatenated permutations for ``instance``, otherwise
        class draws by ``class_probs`` followed by a uniform draw within the class."""
        if self.kind == "instance":
            n = self.labels.numel()
            reps = -(-num_samples // n)
            perms = [torch.randperm(n, generator=generator, device=self.labels.device)
                     for _ in range(reps)]
            return torch.cat(perms)[:num_samples]
        classes = torch.multinomial(self.class_probs, num_samples, replacement=True,
                                    generator=generator)
        return self.draw_within(classes, generator)

