"""Report stage: plot data (known answers), PNGs from a hand-made run, the comparison with the
published numbers, the published-results file, plot targets, and `snakemake --report` (slow)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from ltpipe.cli import main as ltpipe_main
from ltpipe.report import plotdata as pdata
from ltpipe.report import plots
from ltpipe.report.published import compare, load_published, write_comparison
from ltpipe.utils import LtpipeError, write_json
from ltpipe.workflow.config import load_yaml_strict, validate_schema
from ltpipe.workflow.targets import (
    group_inputs,
    group_metrics,
    plot_targets,
    run_traits,
    sweep_metrics,
    tsne_args,
    tsne_inputs,
)

ROOT = Path(__file__).resolve().parent.parent
COUNTS = [5, 40, 10, 20]      # class 1 is the largest, then 3, 2, 0
SHOTS = [2, 0, 1, 0]
C, D = 4, 3


# ------------------------------------------------------------------ a hand-made finished run
def _cache(path: Path, seed: int) -> np.ndarray:
    from ltpipe.cache import CacheWriter

    rng = np.random.RandomState(seed)
    weight = rng.randn(C, D).astype(np.float32) + 1.0
    labels = np.repeat(np.arange(C), 6)
    w = CacheWriter(path, backend="zarr")
    w.write("test", "pooled", (rng.randn(len(labels), D) + labels[:, None]).astype(np.float32))
    w.write("test", "labels", labels.astype(np.int64))
    w.write("head", "weight", weight)
    w.write("meta", "class_counts", np.asarray(COUNTS, dtype=np.int64))
    w.write("meta", "shot_groups", np.asarray(SHOTS, dtype=np.int8))
    w.commit({})
    return weight


def _job(root: Path, clf: str, method: str, point: str, seed: int, per_class: list[float],
         settings: dict, head: np.ndarray | None = None) -> Path:
    out = root / "s0" / "cls" / clf / f"t{seed}" / point
    out.mkdir(parents=True)
    labels = np.repeat(np.arange(C), 6)
    logits = np.eye(C)[np.where(np.arange(len(labels)) % 6 == 0, (labels + 1) % C, labels)]
    arrays = {"test": logits.astype(np.float32)}
    if head is not None:
        arrays["head_weight"] = head
    np.savez(out / "logits.npz", **arrays)
    acc = np.asarray(per_class, dtype=float)
    shots = np.asarray(SHOTS)
    write_json(out / "metrics.json", {
        "dataset": "toy", "imbalance_factor": "8", "split_seed": 0, "seed": seed,
        "backbones": ["ce"], "classifier": clf, "method": method, "point": point,
        "settings": settings, "class_counts": COUNTS, "shot_groups": SHOTS,
        "metrics": {"test": {"all": float(acc.mean()), "per_class": acc.tolist(),
                             "many": float(acc[shots == 0].mean()),
                             "medium": float(acc[shots == 1].mean()),
                             "few": float(acc[shots == 2].mean()), "num_samples": 24}}})
    return out / "metrics.json"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("toy") / "toy" / "if8"
    caches, heads, metrics = [], {}, []
    for seed in (0, 1):
        cache = root / "s0" / "ce" / f"t{seed}" / "cache.zarr"
        heads[seed] = _cache(cache, seed)
        caches.append(str(cache))
        metrics.append(_job(root, "joint", "joint", "default", seed, [0, 100, 50, 90], {}))
        metrics.append(_job(root, "crt", "crt", "default", seed, [40 + seed * 10, 90, 60, 80], {},
                            head=heads[seed] * (seed + 1)))
        for tau, acc in ((0.0, [0, 100, 40, 90]), (1.0, [30, 80, 70, 70 + seed * 10])):
            metrics.append(_job(root, "tau_norm", "tau_norm", f"tau={tau}", seed, acc,
                                {"tau": tau}))
    return {"root": root, "caches": caches, "heads": heads, "metrics": [str(m) for m in metrics]}


def _assert_png(path: Path, min_side: int = 300, max_side: int = 4000) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert min_side <= w <= max_side and min_side <= h <= max_side, (path, im.size)
    assert path.stat().st_size > 5000, f"{path} is suspiciously small"


# ----------------------------------------------------------------------- plot data (no drawing)
def test_class_order_by_count_known_answer():
    assert pdata.class_order(np.array(COUNTS)).tolist() == [1, 3, 2, 0]
    assert pdata.class_order(np.array([3, 7, 3, 7])).tolist() == [1, 3, 0, 2]  # ties: index


def test_per_class_mean_in_class_size_order(toy):
    runs = pdata.load_runs(toy["metrics"])
    crt = pdata.entries(runs)[("crt", "default")]
    order = pdata.class_order(pdata.mean_counts(runs))
    # class 0 (5 images) is last; its accuracy is (40 + 50) / 2 over the two seeds
    assert pdata.mean_per_class(crt)[order].tolist() == [90.0, 80.0, 60.0, 45.0]


def test_sweep_axis_and_curves_known_answer(toy):
    runs = [r for r in pdata.load_runs(toy["metrics"]) if r.classifier == "tau_norm"]
    name, axis, numeric = pdata.sweep_axis(runs)
    assert (name, numeric) == ("tau", True)
    assert axis == [("tau=0.0", 0.0), ("tau=1.0", 1.0)]
    curves = pdata.sweep_curves(runs)
    # all at tau=1: seeds give mean([30, 80, 70, 70]) = 62.5 and mean([30, 80, 70, 80]) = 65
    np.testing.assert_allclose(curves["all"][0], [57.5, 63.75])
    np.testing.assert_allclose(curves["all"][1], [0.0, np.std([62.5, 65.0], ddof=1)])
    np.testing.assert_allclose(curves["few"][0], [0.0, 30.0])


def test_weight_norms_known_answer(toy):
    runs = pdata.load_runs(toy["metrics"])
    stage_one = pdata.stage_one_norms(toy["caches"])
    want = np.mean([np.sqrt((toy["heads"][s].astype(float) ** 2).sum(1)) for s in (0, 1)], 0)
    np.testing.assert_allclose(stage_one["ce"], want, rtol=1e-6)
    methods = pdata.method_norms(runs)
    assert list(methods) == ["crt"]  # joint and tau_norm saved no head_weight
    crt = [np.sqrt(((toy["heads"][s].astype(float) * (s + 1)) ** 2).sum(1)) for s in (0, 1)]
    np.testing.assert_allclose(methods["crt"], np.mean(crt, 0), rtol=1e-6)
    # the plot says why tau_norm has no curve (by design), and flags a trained head left unsaved
    notes = pdata.missing_head_notes(runs, set(methods))
    assert notes == ["tau_norm (tau=0.0), tau_norm (tau=1.0): " + pdata.NO_HEAD_WEIGHT["tau_norm"]]
    assert pdata.missing_head_notes(runs, set()) == [
        "crt: its logits.npz holds no head_weight (rerun its job to save one)", notes[0]]


def test_confusion_known_answer(toy):
    runs = [r for r in pdata.load_runs(toy["metrics"]) if r.classifier == "joint"]
    cm = pdata.confusion(runs, toy["caches"])
    # one of each class's 6 test images is predicted as the next class, on both seeds
    want = np.eye(C) * 500 / 6 + np.roll(np.eye(C), 1, axis=1) * 100 / 6
    np.testing.assert_allclose(cm, want)
    assert pdata.parse_cache_path("r/toy/if8/s3/ce_mix/t7/cache.zarr") == (3, "ce_mix", 7)
    assert pdata.parse_cache_path("toy/if8/s3/ce/t0/cache.h5/") == (3, "ce", 0)
    for bad in ("r/cache.zarr", "r/toy/if8/sX/ce/t0/cache.zarr", "r/toy/if8/s3/ce/t0/c.zarr"):
        with pytest.raises(LtpipeError, match="not a cache path"):
            pdata.parse_cache_path(bad)


# -------------------------------------------------------------------------------- the PNGs
@pytest.mark.slow  # 16 s in the fast-tier run of docs/testing.md
def test_every_plot_is_a_sensible_png(toy, tmp_path):
    m, c = toy["metrics"], toy["caches"]
    plots.plot_per_class(m, tmp_path / "perclass.png")
    plots.plot_sweep(m, tmp_path / "sweep.png", "tau_norm")
    plots.plot_weight_norms(m, c, tmp_path / "wnorm.png")
    plots.plot_confusion(m, c, tmp_path / "confusion.png")
    assert ltpipe_main(["plot", "tsne", "--caches", c[0], "--out", str(tmp_path / "tsne.png"),
                        "--max-points", "20", "--title", "toy"]) == 0
    assert ltpipe_main(["plot", "tsne", "--caches", *c, "--ffn-settings",
                        '{"w1": 0.9, "variant": "reference"}', "--out",
                        str(tmp_path / "fused.png")]) == 0
    for name in ("perclass", "sweep", "wnorm", "confusion", "tsne", "fused"):
        _assert_png(tmp_path / f"{name}.png")


def test_one_command_lists_every_plot_kind():
    proc = subprocess.run([sys.executable, "-m", "ltpipe", "plot", "--help"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert "{perclass,sweep,wnorm,confusion,tsne}" in proc.stdout, proc.stdout


def test_sweep_plot_names_a_missing_classifier(toy, tmp_path):
    assert ltpipe_main(["plot", "sweep", "--classifier", "lws", "--metrics", *toy["metrics"],
                        "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------- published numbers, compare
PUBLISHED = ROOT / "workflow" / "published_results.yaml"


def test_published_file_parses_and_every_entry_has_a_source():
    entries = load_published(PUBLISHED)
    assert len(entries) >= 30
    for e in entries:
        assert e["paper"] and e["table"] and e["setting"], e
    by = {(e["label"], e["dataset"], e["imbalance_factor"]): e["top1"] for e in entries}
    # spot checks against docs/methods.md#published-numbers
    assert by[("FFN", "cifar100", "100")] == 47.51
    assert by[("CE", "cifar100", "200")] == 34.84
    assert by[("KPS", "cifar10", "50")] == 83.91
    assert by[("AFA + cRT", "imagenet_lt", "native")] == 52.6
    assert ("H2T", "cifar100", "10") not in by  # not published ("-")


def test_published_file_rejects_an_unknown_source(tmp_path):
    doc = yaml.safe_load(PUBLISHED.read_text())
    doc["results"][0]["source"] = "nowhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(LtpipeError, match="nowhere"):
        load_published(bad)


TRAITS = {"datasets": {"c100": "cifar100"},
          "backbones": {"ce": {"architecture": "resnet32", "loss": "ce", "mixup": False,
                               "afa": False},
                        "kps": {"architecture": "resnet32", "loss": "kps", "mixup": True,
                                "afa": False},
                        "ce_r18": {"architecture": "resnet18_cifar", "loss": "ce", "mixup": False,
                                   "afa": False}}}


def _row(backbone, classifier, method, seed, acc, imb="100", point="default"):
    return {"dataset": "c100", "imbalance_factor": imb, "split_seed": 0, "seed": seed,
            "backbone": backbone, "classifier": classifier, "method": method, "point": point,
            "params": "", "all": acc, "many": None, "medium": None, "few": None}


def test_comparison_puts_published_beside_matching_run(tmp_path):
    rows = [_row("ce", "joint", "joint", 0, 40.0), _row("ce", "joint", "joint", 1, 42.0),
            _row("kps", "joint", "joint", 0, 45.0, imb="50"),
            _row("ce", "crt", "crt", 0, 50.0)]
    summary = tmp_path / "summary.csv"
    with open(summary, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = write_comparison(PUBLISHED, summary, TRAITS, tmp_path / "cmp.csv", tmp_path / "cmp.md")
    by = {(r["label"], r["imbalance_factor"]): r for r in table if r["dataset"] == "cifar100"}
    ce = by[("CE", "100")]
    assert (ce["published"], ce["ours"], ce["runs"]) == (38.43, 41.0, 2)
    assert ce["ours_std"] == pytest.approx(np.std([40, 42], ddof=1))
    assert ce["difference"] == pytest.approx(41.0 - 38.43)
    assert by[("KPS", "50")]["ours"] == 45.0
    assert by[("KPS", "100")]["ours"] == "not run"        # KPS ran at IF50 only
    assert by[("LDAM-DRW", "100")]["ours"] == "not run"   # loss ldam: our joint runs are ce / kps
    assert by[("FSA", "100")]["ours"] == "not run"
    md = (tmp_path / "cmp.md").read_text()
    # the Markdown lists matched rows only, and says in one line what it could not match and why
    assert not [line for line in md.splitlines() if line.startswith("|") and "not run" in line]
    unmatched = next(line for line in md.splitlines() if line.startswith("Not matched:"))
    assert "at imbalance factors it did not run (cifar100 IF 10, cifar100 IF 200)" in unmatched
    assert "on data sets this run does not have (" in unmatched
    assert "LDAM-DRW (cifar100 IF 100, resnet32)" in unmatched
    # FSA on ResNet-32 is not FSA's published setting; on the CIFAR ResNet-18 it is.
    rows += [_row("ce", "fsa_ce", "fsa", 0, 44.0), _row("ce_r18", "fsa", "fsa", 0, 47.0)]
    with open(summary, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = write_comparison(PUBLISHED, summary, TRAITS, tmp_path / "cmp2.csv",
                             tmp_path / "cmp2.md")
    fsa = [r for r in table if r["label"] == "FSA" and r["imbalance_factor"] == "100"]
    assert [(r["architecture"], r["ours"]) for r in fsa] == [("resnet18_cifar", 47.0)]
    assert "| cifar100 | 100 | resnet32 | CE | 38.43 | 41.00 ± 1.41 | 2 | +2.57 |" in md
    with open(tmp_path / "cmp.csv") as fh:
        assert sum(r["ours"] != "not run" for r in csv.DictReader(fh)) == 2  # CE 100, KPS 50


def test_comparison_checks_stage_one_traits():
    pub = [{"label": "H2T", "dataset": "cifar100", "imbalance_factor": "100",
            "architecture": "resnet32", "method": "h2t", "stage_one": {"mixup": True},
            "top1": 47.8, "paper": "p", "source": "h2t", "table": "t", "setting": "s"}]
    no_mixup = compare(pub, [_row("ce", "h2t", "h2t", 0, 44.0)], TRAITS)
    with_mixup = compare(pub, [_row("kps", "h2t", "h2t", 0, 46.0)], TRAITS)
    assert no_mixup[0]["ours"] == "not run" and with_mixup[0]["ours"] == 46.0


# ---------------------------------------------------------------------------------- targets
def test_plot_targets_of_the_default_config():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    targets = set(plot_targets(cfg))
    for imb in cfg["datasets"]["digits"]["imbalance_factors"]:
        base = f"results/digits/if{imb}/plots"
        assert {f"{base}/perclass_ce.png", f"{base}/wnorm_ce.png", f"{base}/confusion_ce.png",
                f"{base}/sweep_tau_norm.png", f"{base}/tsne_backbone_ce.png"} <= targets
    assert not any("sweep_crt.png" in t for t in targets)  # crt is not swept
    assert {"results/comparison.csv", "results/comparison.md"} <= targets
    big = {**cfg, "datasets": {"digits": {**cfg["datasets"]["digits"], "source": "cifar100"}}}
    assert not any("confusion" in t for t in plot_targets(big))  # 100 classes: no matrix
    assert run_traits(cfg)["backbones"]["ce"]["architecture"] == "resnet8"


@pytest.fixture
def default_cfg() -> dict:
    from ltpipe.workflow.compose import expand_compositions

    cfg = load_yaml_strict(ROOT / "config.yaml")
    validate_schema(cfg)
    expand_compositions(cfg)  # as rules/common.smk does
    return cfg


def test_input_functions_of_the_plot_rules(default_cfg):
    """The files each plot job reads on the default config (what the rules' lambdas gave)."""
    wc = SimpleNamespace(dataset="digits", imb="10", group="kps+ce", classifier="tau_norm")
    run, cls = "results/digits/if10/s0", "results/digits/if10/s0/cls"
    group = [f"{cls}/joint/t0/default", f"{cls}/joint_kps/t0/default", f"{cls}/ffn/t0/w1=0.5",
             f"{cls}/ffn/t0/w1=0.9", f"{cls}/crt_ffn/t0/default_on_w1=0.5",
             f"{cls}/crt_ffn/t0/default_on_w1=0.9"]  # the group's entries (crt_ffn reads ffn's
    # fused features) and the joint ones on its backbones
    caches = [f"{run}/kps/t0/cache.zarr", f"{run}/ce/t0/cache.zarr"]
    assert group_metrics(default_cfg, wc) == [f"{d}/metrics.json" for d in group]
    assert group_inputs(default_cfg, wc) == {
        "metrics": [f"{d}/metrics.json" for d in group],
        "logits": [f"{d}/logits.npz" for d in group],
        "caches": caches}
    assert sweep_metrics(default_cfg, wc) == [
        *(f"{cls}/tau_norm/t0/tau={t}/metrics.json" for t in ("0.0", "0.5", "1.0", "1.5")),
        f"{cls}/joint/t0/default/metrics.json"]
    backbone = SimpleNamespace(dataset="digits", imb="10", kind="backbone", features="ce")
    fused = SimpleNamespace(dataset="digits", imb="10", kind="fused", features="ffn")
    assert tsne_inputs(default_cfg, backbone) == [f"{run}/ce/t0/cache.zarr"]
    assert tsne_inputs(default_cfg, fused) == caches
    assert tsne_args(default_cfg, backbone) == ["--title", "digits IF10, backbone ce"]
    assert tsne_args(default_cfg, fused) == ["--ffn-settings", '{"w1":0.5}', "--title",
                                             "digits IF10, ffn fused features"]


def test_fused_tsne_takes_what_the_ffn_job_takes(default_cfg, monkeypatch):
    from ltpipe.classifiers import ffn
    from ltpipe.report.cli import fusion_settings

    fused = SimpleNamespace(dataset="digits", imb="10", kind="fused", features="ffn")
    default_cfg["classifiers"]["ffn"]["settings"] = {"variant": "reference", "epochs": 3}
    assert tsne_args(default_cfg, fused)[:2] == ["--ffn-settings", '{"variant":"reference"}']
    calls = []
    monkeypatch.setattr(plots, "plot_tsne", lambda *args, **kw: calls.append(kw))
    assert ltpipe_main(["plot", "tsne", "--caches", "k", "c", "--ffn-settings", '{"w1": 0.5}',
                        "--title", "t", "--out", "x.png"]) == 0
    assert (calls[0]["title"], calls[0]["w1"], calls[0]["normalize"]) == ("t (w1 0.5)", 0.5, False)
    declared = ffn.SPEC.settings["w1"].default  # FFN's declared default, read from its spec
    assert fusion_settings({"variant": "reference"}) == (declared, True)
    assert fusion_settings({"w1": 0.3}) == (0.3, False)


# ---------------------------------------------------------- snakemake --report on a real run
@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("report_run")
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["datasets"]["digits"]["imbalance_factors"] = [cfg["datasets"]["digits"][
        "imbalance_factors"][-1]]
    for recipe in cfg["backbones"].values():
        recipe["epochs"] = 2
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    _snakemake(work, "--cores", "2", "all", "plots")
    return work


def _snakemake(work: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--configfile", str(work / "config.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.mark.slow
def test_snakemake_report_builds_from_a_finished_run(small_run):
    plots_dir = next((small_run / "results" / "digits").glob("if*/plots"))
    pngs = sorted(plots_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"perclass_ce.png", "sweep_tau_norm.png", "wnorm_ce.png",
                                      "confusion_ce.png", "tsne_backbone_ce.png"}
    for p in pngs:
        _assert_png(p)
    assert "not run" in (small_run / "results" / "comparison.md").read_text()
    _snakemake(small_run, "--report", "report.html", "plots")
    html = (small_run / "report.html").read_text(errors="replace")
    assert len(html) > 100_000  # self-contained: the images are embedded
    for text in ("perclass_ce.png", "sweep_tau_norm.png", "comparison.csv",
                 "Per-class test accuracy", "published_results.yaml",
                 "4. Classifier weight norms", "Per-class classifier weight norms",
                 "5. Confusion matrices", "Test confusion matrices", "ffn (fused)"):
        assert text in html, f"{text!r} missing from the report"
