"""The published-setting presets in workflow/presets/: valid configs whose DAGs are the papers'.

For every preset: (1) it passes the schema, ``check_config`` and the stage-one recipe check;
(2) a Snakemake dry run (data roots pointed at stand-in folders in tmp: the DAG is built without
reading any data, so an empty CIFAR folder suffices) plans exactly the split / train / dump /
classify jobs counted here by hand AND by a plain formula over the preset, each training for the
right (IF, backbone), each classifier job reading the caches of its entry's backbones in order.
The dry runs run three at a time in one module fixture (a few seconds each).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from dryrun import job_counts as planned_jobs

ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR = ROOT / "workflow" / "presets"

# Hand-counted DAGs (see each preset's "# DAG:" line): splits, trainings, dumps, classify jobs.
# CIFAR: 5 IFs x 1 seed; 5 backbones x 5 IFs; per IF 5 joint + crt/lws/ncm/LA 4 + tau 21
# + ffn 11 + ffn_reference 1 + h2t 6 + fsa 1 + 2 x bwlm 6 x 5 + afa_crt 1 = 110.
# ImageNet-LT: 5 joint + 4 + tau 21 + h2t 6 + fsa 1 + ffn 11 + 1 + 2 x 30 + afa_crt 1 = 110.
# Places-LT / iNat: joint + 4 + tau 21 + h2t 6 + fsa 1 = 33. Fashion: 11 entries x 3 IFs.
EXPECTED = {
    "cifar10_lt": (5, 30, 30, 555),
    "cifar100_lt": (5, 30, 30, 555),
    "imagenet_lt": (1, 5, 5, 110),
    "places_lt": (1, 1, 1, 33),
    "inat2018": (1, 1, 1, 33),
    "fashion_mnist_lt": (3, 6, 6, 33),
}
LIST_FILES = {
    "imagenet_lt": ["ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"],
    "places_lt": ["Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"],
    "inat2018": ["iNaturalist18_train.txt", "iNaturalist18_val.txt"],
}
CORE_RULES = {"split", "train", "dump", "classify", "summary", "all"}
REPORT_RULES = {"compare", "plots", "plot_perclass", "plot_sweep", "plot_wnorm_confusion",
                "plot_tsne"}


def load(name: str) -> dict:
    return yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())


def test_every_preset_is_listed():
    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == sorted(EXPECTED)


# ------------------------------------------------------------------------------ config checks
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_passes_schema_and_domain_checks(name):
    from ltpipe.losses import loss_settings
    from ltpipe.train.recipe import normalize_recipe
    from ltpipe.workflow.config import check_config, validate_schema
    from ltpipe.yamlfile import load_yaml_strict

    cfg = load_yaml_strict(PRESET_DIR / f"{name}.yaml")  # also refuses duplicate keys
    validate_schema(cfg)
    check_config(cfg)
    for bname, recipe in cfg["backbones"].items():
        normalize_recipe({k: v for k, v in recipe.items() if k not in ("seeds", "datasets")})
        unknown = set(recipe.get("loss_settings", {})) - set(loss_settings(recipe["loss"]))
        assert not unknown, f"{name}: backbones.{bname}: unknown loss settings {unknown}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_header_states_its_dag(name):
    text = (PRESET_DIR / f"{name}.yaml").read_text()
    m = re.search(r"^# DAG: (\d+) splits?, (\d+) trainings?, (\d+) cache dumps?, "
                  r"(\d+) classifier-stage jobs", text, re.M)
    assert m, f"{name}: no '# DAG: ...' line"
    assert tuple(map(int, m.groups())) == EXPECTED[name]


def test_method_inputs_are_the_papers():
    """FFN reads [KPS cosine, CE linear]; faithful BWLM the head half; AFA + cRT the AFA net."""
    for name in EXPECTED:
        cfg = load(name)
        bb = cfg["backbones"]
        for clf, entry in cfg["classifiers"].items():
            if entry["method"] == "ffn":
                kps, ce = (bb[b] for b in entry["backbones"])
                assert (kps["loss"], kps["head"]) == ("kps", "cosine"), (name, clf)
                assert (ce["loss"], ce["head"]) == ("ce", "linear"), (name, clf)
                assert kps["architecture"] == ce["architecture"], (name, clf)
            if clf == "bwlm":  # the faithful entry; others (bwlm_<backbone>) read any backbone
                assert bb[entry["backbones"][0]].get("head_half") is True, name
            if clf == "afa_crt":
                assert entry["method"] == "crt" and bb[entry["backbones"][0]].get("afa"), name
    # KPS max_m per data set (docs/methods.md#kps): 0.2 CIFAR-10, 0.5 CIFAR-100, 0.35 ImageNet.
    assert load("cifar10_lt")["backbones"]["kps_mixup"]["loss_settings"]["max_m"] == 0.2
    assert load("cifar100_lt")["backbones"]["kps_mixup"]["loss_settings"]["max_m"] == 0.5
    assert load("imagenet_lt")["backbones"]["kps_mixup_r50"]["loss_settings"]["max_m"] == 0.35
    # Paper w1 inside the FFN sweep, and as the reference entry's value (FFN Table 2).
    for name, w1 in [("cifar10_lt", 0.5), ("cifar100_lt", 0.9), ("imagenet_lt", 0.9)]:
        clfs = load(name)["classifiers"]
        assert w1 in clfs["ffn"]["settings"]["w1"] and clfs["ffn_reference"]["settings"]["w1"] == w1
        assert [round(0.1 * i, 1) for i in range(11)] == clfs["ffn"]["settings"]["w1"]
        assert [round(0.1 * i, 1) for i in range(21)] == clfs["tau_norm"]["settings"]["tau"]


def _lt_counts(n_max: int, num_classes: int, imb: float) -> list[int]:
    return [int(n_max * (1 / imb) ** (i / (num_classes - 1))) for i in range(num_classes)]


def _groups(counts: list[int], many: int, few: int) -> tuple[int, int, int]:
    return (sum(c > many for c in counts), sum(few <= c <= many for c in counts),
            sum(c < few for c in counts))


def test_shot_thresholds_give_the_documented_groups():
    ds = load("fashion_mnist_lt")["datasets"]["fashion_mnist_lt"]
    th = ds["shot_thresholds"]
    got = {imb: _groups(_lt_counts(6000, 10, imb), th["many"], th["few"])
           for imb in ds["imbalance_factors"]}
    assert got == {10: (7, 3, 0), 50: (5, 3, 2), 100: (4, 3, 3)}
    # The CIFAR-100-LT IF100 shape the Fashion thresholds were matched to: 35 / 35 / 30.
    th100 = load("cifar100_lt")["datasets"]["cifar100_lt"]["shot_thresholds"]
    assert _groups(_lt_counts(500, 100, 100), th100["many"], th100["few"]) == (35, 35, 30)


# ---------------------------------------------------------------------------------- dry runs
def planned_blocks(text: str) -> list[dict]:
    """Each job of a dry run as {'rule', 'input', 'wildcards': {...}}."""
    jobs: list[dict] = []
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^(?:local)?rule (\w+):$", s)
        if m:
            jobs.append({"rule": m.group(1), "input": "", "wildcards": {}})
        elif jobs and s.startswith("input: "):
            jobs[-1]["input"] = s[len("input: "):]
        elif jobs and s.startswith("wildcards: "):
            pairs = (p.split("=", 1) for p in s[len("wildcards: "):].split(", "))
            jobs[-1]["wildcards"] = dict(pairs)
    return jobs


def _stand_in(name: str, cfg: dict, tmp: Path) -> Path:
    """A copy of the preset with every data path under tmp (list files in the real format)."""
    for dname, ds in cfg["datasets"].items():
        root = tmp / "data" / dname
        root.mkdir(parents=True, exist_ok=True)
        ds["root"] = str(root)  # CIFAR / Fashion-MNIST: an empty folder
        if ds["source"] in LIST_FILES:
            lists = tmp / "lists" / dname
            lists.mkdir(parents=True, exist_ok=True)
            for fname in LIST_FILES[ds["source"]]:
                (lists / fname).write_text("train/c0/a.jpg 0\ntrain/c1/b.jpg 1\n")
            ds["lists"] = str(lists)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _dry_run(name: str, tmp: Path) -> str:
    work = tmp / name
    work.mkdir()
    cfg = load(name)
    config = _stand_in(name, cfg, work)
    for recipe in cfg["backbones"].values():  # a weights file is a train job's input: it must
        if recipe.get("init_weights"):        # exist for the DAG (a stand-in: no job runs)
            weights = work / recipe["init_weights"]
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.touch()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--configfile", str(config), "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dry run of {name} failed:\n{text[-5000:]}"
    return text


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("presets")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {n: pool.submit(_dry_run, n, tmp) for n in EXPECTED}
        return {n: f.result() for n, f in futures.items()}


def _imb_tag(v) -> str:
    return "native" if v == "native" else str(int(v)) if float(v).is_integer() else str(v)


def independent_plan(cfg: dict) -> dict:
    """Split keys, trainings and per-entry classify counts by a plain formula over the preset."""
    splits = [(d, _imb_tag(i), str(s)) for d, ds in cfg["datasets"].items()
              for i in ds.get("imbalance_factors", ["native"])
              for s in ds.get("split_seeds", [0])]
    trains = [(d, imb, b, str(t)) for d, imb, _ in splits for b, r in cfg["backbones"].items()
              if d in r.get("datasets", cfg["datasets"]) for t in r.get("seeds", [0])]
    classify = {}
    for clf, entry in cfg["classifiers"].items():
        sweeps = [v for v in entry.get("settings", {}).values() if isinstance(v, list)]
        seeds = set.intersection(*(set(cfg["backbones"][b].get("seeds", [0]))
                                   for b in entry["backbones"]))
        classify[clf] = math.prod(map(len, sweeps)) * len(seeds) * len(splits)
    return {"splits": splits, "trains": trains, "classify": classify}


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_job_counts(name, dry_runs):
    counts = planned_jobs(dry_runs[name])
    assert CORE_RULES <= set(counts) <= CORE_RULES | REPORT_RULES, counts
    got = (counts["split"], counts["train"], counts["dump"], counts["classify"])
    assert got == EXPECTED[name]
    plan = independent_plan(load(name))
    assert got == (len(plan["splits"]), len(plan["trains"]), len(plan["trains"]),
                   sum(plan["classify"].values()))


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_jobs_are_the_right_ones(name, dry_runs):
    cfg = load(name)
    plan = independent_plan(cfg)
    jobs = planned_blocks(dry_runs[name])
    def run_key(wc: dict) -> tuple:
        return wc["dataset"], wc["imb"], wc["backbone"], wc["seed"]

    splits = [tuple(j["wildcards"][k] for k in ("dataset", "imb", "split_seed")) for j in jobs
              if j["rule"] == "split"]
    assert sorted(splits) == sorted(plan["splits"])
    trains = [run_key(j["wildcards"]) for j in jobs if j["rule"] == "train"]
    assert sorted(trains) == sorted(plan["trains"])
    dumps = [run_key(j["wildcards"]) for j in jobs if j["rule"] == "dump"]
    assert sorted(dumps) == sorted(plan["trains"])
    classify = [j for j in jobs if j["rule"] == "classify"]
    assert Counter(j["wildcards"]["classifier"] for j in classify) == Counter(plan["classify"])
    for j in classify:
        wc = j["wildcards"]
        caches = re.findall(rf"/if{re.escape(wc['imb'])}/s\d+/([^/]+)/t{wc['seed']}/cache\.",
                            j["input"])
        assert caches == cfg["classifiers"][wc["classifier"]]["backbones"], (name, wc)


# ------------------------------------------------------------------ schedules against sources
def _reference_factor(epoch: int, decays: list[tuple[int, float]]) -> float:
    """The lr factor the reference's adjust_learning_rate sets at 0-based ``epoch``: a 5-epoch
    linear warm-up (e + 1) / 5, then the factor of the last decay epoch reached (absolute, not
    compounded), written out from the code's ``if epoch > N`` chain with ``epoch + 1``."""
    e1 = epoch + 1
    if e1 <= 5:
        return e1 / 5
    factor = 1.0
    for start, f in decays:
        if e1 > start:
            factor = f
    return factor


# FFN: zxsong999/Feature-Fusion-Network.pytorch cifar_train.py adjust_learning_rate (2a242ae);
# LDAM-DRW: kaidic/LDAM-DRW cifar_train.py adjust_learning_rate (2536330).
REFERENCE_SCHEDULES = {
    ("cifar100_lt", "ce_mixup"): [(160, 0.01)],
    ("cifar100_lt", "kps_mixup"): [(160, 0.01)],
    ("cifar10_lt", "ce_mixup"): [(160, 0.1), (180, 0.01)],
    ("cifar10_lt", "kps_mixup"): [(160, 0.1), (180, 0.01)],
    ("cifar100_lt", "ldam_drw"): [(160, 0.01), (180, 0.0001)],
    ("cifar10_lt", "ldam_drw"): [(160, 0.01), (180, 0.0001)],
}


@pytest.mark.parametrize("preset, backbone", sorted(REFERENCE_SCHEDULES))
def test_preset_schedules_follow_the_reference_per_epoch(preset, backbone):
    from ltpipe.train.recipe import normalize_recipe
    from ltpipe.train.schedules import recipe_lr

    recipe = dict(load(preset)["backbones"][backbone])
    for key in ("seeds", "datasets"):
        recipe.pop(key, None)
    recipe = normalize_recipe(recipe)
    steps = 7  # any number of steps per epoch: the lr at an epoch's first step
    for epoch in range(recipe["epochs"]):
        want = recipe["lr"] * _reference_factor(epoch, REFERENCE_SCHEDULES[(preset, backbone)])
        assert recipe_lr(recipe, epoch * steps, steps) == pytest.approx(want), epoch
