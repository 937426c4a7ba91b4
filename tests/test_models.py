"""Tests of ltpipe.models: registry, the LTModel contract, heads, option-A ResNets, AFA + LBLS."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ltpipe.models import (
    MODELS,
    CosineHead,
    LinearHead,
    LTModel,
    build_model,
    lbls_loss,
    model_from_spec,
    model_names,
    register_model,
)
from ltpipe.models.afa import AFAModule, generation_counts, sample_pairs
from ltpipe.models.cifar_resnet import BasicBlockA, ShortcutA
from ltpipe.models.tv_zoo import ZOO
from ltpipe.utils import LtpipeError

CIFAR = ["resnet8", "resnet20", "resnet32"]
TORCHVISION = ["resnet10", "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "resnet152"]
META = ["resnext50_32x4d", "resnet152"]  # checked on the meta device only (too slow on 2 CPUs)
FEATURE_DIM = {"resnet8": 64, "resnet20": 64, "resnet32": 64, "resnet10": 512, "resnet18": 512,
               "resnet34": 512, "resnet50": 2048, "resnext50_32x4d": 2048, "resnet152": 2048}
# Input side used in the tests, and the final map side it gives (CIFAR: /4; torchvision: /32).
SIDE = {**{n: (32, 8) for n in CIFAR}, **{n: (32, 1) for n in TORCHVISION}}
SMALL = CIFAR + ["resnet10"]

_CACHE: dict[tuple, LTModel] = {}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cached(name: str, head: str = "linear", num_classes: int = 7) -> LTModel:
    """One model per (name, head) for the whole file (the big ones are slow to build)."""
    key = (name, head, num_classes)
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = build_model(name, num_classes, head=head).eval()
    return _CACHE[key]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- registry


def test_registry_holds_the_required_backbones():
    assert set(CIFAR + TORCHVISION) <= set(model_names())
    assert model_names() == sorted(MODELS)


def test_unknown_name_lists_registered_models():
    with pytest.raises(LtpipeError, match="resnet32") as err:
        build_model("resnet33", 10)
    assert "resnet33" in str(err.value) and "resnext50_32x4d" in str(err.value)


def test_bad_kwarg_is_named():
    with pytest.raises(LtpipeError, match="widthz"):
        build_model("resnet32", 10, widthz=[16, 32, 64])
    with pytest.raises(LtpipeError, match="strides"):
        build_model("resnet50", 10, strides=[1, 1, 2])
    with pytest.raises(LtpipeError, match="head"):
        build_model("resnet8", 10, head="softmax")
    with pytest.raises(LtpipeError, match="must not decrease"):
        build_model("resnet8", 10, widths=[32, 16, 64])


def test_the_catalog_declares_every_builtin_constructor():
    """The config check reads ltpipe.models.catalog (no torch): each built-in's module and
    settings there are its registered constructor's, and a constructor that disagrees with its
    declaration is refused when registered."""
    from ltpipe.models.catalog import ARCHITECTURES, check_model_kwargs, signature_kwargs

    assert sorted(ARCHITECTURES) == sorted(MODELS)
    for name, arch in ARCHITECTURES.items():
        assert MODELS[name].__module__ == arch.module, name
        assert set(signature_kwargs(MODELS[name])) == set(arch.kwargs), name
    check_model_kwargs("vit_b_16", {"image_size": 32, "input_size": 32})
    with pytest.raises(LtpipeError, match=r"'resnet50' takes no setting 'widths'.*"
                                          r"\['zero_init_residual', 'input_size'\]"):
        check_model_kwargs("resnet50", {"widths": [16, 32, 64]})

    def resnet8(in_channels=3, depth=8):
        return MODELS["resnet20"](in_channels=in_channels)

    resnet8.__module__ = "ltpipe.models.cifar_resnet"
    with pytest.raises(LtpipeError, match="'resnet8'.*catalog declares"):
        register_model("resnet8")(resnet8)
    assert MODELS["resnet8"] is not resnet8


def test_register_model_warns_on_reregistration():
    def ctor_a(in_channels=3):
        return MODELS["resnet8"](in_channels=in_channels)

    def ctor_b(in_channels=3):
        return MODELS["resnet8"](in_channels=in_channels)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            register_model("_test_dummy")(ctor_a)
        with pytest.warns(UserWarning, match="_test_dummy"):
            register_model("_test_dummy")(ctor_b)
        assert MODELS["_test_dummy"] is ctor_b
        assert build_model("_test_dummy", 3).feature_dim == 64
    finally:
        MODELS.pop("_test_dummy", None)


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_keeps_the_contract_on_meta(name):
    """Parametrized over the registry itself: a newly registered model is checked with no list
    to update. The meta device gives shapes without arithmetic."""
    if name.startswith("regnet_"):
        pytest.skip("torchvision's RegNet computes its widths with tensors, which the meta device "
                    "lacks; tests/test_backbones.py checks RegNets on the CPU")
    side = 224 if name.startswith("vit_") else 64  # a ViT takes exactly its image_size
    with torch.device("meta"):
        model = build_model(name, 5).eval()
        out = model.forward_all(torch.empty(2, 3, side, side))
    d = model.feature_dim
    assert out["fmap"].ndim == 4 and out["fmap"].shape[:2] == (2, d)
    assert out["pooled"].shape == (2, d) and out["logits"].shape == (2, 5)
    assert model.head.weight.shape == (5, d) and model.spec["name"] == name


def test_the_known_value_tables_cover_the_registry():
    """FEATURE_DIM / the CIFAR and torchvision lists carry known values per model: a model
    registered without them fails here, naming it."""
    known = set(FEATURE_DIM) | {"resnet18_cifar", "resnet34_cifar"}  # + the CIFAR-stem table below
    # torchvision's architectures by name: checked against torchvision's own builders
    # (tests/test_backbones.py)
    known |= {n for names in ZOO.values() for n in names}
    assert set(model_names()) <= known, sorted(set(model_names()) - known)


@pytest.mark.parametrize("name", CIFAR + ["resnet10", "resnet50"])
def test_contract_shapes_and_identities(name):
    model = cached(name)
    side, fside = SIDE[name]
    b = 1 if name == "resnet50" else 2
    x = torch.randn(b, 3, side, side)
    with torch.no_grad():
        out = model.forward_all(x)
        logits = model(x)
    d = FEATURE_DIM[name]
    assert model.feature_dim == d and model.head.weight.shape == (7, d)
    assert out["fmap"].shape == (b, d, fside, fside)
    assert out["pooled"].shape == (b, d) and out["logits"].shape == (b, 7)
    assert torch.equal(out["pooled"], out["fmap"].mean((2, 3)))
    plain = out["pooled"] @ model.head.weight.t() + model.head.bias
    torch.testing.assert_close(out["logits"], plain)
    torch.testing.assert_close(logits, out["logits"])
    assert torch.isfinite(out["logits"]).all()


def test_resnet32_cifar_map_and_spec():
    model = cached("resnet32")
    assert model.head_kind == "linear" and isinstance(model.head, LinearHead)
    assert model.spec == {"name": "resnet32", "num_classes": 7, "in_channels": 3,
                          "head": "linear", "afa": None, "kwargs": {}}


def test_resnet32_parameter_count_from_architecture():
    c = 10
    conv = lambda cin, cout: cin * cout * 9  # noqa: E731  (3x3, no bias)
    bn = lambda ch: 2 * ch  # noqa: E731
    expected = conv(3, 16) + bn(16)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(5):  # (32 - 2) / 6 blocks per stage
            expected += conv(cin, width) + bn(width) + conv(width, width) + bn(width)
            cin = width
    expected += 64 * c + c
    model = build_model("resnet32", c)
    assert n_params(model) == expected == 464_154  # the well-known ~0.46M


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_param_counts_and_shapes_on_meta(name):
    """Parameter count equals torchvision's own constructor's (same 1000-way fc); map shapes."""
    import torchvision.models as tvm
    from torchvision.models.resnet import BasicBlock, ResNet

    with torch.device("meta"):
        if name == "resnet10":
            reference = ResNet(BasicBlock, [1, 1, 1, 1])
        else:
            reference = getattr(tvm, name)(weights=None)
        ours = build_model(name, 1000).eval()
        out = ours.forward_all(torch.empty(1, 3, 64, 64))
    assert n_params(ours) == n_params(reference)
    assert ours.feature_dim == reference.fc.in_features == FEATURE_DIM[name]
    assert out["fmap"].shape == (1, FEATURE_DIM[name], 2, 2)
    assert out["pooled"].shape == (1, FEATURE_DIM[name]) and out["logits"].shape == (1, 1000)


@pytest.mark.parametrize(("name", "tv_name", "known"), [("resnet18_cifar", "resnet18", 11_173_962),
                                                        ("resnet34_cifar", "resnet34", None)])
def test_cifar_form_of_resnet18_and_34(name, tv_name, known):
    """FSA's CIFAR ResNet-18: torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool,
    so 32x32 gives a 4x4 map; its parameter count is torchvision's minus the 7x7 -> 3x3 stem."""
    import torchvision.models as tvm

    with torch.device("meta"):
        reference = getattr(tvm, tv_name)(weights=None, num_classes=10)
        ours = build_model(name, 10)
        out = ours.forward_all(torch.empty(2, 3, 32, 32))
    assert n_params(ours) == n_params(reference) - (7 * 7 - 3 * 3) * 3 * 64
    if known is not None:
        assert n_params(ours) == known  # the CIFAR ResNet-18 count the CIFAR literature gives
    assert ours.stem[0].kernel_size == (3, 3) and ours.stem[0].stride == (1, 1)
    assert isinstance(ours.stem[3], torch.nn.Identity)  # no max-pool
    assert out["fmap"].shape == (2, 512, 4, 4) and out["logits"].shape == (2, 10)


def test_in_place_blocks_compute_what_out_of_place_ones_do():
    """The CIFAR blocks apply ReLU and the residual add in place on batch-norm outputs: outputs
    and every gradient equal (bit for bit) the plain out-of-place formulation's, in training."""
    import types

    def plain(self, x):
        out = torch.nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.nn.functional.relu(out + self.shortcut(x))

    torch.manual_seed(0)
    ours = build_model("resnet20", 5).train()
    torch.manual_seed(0)
    ref = build_model("resnet20", 5).train()
    blocks = [m for m in ref.modules() if isinstance(m, BasicBlockA)]
    assert len(blocks) == 9
    for block in blocks:
        block.forward = types.MethodType(plain, block)
    x = torch.randn(4, 3, 16, 16)
    out_ours, out_ref = ours(x), ref(x)
    assert torch.equal(out_ours, out_ref)
    (out_ours ** 2).sum().backward()
    (out_ref ** 2).sum().backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


def test_option_a_shortcut_has_no_parameters_and_zero_pads():
    model = cached("resnet32")
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2  # one per stage transition 16->32, 32->64
    assert all(n_params(s) == 0 for s in shortcuts)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) for m in convs)  # no 1x1 projection shortcut
    x = torch.randn(2, 16, 6, 6)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 3, 3)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


@pytest.mark.parametrize(("name", "strides", "side", "fside"),
                         [("resnet8", [1, 1, 2], 8, 4), ("resnet8", [1, 2, 2], 28, 7),
                          ("resnet20", [1, 2, 2], 28, 7)])
def test_small_data_layouts_keep_a_map(name, strides, side, fside):
    model = build_model(name, 10, in_channels=1, strides=strides).eval()
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(2, 1, side, side))
    assert fmap.shape == (2, 64, fside, fside)


def test_widths_kwarg_and_torchvision_in_channels():
    model = build_model("resnet8", 4, in_channels=1, widths=[8, 16, 24])
    assert model.feature_dim == 24 and model.stem[0].in_channels == 1
    tv = build_model("resnet10", 4, in_channels=1).eval()
    assert tv.stem[0].in_channels == 1
    assert tv(torch.randn(1, 1, 32, 32)).shape == (1, 4)


# ---------------------------------------------------------------- heads


def test_cosine_head_matches_plain_formula():
    model = cached("resnet8", head="cosine")
    assert model.head_kind == "cosine" and isinstance(model.head, CosineHead)
    assert model.head.bias is None and model.head.weight.shape == (7, 64)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_all(x)
    f, w = out["pooled"], model.head.weight
    plain = torch.stack([torch.stack([torch.dot(f[i], w[j]) / (f[i].norm() * w[j].norm())
                                      for j in range(w.shape[0])]) for i in range(f.shape[0])])
    torch.testing.assert_close(out["logits"], plain)
    assert out["logits"].abs().max() <= 1.0
    head = CosineHead(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [-1.0, 0.0]]))
    torch.testing.assert_close(head(torch.tensor([[3.0, 0.0], [1.0, 1.0]])),
                               torch.tensor([[1.0, -1.0], [0.5**0.5, -(0.5**0.5)]]))


# ---------------------------------------------------------------- gradients, layouts, specs


@pytest.mark.parametrize(("name", "head"), [("resnet8", "linear"), ("resnet32", "linear"),
                                           ("resnet10", "linear"), ("resnet8", "cosine")])
def test_gradients_are_finite(name, head):
    torch.manual_seed(1)
    model = build_model(name, 5, head=head).train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x) * (30 if head == "cosine" else 1), y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", SMALL)
def test_channels_last_gives_the_same_output(name):
    model = cached(name)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model.forward_all(x)
        model.to(memory_format=torch.channels_last)
        try:
            got = model.forward_all(x.to(memory_format=torch.channels_last))
        finally:
            model.to(memory_format=torch.contiguous_format)
    for key in ("fmap", "pooled", "logits"):  # equal up to float32 summation order
        scale = ref[key].abs().max()
        assert (got[key] - ref[key]).abs().max() <= 1e-5 * scale, key


@pytest.mark.parametrize(("name", "kwargs"), [
    ("resnet32", {"head": "cosine"}),
    ("resnet8", {"in_channels": 1, "strides": (1, 1, 2), "input_size": 8, "afa": {}}),
    ("resnet10", {"afa": {"gamma": 0.5, "alpha": 2}, "input_size": [64, 32]}),
])
def test_model_from_spec_rebuilds_the_same_architecture(name, kwargs):
    model = build_model(name, 6, **kwargs)
    spec = json.loads(json.dumps(model.spec))  # what a checkpoint stores
    assert spec == model.spec
    rebuilt = model_from_spec(spec)
    assert rebuilt.spec == model.spec
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(LtpipeError, match="keys"):
        model_from_spec({"name": name})


# ---------------------------------------------------------------- AFA


def afa_model(**afa) -> LTModel:
    torch.manual_seed(0)
    return build_model("resnet8", 4, afa=afa or {}, input_size=16)


def plain_afa(afa, h):
    """The AFA formulas written out with plain tensor ops: (X_class, X_var)."""
    b, d, hh, ww = h.shape
    x = h.reshape(b, d, hh * ww)
    q, k, v = x @ afa.q.weight.t(), x @ afa.k.weight.t(), x @ afa.v.weight.t()
    s = q @ k.transpose(1, 2) / math.sqrt(hh * ww)
    a = (s - s.amax(-1, keepdim=True)).exp()
    x_att = (a / a.sum(-1, keepdim=True)) @ v
    se = afa.se
    gate = torch.sigmoid(torch.relu(x_att.mean(2) @ se.fc1.weight.t() + se.fc1.bias)
                         @ se.fc2.weight.t() + se.fc2.bias)
    e = (x_att * gate[:, :, None] + x_att).exp()
    x_class = e / e.sum(1, keepdim=True) * v  # softmax over channels
    return x_class.reshape(h.shape), (v - x_class).reshape(h.shape)


# f = (4, 2, 1, 1), B = 8: alpha 4 -> w = 1/256, 1/16, 1, 1 -> G = ceil(8 * w / sum w) = 1, 1, 4, 4
# alpha 1 -> w = 1/4, 1/2, 1, 1 (sum 2.75) -> G = ceil(0.73), ceil(1.45), ceil(2.91) x2 = 1, 2, 3, 3
LABELS = torch.tensor([0, 2, 0, 1, 0, 3, 1, 0])


@pytest.mark.parametrize(("gamma", "alpha", "counts"),
                         [(1.0, 4.0, [1, 1, 4, 4]), (1.0, 1.0, [1, 2, 3, 3]),
                          (0.5, 0.0, [1, 1, 1, 1]), (0.0, 4.0, [0, 0, 0, 0])])
def test_generation_counts_by_hand(gamma, alpha, counts):
    assert generation_counts(LABELS, gamma, alpha) == ([0, 1, 2, 3], counts)


def test_generation_count_exact_integer_is_not_rounded_up():
    # B = 4, classes (0, 0, 1, 1), alpha = 1: R = 1/2 each, gamma * R * B = 2 exactly -> 2 each.
    assert generation_counts(torch.tensor([0, 0, 1, 1]), 1.0, 1.0)[1] == [2, 2]


def test_sample_pairs_are_valid():
    gen = torch.Generator().manual_seed(3)
    i, j, y_gen = sample_pairs(LABELS, 1.0, 1.0, gen)
    assert i.shape == j.shape == y_gen.shape == (9,)
    assert torch.equal(LABELS[i], y_gen) and bool((i != j).all())
    assert torch.bincount(y_gen).tolist() == [1, 2, 3, 3]
    assert sample_pairs(torch.tensor([2]), 1.0, 4.0)[0].numel() == 0  # B = 1: nothing


def test_afa_train_forward_shapes_and_generated_maps():
    model = afa_model().train()
    x = torch.randn(8, 3, 16, 16)
    out = model.afa_train_forward(x, LABELS, torch.Generator().manual_seed(5))
    assert out["logits"].shape == (8, 4) and out["pooled"].shape == (8, 64)
    assert out["logits_all"].shape == (18, 4) and out["labels_all"].shape == (18,)
    assert int(out["num_generated"]) == 10
    assert torch.equal(out["labels_all"][:8], LABELS)
    assert torch.bincount(out["labels_all"][8:]).tolist() == [1, 1, 4, 4]
    torch.testing.assert_close(out["logits"], out["logits_all"][:8])
    # Generated maps are X_class[i] + X_var[j] with the pairs drawn by the same generator.
    with torch.no_grad():
        h = model._before_last(x)
        _, x_class, x_var = model.afa.decompose(h)
        x_gen, y_gen = model.afa.generate(x_class, x_var, LABELS, torch.Generator().manual_seed(5))
    i, j, y_ref = sample_pairs(LABELS, 1.0, 4.0, torch.Generator().manual_seed(5))
    torch.testing.assert_close(x_gen, x_class[i] + x_var[j])
    assert torch.equal(y_gen, y_ref)


def test_afa_generation_gradients_are_bit_reproducible():
    """The same pairs give bit-identical gradients pass after pass on a 2-thread CPU. Pairs
    repeat samples; the backward of advanced indexing (``x[i]``) summed the repeats in a
    varying order, so two AFA trainings from one seed differed; ``generate`` must not."""
    module = AFAModule(64, 16)
    y = torch.repeat_interleave(torch.arange(4), torch.tensor([40, 14, 7, 3]))
    x_class, x_var = torch.randn(2, 64, 64, 4, 4, generator=torch.Generator().manual_seed(0))
    weight = None
    grads = set()
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(12):
            a, b = x_class.clone().requires_grad_(), x_var.clone().requires_grad_()
            gen, _ = module.generate(a, b, y, torch.Generator().manual_seed(1))
            if weight is None:
                assert len(gen) > 60  # repeats of samples (pairs are drawn with replacement)
                weight = torch.randn(gen.shape, generator=torch.Generator().manual_seed(2))
            (gen * weight).sum().backward()
            grads.add((a.grad.numpy().tobytes(), b.grad.numpy().tobytes()))
    finally:
        torch.set_num_threads(old)
    assert len(grads) == 1


def test_afa_no_generation_in_eval_or_when_disabled():
    model = afa_model()
    x = torch.randn(8, 3, 16, 16)
    assert int(model.train().afa_train_forward(x, LABELS, generate=False)["num_generated"]) == 0
    model.eval()
    with torch.no_grad():
        out = model.afa_train_forward(x, LABELS)
        assert int(out["num_generated"]) == 0 and out["logits_all"].shape == (8, 4)
        torch.testing.assert_close(out["logits"], model(x))
        assert model.forward_all(x)["logits"].shape == (8, 4)


def test_afa_forward_uses_the_enhanced_path():
    model = afa_model().eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        h = model._before_last(x)
        assert h.shape == (3, 32, 8, 8) and model.afa.hw == 64
        x_class, x_var = plain_afa(model.afa, h)
        _, got_class, got_var = model.afa.decompose(h)
        torch.testing.assert_close(got_class, x_class)
        torch.testing.assert_close(got_var, x_var)
        expected = model.head(model.stages[-1](h + x_class).mean((2, 3)))
        without = model.head(model.stages[-1](h).mean((2, 3)))
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model.forward_all(x)["logits"], expected)
        assert not torch.allclose(expected, without)
        # The class mask is a softmax over channels: M = X_class / V sums to 1 over D.
        v = h.flatten(2) @ model.afa.v.weight.t()
        torch.testing.assert_close((x_class.flatten(2) / v).sum(1), torch.ones(3, 64))


def test_afa_gradients_flow_and_lbls_schedule():
    model = afa_model().train()
    x = torch.randn(8, 3, 16, 16)
    out = model.afa_train_forward(x, LABELS, torch.Generator().manual_seed(0))
    early = lbls_loss(out, LABELS, epoch=29, base_loss=F.cross_entropy, t=30, lam=2.0)
    late = lbls_loss(out, LABELS, epoch=30, base_loss=F.cross_entropy, t=30, lam=2.0)
    l_ori = F.cross_entropy(out["logits"], LABELS)
    l_all = F.cross_entropy(out["logits_all"], out["labels_all"])
    torch.testing.assert_close(early, l_ori)
    torch.testing.assert_close(late, l_ori + 2.0 * l_all)
    late.backward()
    for p in [model.afa.q.weight, model.afa.k.weight, model.afa.v.weight,
              model.afa.se.fc1.weight, model.stem[0].weight]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_lbls_loss_known_answer():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    out = {"logits": logits, "logits_all": torch.cat([logits, torch.zeros(1, 2)]),
           "labels_all": torch.tensor([0, 1, 1])}
    ce = lambda z, y: F.cross_entropy(z, y, reduction="sum")  # noqa: E731
    l_ori = math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))
    l_all = l_ori + math.log(2)
    got = lbls_loss(out, torch.tensor([0, 1]), epoch=5, base_loss=ce, t=5, lam=0.5)
    assert got.item() == pytest.approx(l_ori + 0.5 * l_all, rel=1e-6)


def test_afa_on_torchvision_and_channels_last():
    torch.manual_seed(0)
    model = build_model("resnet10", 3, afa={}, input_size=[64, 32]).eval()
    assert model.afa.channels == 256 and model.afa.hw == 8  # layer3 output 256 x 4 x 2
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_afa_bad_settings_and_wrong_input_size():
    with pytest.raises(LtpipeError, match="betta"):
        build_model("resnet8", 4, afa={"betta": 1})
    with pytest.raises(LtpipeError, match="mask_softmax"):
        build_model("resnet8", 4, afa={"mask_softmax": "pixel"})
    with pytest.raises(LtpipeError, match="input_size"):
        afa_model().eval()(torch.randn(1, 3, 32, 32))
    with pytest.raises(LtpipeError, match="afa"):
        cached("resnet8").afa_train_forward(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    spatial = build_model("resnet8", 4, afa={"mask_softmax": "spatial"}, input_size=8).eval()
    assert spatial(torch.randn(1, 3, 8, 8)).shape == (1, 4)


# ---------------------------------------------------------------- init_weights


def _tv_resnet10_file(path, **save_kw):
    """A torchvision-format state dict of ResNet-10 (1000-way fc), as torchvision saves it."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(123)
    net = ResNet(BasicBlock, [1, 1, 1, 1])
    state = net.state_dict()
    torch.save(save_kw.get("wrap", lambda s: s)(state), path)
    return state


def test_init_weights_from_a_torchvision_state_dict(tmp_path):
    from ltpipe.models.init_weights import load_init_weights
    from ltpipe.utils import sha256_file

    state = _tv_resnet10_file(tmp_path / "r10.pth")
    torch.manual_seed(0)
    model = build_model("resnet10", 7)
    head_before = model.head.weight.detach().clone()
    info = load_init_weights(model, tmp_path / "r10.pth")
    ours = model.state_dict()
    assert torch.equal(ours["stem.0.weight"], state["conv1.weight"])
    assert torch.equal(ours["stem.1.running_var"], state["bn1.running_var"])
    assert torch.equal(ours["stages.1.0.conv1.weight"], state["layer2.0.conv1.weight"])
    assert torch.equal(ours["stages.3.0.downsample.0.weight"],
                       state["layer4.0.downsample.0.weight"])
    backbone_keys = [k for k in ours if k.startswith(("stem.", "stages."))]
    assert info["tensors"] == len(backbone_keys) == len(state) - 2  # all but fc.weight / fc.bias
    assert info["sha256"] == sha256_file(tmp_path / "r10.pth")
    assert torch.equal(model.head.weight, head_before)  # the 7-way head keeps its own init


def test_init_weights_unwraps_state_dict_and_module_prefix(tmp_path):
    from ltpipe.models.init_weights import load_init_weights

    state = _tv_resnet10_file(tmp_path / "wrapped.pth", wrap=lambda s: {
        "epoch": 90, "state_dict": {f"module.{k}": v for k, v in s.items()}})
    model = build_model("resnet10", 3)
    load_init_weights(model, tmp_path / "wrapped.pth")
    assert torch.equal(model.state_dict()["stages.0.0.bn2.weight"], state["layer1.0.bn2.weight"])


def test_init_weights_refuses_another_architecture(tmp_path):
    from ltpipe.models.init_weights import load_init_weights

    _tv_resnet10_file(tmp_path / "r10.pth")
    model = build_model("resnet18", 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LtpipeError, match=r"does not fit backbone 'resnet18'.*missing: "
                                          r"stages\.0\.1\..*init_weights: null"):
        load_init_weights(model, tmp_path / "r10.pth")
    gray = build_model("resnet10", 5, in_channels=1)
    with pytest.raises(LtpipeError, match=r"in_channels 1.*of another shape: stem\.0\.weight "
                                          r"\(64, 3, 7, 7\) vs \(64, 1, 7, 7\)"):
        load_init_weights(gray, tmp_path / "r10.pth")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_init_weights_bad_files(tmp_path):
    from ltpipe.models.init_weights import load_init_weights

    model = build_model("resnet8", 3)
    with pytest.raises(LtpipeError, match="nope.pth does not exist.*init_weights: null"):
        load_init_weights(model, tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("not a torch file")
    with pytest.raises(LtpipeError, match="text.pth is not a readable torch weights file"):
        load_init_weights(model, tmp_path / "text.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(LtpipeError, match="empty.pth.*missing"):
        load_init_weights(model, tmp_path / "empty.pth")
