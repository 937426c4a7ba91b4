"""The whole DAG of the embedded default, end to end, with the real Snakemake; rerun rules; lint.

One full run happens once per test session (module fixture) in a temporary directory; the rerun
checks are dry runs against it after editing a copy of the config.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dryrun import job_counts

ROOT = Path(__file__).resolve().parent.parent

# Every test here runs Snakemake or trains in a subprocess: the slow tier (docs/testing.md).
pytestmark = pytest.mark.slow
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str, config: Path | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    if config is not None:
        cmd += ["--configfile", str(config)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count of a dry run ({} when nothing is to be done)."""
    return job_counts(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("default_run")
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")
    snakemake(work, "--cores", "2", config=work / "config.yaml")
    return work


def test_default_run_produces_summary(default_run):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    with open(default_run / "results" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    from ltpipe.workflow.config import metric_targets

    assert len(rows) == len(metric_targets(cfg))
    assert {"dataset", "imbalance_factor", "seed", "backbone", "method", "params", "all",
            "many", "medium", "few"} <= set(rows[0])
    methods = {r["method"] for r in rows}
    assert {"joint", "crt", "tau_norm"} <= methods
    joint = [float(r["all"]) for r in rows if r["method"] == "joint"]
    assert min(joint) > 30.0, f"the digits backbone did not learn: {joint}"  # chance is 10 %
    md = (default_run / "results" / "summary.md").read_text()
    assert "| digits |" in md
    cache = default_run / "results" / "digits" / "if10" / "s0" / "ce" / "t0" / "cache.zarr"
    assert (cache / "manifest.json").exists()


def test_second_run_has_nothing_to_do(default_run):
    proc = snakemake(default_run, "-n", config=default_run / "config.yaml")
    assert planned_jobs(proc) == {}


def _edited(default_run: Path, edit) -> Path:
    cfg = yaml.safe_load((default_run / "config.yaml").read_text())
    edit(cfg)
    path = default_run / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


REPORT_RULES = {"summary", "compare", "all", "plot_perclass", "plot_sweep", "plot_wnorm_confusion",
                "plot_tsne"}


def _upstream_untouched(jobs: dict[str, int]) -> None:
    assert not {"split", "train", "dump"} & set(jobs), jobs
    assert set(jobs) <= REPORT_RULES | {"classify"}, jobs
    assert "summary" in jobs and "plot_tsne" not in jobs  # t-SNE reads only the caches


def test_classifier_setting_reruns_only_that_job(default_run):
    cfg_path = _edited(default_run, lambda c: c["classifiers"]["lws"].update(
        settings={"epochs": 3}))
    jobs = planned_jobs(snakemake(default_run, "-n", config=cfg_path))
    assert jobs.pop("classify") == 2  # lws on each of the two splits, nothing else
    _upstream_untouched(jobs)
    assert "plot_sweep" not in jobs  # lws has no sweep


def test_composed_entries_run_and_name_their_chain(default_run):
    """The default's composed entries (reads: <entry>) ran: one row per own point and input
    point, named by the chain of methods, on the backbones their inputs read."""
    with open(default_run / "results" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    by = {}
    for r in rows:
        by.setdefault(r["classifier"], []).append(r)
    assert {r["method"] for r in by["tau_norm_crt"]} == {"tau_norm(crt)"}
    assert sorted(r["point"] for r in by["tau_norm_crt"]) == ["tau=0.5", "tau=0.5", "tau=1.0",
                                                              "tau=1.0"]
    assert {(r["method"], r["backbone"]) for r in by["crt_ffn"]} == {("crt(ffn)", "kps+ce")}
    assert {r["point"] for r in by["crt_ffn"]} == {"default_on_w1=0.5", "default_on_w1=0.9"}
    assert {r["method"] for r in by["ensemble_crt_bwlm"]} == {"ensemble(crt,bwlm)"}
    job = (default_run / "results" / "digits" / "if10" / "s0" / "cls" / "crt_ffn" / "t0"
           / "default_on_w1=0.5")
    import json

    prov = json.loads((job / "metrics.json").read_text())["provenance"]["upstream"]
    assert prov[0]["classifier"] == "ffn" and prov[0]["point"] == "w1=0.5"
    assert prov[0]["path"].endswith("cls/ffn/t0/w1=0.5/logits.npz")


def test_an_input_entrys_setting_reruns_the_entries_composed_on_it(default_run):
    """Changing crt reruns crt and every job that reads it (tau_norm_crt, ensemble_crt_bwlm),
    nothing else; changing a composed entry's own setting reruns only its jobs."""
    cfg_path = _edited(default_run, lambda c: c["classifiers"]["crt"].update(
        settings={"epochs": 3}))
    jobs = planned_jobs(snakemake(default_run, "-n", config=cfg_path))
    assert jobs.pop("classify") == 2 * (1 + 2 + 2)  # per split: crt, 2 tau_norm_crt, 2 ensembles
    _upstream_untouched(jobs)
    cfg_path = _edited(default_run, lambda c: c["classifiers"]["tau_norm_crt"]["settings"]
                       .update(tau=[0.5]))
    assert planned_jobs(snakemake(default_run, "-n", config=cfg_path)).get("classify") is None
    cfg_path = _edited(default_run, lambda c: c["classifiers"]["crt_ffn"]["settings"]
                       .update(epochs=3))
    assert planned_jobs(snakemake(default_run, "-n", config=cfg_path))["classify"] == 4


def test_a_composition_whose_types_do_not_fit_stops_before_any_job(default_run):
    def edit(c):
        c["classifiers"]["la_ncm"] = {"method": "logit_adjust", "reads": "ncm"}
        c["classifiers"]["fsa_ffn"] = {"method": "fsa", "reads": "ffn"}

    proc = snakemake(default_run, "-n", config=_edited(default_run, edit), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "classifiers.la_ncm: reads: 'ncm' (method 'ncm') saves no head" in out
    assert "classifiers.fsa_ffn: method 'fsa' reads ['cam', 'fmap']" in out


def test_classify_device_reruns_nothing_and_sets_gpu_and_memory(default_run):
    """classify_device is a runtime setting (nothing reruns); with auto the gradient-trained
    methods ask for gpu=1 and the closed-form ones for none; mem_mb comes from the caches."""
    cfg_path = _edited(default_run, lambda c: c.update(classify_device="auto"))
    assert planned_jobs(snakemake(default_run, "-n", config=cfg_path)) == {}
    proc = snakemake(default_run, "-n", "--forcerun", "classify", config=cfg_path)
    blocks = (proc.stdout + proc.stderr).split("rule classify:")[1:]
    gpus = {}
    for block in blocks:
        clf = block.split("classifier=")[1].split(",")[0]
        resources = block.split("resources:")[1].splitlines()[0]
        gpus[clf] = "gpu=1" in resources
        assert "mem_mb=4000" not in resources, resources  # computed, not the fallback
    assert gpus["crt"] and gpus["fsa"] and not gpus["joint"] and not gpus["tau_norm"], gpus


def test_new_sweep_point_adds_one_job_per_split(default_run):
    cfg_path = _edited(default_run, lambda c: c["classifiers"]["tau_norm"]["settings"]["tau"]
                       .append(2.0))
    jobs = planned_jobs(snakemake(default_run, "-n", config=cfg_path))
    assert jobs.pop("classify") == 2
    _upstream_untouched(jobs)
    assert jobs["plot_sweep"] == 2  # the tau-norm sweep plot of each split


def test_recipe_setting_reruns_backbone_and_what_it_feeds(default_run):
    cfg_path = _edited(default_run, lambda c: c["backbones"]["ce"].update(epochs=29))
    cfg = yaml.safe_load(cfg_path.read_text())
    from ltpipe.workflow.compose import expand_compositions
    from ltpipe.workflow.config import metric_targets

    expand_compositions(cfg)  # composed entries read their inputs' backbones
    reading_ce = [t for t in metric_targets(cfg)
                  if "ce" in cfg["classifiers"][t.split("/cls/")[1].split("/")[0]]["backbones"]]
    jobs = planned_jobs(snakemake(default_run, "-n", config=cfg_path))
    assert jobs.pop("train") == 2 and jobs.pop("dump") == 2  # ce on two splits; kps untouched
    assert jobs.pop("classify") == len(reading_ce) < len(metric_targets(cfg))
    assert "split" not in jobs and set(jobs) <= REPORT_RULES


def test_speed_only_recipe_keys_do_not_retrain(default_run):
    """compile, deterministic, loader_workers, checkpoint_every and eval_batch_size change how
    fast a run goes (or its rounding), not what it computes: they are not params, so a finished
    backbone stays as it is."""
    cfg_path = _edited(default_run, lambda c: c["backbones"]["ce"].update(
        compile=True, deterministic=True, loader_workers=1, checkpoint_every=5,
        eval_batch_size=64))
    proc = snakemake(default_run, "-n", config=cfg_path)
    assert planned_jobs(proc) == {}, proc.stdout[-3000:]
    # ... and the train jobs that did run got their speed-only keys from the environment
    logs = sorted((default_run / "results" / "logs" / "train").glob("*_ce_t0.log"))
    assert len(logs) == 2
    for log in logs:
        assert "speed-only settings of 'ce' from the environment" in log.read_text()


def test_val_per_class_zero_is_the_default_split(default_run):
    """``val_per_class: 0`` (config.yaml writes it out) and no key at all are the same split:
    nothing reruns either way. Any other value rebuilds the split and all that it feeds."""
    assert yaml.safe_load((default_run / "config.yaml").read_text())["datasets"]["digits"][
        "val_per_class"] == 0
    cfg_path = _edited(default_run, lambda c: c["datasets"]["digits"].pop("val_per_class"))
    assert planned_jobs(snakemake(default_run, "-n", config=cfg_path)) == {}
    cfg_path = _edited(default_run, lambda c: c["datasets"]["digits"].update(val_per_class=5))
    jobs = planned_jobs(snakemake(default_run, "-n", config=cfg_path))
    assert jobs["split"] == 2 and jobs["train"] == 8 and jobs["dump"] == 8  # 4 recipes x 2 IFs
    cfg = yaml.safe_load(cfg_path.read_text())
    from ltpipe.workflow.config import metric_targets

    assert jobs["classify"] == len(metric_targets(cfg))


def test_bad_config_stops_before_any_job(default_run):
    cfg_path = _edited(default_run, lambda c: c["datasets"]["digits"].update(
        imbalance_factors=[0.5]))
    proc = snakemake(default_run, "-n", config=cfg_path, check=False)
    assert proc.returncode != 0
    assert "imbalance_factors" in proc.stderr + proc.stdout
    assert "give a number >= 1" in proc.stderr + proc.stdout


def test_job_side_snakemake_skips_the_torch_importing_check(tmp_path):
    """A cluster job runs Snakemake again on its node (``--mode remote``); the config check (no
    torch since it reads torch-free declarations, but it may load plug-ins) runs only in the main
    process, which the bad config below shows: the main process refuses it, a job-side process
    does not."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    env_args = ["-n", "--mode", "subprocess"]
    job_side = subprocess.run(
        [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), *env_args],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONPROFILEIMPORTTIME="1"))
    assert job_side.returncode == 0, job_side.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in job_side.stderr.splitlines()
                if line.startswith("import time:")]
    assert "ltpipe.workflow.config" in imported and "torch" not in imported
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    first = next(iter(cfg["backbones"]))
    cfg["backbones"][first]["loss"] = "no_such_loss"  # only check_config knows the losses
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    main = snakemake(tmp_path, "-n", config=tmp_path / "bad.yaml", check=False)
    assert main.returncode != 0 and "no_such_loss" in main.stdout + main.stderr
    assert snakemake(tmp_path, *env_args, config=tmp_path / "bad.yaml").returncode == 0


def test_lint_is_clean(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bundle_reproduces_without_retraining(default_run, tmp_path):
    """Stage-one artifacts packed on one machine let a fresh checkout rerun only stage two."""
    from ltpipe import bundle
    from ltpipe.utils import LtpipeError

    archive = tmp_path / "stage1.tar"
    index = bundle.pack(default_run / "results", archive)
    names = set(index["files"])
    assert any(n.endswith("model.pt") for n in names)
    assert any("cache.zarr/" in n for n in names)
    assert not any("/cls/" in n or n.startswith("logs/") or n.endswith(".ckpt") for n in names)

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(default_run / "config.yaml", fresh / "config.yaml")
    bundle.unpack(archive, fresh / "results")
    jobs = planned_jobs(snakemake(fresh, "-n", config=fresh / "config.yaml"))
    cfg = yaml.safe_load((fresh / "config.yaml").read_text())
    from ltpipe.workflow.config import metric_targets

    assert jobs.pop("classify") == len(metric_targets(cfg))
    assert not {"split", "train", "dump"} & set(jobs) and set(jobs) <= REPORT_RULES
    # unpacking again is a no-op; a file that differs is never silently overwritten
    assert bundle.unpack(archive, fresh / "results") == 0
    victim = next((fresh / "results").rglob("split.json"))
    victim.write_text("{}")
    with pytest.raises(LtpipeError, match="differs from the bundle"):
        bundle.unpack(archive, fresh / "results")
    assert victim.read_text() == "{}"


VAL_CONFIG = {
    "results": "results",
    "datasets": {"digits": {"source": "digits", "imbalance_factors": [10], "split_seeds": [0],
                            "shot_thresholds": {"many": 50, "few": 20}, "val_per_class": 10}},
    "backbones": {"ce": {"architecture": "resnet8", "architecture_kwargs": {"widths": [8, 8, 16]},
                         "epochs": 2, "batch_size": 32, "lr": 0.1, "warmup_epochs": 1,
                         "augment": "crop", "final_eval": False, "seeds": [0]}},
    "classifiers": {"joint": {"method": "joint", "backbones": ["ce"]},
                    "tau_norm": {"method": "tau_norm", "backbones": ["ce"],
                                 "settings": {"tau": [0.0, 1.0]}}},
}


def test_val_per_class_end_to_end(tmp_path):
    """digits with ``val_per_class: 10``: the split carries a balanced val part, the cache a
    ``val`` group, every classify job scores val, the summary marks the sweep point chosen on
    val; changing ``val_per_class`` rebuilds the split and everything downstream of it."""
    import json

    from ltpipe.cache import open_cache

    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(VAL_CONFIG))
    target = "results/summary.csv"
    planned = planned_jobs(snakemake(tmp_path, "-n", target, config=cfg_path))
    assert planned == {"split": 1, "train": 1, "dump": 1, "classify": 3, "summary": 1}
    snakemake(tmp_path, "--cores", "2", target, config=cfg_path)
    run = tmp_path / "results" / "digits" / "if10" / "s0"
    split = json.loads((run / "split.json").read_text())
    assert split["sizes"] == {"train": 579, "val": 100, "test": 300}
    assert split["class_counts"]["0"] == 138  # 144 - 6: class 0 has 4 unused images (< 10)
    with open_cache(run / "ce" / "t0" / "cache.zarr") as cache:
        labels = cache.read("val", "labels").tolist()
    assert sorted(labels) == sorted(list(range(10)) * 10)  # 10 per class
    metrics = json.loads((run / "cls" / "tau_norm" / "t0" / "tau=1.0" / "metrics.json")
                         .read_text())
    assert metrics["metrics"]["val"]["num_samples"] == 100
    with open(tmp_path / "results" / "summary.csv") as fh:
        rows = {r["point"] + r["classifier"]: r for r in csv.DictReader(fh)}
    sweep = [rows["tau=0.0tau_norm"], rows["tau=1.0tau_norm"]]
    assert sorted(r["chosen_on_val"] for r in sweep) == ["no", "yes"]
    best = max(sweep, key=lambda r: float(r["val_all"]))
    assert best["chosen_on_val"] == "yes" and rows["defaultjoint"]["chosen_on_val"] == ""
    assert "Sweep points chosen on validation" in (tmp_path / "results" / "summary.md").read_text()
    edited = yaml.safe_load(yaml.safe_dump(VAL_CONFIG))
    edited["datasets"]["digits"]["val_per_class"] = 6
    (tmp_path / "v6.yaml").write_text(yaml.safe_dump(edited))
    planned = planned_jobs(snakemake(tmp_path, "-n", target, config=tmp_path / "v6.yaml"))
    assert planned == {"split": 1, "train": 1, "dump": 1, "classify": 3, "summary": 1}


def test_jobs_import_this_checkouts_ltpipe(tmp_path):
    """A job runs the ltpipe of the Snakefile's checkout even where the Python would import
    another one first (here a broken package on PYTHONPATH, as another checkout's would be)."""
    other = tmp_path / "other"
    (other / "ltpipe").mkdir(parents=True)
    (other / "ltpipe" / "__init__.py").write_text("raise ImportError('the wrong ltpipe')\n")
    work = tmp_path / "work"
    work.mkdir()
    cmd = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile",
           str(ROOT / "config.yaml"), "--cores", "1", "results/digits/if10/s0/split.npz"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(other)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "results" / "digits" / "if10" / "s0" / "split.npz").is_file()
