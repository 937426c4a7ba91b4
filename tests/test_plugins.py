"""Plug-ins through entry points: refusals (a name clash with a built-in, an import error, a
missing declaration), made with fake distributions (a ``*.dist-info`` folder with METADATA and
entry_points.txt on sys.path is a real distribution to importlib.metadata); and, marked slow,
the example package examples/ltpipe-example-plugin installed into a temporary target and run by
the real Snakemake."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dryrun import job_counts

from ltpipe import classifiers, plugins
from ltpipe.utils import LtpipeError
from ltpipe.yamlfile import load_yaml_strict

ROOT = Path(__file__).resolve().parents[1]


def _clear() -> None:
    plugins.clear_cache()
    classifiers._lookup.cache_clear()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path to put fake distributions in; scans see it from the start."""
    monkeypatch.syspath_prepend(str(tmp_path))
    _clear()
    yield tmp_path
    _clear()


def fake_dist(site: Path, dist: str, entry_points: dict, modules: dict | None = None) -> None:
    """Distribution ``dist`` 0.1 with ``entry_points`` {group: {name: value}} and ``modules``
    {module name: source}."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in entry_points.items()))
    for name, source in (modules or {}).items():
        (site / f"{name}.py").write_text(source)
    _clear()


GOOD = ("from ltpipe.classifiers.spec import MethodSpec\n"
        "SPEC = MethodSpec(needs={'logits'}, torch=False)\n"
        "def run(inputs, settings, seed, device):\n"
        "    return {s: inputs[0].require(s, 'logits', 'x') for s in inputs[0].eval_splits()}\n")


@pytest.fixture
def cfg() -> dict:
    return load_yaml_strict(ROOT / "config.yaml")


def test_plugin_method_is_listed_and_used_like_a_builtin(site, cfg):
    from ltpipe.classifiers.memory import held_bytes
    from ltpipe.workflow.config import check_config

    fake_dist(site, "goodplug", {"ltpipe.methods": {"logit_copy": "goodplug_mod"}},
              {"goodplug_mod": GOOD})
    assert classifiers.method_names()[-1] == "logit_copy"
    assert classifiers.method_spec("logit_copy").needs == {"logits"}
    cfg["classifiers"]["copy"] = {"method": "logit_copy", "backbones": ["ce"]}
    check_config(cfg)
    cfg["classifiers"]["copy"]["settings"] = {"tau": [1.0]}
    with pytest.raises(LtpipeError, match=r"classifiers.copy: settings \(tau=1.0\).*'tau'"):
        check_config(cfg)

    class Reader:  # a cache's shapes only: labels, logits, head
        def groups(self):
            return ["head", "test", "train"]

        def shape(self, group, name):
            return {"labels": (5,), "logits": (5, 3), "weight": (3, 4)}[name]

        def dtype(self, group, name):
            import numpy as np
            return np.dtype(np.int64 if name == "labels" else np.float32)

    # by hand: labels 2 x 5 x 8, logits 2 x 5 x 3 x 4, test scores 2 x 5 x 3 x 4, head 2 x 12 x 4
    assert held_bytes("logit_copy", Reader()) == 80 + 120 + 120 + 96


def test_clash_with_a_builtin_is_refused_at_config_check(site, cfg):
    from ltpipe.workflow.config import check_config

    fake_dist(site, "clashplug", {"ltpipe.methods": {"crt": "clashplug_mod"},
                                  "ltpipe.architectures": {"resnet8": "clashplug_mod:f"}},
              {"clashplug_mod": GOOD})
    with pytest.raises(LtpipeError) as err:
        check_config(cfg)
    text = str(err.value)
    assert "entry point crt = clashplug_mod (group ltpipe.methods, distribution clashplug 0.1)" \
        ": 'crt' is the name of a built-in method; rename the entry point" in text
    assert "entry point resnet8 = clashplug_mod:f" in text and "built-in architecture" in text
    assert classifiers.method_names().count("crt") == 1
    assert classifiers.get_method("crt").__name__ == "ltpipe.classifiers.crt"


def test_import_error_is_refused_naming_the_distribution(site, cfg):
    from ltpipe.workflow.config import check_config

    fake_dist(site, "brokenplug", {"ltpipe.methods": {"broken": "brokenplug_missing"}})
    cfg["classifiers"]["b"] = {"method": "broken", "backbones": ["ce"]}
    with pytest.raises(LtpipeError, match=(
            r"classifiers.b: method: entry point broken = brokenplug_missing \(group "
            r"ltpipe.methods, distribution brokenplug 0.1\) fails to load: "
            r"ModuleNotFoundError: .*pip uninstall brokenplug")):
        check_config(cfg)


def test_missing_or_broken_declaration_is_refused(site, cfg):
    from ltpipe.workflow.config import check_config

    fake_dist(site, "nospec", {"ltpipe.methods": {"nospec": "nospec_mod",
                                                  "badspec": "badspec_mod"}},
              {"nospec_mod": "def run(inputs, settings, seed, device):\n    return {}\n",
               "badspec_mod": GOOD.replace("needs={'logits'}", "needs={'feats'}")})
    cfg["classifiers"]["n"] = {"method": "nospec", "backbones": ["ce"]}
    cfg["classifiers"]["m"] = {"method": "badspec", "backbones": ["ce"]}
    with pytest.raises(LtpipeError) as err:
        check_config(cfg)
    text = str(err.value)
    assert ("classifiers.n: method: classifier method 'nospec' (entry point nospec = nospec_mod "
            "(group ltpipe.methods, distribution nospec 0.1)) declares no SPEC") in text
    assert "classifiers.m: method: classifier method 'badspec'" in text
    assert "breaks the method contract: needs=['feats'] must be a non-empty subset" in text


def test_source_and_architecture_refusals(site):
    from ltpipe.models import check_model_kwargs, model_names

    fake_dist(site, "otherplug", {"ltpipe.sources": {"notasource": "otherplug_mod:NotASource"},
                                  "ltpipe.architectures": {"badarch": "otherplug_missing:f"}},
              {"otherplug_mod": "class NotASource:\n    num_classes = 3\n"})
    problems = plugins.plugin_problems({"datasets": {"d": {"source": "notasource"}}})
    assert problems == ["source 'notasource': entry point notasource = otherplug_mod:NotASource "
                        "(group ltpipe.sources, distribution otherplug 0.1) is not a subclass "
                        "of ltpipe.data.sources.Source; point the entry point at one (e.g. a "
                        "subclass of ArraySource)"]
    assert "badarch" in model_names()
    with pytest.raises(LtpipeError, match="badarch = otherplug_missing:f .* fails to load"):
        check_model_kwargs("badarch", {})


def test_a_name_two_distributions_declare_is_refused(site):
    fake_dist(site, "twin_a", {"ltpipe.methods": {"twin": "twin_a_mod"}}, {"twin_a_mod": GOOD})
    fake_dist(site, "twin_b", {"ltpipe.methods": {"twin": "twin_b_mod"}}, {"twin_b_mod": GOOD})
    (problem,) = classifiers.plugin_problems()
    assert "plug-in method 'twin' is declared twice" in problem
    assert "distribution twin_a 0.1" in problem and "distribution twin_b 0.1" in problem
    with pytest.raises(LtpipeError, match="declared twice"):
        classifiers.method_spec("twin")


# ---------------------------------------------------------------- the example package, end to end

EXAMPLE_CONFIG = {
    "results": "results",
    "datasets": {"steps": {"source": "digits_step", "imbalance_factors": [10], "split_seeds": [0],
                           "shot_thresholds": {"many": 50, "few": 20}}},
    "backbones": {"cnn": {"architecture": "tiny_cnn",
                          "architecture_kwargs": {"widths": [8, 8, 16], "strides": [1, 1, 2]},
                          "epochs": 2, "batch_size": 32, "lr": 0.1, "warmup_epochs": 1,
                          "augment": "crop", "final_eval": False, "seeds": [0]}},
    "classifiers": {"joint": {"method": "joint", "backbones": ["cnn"]},
                    "bsr": {"method": "bsr", "backbones": ["cnn"],
                            "settings": {"epochs": 2, "prior_power": [0.0, 1.0]}}},
}


@pytest.mark.slow
def test_example_plugin_end_to_end(tmp_path):
    """examples/ltpipe-example-plugin installed into a target folder that only PYTHONPATH
    reaches: its source, architecture and method run in the real Snakemake's jobs, its rows
    reach the summary, and a change of one of its settings reruns only its jobs."""
    package = tmp_path / "pkg"
    shutil.copytree(ROOT / "examples" / "ltpipe-example-plugin", package)
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(package)],
                   check=True, capture_output=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(target)]))

    def snakemake(config: dict, *args: str) -> str:
        path = work / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                               "-d", str(work), "results/summary.csv", *args,
                               "--configfile", str(path)],
                              capture_output=True, text=True, env=env, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout + proc.stderr

    assert job_counts(snakemake(EXAMPLE_CONFIG, "-n")) == {
        "split": 1, "train": 1, "dump": 1, "classify": 3, "summary": 1}
    snakemake(EXAMPLE_CONFIG, "--cores", "2")
    run = work / "results" / "steps" / "if10" / "s0"
    split = json.loads((run / "split.json").read_text())
    # step profile by hand: 174 - 30 test = 144 per class left; classes 0-4 keep 144,
    # classes 5-9 int(144 / 10) = 14
    assert split["class_counts"] == {str(c): 144 if c < 5 else 14 for c in range(10)}
    with open(work / "results" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    bsr = sorted(r["point"] for r in rows if r["method"] == "bsr")
    assert bsr == ["prior_power=0.0", "prior_power=1.0"], rows
    assert all(r["dataset"] == "steps" and float(r["all"]) >= 0 for r in rows)
    edited = json.loads(json.dumps(EXAMPLE_CONFIG))
    edited["classifiers"]["bsr"]["settings"]["epochs"] = 3
    assert job_counts(snakemake(edited, "-n")) == {"classify": 2, "summary": 1}
    edited = json.loads(json.dumps(EXAMPLE_CONFIG))
    edited["classifiers"]["bsr"]["settings"]["prior_power"] = [0.0, 1.0, 0.5]
    assert job_counts(snakemake(edited, "-n")) == {"classify": 1, "summary": 1}


def test_the_warm_worker_preloads_plugin_methods_and_survives_a_broken_one(site):
    """The classify worker imports every method a job may name, plug-ins included (looked up as
    a job does); a plug-in that fails to load is left to the job that names it."""
    fake_dist(site, "goodplug", {"ltpipe.methods": {"goodm": "goodplug_mod"}},
              {"goodplug_mod": GOOD})
    fake_dist(site, "brokenplug", {"ltpipe.methods": {"broken": "brokenplug_missing"}})
    code = ("import sys; from ltpipe.worker import _preload; _preload(); "
            "print('goodplug_mod' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [str(site), str(ROOT)])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
