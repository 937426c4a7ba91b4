"""torchvision architectures by name (ltpipe.models.tv_zoo), weights files, frozen stage one.

Every weights file here is written by the test: ``torch.save`` of a randomly initialised
torchvision model's ``state_dict`` (the format torchvision's own files have), with tiny
geometries so that the tests run in seconds on a CPU. Nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm

from ltpipe.models import build_model, model_names
from ltpipe.models.init_weights import load_init_weights
from ltpipe.models.tv_zoo import ZOO, is_token_model
from ltpipe.utils import LtpipeError

TINY_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2,
            "hidden_dim": 16, "mlp_dim": 32}
TINY_SWIN = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
             "window_size": [2, 2]}
TINY_CONVNEXT = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}


def tv_tiny(name: str, kwargs: dict) -> torch.nn.Module:
    """The same architecture built with torchvision's classes directly (not through ltpipe)."""
    if name.startswith("vit"):
        return tvm.VisionTransformer(**kwargs)
    if name.startswith("swin"):
        v2 = {}
        if "v2" in name:
            from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2
            v2 = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2}
        return tvm.SwinTransformer(patch_size=[4, 4], **kwargs, **v2)
    if name.startswith("convnext"):
        from torchvision.models.convnext import CNBlockConfig
        d, n = kwargs["dims"], kwargs["depths"]
        return tvm.ConvNeXt([CNBlockConfig(d[i], d[i + 1] if i + 1 < len(d) else None, n[i])
                             for i in range(len(d))])
    return getattr(tvm, name)(weights=None, **kwargs)


# name, architecture_kwargs, (side of the 3-channel test input, D, final map side)
CASES = [
    ("vit_b_16", TINY_VIT, (32, 16, 4)),
    ("swin_t", TINY_SWIN, (32, 64, 1)),
    ("swin_v2_t", TINY_SWIN, (32, 64, 1)),
    ("convnext_tiny", TINY_CONVNEXT, (32, 64, 1)),
    ("efficientnet_b0", {}, (32, 1280, 1)),
    ("regnet_x_400mf", {}, (32, 400, 1)),
    ("mobilenet_v2", {"width_mult": 0.25}, (32, 1280, 1)),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_every_zoo_name_is_registered_and_a_torchvision_builder():
    names = [n for names in ZOO.values() for n in names]
    assert set(names) <= set(model_names())
    assert set(names) <= set(tvm.list_models(module=tvm)), "a name torchvision does not know"
    assert is_token_model("vit_l_16") and is_token_model("swin_v2_b")
    assert not is_token_model("convnext_tiny") and not is_token_model("resnet32")


@pytest.mark.parametrize("name", ["vit_b_16", "swin_v2_t", "convnext_small", "efficientnet_v2_s",
                                  "regnet_y_400mf", "densenet121", "wide_resnet50_2"])
def test_default_geometry_is_torchvision_s_own(name):
    """Without overrides the backbone holds exactly the tensors of torchvision's builder, minus
    its classifier (independent count: torchvision's model, built directly)."""
    # torchvision's RegNet computes its widths with tensors: not buildable on the meta device
    with torch.device("cpu" if name.startswith("regnet") else "meta"):
        ours = build_model(name, 5)
        ref = getattr(tvm, name)(weights=None)
    ref_state = ref.state_dict()
    backbone = {k: v for k, v in ours.state_dict().items() if k.startswith(("stem.", "stages."))}
    assert len(backbone) + len(ours.file_keys_ignored) == len(ref_state)
    assert all(tuple(backbone[k].shape) == tuple(ref_state[v].shape)
               for k, v in ours.file_keys.items())
    assert all(k.split(".")[0] in ("fc", "classifier", "head", "heads")
               for k in ours.file_keys_ignored)


@pytest.mark.parametrize(("name", "kwargs", "shape"), CASES)
def test_architecture_loads_its_file_and_keeps_the_contract(tmp_path, name, kwargs, shape):
    side, d, fside = shape
    torch.manual_seed(1)
    ref = tv_tiny(name, kwargs).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = build_model(name, 7, **kwargs).eval()
    head_before = model.head.weight.detach().clone()
    info = load_init_weights(model, tmp_path / "w.pth")
    state = model.state_dict()
    ref_state = ref.state_dict()
    assert info["tensors"] == len(model.file_keys) > 0
    assert all(torch.equal(state[k], ref_state[v]) for k, v in model.file_keys.items())
    assert torch.equal(model.head.weight, head_before)  # ltpipe's 7-way head, not the file's
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        out = model.forward_all(x)
    assert out["fmap"].shape == (2, d, fside, fside)
    assert out["pooled"].shape == (2, d) and out["logits"].shape == (2, 7)
    assert torch.allclose(out["pooled"], out["fmap"].mean((2, 3)))
    assert torch.allclose(out["logits"], out["pooled"] @ model.head.weight.T + model.head.bias,
                          atol=1e-5)
    from ltpipe.train.dump import class_activation_maps

    cam = class_activation_maps(out["fmap"], model.head.weight, torch.tensor([0, 3]))
    assert cam.shape == (2, fside, fside)


def _torchvision_pooled(name: str, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own pooled feature (its forward up to the classifier), for comparison."""
    if name.startswith("efficientnet") or name == "mobilenet_v2":
        return net.avgpool(net.features(x)).flatten(1)
    if name.startswith("regnet"):
        return net.avgpool(net.trunk_output(net.stem(x))).flatten(1)
    if name.startswith("swin"):
        return net.flatten(net.avgpool(net.permute(net.norm(net.features(x)))))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnet_x_400mf", "swin_t"])
def test_pooled_equals_torchvision_s_own_features(tmp_path, name):
    kwargs = dict(next(c[1] for c in CASES if c[0] == name))
    torch.manual_seed(2)
    ref = tv_tiny(name, kwargs).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = build_model(name, 4, **kwargs).eval()
    load_init_weights(model, tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.forward_all(x)["pooled"], _torchvision_pooled(name, ref, x),
                              atol=1e-5)


def test_vit_map_is_the_patch_token_grid_without_the_class_token(tmp_path):
    torch.manual_seed(3)
    ref = tvm.VisionTransformer(**TINY_VIT).eval()
    torch.save(ref.state_dict(), tmp_path / "vit.pth")
    model = build_model("vit_b_16", 3, **TINY_VIT).eval()
    load_init_weights(model, tmp_path / "vit.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # torchvision's forward, written out up to the encoder
        tokens = ref._process_input(x)
        tokens = ref.encoder(torch.cat([ref.class_token.expand(2, -1, -1), tokens], 1))
        fmap = model.forward_all(x)["fmap"]
    # token t = row * 4 + col of the 4x4 patch grid sits at fmap[:, :, row, col]
    assert torch.allclose(fmap[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2], atol=1e-6)
    assert torch.allclose(fmap.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-6)
    with pytest.raises(LtpipeError, match=r"takes 32x32 images, got \(16, 16\).*image_size: 16"):
        model(torch.randn(1, 3, 16, 16))


def test_grey_input_repeats_the_channel_and_loads_an_rgb_file(tmp_path):
    torch.manual_seed(4)
    ref = tvm.VisionTransformer(**TINY_VIT).eval()
    torch.save(ref.state_dict(), tmp_path / "vit.pth")
    grey = build_model("vit_b_16", 3, in_channels=1, **TINY_VIT).eval()
    rgb = build_model("vit_b_16", 3, **TINY_VIT).eval()
    load_init_weights(grey, tmp_path / "vit.pth")
    load_init_weights(rgb, tmp_path / "vit.pth")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(grey.forward_all(x)["fmap"],
                           rgb.forward_all(x.expand(-1, 3, -1, -1))["fmap"])
    with pytest.raises(LtpipeError, match="in_channels=4.*RGB"):
        build_model("vit_b_16", 3, in_channels=4, **TINY_VIT)


def test_a_wrong_weights_file_is_refused_naming_file_keys_and_fix(tmp_path):
    torch.manual_seed(5)
    torch.save(tvm.VisionTransformer(**TINY_VIT).state_dict(), tmp_path / "vit16.pth")
    wider = build_model("vit_b_16", 3, **{**TINY_VIT, "hidden_dim": 32, "mlp_dim": 64})
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(LtpipeError) as err:
        load_init_weights(wider, tmp_path / "vit16.pth")
    msg = str(err.value)
    assert "vit16.pth does not fit backbone 'vit_b_16'" in msg
    assert "of another shape: class_token (1, 1, 16) vs (1, 1, 32)" in msg  # the file's name
    assert "fix architecture / architecture_kwargs" in msg and "init_weights: null" in msg
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())
    convnext = build_model("convnext_tiny", 3, **TINY_CONVNEXT)
    with pytest.raises(LtpipeError, match=r"vit16.pth does not fit backbone 'convnext_tiny'.*"
                                          r"missing: classifier\.0\.bias.*not in the model: "
                                          r"class_token"):
        load_init_weights(convnext, tmp_path / "vit16.pth")


def test_bad_architecture_kwargs_and_afa_are_refused():
    with pytest.raises(LtpipeError, match="'vit_b_16' takes no setting 'widths'"):
        build_model("vit_b_16", 3, widths=[1])
    with pytest.raises(LtpipeError, match="vit_b_16: torchvision refused architecture_kwargs"):
        build_model("vit_b_16", 3, image_size=30, patch_size=8)
    with pytest.raises(LtpipeError, match="'convnext_tiny' takes no AFA module"):
        build_model("convnext_tiny", 3, afa={}, **TINY_CONVNEXT)


def test_model_from_spec_rebuilds_a_zoo_model():
    from ltpipe.models import model_from_spec

    model = build_model("swin_t", 4, **TINY_SWIN)
    again = model_from_spec(model.spec)
    assert again.file_keys == model.file_keys
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


# ---- frozen stage one -----------------------------------------------------------------------

DIGITS_VIT = {"image_size": 8, "patch_size": 2, "num_layers": 1, "num_heads": 2,
              "hidden_dim": 16, "mlp_dim": 32}


@pytest.fixture(scope="module")
def split_path(tmp_path_factory):
    from ltpipe.data import build_split, write_split

    path = tmp_path_factory.mktemp("split") / "digits.npz"
    write_split(path, build_split("digits", {"source": "digits"}, 10, 0))
    return path


def _digits_vit_file(path):
    torch.manual_seed(6)
    ref = tvm.VisionTransformer(**DIGITS_VIT)
    torch.save(ref.state_dict(), path)
    return ref.state_dict()


def test_frozen_stage_one_trains_only_the_head(split_path, tmp_path):
    from ltpipe.train.stage1 import load_checkpoint, train_stage1

    file_state = _digits_vit_file(tmp_path / "vit.pth")
    recipe = {"architecture": "vit_b_16", "architecture_kwargs": DIGITS_VIT, "frozen": True,
              "init_weights": str(tmp_path / "vit.pth"), "epochs": 2, "batch_size": 64,
              "lr": 0.05, "warmup_epochs": 0, "augment": "crop", "final_eval": False}
    lines = []
    train_stage1(split_path, recipe, tmp_path / "model.pt", threads=1,
                 log=type("L", (), {"write": lambda self, t: lines.append(t)})())
    model, meta = load_checkpoint(tmp_path / "model.pt")
    state = model.state_dict()
    assert all(torch.equal(state[k], file_state[v]) for k, v in model.file_keys.items())
    torch.manual_seed(0)  # the trainer's seed: the head's initial weights
    fresh = build_model("vit_b_16", 10, in_channels=1, **DIGITS_VIT)
    assert not torch.equal(state["head.weight"], fresh.head.weight)  # the head did train
    assert meta["recipe"]["frozen"] is True
    assert any("frozen backbone" in line for line in lines)


def test_frozen_keeps_batchnorm_statistics(split_path, tmp_path):
    """A frozen CNN stays in eval mode: BatchNorm running statistics are the file's."""
    from ltpipe.train.stage1 import load_checkpoint, train_stage1

    torch.manual_seed(7)
    ref = tvm.mobilenet_v2(weights=None, width_mult=0.25)
    torch.save(ref.state_dict(), tmp_path / "mnv2.pth")
    recipe = {"architecture": "mobilenet_v2", "architecture_kwargs": {"width_mult": 0.25},
              "frozen": True, "init_weights": str(tmp_path / "mnv2.pth"), "epochs": 1,
              "batch_size": 64, "warmup_epochs": 0, "augment": "none", "final_eval": False}
    train_stage1(split_path, recipe, tmp_path / "model.pt", threads=1,
                 log=type("L", (), {"write": lambda self, t: None})())
    model, _ = load_checkpoint(tmp_path / "model.pt")
    state, ref_state = model.state_dict(), ref.state_dict()
    assert any("running_mean" in v for v in model.file_keys.values())
    assert all(torch.equal(state[k], ref_state[v]) for k, v in model.file_keys.items())


def test_frozen_needs_a_weights_file_and_no_afa():
    from ltpipe.train.recipe import normalize_recipe

    with pytest.raises(LtpipeError, match="frozen: true .* needs init_weights"):
        normalize_recipe({"frozen": True})
    with pytest.raises(LtpipeError, match="frozen cannot be combined with afa"):
        normalize_recipe({"frozen": True, "init_weights": "w.pth", "afa": {}})
    with pytest.raises(LtpipeError, match="'frozen' = 'yes' is invalid"):
        normalize_recipe({"frozen": "yes"})


# ---- end to end: the real Snakemake on digits ---------------------------------------------

@pytest.mark.slow
def test_frozen_torchvision_backbone_end_to_end_with_snakemake(tmp_path):
    """digits -> a frozen tiny ViT (weights file written here) -> cache with a 4x4 patch grid
    -> joint (the linear probe), cRT, NCM and FSA on that cache, through the real Snakemake."""
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from ltpipe.cache.reader import open_cache

    root = Path(__file__).resolve().parent.parent
    file_state = _digits_vit_file(tmp_path / "vit.pth")
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["datasets"]["digits"]["imbalance_factors"] = [10]
    cfg["backbones"] = {"vit": {
        "architecture": "vit_b_16", "architecture_kwargs": DIGITS_VIT, "frozen": True,
        "init_weights": str(tmp_path / "vit.pth"), "head": "linear", "loss": "ce", "epochs": 2,
        "batch_size": 64, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0,
        "augment": "crop", "seeds": [0]}}
    cfg["classifiers"] = {
        "joint": {"method": "joint", "backbones": ["vit"]},
        "crt": {"method": "crt", "backbones": ["vit"], "settings": {"batch_size": 64}},
        "ncm": {"method": "ncm", "backbones": ["vit"]},
        "fsa": {"method": "fsa", "backbones": ["vit"], "settings": {"iterations": 50}},
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(work),
         "--configfile", str(work / "config.yaml"), "--cores", "2"],
        capture_output=True, text=True, timeout=1500, env=dict(os.environ, PYTHONPATH=str(root)))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    with open(work / "results" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"joint", "crt", "ncm", "fsa"}
    assert all(0.0 <= float(r["all"]) <= 100.0 for r in rows)
    model_pt = next((work / "results").rglob("model.pt"))
    model_state = torch.load(model_pt, weights_only=True)["model_state"]
    from ltpipe.models.modelfile import load_checkpoint

    model, _ = load_checkpoint(model_pt)
    assert all(torch.equal(model_state[k], file_state[v]) for k, v in model.file_keys.items())
    cache = open_cache(next((work / "results").rglob("cache.zarr")))
    assert cache.shape("train", "fmap")[1:] == (16, 4, 4)  # the 8x8 digits in 2x2 patches
    assert cache.shape("train", "cam")[1:] == (4, 4)
