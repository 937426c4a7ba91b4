"""Config: schema + domain checks, sweep expansion, target paths, strict YAML."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ltpipe.paths import imb_tag
from ltpipe.utils import LtpipeError
from ltpipe.workflow.config import (
    check_config,
    classifier_job,
    metric_targets,
    recipe_settings,
    split_settings,
    splits,
    sweep_points,
    sweep_table,
    validate_schema,
)
from ltpipe.yamlfile import load_yaml_strict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def cfg() -> dict:
    return load_yaml_strict(ROOT / "config.yaml")


def test_default_config_is_valid(cfg):
    validate_schema(cfg)
    check_config(cfg)


def test_sweep_points_cartesian_product():
    pts = sweep_points({"tau": [0.0, 1.0], "lam": [0.1, 0.2, 0.3], "epochs": 5})
    assert len(pts) == 6
    ids = [p for p, _ in pts]
    assert ids[0] == "lam=0.1,tau=0.0" and ids[-1] == "lam=0.3,tau=1.0"
    assert len(set(ids)) == 6
    assert all(s["epochs"] == 5 for _, s in pts)
    assert dict(pts)["lam=0.2,tau=1.0"] == {"tau": 1.0, "lam": 0.2, "epochs": 5}
    assert sweep_points({"epochs": 5}) == [("default", {"epochs": 5})]


def test_imb_tag():
    assert imb_tag(10) == "10" and imb_tag(10.0) == "10" and imb_tag(12.5) == "12.5"
    assert imb_tag("native") == "native"


def test_metric_targets_of_default(cfg):
    targets = metric_targets(cfg)
    n_splits = len(cfg["datasets"]["digits"]["imbalance_factors"])
    n_points = sum(len(sweep_points(c.get("settings", {}))) for c in cfg["classifiers"].values()
                   if "reads" not in c)
    # composed entries: own points x their input's points (config.yaml's three: 2 + 2 + 2)
    n_composed = 2 + 2 + 2
    assert len(targets) == n_splits * (n_points + n_composed)
    assert "results/digits/if10/s0/cls/tau_norm/t0/tau=0.5/metrics.json" in targets
    assert "results/digits/if50/s0/cls/crt/t0/default/metrics.json" in targets
    assert len(set(targets)) == len(targets)


def test_per_job_settings_hold_only_their_own(cfg):
    assert "imbalance_factors" not in split_settings(cfg, "digits")
    assert "seeds" not in recipe_settings(cfg, "ce")
    jobs = sweep_table(cfg)
    job = classifier_job(jobs, "tau_norm", "tau=1.5")
    assert job == {"method": "tau_norm", "backbones": ["ce"], "settings": {"tau": 1.5},
                   "saves": ["head"]}  # its job saves its head (composition)
    with pytest.raises(LtpipeError, match=r"no sweep point 'tau=9.0'; its points: \['tau=0.0'"):
        classifier_job(jobs, "tau_norm", "tau=9.0")


def test_sweep_table_expands_each_sweep_once(cfg):
    cfg["classifiers"] = {"a": {"method": "tau_norm", "backbones": ["ce"],
                                "settings": {"tau": [0.5, 1.0]}},
                          "b": {"method": "ncm", "backbones": ["ce"]}}
    assert sweep_table(cfg) == {
        ("a", "tau=0.5"): {"method": "tau_norm", "backbones": ["ce"], "settings": {"tau": 0.5},
                           "saves": ["head"]},
        ("a", "tau=1.0"): {"method": "tau_norm", "backbones": ["ce"], "settings": {"tau": 1.0},
                           "saves": ["head"]},
        ("b", "default"): {"method": "ncm", "backbones": ["ce"], "settings": {}}}


@pytest.mark.parametrize("where, key, fix", [
    ("backbones.ce", "backbone", "renamed 'architecture'"),
    ("backbones.ce", "backbone_kwargs", "renamed 'architecture_kwargs'"),
    ("cache", "augmented_views", "removed"),
])
def test_retired_keys_name_the_fix(cfg, where, key, fix):
    section = cfg
    for part in where.split("."):
        section = section[part]
    section[key] = "x"
    with pytest.raises(LtpipeError, match=rf"{where}.'{key}': {fix}"):
        validate_schema(cfg)


def test_data_sources_come_from_their_registry(cfg):
    from ltpipe.data.sources import NUM_CLASSES, SOURCES

    assert set(NUM_CLASSES) == set(SOURCES)
    assert NUM_CLASSES["cifar100"] == 100 and NUM_CLASSES["inat2018"] == 8142
    cfg["datasets"]["digits"]["source"] = "cifar1000"
    with pytest.raises(LtpipeError, match=r"'cifar1000' is not allowed; choose one of \['digits'"):
        validate_schema(cfg)


def test_val_per_class_reaches_the_split_params_unless_zero(cfg):
    """``val_per_class`` is a split param (changing it rebuilds the split and what it feeds);
    0, which the schema fills in as the default, leaves the params as they were without it."""
    before = split_settings(cfg, "digits")
    assert "val_per_class" not in before
    cfg["datasets"]["digits"]["val_per_class"] = 0
    validate_schema(cfg)
    check_config(cfg)
    assert split_settings(cfg, "digits") == before
    cfg["datasets"]["digits"]["val_per_class"] = 5
    check_config(cfg)
    assert split_settings(cfg, "digits") == {**before, "val_per_class": 5}


def test_splits_list(cfg):
    keys = splits(cfg)
    assert [(k.dataset, k.imb, k.split_seed) for k in keys] == [("digits", "10", 0),
                                                               ("digits", "50", 0)]


def test_duplicate_yaml_key_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("datasets:\n  a: {source: digits}\n  a: {source: cifar10}\n")
    with pytest.raises(LtpipeError, match="duplicate key 'a' at line 3"):
        load_yaml_strict(p)


BAD = [
    (lambda c: c.update(extra=1), "allowed keys here"),
    (lambda c: c["datasets"]["digits"].update(imbalance_factors=[0.5]), "imbalance factor"),
    (lambda c: c["datasets"]["digits"].update(source="mnist"), "choose one of"),
    (lambda c: c["cache"].update(backend="npz"), "choose one of"),
    (lambda c: c["cache"].update(compression="brotli"), "choose one of"),
    (lambda c: c.update(classify_device="tpu"), "choose one of"),
    (lambda c: c["classifiers"]["crt"].update(backbones=[]), "should be non-empty"),
    (lambda c: c["datasets"]["digits"].update(val_per_class=-1),
     r"datasets\.digits\.val_per_class: -1 is less than the minimum of 0; expected: an integer"),
    (lambda c: c["datasets"]["digits"].update(val_per_class=2.5), "not of type 'integer'"),
]


@pytest.mark.parametrize("mutate,message", BAD)
def test_schema_errors_name_key_and_fix(cfg, mutate, message):
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises(LtpipeError, match=message):
        validate_schema(bad)


DOMAIN = [
    (lambda c: c["classifiers"]["crt"].update(backbones=["nope"]), "not defined under backbones"),
    (lambda c: c["classifiers"]["crt"].update(method="magic"), "'magic' is not registered"),
    (lambda c: c["classifiers"]["tau_norm"].update(settings={"tau": []}), "empty sweep"),
    (lambda c: c["classifiers"]["tau_norm"].update(settings={"tua": 1.0}), "has no setting"),
    (lambda c: c["backbones"]["ce"].update(architecture="resnet9000"), "not registered"),
    (lambda c: c["backbones"]["ce"].update(loss="hinge"), "'hinge' is not registered"),
    (lambda c: c["backbones"]["ce"].update(learning_rate=0.1), "unknown key"),
    (lambda c: c["backbones"]["ce"].update(epochs="ten"),
     r"backbones\.ce\.epochs: 'ten' is invalid; expected an integer in \[1, inf\]"),
    (lambda c: c["backbones"]["ce"].update(momentum=1.5), r"backbones\.ce\.momentum: 1\.5"),
    (lambda c: c["backbones"]["ce"].update(milestones=[20, 10]), "milestones"),
    (lambda c: c["backbones"]["ce"].update(loss_settings={"gama": 2}), "not settings of loss"),
    (lambda c: c["datasets"]["digits"].update(shot_thresholds={"many": 5, "few": 10}),
     "few \\(10\\) must not exceed many"),
    (lambda c: c["datasets"].update(c10={"source": "cifar10", "imbalance_factors": [10]}),
     "root: required"),
    (lambda c: c["datasets"].update(inat={"source": "inat2018"}), "lists: required"),
    (lambda c: c["cache"].update(backend="hdf5", compression="zstd"), "not available with"),
    (lambda c: c["datasets"].update(inlt={"source": "imagenet_lt", "root": "/i", "lists": "/l",
                                          "val_per_class": 20}),
     r"datasets\.inlt: val_per_class: 20 is for the profile sources .* imagenet_lt has its own "
     r"validation split \(ImageNet_LT_val\.txt\): remove val_per_class"),
]


@pytest.mark.parametrize("mutate,message", DOMAIN)
def test_domain_errors_name_key_and_fix(cfg, mutate, message):
    bad = copy.deepcopy(cfg)
    mutate(bad)
    validate_schema(bad)
    with pytest.raises(LtpipeError, match=message):
        check_config(bad)


def test_ffn_weight_out_of_range(cfg):
    bad = copy.deepcopy(cfg)
    bad["backbones"]["kps"] = dict(bad["backbones"]["ce"], head="cosine", loss="kps")
    bad["classifiers"]["ffn"] = {"method": "ffn", "backbones": ["kps", "ce"],
                                 "settings": {"w1": [0.5, 1.5]}}
    with pytest.raises(LtpipeError, match="setting 'w1' = 1.5 is invalid"):
        check_config(bad)
    bad["classifiers"]["ffn"]["backbones"] = ["kps"]
    with pytest.raises(LtpipeError, match="reads 2 backbone"):
        check_config(bad)


def test_paths_layout_fills_and_parses_the_same_templates():
    from ltpipe.paths import Layout, parse

    layout = Layout({"results": "res", "cache": {"backend": "hdf5"}})
    run = {"dataset": "toy", "imb": "8", "split_seed": 3, "backbone": "ce_mix", "seed": 7}
    assert layout.path("cache", **run) == "res/toy/if8/s3/ce_mix/t7/cache.h5"
    assert layout.pattern("model") == \
        "res/{dataset}/if{imb}/s{split_seed}/{backbone}/t{seed}/model.pt"
    assert layout.log("train", "tsv") == \
        "res/logs/train/{dataset}_if{imb}_s{split_seed}_{backbone}_t{seed}.tsv"
    assert parse("cache", layout.path("cache", **run)) == {k: str(v) for k, v in run.items()}
    assert parse("cache", "res/cache.zarr") is None
    assert Layout({}).path("split", dataset="d", imb="10", split_seed=0) == \
        "results/d/if10/s0/split.npz"


def test_schema_choices_come_from_the_code_that_owns_them():
    """The schema file spells no list of choices; each is filled in from its one declaration."""
    from ltpipe.cache.format import BACKENDS, FMAP_DTYPES, compressions
    from ltpipe.classifiers.device import CHOICES
    from ltpipe.data.sources import SOURCES
    from ltpipe.workflow.config import SCHEMA_PATH, schema_with_choices

    assert "enum:" not in SCHEMA_PATH.read_text()
    props = schema_with_choices()["properties"]
    cache = props["cache"]["properties"]
    assert cache["backend"]["enum"] == list(BACKENDS) == ["zarr", "hdf5"]
    assert set(cache["compression"]["enum"]) == {"none", "zstd", "lz4", "blosc", "gzip", "lzf"}
    assert compressions()["hdf5"] == ("none", "gzip", "lzf")
    assert cache["fmap_dtype"]["enum"] == list(FMAP_DTYPES)
    assert props["classify_device"]["enum"] == list(CHOICES)
    assert props["datasets"]["additionalProperties"]["properties"]["source"]["enum"] == \
        list(SOURCES)
