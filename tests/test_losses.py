"""Known-answer tests for ltpipe.losses: per-class quantities, each loss vs a plain loop formula."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltpipe.losses import (
    LOSSES,
    LTLoss,
    build_loss,
    class_balanced_weights,
    kps_margins,
    kps_scales,
    ldam_margins,
    loss_settings,
    mixup_loss,
    register_loss,
)
from ltpipe.utils import LtpipeError

LN50 = math.log(50)
# Unsorted counts: ranks by descending count are class 1 (2500), 2 (50), 3 (10), 0 (1).
KPS_COUNTS = [1, 2500, 50, 10]
KPS_S = [1.0, 3.0, 2.0, 1.0 + math.log(10) / LN50]  # ln(50 n / 1) / ln 50, by hand
# Mirror pairs by rank: 0 <-> 1, 2 <-> 3; margins s_{k(j)} * max_m / 3 with max_m = 0.6.
KPS_MIRRORED = [3.0, 1.0, KPS_S[3], 2.0]
KPS_M = [0.6, 0.2, 0.2 * KPS_S[3], 0.4]


def _logsumexp(v: list[float]) -> float:
    top = max(v)
    return top + math.log(sum(math.exp(x - top) for x in v))


def _ce(z: list[float], y: int) -> float:
    return _logsumexp(z) - z[y]


def _inputs(seed: int = 0, b: int = 6, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.rand(b, c, generator=g, dtype=torch.float64) * 2 - 1  # cosine-like
    target = torch.arange(b) % c
    return logits, target


# ---- per-class quantities ------------------------------------------------------------------


def test_class_balanced_weights_known_answer():
    # raw (1-0.9)/(1-0.9**n) = 0.1000027, 0.1535326, 1.0; normalized to sum to 3.
    w = class_balanced_weights([100, 10, 1], 0.9)
    assert w.dtype == torch.float32
    np.testing.assert_allclose(w.numpy(), [0.2393292, 0.3674420, 2.3932288], rtol=1e-6)
    assert w.sum().item() == pytest.approx(3.0, rel=1e-6)
    raw = class_balanced_weights(np.array([100, 10, 1]), 0.9, normalize=False)
    np.testing.assert_allclose(raw.numpy(), [0.1 / (1 - 0.9**100), 0.1 / 0.6513215599, 1.0],
                               rtol=1e-6)
    assert torch.equal(class_balanced_weights([5, 7], 0.0), torch.ones(2))


def test_class_balanced_weights_beta_near_one_is_exact():
    # (1-b)/(1-b**n) -> 1/n as b -> 1; float32 b would lose this entirely.
    raw = class_balanced_weights(torch.tensor([1, 2, 4]), 1 - 1e-12, normalize=False)
    np.testing.assert_allclose(raw.numpy(), [1.0, 0.5, 0.25], rtol=1e-5)


def test_ldam_margins_known_answer():
    m = ldam_margins([100, 10, 1])  # 0.5 * n ** -0.25
    np.testing.assert_allclose(m.numpy(), [0.1581139, 0.2811707, 0.5], rtol=1e-6)
    np.testing.assert_allclose(ldam_margins([1, 16], max_m=0.2).numpy(), [0.2, 0.1], rtol=1e-6)


def test_kps_scales_known_answer():
    np.testing.assert_allclose(kps_scales(KPS_COUNTS).numpy(), KPS_S, rtol=1e-6)


def _closed_form_margins(counts, max_m):
    """The paper's m_j = C_m - log n_j, normalized so the rarest class gets max_m (plain loop)."""
    top, low = max(counts), min(counts)
    return [max_m * math.log(50 * top / n) / math.log(50 * top / low) for n in counts]


def cifar_lt_counts(n_max: int, num_classes: int, imb: float) -> list[int]:
    """The LDAM-DRW profile n_i = int(n_max * (1/IF) ** (i / (C - 1))) (docs/methods.md#splits)."""
    return [int(n_max * (1 / imb) ** (i / (num_classes - 1))) for i in range(num_classes)]


def test_kps_margins_closed_form_is_the_default():
    m = kps_margins(KPS_COUNTS, max_m=0.6)  # unsorted labels
    np.testing.assert_allclose(m.numpy(), _closed_form_margins(KPS_COUNTS, 0.6), rtol=1e-6)
    assert m[0].item() == pytest.approx(0.6) and m.argmin().item() == 1
    # By hand: ln(50 * 2500 / n) / ln 50 = 3, 1, 2, 2 + ln 5 / ln 50 -> * 0.6 / 3.
    np.testing.assert_allclose(m.numpy(), [0.6, 0.2, 0.4, 0.2 * (2 + math.log(5) / LN50)],
                               rtol=1e-6)
    perm = [2, 0, 3, 1]  # permuting the labels permutes the margins
    permuted = kps_margins([KPS_COUNTS[i] for i in perm], max_m=0.6)
    np.testing.assert_allclose(permuted.numpy(), m.numpy()[perm], rtol=1e-6)


@pytest.mark.parametrize("imb", [50, 100, 200])
def test_kps_closed_form_on_tied_cifar100_counts(imb):
    # CIFAR-100-LT from IF 20 up has tied counts; each tie must not shift the other classes
    # (the dense rank of distinct counts did: 0.025 / 0.041 / 0.068 off at IF 50 / 100 / 200).
    counts = cifar_lt_counts(500, 100, imb)
    assert len(set(counts)) < 100
    m = kps_margins(counts, 0.5).numpy()
    np.testing.assert_allclose(m, _closed_form_margins(counts, 0.5), rtol=1e-6, atol=1e-7)
    for n in set(counts):
        tied = [j for j, c in enumerate(counts) if c == n]
        assert np.ptp(m[tied]) == 0.0
    late = build_loss("kps", counts, max_m=0.5).sample_scale(torch.arange(100), 200)[:, 0]
    want = [min(max(15 * math.log(50 * 500 / n) / LN50, 15.0), 50.0) for n in counts]
    np.testing.assert_allclose(late.numpy(), want, rtol=1e-6)


# Numbers printed by the reference code: zxsong999/Feature-Fusion-Network.pytorch, losses.py
# (class KPSLoss, lines 53-99), commit 2a242ae1e7f33d50308303771a2c04cb11ea4eb6, run on CPU in
# float32 on the CIFAR-LT profiles below (labels sorted by count, as in its data), inputs
# cos = torch.rand(B, C) * 2 - 1 after torch.manual_seed(0).
KPS_REFERENCE = {
    # (n_max, C, max_m, targets): (loss before the switch epoch, loss after it)
    (500, 100, 0.5, (0, 5, 17, 33, 50, 66, 90, 99)): (31.834095, 48.756023),
    (5000, 10, 0.2, (0, 1, 3, 5, 7, 9)): (23.475435, 38.647633),
}
KPS_REFERENCE_MARGINS_C10_IF100 = [0.0918618, 0.1037628, 0.1158709, 0.1278998, 0.1399152,
                                   0.1519104, 0.1639492, 0.1759574, 0.1879814, 0.2]


@pytest.mark.parametrize("case", sorted(KPS_REFERENCE))
def test_kps_positional_reproduces_the_reference_code(case):
    n_max, c, max_m, targets = case
    counts = cifar_lt_counts(n_max, c, 100)
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(len(targets), c, generator=g) * 2 - 1
    target = torch.tensor(targets)
    loss = build_loss("kps", counts, max_m=max_m, mirror="positional")
    early, late = KPS_REFERENCE[case]
    assert loss(cos, target, epoch=0).item() == pytest.approx(early, rel=1e-6)
    assert loss(cos, target, epoch=150).item() == pytest.approx(late, rel=1e-6)
    if c == 10:
        np.testing.assert_allclose(loss.margins.numpy(), KPS_REFERENCE_MARGINS_C10_IF100,
                                   atol=1e-6)
    # the paper's closed form differs from the reference once counts are rounded
    closed = build_loss("kps", counts, max_m=max_m)
    assert closed(cos, target, epoch=150).item() != pytest.approx(late, rel=1e-4)


def test_kps_margins_positional_option_goes_by_count_position():
    m = kps_margins(KPS_COUNTS, max_m=0.6, mirror="positional")
    np.testing.assert_allclose(m.numpy(), KPS_M, rtol=1e-6)
    assert m.argmax().item() == 0 and m[0].item() == pytest.approx(0.6)  # rarest: max_m
    # The reference's flip of the LABEL-ordered array would give s[::-1] * 0.2, which differs.
    assert not np.allclose(m.numpy(), np.array(KPS_S[::-1]) * 0.2)
    # Ties go by class index: classes 1 and 2 (count 1) hold positions 1 and 2 of [10, 1, 1];
    # position 1 mirrors onto itself (s = 1), position 2 onto class 0 (s = ln 500 / ln 50), so
    # the two tied classes get different margins, as in the reference code.
    s10 = math.log(500) / LN50
    np.testing.assert_allclose(kps_margins([10, 1, 1], 0.5, mirror="positional").numpy(),
                               [0.5 / s10, 0.5 / s10, 0.5], rtol=1e-6)
    # Exponential profile, exact: positional == closed form (the paper's m_j = C_m - log n_j).
    counts = [10.0, 1000.0, 1.0, 100.0]
    np.testing.assert_allclose(kps_margins(counts, 0.3, mirror="positional").numpy(),
                               _closed_form_margins(counts, 0.3), rtol=1e-6)
    with pytest.raises(LtpipeError, match="mirror='rank'.*closed_form"):
        kps_margins(counts, 0.3, mirror="rank")


@pytest.mark.parametrize("bad", [[3, 0, 1], [], [[1, 2]], [1, float("nan")], ["a", "b"]])
def test_bad_counts_raise(bad):
    with pytest.raises(LtpipeError, match="count"):
        ldam_margins(bad)


# ---- losses vs loop formulas ---------------------------------------------------------------


def test_ce_and_drw_switch_at_drw_epoch():
    counts = [100, 10, 1]
    logits, _ = _inputs(c=3)
    target = torch.tensor([0, 0, 0, 0, 1, 2])  # head-heavy, as instance sampling draws
    loss = build_loss("ce", counts, drw_epoch=3, drw_beta=0.9)
    rows = logits.tolist()
    ce = [_ce(rows[i], int(target[i])) for i in range(len(rows))]
    w = [0.2393292360088335, 0.3674419730958617, 2.3932287908953045]
    wy = [w[int(t)] for t in target]
    plain = sum(ce) / len(ce)
    # default reduction: sum_i w_yi l_i / sum_i w_yi, torch's cross_entropy(weight=w) (the
    # LDAM-DRW reference); the plain mean of w_yi l_i stays an option (Cui et al.'s form)
    weighted = sum(a * c for a, c in zip(wy, ce)) / sum(wy)
    assert loss(logits, target, epoch=2).item() == pytest.approx(plain, rel=1e-6)
    assert loss(logits, target, epoch=3).item() == pytest.approx(weighted, rel=1e-6)
    assert loss(logits, target, epoch=50).item() == pytest.approx(weighted, rel=1e-6)
    ref = F.cross_entropy(logits, target, weight=torch.tensor(w, dtype=torch.float64))
    assert loss(logits, target, epoch=3).item() == pytest.approx(ref.item(), rel=1e-6)
    mean = build_loss("ce", counts, drw_epoch=0, drw_beta=0.9, weighted_mean=False)
    assert mean(logits, target).item() == pytest.approx(
        sum(a * c for a, c in zip(wy, ce)) / len(ce), rel=1e-6)


def test_ce_scale_and_cb_beta():
    counts = [100, 10, 1]
    logits, _ = _inputs(c=3)
    target = torch.tensor([0, 0, 0, 0, 1, 2])  # head-heavy, as instance sampling draws
    rows = (logits * 4).tolist()
    w = [0.2393292360088335, 0.3674419730958617, 2.3932287908953045]
    wy = [w[int(t)] for t in target]
    want = sum(a * _ce(r, int(t)) for a, r, t in zip(wy, rows, target)) / sum(wy)
    got = build_loss("ce", counts, scale=4.0, cb_beta=0.9)(logits, target, epoch=7)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_focal_loop_formula_and_gamma_zero_is_ce():
    counts = [5, 4, 3, 2]
    logits, target = _inputs()
    want = 0.0
    for row, y in zip((logits * 2).tolist(), target.tolist()):
        p = math.exp(row[y] - _logsumexp(row))
        want += (1 - p) ** 2 * -math.log(p)
    got = build_loss("focal", counts, gamma=2.0, scale=2.0)(logits, target)
    assert got.item() == pytest.approx(want / len(target), rel=1e-6)
    ce = F.cross_entropy(logits, target)
    assert build_loss("focal", counts, gamma=0)(logits, target).item() == pytest.approx(ce.item())


def test_ldam_loop_formula():
    counts = [100, 10, 1, 1]
    logits, target = _inputs()
    margins = [0.5 * n**-0.25 for n in counts]
    want = 0.0
    for row, y in zip(logits.tolist(), target.tolist()):
        z = [30 * (v - (margins[y] if j == y else 0)) for j, v in enumerate(row)]
        want += _ce(z, y)
    got = build_loss("ldam", counts)(logits, target)
    assert got.item() == pytest.approx(want / len(target), rel=1e-6)


def test_balanced_softmax_equals_ce_on_shifted_logits():
    counts = torch.tensor([500, 50, 5, 2])
    logits, target = _inputs()
    loss = build_loss("balanced_softmax", counts)
    want = F.cross_entropy(logits + counts.double().log(), target)
    assert loss(logits, target).item() == pytest.approx(want.item(), rel=1e-6)
    # and the textbook form -log(n_y e^z_y / sum n_i e^z_i), with scale 3
    rows, ref = (logits * 3).tolist(), 0.0
    for row, y in zip(rows, target.tolist()):
        ref -= math.log(counts[y] * math.exp(row[y]) /
                        sum(n * math.exp(v) for n, v in zip(counts.tolist(), row)))
    got = build_loss("balanced_softmax", counts, scale=3.0)(logits, target)
    assert got.item() == pytest.approx(ref / len(rows), rel=1e-6)


def _kps_reference(cos, target, epoch, max_scale=50.0):
    out = 0.0
    for row, y in zip(cos.tolist(), target.tolist()):
        z = [KPS_S[j] * c - (KPS_M[y] if j == y else 0.0) for j, c in enumerate(row)]
        scale = 15.0 if epoch < 120 else min(max(15.0 * KPS_MIRRORED[y], 15.0), max_scale)
        out += _ce([scale * v for v in z], y)
    return out / len(target)


def test_kps_loop_formula_and_scale_switch_at_epoch_120():
    cos, target = _inputs(seed=3, b=8)
    loss = build_loss("kps", KPS_COUNTS, max_m=0.6, mirror="positional")
    early = loss(cos, target, epoch=119).item()
    late = loss(cos, target, epoch=120).item()
    assert early == pytest.approx(_kps_reference(cos, target, 0), rel=1e-5)
    assert late == pytest.approx(_kps_reference(cos, target, 120), rel=1e-5)
    assert early != pytest.approx(late, rel=1e-3)
    # per-sample scales 45, 15, ~23.8, 30 after the switch; max_scale 30 clamps the first
    assert loss.sample_scale(torch.arange(4), 120)[:, 0].tolist() == pytest.approx(
        [45.0, 15.0, 15 * KPS_S[3], 30.0], rel=1e-6)
    clamped = build_loss("kps", KPS_COUNTS, max_m=0.6, max_scale=30.0,
                         mirror="positional")(cos, target, epoch=200)
    assert clamped.item() == pytest.approx(_kps_reference(cos, target, 200, 30.0), rel=1e-5)
    short = build_loss("kps", KPS_COUNTS, max_m=0.6, switch_epoch=5, mirror="positional")
    assert short(cos, target, epoch=5).item() == pytest.approx(late, rel=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_bfs_loop_formula(normalize):
    counts, alpha, beta, gamma = [300, 30, 3, 1], 0.3, 0.99, 2.0
    logits, target = _inputs(seed=1, b=5)
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    w = [r * len(counts) / sum(raw) for r in raw] if normalize else raw
    want = 0.0
    for row, y in zip((2 * logits).tolist(), target.tolist()):
        fl = 0.0
        for j, zj in enumerate(row):
            pt = 1 / (1 + math.exp(-(zj if j == y else -zj)))
            fl += (1 - pt) ** gamma * -math.log(pt)
        bs = -math.log(counts[y] * math.exp(row[y]) /
                       sum(n * math.exp(v) for n, v in zip(counts, row)))
        want += alpha * w[y] * fl + (1 - alpha) * bs
    loss = build_loss("bfs", counts, alpha=alpha, beta=beta, gamma=gamma, scale=2.0,
                      cb_normalize=normalize)
    assert loss(logits, target).item() == pytest.approx(want / len(target), rel=1e-6)


def test_mixup_loss():
    loss = build_loss("ce", [3, 2, 1, 1])
    logits, y_a = _inputs()
    y_b = y_a.flip(0)
    want = 0.3 * loss(logits, y_a) + 0.7 * loss(logits, y_b)
    assert mixup_loss(loss, logits, y_a, y_b, 0.3).item() == pytest.approx(want.item())
    assert mixup_loss(loss, logits, y_a, y_b, 1.0).item() == pytest.approx(
        loss(logits, y_a).item())
    with pytest.raises(LtpipeError, match="lam"):
        mixup_loss(loss, logits, y_a, y_b, 1.5)


# ---- registry, settings, devices, gradients ------------------------------------------------


def test_registry_covers_every_name():
    assert {"ce", "focal", "ldam", "balanced_softmax", "kps", "bfs"} <= set(LOSSES)
    assert all(issubclass(cls, LTLoss) for cls in LOSSES.values())


def test_the_torch_free_declarations_are_the_classes_settings():
    """The config check reads ltpipe.losses.spec (no torch); the classes read the same
    declarations, and a built-in class that declares other settings is refused."""
    from ltpipe.losses.spec import LOSS_SPECS, default_settings, loss_names

    assert loss_names() == sorted(LOSSES)
    for name, spec in LOSS_SPECS.items():
        assert LOSSES[name].__module__ == spec.module
        assert dict(LOSSES[name].SETTINGS) == dict(spec.settings)
        assert default_settings(name) == loss_settings(name)
    with pytest.raises(LtpipeError, match="'kps'.*differs from its declaration"):
        register_loss("kps")(type("KPSLoss", (LTLoss,), {"__module__": "ltpipe.losses.kps"}))
    assert LOSSES["kps"].SETTINGS["max_scale"].default == 50.0  # the real one stays


def test_loss_settings_defaults():
    assert loss_settings("ldam")["scale"] == 30.0 and loss_settings("ldam")["max_m"] == 0.5
    assert loss_settings("ldam")["drw_epoch"] is None
    assert loss_settings("ldam")["drw_beta"] == 0.9999
    kps = loss_settings("kps")
    assert (kps["scale"], kps["switch_epoch"], kps["max_scale"]) == (15.0, 120, 50.0)
    assert {k: loss_settings("bfs")[k] for k in ("alpha", "beta", "gamma")} == {
        "alpha": 0.1, "beta": 0.9999, "gamma": 2.0}
    assert loss_settings("ce")["cb_beta"] is None and loss_settings("ce")["scale"] == 1.0
    assert all("scale" in loss_settings(n) for n in LOSSES)
    loss_settings("ce")["scale"] = 9.0  # a copy: does not change defaults
    assert loss_settings("ce")["scale"] == 1.0


def test_build_loss_errors_name_the_problem():
    with pytest.raises(LtpipeError, match="'nope'.*balanced_softmax.*ldam"):
        build_loss("nope", [2, 1])
    with pytest.raises(LtpipeError, match=r"\['gama'\].*allowed keys:.*gamma"):
        build_loss("focal", [2, 1], gama=2.0)
    with pytest.raises(LtpipeError, match="'cb_beta' = 1.5.*allowed keys"):
        build_loss("ce", [2, 1], cb_beta=1.5)
    with pytest.raises(LtpipeError, match="'drw_epoch'"):
        build_loss("ldam", [2, 1], drw_epoch=True)
    with pytest.raises(LtpipeError, match="max_scale"):
        build_loss("kps", [2, 1], max_scale=10.0)
    with pytest.raises(LtpipeError, match=r"shape \[B, 2\]"):
        build_loss("ce", [2, 1])(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))


def test_reregistration_warns():
    @register_loss("_test_tmp")
    class First(LTLoss):
        pass

    try:
        with pytest.warns(UserWarning, match="re-registered"):
            @register_loss("_test_tmp")
            class Second(LTLoss):
                pass
        assert LOSSES["_test_tmp"] is Second
    finally:
        LOSSES.pop("_test_tmp", None)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_buffers_move_with_to(name):
    loss = build_loss(name, [9, 3, 1], drw_epoch=0) if name in ("ce", "focal", "ldam") \
        else build_loss(name, [9, 3, 1])
    assert len(list(loss.buffers())) >= 1
    moved = loss.to("meta")
    assert all(b.device.type == "meta" for b in moved.buffers())
    assert loss.state_dict() == {}  # buffers are derived, not checkpoint state


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("magnitude", [1.0, 1e3])
def test_finite_loss_and_gradients(name, magnitude):
    counts = [40, 20, 5, 1]
    settings = {"drw_epoch": 1, "cb_beta": 0.999} if name in ("ce", "focal", "ldam") else {}
    if name in ("focal", "bfs"):
        settings["gamma"] = 0.5  # (1 - p) ** gamma has an infinite slope at p = 1
    loss = build_loss(name, counts, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in (0, 200):
            logits, target = _inputs(seed=epoch)
            logits = (logits.float() * magnitude).requires_grad_()
            value = loss(logits, target, epoch)
            value.backward()
            assert value.ndim == 0 and torch.isfinite(value)
            assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
