"""Tests of the classifier stage (ltpipe.classifiers): known answers per method, the shared
trainer, the registry and runner, and every method on a small separable long-tailed set."""

import numpy as np
import pytest
import torch

from ltpipe.classifiers import METHODS, method_defaults, method_needs, method_spec, run_method
from ltpipe.classifiers.bwlm import review_indices
from ltpipe.classifiers.common import ClassScale, stage_one_head
from ltpipe.classifiers.ffn import fuse_features
from ltpipe.classifiers.fsa_parts import (
    confusing_classes,
    head_class_mask,
    position_sets,
    recombine,
    usable_positions,
)
from ltpipe.classifiers.h2t import channel_subset, fuse_channels, make_augment
from ltpipe.classifiers.inputs import Features, features_from_cache
from ltpipe.classifiers.trainer import MomentumSGD, TrainConfig, train_head
from ltpipe.utils import LtpipeError

CPU = torch.device("cpu")


def gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def cam_of(fmap, w_own):
    cam = np.einsum("nd,ndhw->nhw", w_own, fmap)
    flat = cam.reshape(len(cam), -1)
    lo, hi = flat.min(1)[:, None, None], flat.max(1)[:, None, None]
    return ((cam - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)


def synth(seed=0, head_kind="linear", counts=(60, 30, 12, 6), n_test=20, d=8, hw=2, noise=0.3):
    """A separable long-tailed Features: class means 2 e_c, feature maps with noise."""
    rng = np.random.default_rng(seed)
    c = len(counts)
    means = 2.0 * np.eye(c, d, dtype=np.float32)
    w = means + rng.normal(0, 0.1, (c, d)).astype(np.float32)
    bias = np.linspace(-0.2, 0.2, c).astype(np.float32) if head_kind == "linear" else None
    scale = 1.0 if head_kind == "linear" else 10.0

    def head(f):
        if head_kind == "cosine":
            fn = f / np.linalg.norm(f, axis=1, keepdims=True)
            wn = w / np.linalg.norm(w, axis=1, keepdims=True)
            return scale * fn @ wn.T
        return scale * (f @ w.T + bias)

    def split(n_per):
        y = np.repeat(np.arange(c), n_per)
        fmap = (means[y][:, :, None, None] + rng.normal(0, noise, (len(y), d, hw, hw)))
        fmap = fmap.astype(np.float32)
        pooled = fmap.mean((2, 3))
        return {"labels": y.astype(np.int64), "pooled": pooled,
                "logits": head(pooled).astype(np.float32), "fmap": fmap.astype(np.float16),
                "cam": cam_of(fmap, w[y])}

    return Features(train=split(np.asarray(counts)), test=split(np.full(c, n_test)), val=None,
                    head_weight=w, head_bias=bias, head_kind=head_kind, logit_scale=scale,
                    class_counts=np.asarray(counts, dtype=np.int64))


def hand_features(x_train, y_train, x_test, y_test, w, b=None, logits=None, counts=None):
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    w = np.asarray(w, np.float32)
    counts = np.bincount(y_train, minlength=len(w)) if counts is None else counts
    test = {"pooled": x_test, "labels": np.asarray(y_test)}
    if logits is not None:
        test["logits"] = np.asarray(logits, np.float32)
    return Features(train={"pooled": x_train, "labels": np.asarray(y_train)}, test=test, val=None,
                    head_weight=w, head_bias=None if b is None else np.asarray(b, np.float32),
                    head_kind="linear", logit_scale=1.0,
                    class_counts=np.asarray(counts, dtype=np.int64))


# ---- post-hoc methods: known answers ----

def test_tau_norm_known_values():
    w, b = [[3.0, 4.0], [0.0, 2.0]], [5.0, -5.0]
    x = [[1.0, 1.0], [2.0, -1.0]]
    f = hand_features(x, [0, 1], x, [0, 1], w, b)
    out0 = run_method("tau_norm", [f], {"tau": 0.0}, 0)["test"]
    np.testing.assert_allclose(out0, [[7, 2], [2, -2]], atol=1e-6)  # joint head w/o bias
    out1 = run_method("tau_norm", [f], {"tau": 1.0}, 0)["test"]
    np.testing.assert_allclose(out1, [[1.4, 1.0], [0.4, -1.0]], atol=1e-6)  # unit rows
    out2 = run_method("tau_norm", [f], {"tau": 2.0}, 0)["test"]
    np.testing.assert_allclose(out2, [[7 / 25, 0.5], [2 / 25, -0.5]], atol=1e-6)


def test_ncm_predicts_nearest_centroid():
    x_train = np.array([[1, 0], [3, 0], [2, 1], [0, 1], [0, 3], [-1, 2]], np.float32)
    y_train = np.array([0, 0, 0, 1, 1, 1])
    x_test = np.array([[4, -1], [-2, 5], [1, 1], [0.5, 3]], np.float32)
    f = hand_features(x_train, y_train, x_test, [0, 1, 0, 1], np.zeros((2, 2)))
    out = run_method("ncm", [f], {}, 0)["test"]
    # independent plain-numpy version
    mean = x_train.mean(0)

    def proc(v):
        v = v - mean
        return v / np.linalg.norm(v)

    cents = [np.mean([proc(v) for v, t in zip(x_train, y_train) if t == k], 0) for k in (0, 1)]
    expect = np.array([[-np.sum((proc(v) - c) ** 2) for c in cents] for v in x_test])
    np.testing.assert_allclose(out, expect, atol=1e-5)
    assert out.argmax(1).tolist() == expect.argmax(1).tolist()


def test_logit_adjust_known_values():
    z = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    f = hand_features(np.zeros((3, 2)), [0, 1, 2], np.zeros((2, 2)), [0, 1], np.zeros((3, 2)),
                      logits=z, counts=[6, 3, 1])
    shift = np.array([0.5108256, 1.2039728, 2.3025851])  # -log([0.6, 0.3, 0.1])
    out = run_method("logit_adjust", [f], {}, 0)["test"]
    np.testing.assert_allclose(out, z + shift, atol=1e-5)
    out = run_method("logit_adjust", [f], {"tau": 0.5}, 0)["test"]
    np.testing.assert_allclose(out, z + 0.5 * shift, atol=1e-5)


def test_lws_starts_from_joint():
    z = torch.tensor([[1.0, -2.0, 0.5]])
    assert torch.equal(ClassScale(3, CPU)(z), z)
    f = synth()
    out = run_method("lws", [f], {"lr": 0.0}, 0)["test"]  # no step moves the scales
    np.testing.assert_allclose(out, f.test["logits"], atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_stage_one_head_reproduces_cached_logits(kind):
    f = synth(head_kind=kind)
    head = stage_one_head(f, CPU)
    out = head(torch.from_numpy(f.test["pooled"])).detach().numpy()
    np.testing.assert_allclose(out, f.test["logits"], atol=1e-4)
    joint = run_method("joint", [f], {}, 0)["test"]
    np.testing.assert_array_equal(joint, f.test["logits"])


# ---- H2T ----

def test_h2t_pooled_fusion_equals_map_fusion():
    g = gen(3)
    receiver, donor = torch.randn(5, 12, 3, 3, generator=g), torch.randn(5, 12, 3, 3, generator=g)
    ch = channel_subset(12, 0.25, g, CPU)
    assert len(ch) == 3 and len(set(ch.tolist())) == 3
    fused_maps = fuse_channels(receiver, donor, ch).mean((2, 3))
    fused_pooled = fuse_channels(receiver.mean((2, 3)), donor.mean((2, 3)), ch)
    assert torch.allclose(fused_maps, fused_pooled, atol=1e-6, rtol=0)
    keep = torch.ones(12, dtype=torch.bool)
    keep[ch] = False
    assert torch.equal(fused_pooled[:, keep], receiver.mean((2, 3))[:, keep])


def test_h2t_batch_keeps_receiver_labels():
    x, y = torch.randn(40, 8, generator=gen(1)), torch.arange(40) % 4
    idx = torch.tensor([0, 5, 10, 39])
    xb, yb = make_augment(0.5)(idx, x, y, gen(2))
    assert torch.equal(yb, y[idx])
    same = (xb == x[idx]).all(0)  # channels kept from the receivers
    assert int(same.sum()) == 4


# ---- FFN ----

def test_ffn_fuse_known_values():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    assert torch.allclose(fuse_features(a, b, 0.25, False), torch.tensor([[1.5, 1.0]]))
    assert torch.allclose(fuse_features(a, b, 0.25, True), torch.tensor([[0.9, 0.2]]))


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.mark.parametrize("w1", [0.5, 0.9])
def test_ffn_reference_scores_are_weighted_cosines(w1):
    # The reference's classifier gives w1 cos(f_KPS, w_j) + (1 - w1) cos(f_CE, w_j), times s:
    # the weighted sum of the normalized features is NOT normalized again. lr 0 keeps the
    # classifier at its initialization, the KPS head, so the scores follow by a plain formula.
    kps, ce = synth(1, "cosine"), synth(2)
    got = run_method("ffn", [kps, ce], {"w1": w1, "variant": "reference", "lr": 0.0,
                                        "epochs": 1}, 0)["test"]
    want = 30.0 * (w1 * _cos(kps.test["pooled"], kps.head_weight)
                   + (1 - w1) * _cos(ce.test["pooled"], kps.head_weight))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _noisy_copy(f, seed):
    rng = np.random.default_rng(seed)
    out = Features(**{**f.__dict__})
    for split in ("train", "test"):
        d = dict(getattr(f, split))
        d["pooled"] = rng.normal(size=d["pooled"].shape).astype(np.float32)
        setattr(out, split, d)
    return out


@pytest.mark.parametrize("w1, noisy", [(1.0, 1), (0.0, 0)])
def test_ffn_extreme_weights_use_one_backbone(w1, noisy):
    kps, ce = synth(1, "cosine"), synth(2)
    settings = {"w1": w1, "epochs": 3}
    base = run_method("ffn", [kps, ce], settings, 0)["test"]
    pair = [kps, ce]
    pair[noisy] = _noisy_copy(pair[noisy], 9)
    np.testing.assert_array_equal(run_method("ffn", pair, settings, 0)["test"], base)


def test_ffn_rejects_bad_inputs():
    kps, ce = synth(1, "cosine"), synth(2)
    with pytest.raises(LtpipeError, match="'w1' = 1.5"):
        run_method("ffn", [kps, ce], {"w1": 1.5}, 0)
    with pytest.raises(LtpipeError, match="variant"):
        run_method("ffn", [kps, ce], {"variant": "paperish"}, 0)
    with pytest.raises(LtpipeError, match="takes 2 backbone"):
        run_method("ffn", [kps], {}, 0)
    with pytest.raises(LtpipeError, match="labels differ"):
        run_method("ffn", [kps, synth(2, counts=(60, 30, 13, 5))], {}, 0)


# ---- FSA ----

def test_fsa_position_sets():
    cam = torch.tensor([[0.9, 0.5, 0.1, 0.85], [0.0, 0.19, 0.2, 1.0]])
    spec, generic = position_sets(cam, 0.8, 0.2)
    assert spec.tolist() == [[True, False, False, True], [False, False, False, True]]
    assert generic.tolist() == [[False, False, True, False], [True, True, False, False]]


def test_fsa_head_classes():
    counts = torch.tensor([5, 50, 10, 30, 5])
    assert head_class_mask(counts, 0.9).tolist() == [False, True, True, True, False]
    assert head_class_mask(counts, 0.91).tolist() == [True, True, True, True, False]
    assert head_class_mask(counts, 0.5).tolist() == [False, True, False, False, False]


def test_fsa_confusing_classes_are_top_mean_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (30, 5)).astype(np.float32)
    labels = np.arange(30) % 4  # class 4 has no samples: never a confusing class
    got = confusing_classes(torch.from_numpy(logits), torch.from_numpy(labels), 5, 2)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for c in range(4):
        mean = p[labels == c].mean(0)
        order = [u for u in np.argsort(-mean) if u != c and u != 4]
        assert got[c].tolist() == order[:2]
    with pytest.raises(LtpipeError, match="n_f=4"):
        confusing_classes(torch.from_numpy(logits), torch.from_numpy(labels), 5, 4)


def test_fsa_recombination_known_values():
    # maps stored position-major [N, L, D]
    vectors = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [2.0, 2.0], [5.0, 5.0]],
                            [[7.0, 7.0], [0.0, 1.0], [0.0, 0.0], [3.0, 3.0]]])
    nonzero = vectors.ne(0).any(2)
    spec = usable_positions(torch.tensor([[True, True, False, False]]), nonzero[:1])
    assert spec.tolist() == [[True, False, False, False]]  # the all-zero vector is excluded
    gen_set = torch.tensor([[False, False, False, True]])
    src0, src1 = torch.tensor([0]), torch.tensor([1])
    out = recombine(vectors, src0, spec, src1, gen_set, torch.tensor([1.0]), gen(0))
    assert torch.allclose(out, torch.tensor([[1.0, 0.0]]))
    out = recombine(vectors, src0, spec, src1, gen_set, torch.tensor([0.5]), gen(0))
    assert torch.allclose(out, torch.tensor([[2.0, 1.5]]))  # (2 [1,0] + 2 [3,3]) / 4
    # a set holding only a zero vector falls back to the non-zero positions
    fallback = usable_positions(torch.tensor([[False, False, True, False]]), nonzero[1:])
    assert fallback.tolist() == [[True, True, False, True]]


# ---- BWLM ----

def test_bwlm_balanced_review_counts():
    counts = [8, 40, 2, 20, 5, 10]
    labels = torch.repeat_interleave(torch.arange(6), torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=gen(4))]
    keep = review_indices(labels, 6, gen(5))
    assert len(set(keep.tolist())) == len(keep)
    # head half {1, 3, 5} subsampled to n_(m+1) = 8 (class 0); tail half kept in full
    assert torch.bincount(labels[keep], minlength=6).tolist() == [8, 8, 2, 8, 5, 8]
    other = review_indices(labels, 6, gen(6))
    assert not torch.equal(keep, other)


def test_bwlm_lambda_is_sgd_weight_decay_or_the_papers_penalty():
    # On all-zero training features the loss has no gradient on W, so one SGD step (lr 0.5,
    # no momentum) only decays it: W1 = (1 - lr lam) W0 with the cited code's SGD weight decay,
    # W1 = (1 - 2 lr lam) W0 with the paper's literal penalty lam ||W||^2.
    f = synth(3)
    f.train["pooled"] = np.zeros_like(f.train["pooled"])
    base = {"iterations": 1, "momentum": 0.0, "lr": 0.5, "schedule": "constant"}

    def weight(**kw):
        return run_method("bwlm", [f], {**base, **kw}, 0)["head_weight"]

    w0 = weight(lam=0.0)
    np.testing.assert_allclose(weight(lam=0.1), 0.95 * w0, rtol=1e-6)
    np.testing.assert_allclose(weight(lam=0.1, decay="penalty"), 0.9 * w0, rtol=1e-6)
    with pytest.raises(LtpipeError, match="'decay' = 'l2'"):
        weight(decay="l2")


# ---- trainer ----

def test_momentum_sgd_known_updates():
    # loss 0.5 p^2 (grad p), wd 0.1, momentum 0.9, lr 0.1, torch.optim.SGD semantics:
    # step 1: g = 1.1, buf = 1.1, p = 1 - 0.11 = 0.89
    # step 2: g = 1.1 * 0.89 = 0.979, buf = 0.99 + 0.979 = 1.969, p = 0.89 - 0.1969 = 0.6931
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = MomentumSGD([p], 0.9, 0.1)
    for expected in (0.89, 0.6931):
        opt.zero_grad()
        (0.5 * p**2).sum().backward()
        opt.step(0.1)
        assert float(p.detach()) == pytest.approx(expected, abs=1e-6)


def test_trainer_schedule_and_iterations():
    cfg = TrainConfig(lr=0.2, lr_min=0.0, schedule="cosine", iterations=7, sampler=None)
    assert cfg.lr_at(0, 10) == pytest.approx(0.2)
    assert cfg.lr_at(5, 10) == pytest.approx(0.1)
    calls = []

    def hook(idx, x, y, g):
        calls.append(idx)
        return x[:4], y[:4]

    head = torch.nn.Linear(2, 2)
    train_head(head, torch.randn(10, 2), torch.arange(10) % 2,
               lambda z, t, e: torch.nn.functional.cross_entropy(z, t), cfg, gen(), hook)
    assert len(calls) == 7 and all(c is None for c in calls)
    with pytest.raises(LtpipeError, match="'schedule' = 'step'"):
        TrainConfig(schedule="step").validate()


@pytest.mark.parametrize("epoch_samples, steps", [("data", 3), ("class_aware", 5)])
def test_trainer_epoch_length(epoch_samples, steps):
    # counts 6, 3, 1 (N = 10), batch 4: "data" = ceil(10 / 4) = 3 steps per epoch,
    # "class_aware" = ceil(n_max * C / 4) = ceil(18 / 4) = 5 (Kang et al.'s sampler length)
    y = torch.tensor([0] * 6 + [1] * 3 + [2])
    calls = []

    def hook(idx, x, y, g):
        calls.append(idx)
        return x[idx], y[idx]

    cfg = TrainConfig(epochs=2, batch_size=4, epoch_samples=epoch_samples)
    history = train_head(torch.nn.Linear(2, 3), torch.randn(10, 2), y,
                         lambda z, t, e: torch.nn.functional.cross_entropy(z, t), cfg, gen(),
                         hook)
    assert len(history) == 2 and len(calls) == 2 * steps
    with pytest.raises(LtpipeError, match="'epoch_samples' = 'nmax'"):
        TrainConfig(epoch_samples="nmax").validate()


# ---- registry, runner, inputs ----

def test_registry_facts():
    assert method_defaults("logit_adjust") == {"tau": 1.0}
    assert method_needs("fsa") >= {"fmap", "cam"} and "fmap" not in method_needs("crt")


# Defaults taken from the reference code where the paper is silent (docs/classifiers.md,
# "Defaults and their sources"): classifier-balancing config/ImageNet_LT cls_crt / cls_lws
# (f162ade), H2T config/cifar100 imb001 stage2 (3dafa70), FFN cifar_train_classifier.py (2a242ae),
# LTR-weight-balancing demo2_second-stage-training.py (e89f292).
REFERENCE_DEFAULTS = {
    "crt": {"epochs": 10, "batch_size": 512, "lr": 0.2, "weight_decay": 5e-4,
            "momentum": 0.9, "lr_min": 0.0, "epoch_samples": "data"},
    "lws": {"epochs": 5, "batch_size": 512, "lr": 0.2, "weight_decay": 5e-4},
    "h2t": {"epochs": 10, "batch_size": 128, "lr": 0.1 * 0.2, "weight_decay": 5e-4,
            "rho": 0.25},
    "bwlm": {"lam": 0.1, "decay": "sgd", "iterations": 10 * 170, "batch_size": 64, "lr": 0.01},
}


@pytest.mark.parametrize("method", sorted(REFERENCE_DEFAULTS))
def test_defaults_are_the_reference_codes(method):
    defaults = method_defaults(method)
    for key, want in REFERENCE_DEFAULTS[method].items():
        assert defaults[key] == pytest.approx(want) if isinstance(want, float) \
            else defaults[key] == want, key
    from ltpipe.classifiers.ffn import VARIANT_DEFAULTS
    assert VARIANT_DEFAULTS["reference"] == {"lr": 0.002, "sampler": "class_balanced",
                                             "weight_decay": 1e-4}


def test_unknown_setting_names_the_key():
    with pytest.raises(LtpipeError, match=r"method 'h2t': setting 'rho' = 1.5 .*\[0, 1\]"):
        run_method("h2t", [synth()], {"rho": 1.5}, 0)
    with pytest.raises(LtpipeError, match=r"no setting\(s\) \['lrr'\].*allowed keys:.* lr,"):
        run_method("crt", [synth()], {"lrr": 0.1}, 0)
    with pytest.raises(LtpipeError, match="takes 1 backbone"):
        run_method("crt", [synth(), synth()], {}, 0)
    with pytest.raises(LtpipeError, match="unknown classifier method 'crtt'"):
        run_method("crtt", [synth()], {}, 0)


class FakeReader:
    def __init__(self, f, head_kind="linear"):
        self.arrays = {(s, k): v for s in ("train", "test") for k, v in getattr(f, s).items()}
        self.arrays[("head", "weight")] = f.head_weight
        if f.head_bias is not None:
            self.arrays[("head", "bias")] = f.head_bias
        self.arrays[("meta", "class_counts")] = f.class_counts
        self.manifest = {"head_kind": head_kind, "logit_scale": f.logit_scale}
        self.reads = []

    def groups(self):
        return sorted({g for g, _ in self.arrays})

    def names(self, group):
        return sorted(k for g, k in self.arrays if g == group)

    def read(self, group, name):
        self.reads.append((group, name))
        return self.arrays[(group, name)]


def test_features_from_cache_loads_only_what_is_needed():
    reader = FakeReader(synth())
    f = features_from_cache(reader, {"pooled"})
    assert set(f.train) == {"pooled", "labels"} and f.val is None
    assert not any(name in ("fmap", "cam", "logits") for _, name in reader.reads)
    reader = FakeReader(synth(head_kind="cosine"), "cosine")
    f = features_from_cache(reader, {"fmap", "cam", "logits"})
    assert set(f.train) == {"fmap", "cam", "logits", "labels"}
    assert set(f.test) == {"logits", "labels"}  # maps are read for train only
    assert f.head_bias is None and f.logit_scale == 10.0
    assert ("head", "bias") not in reader.reads


# ---- every method on a separable long-tailed set; determinism ----

FAST = {"crt": {"epochs": 20}, "lws": {"epochs": 5}, "ffn": {"epochs": 10},
        "h2t": {"epochs": 10}, "fsa": {"iterations": 60},
        "bwlm": {"iterations": 200, "batch_size": 16, "lr": 0.05}}


def run_fast(name, seed=0):
    inputs = {"ffn": [synth(1, "cosine"), synth(2)], "ensemble": [synth(1), synth(2)]}.get(
        name, [synth(1)])
    return run_method(name, inputs, FAST.get(name, {}), seed)["test"], inputs[0].test["labels"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_beats_chance(name):
    scores, labels = run_fast(name)
    assert scores.shape == (len(labels), 4) and np.isfinite(scores).all()
    acc = float((scores.argmax(1) == labels).mean())
    assert acc >= 0.75, f"{name}: accuracy {acc} (chance 0.25)"


@pytest.mark.parametrize("name", [m for m in METHODS if method_spec(m).gpu])  # trained ones
def test_trained_methods_are_deterministic(name):
    a, _ = run_fast(name, seed=3)
    b, _ = run_fast(name, seed=3)
    c, _ = run_fast(name, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---- FSA on a real cache: reads only the map rows it samples, same results ----

def write_features(path, f):
    """Write ``f`` (a Features) as a zarr cache through ltpipe's own writer."""
    from ltpipe.cache import CacheWriter

    w = CacheWriter(path, backend="zarr", chunk_mb=0.001)
    for split in ("train", "test"):
        for name, arr in getattr(f, split).items():
            w.write(split, name, arr)
    w.write("head", "weight", f.head_weight)
    if f.head_bias is not None:
        w.write("head", "bias", f.head_bias)
    w.write("meta", "class_counts", f.class_counts)
    w.commit({"head_kind": f.head_kind, "logit_scale": f.logit_scale})


class CountingReader:
    """A cache reader that records every read of train/fmap: (rows asked for, rows returned)."""

    def __init__(self, reader):
        self.inner, self.fmap_reads = reader, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read(self, group, name, rows=None):
        out = self.inner.read(group, name, rows=rows)
        if (group, name) == ("train", "fmap"):
            self.fmap_reads.append((rows, len(out)))
        return out


def test_fsa_reads_only_sampled_map_rows_and_matches_in_memory(tmp_path, monkeypatch):
    from ltpipe.cache import open_cache
    from ltpipe.classifiers import fsa

    feat = synth(5, counts=(400, 200, 100, 50))
    n = len(feat.train["labels"])
    write_features(tmp_path / "c.zarr", feat)
    settings = {"iterations": 3, "n_t": 4}
    monkeypatch.setattr(fsa, "CHUNK_BYTES", 1)  # one batch per gather
    expect = run_method("fsa", [feat], settings, 7)
    monkeypatch.setattr(fsa, "WHOLE_BYTES", 0)  # this small array is otherwise read whole
    with open_cache(tmp_path / "c.zarr") as raw:
        reader = CountingReader(raw)
        got = run_method("fsa", [features_from_cache(reader, fsa.SPEC.needs)], settings, 7)
        lazy = features_from_cache(reader, fsa.SPEC.needs).train["fmap"]
        assert lazy.shape == feat.train["fmap"].shape
    for part in expect:
        if part == "head":
            np.testing.assert_array_equal(got[part].weight, expect[part].weight)
        else:
            np.testing.assert_array_equal(got[part], expect[part])
    assert len(reader.fmap_reads) >= 3 and all(rows is not None for rows, _ in reader.fmap_reads)
    # 3 batches x 2 * n_t * n_a = 24 sampled rows each, runs at most MAX_GAP apart merged
    assert sum(k for _, k in reader.fmap_reads) <= 3 * 24 * 5 < n


def test_cached_rows_take_known_answer(tmp_path):
    from ltpipe.cache import open_cache
    from ltpipe.classifiers.inputs import CachedRows, take_rows

    feat = synth(6)
    write_features(tmp_path / "c.zarr", feat)
    idx = np.array([100, 3, 3, 0, 57, 4])
    with open_cache(tmp_path / "c.zarr") as reader:
        rows = CachedRows(reader, "train", "fmap")
        np.testing.assert_array_equal(rows.take(idx), feat.train["fmap"][idx])
        assert rows.rows_read == 5 + 1 + 1  # rows 0..4 in one read, then 57 and 100
        np.testing.assert_array_equal(take_rows(feat.train["fmap"], idx), feat.train["fmap"][idx])


def test_rule_resources_follow_the_config(tmp_path):
    from ltpipe.classifiers.device import rule_gpu
    from ltpipe.classifiers.memory import BASE_MB, FALLBACK_MB, GPU_HOST_MB, rule_mem_mb

    cfg = {"classifiers": {"a": {"method": "crt"}, "b": {"method": "ncm"}}}
    assert rule_gpu(cfg, "a") == 0 and rule_gpu(cfg, "b") == 0  # default cpu
    cfg["classify_device"] = "auto"
    assert rule_gpu(cfg, "a") == 1 and rule_gpu(cfg, "b") == 0
    cfg["classify_device"] = "cuda"
    assert rule_gpu(cfg, "b") == 1
    cfg["classify_device"] = "tpu"
    with pytest.raises(LtpipeError, match="classify_device='tpu'"):
        rule_gpu(cfg, "a")
    cfg["classify_device"] = "cpu"
    assert rule_mem_mb(cfg, "a", [tmp_path / "none.zarr"]) == FALLBACK_MB
    write_features(tmp_path / "c.zarr", synth(1))
    cpu = rule_mem_mb(cfg, "a", [tmp_path / "c.zarr"])
    cfg["classify_device"] = "cuda"
    assert BASE_MB <= cpu < rule_mem_mb(cfg, "a", [tmp_path / "c.zarr"]) <= cpu + GPU_HOST_MB + 256
