"""Tests of ltpipe.data.samplers: class probabilities, sampled frequencies, determinism."""

import numpy as np
import pytest
import torch

from ltpipe.data.samplers import LabelSampler, class_probabilities
from ltpipe.utils import LtpipeError

COUNTS = [100, 25, 4, 0]


def gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.mark.parametrize("kind, power, expected", [
    ("instance", None, [100 / 129, 25 / 129, 4 / 129, 0]),
    ("sqrt", None, [10 / 17, 5 / 17, 2 / 17, 0]),
    ("class_balanced", None, [1 / 3, 1 / 3, 1 / 3, 0]),
    ("inverse", None, [0.01 / 0.3, 0.04 / 0.3, 0.25 / 0.3, 0]),
    ("power", 2.0, [1e4 / 10641, 625 / 10641, 16 / 10641, 0]),
])
def test_class_probabilities_known_values(kind, power, expected):
    q = class_probabilities(COUNTS, kind, power)
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_class_probabilities_errors():
    with pytest.raises(LtpipeError, match="unknown sampler kind 'balanced'"):
        class_probabilities(COUNTS, "balanced")
    with pytest.raises(LtpipeError, match="power"):
        class_probabilities(COUNTS, "power")
    with pytest.raises(LtpipeError, match="only used with kind='power'"):
        class_probabilities(COUNTS, "sqrt", power=0.3)
    with pytest.raises(LtpipeError, match="all zero"):
        class_probabilities([0, 0], "instance")


def sample_indices(labels, kind, num_samples, generator, power=None):
    return LabelSampler(labels, kind, power).sample(num_samples, generator)


def labels_with_counts(counts):
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def test_class_balanced_frequencies_are_uniform():
    labels = labels_with_counts([500, 50, 5])
    n = 30000
    idx = sample_indices(labels, "class_balanced", n, gen(1))
    freq = torch.bincount(labels[idx], minlength=3).double() / n
    # binomial sd = sqrt(p (1 - p) / n) = 0.0027; allow ~7 sd
    assert torch.all((freq - 1 / 3).abs() < 0.02), freq
    # within the rarest class each of its 5 samples is drawn ~n/15 = 2000 times (sd ~43)
    rare = torch.bincount(idx[labels[idx] == 2] - 550, minlength=5)
    assert rare.min() > 1700 and rare.max() < 2300, rare


def test_sqrt_frequencies():
    labels = labels_with_counts([400, 100, 25])
    idx = sample_indices(labels, "sqrt", 35000, gen(2))
    freq = torch.bincount(labels[idx], minlength=3).double() / 35000
    expected = torch.tensor([20.0, 10.0, 5.0]) / 35
    assert torch.all((freq - expected).abs() < 0.02), freq


def test_instance_is_concatenated_permutations():
    labels = labels_with_counts([7, 3])
    idx = sample_indices(labels, "instance", 10, gen(3))
    assert sorted(idx.tolist()) == list(range(10))
    idx = sample_indices(labels, "instance", 25, gen(3))
    hits = torch.bincount(idx, minlength=10)
    assert set(hits.tolist()) <= {2, 3} and hits.sum() == 25
    assert sorted(idx[:10].tolist()) == list(range(10))


def test_determinism_and_seed_dependence():
    labels = labels_with_counts([50, 20, 3])
    a = sample_indices(labels, "class_balanced", 200, gen(5))
    b = sample_indices(labels, "class_balanced", 200, gen(5))
    c = sample_indices(labels, "class_balanced", 200, gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_draw_within_returns_requested_classes():
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    sampler = LabelSampler(labels, num_classes=4)
    classes = torch.tensor([2, 2, 0, 1, 2, 0, 1, 1])
    idx = sampler.draw_within(classes, gen(7))
    assert torch.equal(labels[idx], classes)
    with pytest.raises(LtpipeError, match=r"classes \[3\]"):
        sampler.draw_within(torch.tensor([3]), gen(7))
