"""Tests for the stage-one trainer (ltpipe.train): runs, resume, signals, augment, schedules."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltpipe.data.augment import apply_crop_flip, augment_batch, draw_crop_flip, draw_mixup, mix
from ltpipe.train.schedules import lr_at
from ltpipe.train.stage1 import (
    TrainingInterrupted,
    head_half_classes,
    load_checkpoint,
    train_stage1,
)
from ltpipe.utils import LtpipeError, sha256_file

# 8x8 digits, 585 training images: batch 32 -> 18 steps per epoch.
TINY = {"architecture": "resnet8", "architecture_kwargs": {"widths": [8, 8, 16]}, "epochs": 2,
        "batch_size": 32, "lr": 0.1, "warmup_epochs": 1, "milestones": [1], "gamma": 0.5,
        "augment": "crop", "final_eval": False}
STEPS_PER_EPOCH = 18


@pytest.fixture(scope="module")
def split_path(tmp_path_factory):
    from ltpipe.data import build_split, write_split

    path = tmp_path_factory.mktemp("split") / "digits.npz"
    write_split(path, build_split("digits", {"source": "digits"}, 10, 0))
    return path


def _run(split_path, out, recipe=None, **kw):
    return train_stage1(split_path, {**TINY, **(recipe or {})}, out, threads=1, log=_Sink(), **kw)


class _Sink:
    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)


def _sigterm_at(step):
    def hook(global_step):
        if global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


# ---- end-to-end ---------------------------------------------------------------------------

def test_two_epochs_learn_and_write_final_file_atomically(split_path, tmp_path):
    out = tmp_path / "model.pt"
    seen = []
    metrics = _run(split_path, out, {"final_eval": True},
                   on_step=lambda s: seen.append(out.exists()))
    assert not any(seen), "the final file must not appear before training ends"
    assert metrics["test_acc"] > 0.25  # 10 balanced test classes: chance is 0.1 (got 0.35)
    assert metrics["steps"] == 2 * STEPS_PER_EPOCH
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no .ckpt, no temp file
    model, meta = load_checkpoint(out)
    assert not model.training
    assert meta["epochs"] == 2 and meta["seed"] == 0 and meta["logit_scale"] == 1.0
    assert len(meta["normalization"]["mean"]) == 1 and meta["split_fingerprint"]
    x = torch.zeros(2, 1, 8, 8)
    assert model(x).shape == (2, 10)


def test_resumed_run_equals_uninterrupted_run(split_path, tmp_path):
    recipe = {"mixup_alpha": 1.0}  # the resume must replay mixup draws too
    _run(split_path, tmp_path / "full.pt", recipe)
    out = tmp_path / "cut.pt"
    k = STEPS_PER_EPOCH + 4  # mid-way through the second epoch
    with pytest.raises(TrainingInterrupted) as exc:
        _run(split_path, out, recipe, on_step=_sigterm_at(k))
    assert exc.value.code == 75
    ckpt = torch.load(str(out) + ".ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 4) and not out.exists()
    _run(split_path, out, recipe)
    full, _ = load_checkpoint(tmp_path / "full.pt")
    cut, meta = load_checkpoint(out)
    a, b = full.state_dict(), cut.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert meta["metrics"]["steps"] == 2 * STEPS_PER_EPOCH


def test_sigusr1_checkpoints_and_exits_75(split_path, tmp_path):
    out = tmp_path / "model.pt"

    def hook(global_step):
        if global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(SystemExit) as exc:  # uncaught, it ends the process with status 75
        _run(split_path, out, on_step=hook)
    assert isinstance(exc.value, TrainingInterrupted) and exc.value.code == 75
    ckpt = torch.load(str(out) + ".ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["scheduler"]["global_step"]) == (0, 3, 3)
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"]) and ckpt["optimizer"]["state"]
    assert not out.exists()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored


def test_afa_and_head_half_runs(split_path, tmp_path):
    _run(split_path, tmp_path / "afa.pt", {"epochs": 1, "afa": {"t": 0}})
    model, meta = load_checkpoint(tmp_path / "afa.pt")
    assert model.afa is not None and meta["recipe"]["afa"]["lam"] == 2.0
    _run(split_path, tmp_path / "half.pt", {"epochs": 1, "head_half": True})
    model, meta = load_checkpoint(tmp_path / "half.pt")
    assert meta["train_classes"] == [0, 1, 2, 3, 4] and model.num_classes == 10


def test_deterministic_recipe_key_turns_on_deterministic_algorithms(split_path, tmp_path):
    """A recipe's ``deterministic`` turns torch's deterministic algorithms on (what makes AFA
    bit-reproducible on a multi-threaded CPU) or off; ``auto``, the default, turns them on for
    CPU training. The setting is left as it was afterwards."""
    seen = {}
    for flag in (True, False, "auto"):
        states = seen.setdefault(flag, set())
        _run(split_path, tmp_path / f"{flag}.pt", {"epochs": 1, "deterministic": flag},
             on_step=lambda _, s=states: s.add(torch.are_deterministic_algorithms_enabled()))
        assert not torch.are_deterministic_algorithms_enabled()
    assert seen == {True: {True}, False: {False}, "auto": {True}}
    with pytest.raises(LtpipeError, match="deterministic.*auto, true or false"):
        _run(split_path, tmp_path / "bad.pt", {"deterministic": "yes"})


def test_resume_refuses_a_checkpoint_of_another_recipe(split_path, tmp_path):
    out = tmp_path / "model.pt"
    with pytest.raises(TrainingInterrupted):
        _run(split_path, out, on_step=_sigterm_at(2))
    with pytest.raises(LtpipeError, match="lr.*delete it"):
        _run(split_path, out, {"lr": 0.01})


def test_non_finite_loss_names_epoch_and_step_and_keeps_last_checkpoint(split_path, tmp_path,
                                                                         monkeypatch):
    from ltpipe.train.loop import Stage1Trainer

    real_step = Stage1Trainer._step

    def step_with_nan(self, *args):
        loss, logits = real_step(self, *args)
        if self.global_step == STEPS_PER_EPOCH + 2:  # the 3rd step of epoch 1 (0-based: 2)
            loss = loss * float("nan")
        return loss, logits

    monkeypatch.setattr(Stage1Trainer, "_step", step_with_nan)
    out = tmp_path / "model.pt"
    with pytest.raises(LtpipeError, match=r"non-finite training loss nan at epoch 1, step 2"):
        _run(split_path, out)
    ckpt = torch.load(str(out) + ".ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 0)  # the end-of-epoch-0 checkpoint
    assert not out.exists()


def test_recipe_errors_name_the_key(split_path, tmp_path):
    with pytest.raises(LtpipeError, match="no setting.*'bogus'"):
        _run(split_path, tmp_path / "m.pt", {"bogus": 1})
    with pytest.raises(LtpipeError, match="'schedule' = 'step'.*multistep"):
        _run(split_path, tmp_path / "m.pt", {"schedule": "step"})
    with pytest.raises(LtpipeError, match="afa and mixup"):
        _run(split_path, tmp_path / "m.pt", {"afa": {}, "mixup_alpha": 1.0})
    with pytest.raises(LtpipeError, match="'compile' = 'fast'.*'reduce-overhead'"):
        _run(split_path, tmp_path / "m.pt", {"compile": "fast"})
    with pytest.raises(LtpipeError, match="compile cannot be combined with afa.*compile: false"):
        _run(split_path, tmp_path / "m.pt", {"afa": {}, "compile": True})
    assert not list(tmp_path.iterdir())  # nothing written for a refused recipe


def test_init_weights_from_an_ltpipe_model_file(split_path, tmp_path):
    """A backbone trained by ltpipe starts the next run: its stem and stages, not its head; the
    run records the file's hash and says so in its log."""
    first = tmp_path / "first.pt"
    _run(split_path, first, {"epochs": 1})
    trained, _ = load_checkpoint(first)
    from ltpipe.data import read_split, split_data
    from ltpipe.train.loop import Stage1Trainer
    from ltpipe.train.recipe import normalize_recipe

    data = split_data(read_split(split_path), "train")
    trainer = Stage1Trainer(data, np.bincount(data.labels, minlength=10), 10,
                            normalize_recipe({**TINY, "init_weights": str(first)}), "cpu", seed=0)
    a, b = trainer.model.state_dict(), trained.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("stem.", "stages.")))
    assert not torch.equal(a["head.weight"], b["head.weight"])  # a fresh head
    sink, out = _Sink(), tmp_path / "second.pt"
    metrics = train_stage1(split_path, {**TINY, "epochs": 1, "init_weights": str(first)}, out,
                           threads=1, log=sink)
    _, meta = load_checkpoint(out)
    assert meta["init_weights"]["path"] == str(first)
    assert meta["init_weights"]["sha256"] == sha256_file(first)
    assert any("backbone starts from" in line and str(first) in line for line in sink.lines)
    assert metrics["steps"] == STEPS_PER_EPOCH
    with pytest.raises(LtpipeError, match="'init_weights' = 5 is invalid"):
        _run(split_path, tmp_path / "bad.pt", {"init_weights": 5})


@pytest.mark.slow  # torch.compile: 207 s in the fast-tier run of docs/testing.md
def test_compiled_trainer_follows_the_eager_one(split_path):
    """compile on the CPU (inductor) trains the same model to the same numbers, up to float
    reassociation in the fused kernels; the checkpointed weights are the plain module's. The
    mode is reduce-overhead, the GPU's CUDA-graph mode (each step is marked; no graphs on CPU)."""
    from ltpipe.data import read_split, split_data
    from ltpipe.train.loop import Stage1Trainer
    from ltpipe.train.recipe import normalize_recipe

    data = split_data(read_split(split_path), "train")
    counts = np.bincount(data.labels, minlength=10)
    runs = {}
    for compile_ in (False, "reduce-overhead"):
        trainer = Stage1Trainer(data, counts, 10, normalize_recipe({**TINY, "compile": compile_}),
                                "cpu", seed=0)
        assert (trainer.forward is trainer.model) is (not compile_)
        assert trainer.cudagraph_steps is bool(compile_)
        metrics = trainer.train_epoch(0)
        runs[bool(compile_)] = (metrics, trainer.state_dict()["model_state"])
    (m_eager, w_eager), (m_comp, w_comp) = runs[False], runs[True]
    assert m_comp["images"] == m_eager["images"] == STEPS_PER_EPOCH * 32
    assert m_comp["loss"] == pytest.approx(m_eager["loss"], rel=1e-3)
    assert w_comp.keys() == w_eager.keys()  # no "_orig_mod." prefix in the saved state
    for key in w_eager:
        assert torch.allclose(w_comp[key].float(), w_eager[key].float(), atol=1e-3), key


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(LtpipeError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(LtpipeError, match="corrupt"):
        load_checkpoint(bad)


# ---- head half ----------------------------------------------------------------------------

def test_head_half_keeps_the_most_frequent_half_by_rank():
    counts = np.array([5, 50, 1, 30, 7, 100, 30])  # C = 7 -> m = 3: classes 5, 1, then 3 (tie)
    assert head_half_classes(counts).tolist() == [1, 3, 5]
    assert head_half_classes(np.array([4, 4, 9, 1])).tolist() == [0, 2]


def test_head_half_training_data(split_path):
    from ltpipe.data import read_split
    from ltpipe.train.stage1 import _training_data

    split = read_split(split_path)
    data, classes = _training_data(split, True)
    top = np.argsort(-split.class_counts, kind="stable")[:5]
    assert sorted(classes) == sorted(top.tolist())
    assert set(np.unique(data.labels)) == set(classes)
    assert len(data.labels) == int(split.class_counts[classes].sum())


# ---- augmentation -------------------------------------------------------------------------

def _reference_crop_flip(img, pad, dy, dx, flip):
    """RandomCrop(padding=pad) + RandomHorizontalFlip for one HWC image, by plain slicing."""
    h, w = img.shape[:2]
    chw = torch.as_tensor(img).permute(2, 0, 1)
    padded = F.pad(chw, (pad, pad, pad, pad))
    crop = padded[:, dy:dy + h, dx:dx + w]
    if flip:
        crop = crop.flip(2)
    return crop.permute(1, 2, 0)


def test_crop_flip_matches_slicing_reference():
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (6, 5, 7, 3), dtype=torch.uint8, generator=g)
    dy, dx, flips = draw_crop_flip(6, 2, True, torch.Generator().manual_seed(1))
    out = apply_crop_flip(imgs, 2, dy, dx, flips)
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    for i in range(6):
        ref = _reference_crop_flip(imgs[i], 2, int(dy[i]), int(dx[i]), bool(flips[i]))
        assert torch.equal(out[i], ref)


def test_augment_is_deterministic_per_generator_seed():
    imgs = torch.randint(0, 256, (32, 32, 32, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))
    a = augment_batch(imgs, "crop_flip", torch.Generator().manual_seed(7))
    b = augment_batch(imgs, "crop_flip", torch.Generator().manual_seed(7))
    c = augment_batch(imgs, "crop_flip", torch.Generator().manual_seed(8))
    assert a.shape == imgs.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(imgs, "none", torch.Generator()), imgs)
    dy, dx, flips = draw_crop_flip(1000, 4, False, torch.Generator().manual_seed(0))
    assert dy.min() == 0 and dy.max() == 8 and dx.max() == 8 and flips.sum() == 0


# ---- mixup --------------------------------------------------------------------------------

def test_mixup_alpha_zero_is_no_mixup():
    from ltpipe.losses import build_loss, mixup_loss

    lam, perms = draw_mixup(0.0, 3, 5, torch.Generator().manual_seed(0))
    assert lam.tolist() == [1.0, 1.0, 1.0] and torch.equal(perms[1], torch.arange(5))
    x = torch.randn(5, 2, 3, 3)
    assert mix(x, float(lam[0]), perms[0]) is x
    loss = build_loss("ce", [3, 2, 1])
    z, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(mixup_loss(loss, z, y, y[perms[0]], float(lam[0])), loss(z, y))
    lam1, perms1 = draw_mixup(1.0, 200, 5, torch.Generator().manual_seed(0))
    assert 0 < lam1.min() and lam1.max() < 1 and abs(float(lam1.mean()) - 0.5) < 0.08
    assert torch.allclose(mix(x, 0.25, perms1[0]), 0.25 * x + 0.75 * x[perms1[0]])


# ---- schedules ----------------------------------------------------------------------------

def test_multistep_with_warmup_known_answers():
    kw = {"base_lr": 0.1, "epochs": 200, "schedule": "multistep", "milestones": [160, 180],
          "gamma": 0.01, "warmup_epochs": 5}
    expected = {0: 0.02, 1: 0.04, 4: 0.1, 5: 0.1, 100: 0.1, 159: 0.1, 160: 1e-3, 179: 1e-3,
                180: 1e-5, 199: 1e-5}
    for epoch, lr in expected.items():
        assert math.isclose(lr_at(epoch, **kw), lr, rel_tol=1e-12), epoch
    assert math.isclose(lr_at(2.5, **kw), 0.1 * 3.5 / 5)  # linear inside the warm-up


def test_cosine_schedule_endpoints():
    kw = {"base_lr": 0.01, "epochs": 320, "schedule": "cosine"}
    assert lr_at(0, **kw) == 0.01
    assert math.isclose(lr_at(160, **kw), 0.005)
    assert abs(lr_at(320, **kw)) < 1e-15
    warm = {**kw, "warmup_epochs": 20}
    assert math.isclose(lr_at(20, **warm), 0.01) and abs(lr_at(320, **warm)) < 1e-15
    assert math.isclose(lr_at(170, **warm), 0.005)


# ---- inputs -------------------------------------------------------------------------------

def test_eval_batches_in_memory_known_answer():
    from ltpipe.data import InMemoryData
    from ltpipe.data.batches import compute_normalization, eval_batches

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    data = InMemoryData(images=images, labels=np.arange(5) % 2, ids=np.arange(10, 15))
    norm = compute_normalization(data)
    flat = images.reshape(-1, 3) / 255.0
    assert np.allclose(norm["mean"], flat.mean(0)) and np.allclose(norm["std"], flat.std(0))
    batches = list(eval_batches(data, norm, 2, "cpu"))
    assert [len(y) for _, y, _ in batches] == [2, 2, 1]
    x = torch.cat([b[0] for b in batches])
    ref = (images.transpose(0, 3, 1, 2) / 255.0 - flat.mean(0)[:, None, None]) \
        / flat.std(0)[:, None, None]
    assert x.shape == (5, 3, 4, 4) and torch.allclose(x, torch.as_tensor(ref).float(), atol=1e-5)
    assert torch.cat([b[2] for b in batches]).tolist() == [10, 11, 12, 13, 14]


def test_file_list_batches(tmp_path):
    from PIL import Image

    from ltpipe.data import FileListData
    from ltpipe.data.batches import TrainBatches, compute_normalization, eval_batches

    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    data = FileListData(root=tmp_path, paths=[f"{i}.png" for i in range(5)],
                        labels=np.array([0, 1, 0, 1, 1]), ids=np.arange(5) * 3)
    norm = compute_normalization(data, image_size=16)
    assert norm["image_size"] == 16 and len(norm["mean"]) == 3
    train = TrainBatches(data, norm, 2, "cpu", "crop_flip", image_size=16, workers=0)
    got = list(train.epoch(torch.Generator().manual_seed(0)))
    assert train.steps_per_epoch == 2 and len(got) == 2
    assert got[0][0].shape == (2, 3, 16, 16) and got[0][0].dtype == torch.float32
    resumed = list(train.epoch(torch.Generator().manual_seed(0), start_step=1))
    assert len(resumed) == 1 and torch.equal(resumed[0][1], got[1][1])  # same order
    ids = torch.cat([b[2] for b in eval_batches(data, norm, 2, "cpu")])
    assert ids.tolist() == [0, 3, 6, 9, 12]


def test_resume_key_reads_a_checkpoint_recipe_written_before_the_rename():
    """A checkpoint whose recipe says ``backbone``/``backbone_kwargs`` (before they were renamed
    ``architecture``/``architecture_kwargs``) resumes a run of the same recipe."""
    from ltpipe.train.checkpoint import resume_key

    new = {"architecture": "resnet8", "architecture_kwargs": {"widths": [8, 8, 16]}, "epochs": 2}
    old = {"backbone": "resnet8", "backbone_kwargs": {"widths": [8, 8, 16]}, "epochs": 2}
    assert resume_key(old) == resume_key(new)
    assert resume_key({**old, "backbone": "resnet32"}) != resume_key(new)
