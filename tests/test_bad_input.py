"""Bad input through the real CLI and Snakemake: malformed configs, data roots, list files, images.

Each malformed config (beyond those of tests/test_config.py, which calls the checks directly) goes
through ``python -m ltpipe check-config`` and must be refused with exit status 2, no traceback,
and a message naming the key and the fix. A selection also goes through a real Snakemake run,
which must stop before any job runs. Bad data is refused at the first job that touches it, with a
message naming the file. The subprocesses run a few at a time (they mostly wait on imports).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
BASE = {
    "results": "results",
    "cache": {"backend": "zarr", "compression": "none"},
    "datasets": {"digits": {"source": "digits", "imbalance_factors": [10], "split_seeds": [0],
                            "shot_thresholds": {"many": 50, "few": 20}}},
    "backbones": {"ce": {"architecture": "resnet8", "epochs": 2, "warmup_epochs": 1,
                         "seeds": [0]}},
    "classifiers": {"crt": {"method": "crt", "backbones": ["ce"]},
                    "tau_norm": {"method": "tau_norm", "backbones": ["ce"],
                                 "settings": {"tau": [0.0, 1.0]}}},
}
BASE_YAML = yaml.safe_dump(BASE, sort_keys=False)


def _set(path: str, value):
    """A mutation setting the dotted key ``path`` to ``value``."""
    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _ffn(w1):
    def mutate(cfg):
        cfg["backbones"]["kps"] = dict(cfg["backbones"]["ce"], head="cosine", loss="kps")
        cfg["classifiers"]["ffn"] = {"method": "ffn", "backbones": ["kps", "ce"],
                                     "settings": {"w1": w1}}
    return mutate


def _rename_top(old: str, new: str):
    def mutate(cfg):
        cfg[new] = cfg.pop(old)
    return mutate


def _add(path: str, key: str, value):
    def mutate(cfg):
        node = cfg
        for p in path.split("."):
            node = node[p]
        node[key] = value
    return mutate


def _drop(path: str):
    def mutate(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


# id -> (mutation of BASE, or raw YAML text; fragments the message must contain)
CONFIGS = {
    "cache_unknown_key": (_set("cache.codec", "zstd"), ["cache", "'codec'", "allowed keys"]),
    "dataset_unknown_key": (_set("datasets.digits.imbalance", [10]),
                            ["datasets.digits", "'imbalance'", "allowed keys"]),
    "classifier_unknown_key": (_set("classifiers.crt.setting", {"epochs": 2}),
                               ["classifiers.crt", "'setting'", "allowed keys"]),
    "top_level_typo": (_rename_top("classifiers", "classifier"),
                       ["'classifiers' is a required property", "add it"]),
    "batch_size_text": (_set("cache.batch_size", "big"),
                        ["cache.batch_size", "is not of type 'integer'"]),
    "split_seeds_scalar": (_set("datasets.digits.split_seeds", 0),
                           ["datasets.digits.split_seeds", "is not of type 'array'"]),
    "backbones_scalar": (_set("classifiers.crt.backbones", "ce"),
                         ["classifiers.crt.backbones", "is not of type 'array'"]),
    "imbalance_empty": (_set("datasets.digits.imbalance_factors", []),
                        ["datasets.digits.imbalance_factors", "non-empty"]),
    "imbalance_text": (_set("datasets.digits.imbalance_factors", ["ten"]),
                       ["'ten' is not an imbalance factor", "give a number >= 1"]),
    "imbalance_below_one": (_set("datasets.digits.imbalance_factors", [10, 0.9]),
                            ["0.9 is not an imbalance factor", "give a number >= 1"]),
    "imbalance_negative": (_set("datasets.digits.imbalance_factors", [-5]),
                           ["-5 is not an imbalance factor"]),
    "epochs_zero": (_set("backbones.ce.epochs", 0),
                    ["backbones.ce.epochs: 0 is invalid", "an integer in [1, inf]"]),
    "lr_negative": (_set("backbones.ce.lr", -0.1),
                    ["backbones.ce.lr: -0.1 is invalid", "a number in (0, inf]"]),
    "head_unknown": (_set("backbones.ce.head", "softmax"),
                     ["backbones.ce.head: 'softmax' is invalid", "one of ['linear', 'cosine']"]),
    "dataset_name_space": (lambda c: c["datasets"].update({"my data": c["datasets"].pop(
        "digits")}), ["'my data' does not match"]),
    "split_seeds_repeated": (_set("datasets.digits.split_seeds", [0, 0]),
                             ["datasets.digits.split_seeds", "non-unique"]),
    "shot_thresholds_no_few": (_set("datasets.digits.shot_thresholds", {"many": 50}),
                               ["'few' is a required property"]),
    "yaml_syntax": (BASE_YAML + "extra: [1, 2\n", ["not valid YAML"]),
    "duplicate_classifier": (BASE_YAML.replace(
        "classifiers:\n", "classifiers:\n  crt:\n    method: lws\n    backbones: [ce]\n", 1),
        ["duplicate key 'crt'", "rename or merge"]),
    "duplicate_recipe_key": (BASE_YAML.replace("    epochs: 2\n", "    epochs: 2\n    epochs: 3\n"),
                             ["duplicate key 'epochs'"]),
    "ffn_weight_negative": (_ffn([0.5, -0.1]), ["setting 'w1' = -0.1 is invalid",
                                                "in [0, 1]", "CE gets 1 - w1"]),
    "ffn_weight_text": (_ffn("half"), ["setting 'w1' = 'half' is invalid"]),
    "h2t_rho_out_of_range": (_set("classifiers.h2t", {"method": "h2t", "backbones": ["ce"],
                                                      "settings": {"rho": 1.5}}),
                             ["settings (default): method 'h2t': setting 'rho' = 1.5",
                              "a number in [0, 1]"]),
    "classifier_backbone_case": (_set("classifiers.crt.backbones", ["CE"]),
                                 ["['CE'] not defined under backbones", "(defined: ['ce'])"]),
    "empty_sweep": (_set("classifiers.crt.settings", {"epochs": []}),
                    ["settings.epochs: an empty sweep", "at least one value"]),
    "repeated_sweep": (_set("classifiers.tau_norm.settings", {"tau": [1.0, 1.0]}),
                       ["repeats a value"]),
    "lws_two_backbones": (_set("classifiers.lws", {"method": "lws", "backbones": ["ce", "ce"]}),
                          ["method 'lws' reads 1 backbone(s), got 2"]),
    "recipe_unknown_dataset": (_set("backbones.ce.datasets", ["cifar"]),
                               ["'cifar' is not a data set of this config"]),
    "hdf5_with_lz4": (_set("cache", {"backend": "hdf5", "compression": "lz4"}),
                      ["'lz4' is not available with backend 'hdf5'"]),
    "cifar_native": (_add("datasets", "c10", {"source": "cifar10", "root": "/nonexistent",
                                              "imbalance_factors": ["native"]}),
                     ["'native' is only for list-file data sets"]),
    "crt_unknown_setting": (_set("classifiers.crt.settings", {"learning_rate": 0.1}),
                            ["method 'crt' has no setting(s) ['learning_rate']",
                             "allowed keys"]),
    "architecture_missing": (_drop("backbones.ce.architecture"),
                             ["'architecture' is a required property"]),
    "augment_unknown": (_set("backbones.ce.augment", "flip"),
                        ["backbones.ce.augment: 'flip' is invalid", "expected one of"]),
    "warmup_longer_than_training": (_set("backbones.ce.warmup_epochs", 40),
                                    ["warmup_epochs=40 is invalid", "at most epochs=2"]),
    "loss_setting_typo": (_set("backbones.ce.loss_settings", {"gama": 2}),
                          ["loss_settings: ['gama'] not settings of loss 'ce'", "allowed"]),
}

# Refused today only when the train / classify job starts; expected: refused by the config check
# before any job runs (fix: ltpipe/workflow/config.py, see the reason).
LATE = "accepted by check-config; fix: ltpipe/workflow/config.py "
CONFIGS_LATE = {
    "backbone_kwarg_typo": (_set("backbones.ce.architecture_kwargs", {"stride": [1, 1, 2]}),
                            ["'stride'"], LATE + "_check_recipe: check architecture_kwargs against "
                            "the model constructor's keywords (ltpipe.models.build_model does, "
                            "at train time)"),
    "classifier_setting_type": (_set("classifiers.crt.settings", {"epochs": "ten"}),
                                ["setting 'epochs' = 'ten' is invalid"], LATE +
                                "_check_classifier: check each setting's type"),
}


def _write(folder: Path, name: str, spec) -> Path:
    path = folder / f"{name}.yaml"
    if isinstance(spec, str):
        path.write_text(spec)
    else:
        cfg = copy.deepcopy(BASE)
        spec(cfg)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, cwd=cwd)


def _check_config(path: Path, capsys) -> tuple[int, str]:
    """``ltpipe check-config PATH`` through the CLI's own entry point (in this process)."""
    from ltpipe.cli import main

    try:
        rc = main(["check-config", str(path)])
    except BaseException as err:  # noqa: BLE001 - anything escaping main() is a traceback
        pytest.fail(f"check-config raised {type(err).__name__}: {err}")
    return rc, capsys.readouterr().err


def _assert_refused(rc: int, err: str, fragments: list[str]) -> None:
    assert rc == 2, f"accepted (rc {rc}):\n{err}"
    assert err.startswith("ltpipe check-config: error:") and "Traceback" not in err, err
    for frag in fragments:
        assert frag in err, f"{frag!r} not in:\n{err}"


def test_base_config_is_accepted(tmp_path, capsys):
    assert _check_config(_write(tmp_path, "base", BASE_YAML), capsys) == (0, "")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bad_config_refused_by_check_config(tmp_path, capsys, name):
    _assert_refused(*_check_config(_write(tmp_path, name, CONFIGS[name][0]), capsys),
                    CONFIGS[name][1])


@pytest.mark.parametrize("name", sorted(CONFIGS_LATE))
def test_bad_setting_refused_before_any_job(tmp_path, capsys, name):
    _assert_refused(*_check_config(_write(tmp_path, name, CONFIGS_LATE[name][0]), capsys),
                    CONFIGS_LATE[name][1])


SUBPROCESS_CASES = ["yaml_syntax", "dataset_unknown_key", "repeated_sweep", "loss_setting_typo"]


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
def test_bad_configs_refused_by_the_ltpipe_command(tmp_path):
    """The same through ``python -m ltpipe check-config`` subprocesses (a few of them)."""
    paths = [_write(tmp_path, name, CONFIGS[name][0]) for name in SUBPROCESS_CASES]
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda p: _run([PY, "-m", "ltpipe", "check-config", str(p)]),
                              paths))
    for name, proc in zip(SUBPROCESS_CASES, procs):
        _assert_refused(proc.returncode, proc.stderr, CONFIGS[name][1])
        assert proc.stdout == "", name


SNAKEMAKE_CASES = ["duplicate_classifier", "imbalance_below_one", "ffn_weight_negative",
                   "classifier_backbone_case", "empty_sweep", "top_level_typo",
                   "h2t_rho_out_of_range"]


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
def test_bad_configs_stop_snakemake_before_any_job(tmp_path):
    """A real (not dry) Snakemake run on each config: refused, nothing run, message shown."""
    def one(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        work = tmp_path / name
        work.mkdir()
        cfg = _write(work, "config", CONFIGS[name][0])
        return work, _run([PY, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
                           "--configfile", str(cfg), "--cores", "1"])

    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(SNAKEMAKE_CASES, pool.map(one, SNAKEMAKE_CASES)))
    for name, (work, proc) in results.items():
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0, (name, text[-2000:])
        assert not (work / "results").exists(), f"{name}: a job ran"
        for frag in CONFIGS[name][1]:
            assert frag in text, f"{name}: {frag!r} not in:\n{text[-3000:]}"


# ------------------------------------------------------------- bad data at the first touch
def _split_cmd(settings: dict, out: Path, imb: str = "native") -> list[str]:
    return [PY, "-m", "ltpipe", "split", "--dataset", "d", "--settings", json.dumps(settings),
            "--imbalance-factor", imb, "--seed", "0", "--out", str(out)]


def _lists(folder: Path, train: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ImageNet_LT_train.txt").write_text("\n".join(train) + "\n")
    (folder / "ImageNet_LT_val.txt").write_text("v0.png 0\nv1.png 1\nv2.png 2\n")
    (folder / "ImageNet_LT_test.txt").write_text("t0.png 0\nt1.png 1\nt2.png 2\n")
    return folder


GOOD_TRAIN = [f"tr{c}_{i}.png {c}" for c in range(3) for i in range(4 - c)]
LIST_CASES = {  # id -> (train list lines or raw bytes, fragments of the message)
    "three_fields": (GOOD_TRAIN + ["a.png 1 2"], ["ImageNet_LT_train.txt:10:", "two fields"]),
    "label_out_of_range": (GOOD_TRAIN[:3] + ["a.png 3"],
                           ["ImageNet_LT_train.txt:4:", "label 3 is outside [0, 3)"]),
    "label_not_integer": (["a.png one"], ["ImageNet_LT_train.txt:1:", "'one' is not an integer"]),
    "empty_list": ([""], ["has no entries"]),
}


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
def test_bad_list_files_refused_at_split(tmp_path):
    def one(name):
        lists = _lists(tmp_path / name, LIST_CASES[name][0])
        cfg = {"source": "imagenet_lt", "root": str(tmp_path / "img"), "lists": str(lists),
               "num_classes": 3}
        return _run(_split_cmd(cfg, tmp_path / name / "split.npz"))

    missing = {"source": "imagenet_lt", "root": str(tmp_path), "lists": str(tmp_path / "none"),
               "num_classes": 3}
    cases = sorted(LIST_CASES)
    with ThreadPoolExecutor(3) as pool:
        procs = dict(zip(cases, pool.map(one, cases)))
        procs["missing"] = pool.submit(_run, _split_cmd(missing, tmp_path / "m.npz")).result()
    frags = {**{k: v[1] for k, v in LIST_CASES.items()}, "missing": ["not found", "none"]}
    for name, proc in procs.items():
        assert proc.returncode == 2, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        assert proc.stderr.startswith("ltpipe split: error:"), (name, proc.stderr)
        for frag in frags[name]:
            assert frag in proc.stderr, (name, frag, proc.stderr)
        assert not (tmp_path / name / "split.npz").exists()


def test_list_file_not_utf8_refused_readably(tmp_path):
    lists = tmp_path / "lists"
    _lists(lists, GOOD_TRAIN)
    (lists / "ImageNet_LT_train.txt").write_bytes(b"a.png 0\n\xff\xfe.png 1\n")
    cfg = {"source": "imagenet_lt", "root": str(tmp_path), "lists": str(lists), "num_classes": 3}
    proc = _run(_split_cmd(cfg, tmp_path / "split.npz"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "ImageNet_LT_train.txt" in proc.stderr


@pytest.fixture(scope="module")
def corrupt_image_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``ltpipe split`` + ``ltpipe train`` on a list-file data set with one corrupt image."""
    from PIL import Image

    tmp_path = tmp_path_factory.mktemp("corrupt_image")
    img, lists = tmp_path / "img", tmp_path / "lists"
    img.mkdir()
    rng = np.random.default_rng(0)
    for line in GOOD_TRAIN + ["v0.png 0", "v1.png 1", "v2.png 2", "t0.png 0", "t1.png 1",
                              "t2.png 2"]:
        name = line.split()[0]
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(img / name)
    (img / "tr1_2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _lists(lists, GOOD_TRAIN)
    cfg = {"source": "imagenet_lt", "root": str(img), "lists": str(lists), "num_classes": 3}
    proc = _run(_split_cmd(cfg, tmp_path / "split.npz"))
    assert proc.returncode == 0, proc.stderr  # the split does not decode images
    recipe = {"architecture": "resnet8", "architecture_kwargs": {"widths": [4, 4, 8]}, "epochs": 1,
              "warmup_epochs": 0, "batch_size": 4, "image_size": 8, "loader_workers": 0,
              "final_eval": False}
    return tmp_path, _run([PY, "-m", "ltpipe", "train", "--split", str(tmp_path / "split.npz"),
                           "--recipe", json.dumps(recipe), "--device", "cpu", "--threads", "1",
                           "--out", str(tmp_path / "model.pt")])


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
def test_corrupt_image_refused_at_training(corrupt_image_run):
    """The train job (first decode) fails with status 2; the last line names the file."""
    tmp_path, proc = corrupt_image_run
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "tr1_2.png is corrupt or not an image" in last and "replace" in last, last
    assert not (tmp_path / "model.pt").exists()
    assert not list(tmp_path.glob("model.pt*"))


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
def test_corrupt_image_error_is_one_line(corrupt_image_run):
    _, proc = corrupt_image_run
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ltpipe train:")]
    assert lines and "tr1_2.png" in lines[-1]


@pytest.mark.slow  # subprocesses: the slow tier (docs/testing.md)
def test_missing_cifar_root_refused_at_split_job(tmp_path):
    """Snakemake: the config is valid, the split job (first touch) fails naming the folder."""
    cfg = copy.deepcopy(BASE)
    cfg["datasets"] = {"c10": {"source": "cifar10", "root": str(tmp_path / "no_such_folder"),
                               "imbalance_factors": [100]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _run([PY, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                 "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"])
    assert proc.returncode != 0
    log = tmp_path / "results" / "logs" / "split" / "c10_if100_s0.log"
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.startswith("ltpipe split: error:") and "no_such_folder" in text, text
    assert not list((tmp_path / "results").rglob("model.pt"))
    assert not (tmp_path / "results" / "c10" / "if100" / "s0" / "split.npz").exists()


def test_runtime_settings_from_the_environment(monkeypatch):
    """``ltpipe train --runtime-of NAME`` reads NAME's speed-only keys from the variable the
    Snakefile sets; a broken variable is refused naming it, an absent one means defaults."""
    from ltpipe.runtime import DEVICE_ENV, classify_device, export
    from ltpipe.runtime import RECIPES_ENV as RUNTIME_ENV
    from ltpipe.runtime import recipe_runtime as _runtime_settings
    from ltpipe.utils import LtpipeError
    from ltpipe.workflow.config import recipe_settings

    cfg = copy.deepcopy(BASE)
    cfg["backbones"]["ce"].update(compile=True, loader_workers=2, epochs=3)
    cfg["backbones"]["kps"] = {"architecture": "resnet8", "loss": "kps"}
    cfg["classify_device"] = "auto"
    env: dict[str, str] = {}
    export(cfg, env)
    assert json.loads(env[RUNTIME_ENV]) == {"ce": {"compile": True, "loader_workers": 2},
                                            "kps": {}}
    assert env[DEVICE_ENV] == "auto"
    assert "compile" not in recipe_settings(cfg, "ce") and recipe_settings(cfg, "ce")["epochs"] == 3
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert _runtime_settings("ce") == {} and classify_device() == "cpu"
    monkeypatch.setenv(RUNTIME_ENV, env[RUNTIME_ENV])
    assert _runtime_settings("ce") == {"compile": True, "loader_workers": 2}
    assert _runtime_settings("other") == {}
    monkeypatch.setenv(RUNTIME_ENV, "{not json")
    with pytest.raises(LtpipeError, match=f"{RUNTIME_ENV} is not JSON.*unset it"):
        _runtime_settings("ce")
    monkeypatch.setenv(RUNTIME_ENV, json.dumps({"ce": {"epochs": 5}}))
    with pytest.raises(LtpipeError, match=r"expected a dict with keys among \['checkpoint_every'"):
        _runtime_settings("ce")  # a result-deciding key must come through params
