"""Composition: a classifier entry that reads other entries' jobs (``reads:``).

Known answers for the saved heads (ltpipe.classifiers.outputs), for the composed inputs a job
receives (features_from_job) and for the methods on them; the config side
(ltpipe.workflow.compose): points, chains, backbones, and every refusal by name.
"""

import copy

import numpy as np
import pytest
from test_classifiers import synth

from ltpipe.classifiers import method_spec, run_method
from ltpipe.classifiers.outputs import Head, check_head, features_from_job, output_arrays
from ltpipe.utils import LtpipeError
from ltpipe.workflow.compose import (
    chain_text,
    composition_problems,
    expand_compositions,
)
from ltpipe.workflow.config import (
    check_config,
    classifier_info,
    classifier_inputs,
    classifier_params,
    sweep_table,
)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("norm_in,norm_w", [(False, False), (True, True), (False, True),
                                            (True, False)])
def test_head_scores_follow_the_formula(norm_in, norm_w):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    b = None if norm_in and norm_w else np.array([0.5, -1.0, 2.0], np.float32)
    head = Head(w, b, 4.0, normalize_input=norm_in, normalize_weight=norm_w)
    xx = unit(x) if norm_in else x
    ww = unit(w) if norm_w else w
    want = 4.0 * (xx @ ww.T + (0 if b is None else b))
    np.testing.assert_allclose(head.scores(x), want, rtol=1e-5, atol=1e-5)


def test_a_cosine_head_takes_no_bias_and_a_head_reads_one_width():
    with pytest.raises(LtpipeError, match="takes no bias"):
        Head(np.ones((2, 3)), np.zeros(2), 1.0, True, True)
    with pytest.raises(LtpipeError, match="another width"):
        Head(np.ones((2, 3)), None, 1.0).scores(np.ones((4, 5)))


def saved(method, feats, settings, tmp_path, name="up.npz"):
    """Run ``method`` on ``feats`` and write its logits.npz as the job does; return
    (scores, path)."""
    scores = run_method(method, feats, settings, seed=0)
    arrays = output_arrays(method, method_spec(method), scores, feats)
    path = tmp_path / name
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in scores.items()
                      if k not in ("head", "features")}, **arrays)
    return scores, path


def test_a_job_on_a_crt_head_gets_that_head_and_its_logits(tmp_path):
    """tau-norm with tau 0 on a cRT head is that head without its bias; logit adjustment on it
    is its logits minus tau log prior (both written out here by hand)."""
    feat = synth()
    scores, path = saved("crt", [feat], {"epochs": 2, "batch_size": 16}, tmp_path)
    up = features_from_job(str(path), feat, "crt")
    head = scores["head"]
    np.testing.assert_allclose(up.test["logits"], scores["test"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(up.test["pooled"], feat.test["pooled"])
    assert up.from_cache and up.head_kind == "linear"
    tau0 = run_method("tau_norm", [up], {"tau": 0.0}, seed=0)["test"]
    np.testing.assert_allclose(tau0, feat.test["pooled"] @ head.weight.T, rtol=1e-5, atol=1e-5)
    la = run_method("logit_adjust", [up], {"tau": 1.0}, seed=0)["test"]
    prior = np.log(feat.class_counts / feat.class_counts.sum())
    np.testing.assert_allclose(la, scores["test"] - prior, rtol=1e-5, atol=1e-4)
    # LWS trains its scales on the head's train logits, which the job computed from the head
    assert np.allclose(up.train["logits"], head.scores(feat.train["pooled"]))
    lws = run_method("lws", [up], {"epochs": 1, "batch_size": 16}, seed=0)
    assert lws["test"].shape == scores["test"].shape


def test_a_job_on_ffn_reads_the_fused_features(tmp_path):
    """FFN saves its head and the fused features w1 f_KPS + (1 - w1) f_CE; cRT composed on it
    trains on exactly those (computed here by the formula)."""
    kps, ce = synth(seed=1, head_kind="cosine"), synth(seed=2)
    ce = copy.copy(ce)
    for split in ("train", "test"):  # same samples, other features
        getattr(ce, split)["labels"] = getattr(kps, split)["labels"]
    scores, path = saved("ffn", [kps, ce], {"w1": 0.3, "epochs": 2}, tmp_path)
    up = features_from_job(str(path), kps, "ffn")
    fused = 0.3 * kps.train["pooled"] + 0.7 * ce.train["pooled"]
    np.testing.assert_allclose(up.train["pooled"], fused, rtol=1e-6, atol=1e-6)
    assert up.head_kind == "cosine" and up.logit_scale == 30.0 and not up.from_cache
    np.testing.assert_allclose(up.test["logits"], scores["test"], rtol=1e-4, atol=1e-3)
    crt, path2 = saved("crt", [up], {"epochs": 2, "batch_size": 16}, tmp_path, "crt.npz")
    with np.load(path2) as z:  # a job on carried features carries them on (h2t(crt(ffn)))
        np.testing.assert_array_equal(z["features.train"], up.train["pooled"])
    # the reference variant's head reads the unnormalised fusion: saved as unit rows, linear
    _, path3 = saved("ffn", [kps, ce], {"w1": 0.3, "epochs": 1, "variant": "reference"},
                     tmp_path, "ref.npz")
    ref = features_from_job(str(path3), kps, "ffn")
    assert ref.head_kind == "linear"
    np.testing.assert_allclose(np.linalg.norm(ref.head_weight, axis=1), 1.0, rtol=1e-5)


def test_a_cosine_tau_norm_head_folds_the_normalisation_into_the_features(tmp_path):
    feat = synth(head_kind="cosine")
    scores, path = saved("tau_norm", [feat], {"tau": 0.5}, tmp_path)
    up = features_from_job(str(path), feat, "tau_norm")
    assert up.head_kind == "linear" and not up.from_cache
    np.testing.assert_allclose(np.linalg.norm(up.test["pooled"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(up.test["logits"], scores["test"], rtol=1e-5, atol=1e-4)


def test_ensemble_means_logits_or_probabilities():
    a, b = synth(seed=3), synth(seed=3)
    b = copy.copy(b)
    b.test = {**b.test, "logits": b.test["logits"] * 2 + 1}
    mean = run_method("ensemble", [a, b], {}, seed=0)["test"]
    np.testing.assert_allclose(mean, (a.test["logits"] + b.test["logits"]) / 2, rtol=1e-6)

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    probs = run_method("ensemble", [a, b], {"combine": "probs"}, seed=0)["test"]
    want = (softmax(a.test["logits"].astype(np.float64))
            + softmax(b.test["logits"].astype(np.float64))) / 2
    np.testing.assert_allclose(np.exp(probs), want, rtol=1e-5)
    with pytest.raises(LtpipeError, match="takes 2 or more"):
        run_method("ensemble", [a], {}, seed=0)


def test_a_head_that_does_not_reproduce_the_scores_is_refused():
    feat = synth()
    head = Head(feat.head_weight, feat.head_bias, 1.0)
    check_head("m", head, {"test": feat.test["logits"]}, {"test": feat.test["pooled"]})
    with pytest.raises(LtpipeError, match="does not reproduce its test scores"):
        check_head("m", head, {"test": feat.test["logits"] + 1.0}, {"test": feat.test["pooled"]})
    with pytest.raises(LtpipeError, match="returned dict under 'head'"):
        check_head("m", {"weight": 1}, {}, {})


def test_a_job_saved_without_a_head_asks_for_a_rerun(tmp_path):
    feat = synth()
    np.savez(tmp_path / "old.npz", test=feat.test["logits"])
    with pytest.raises(LtpipeError, match="holds no saved head.*forcerun"):
        features_from_job(str(tmp_path / "old.npz"), feat, "job crt[default]")


# ------------------------------------------------------------------------------- the config side
def cfg(**classifiers):
    rc = {"architecture": "resnet8", "epochs": 5, "seeds": [0, 1]}
    return {"results": "r",
            "datasets": {"d": {"source": "digits", "imbalance_factors": [10],
                               "test_per_class": 5}},
            "backbones": {"ce": dict(rc), "kps": {**rc, "head": "cosine", "loss": "kps"},
                          "wide": {**rc, "architecture": "resnet32", "seeds": [0]}},
            "classifiers": {"crt": {"method": "crt", "backbones": ["ce"]},
                            "bwlm": {"method": "bwlm", "backbones": ["ce"],
                                     "settings": {"lam": [0.1, 0.2]}},
                            "ffn": {"method": "ffn", "backbones": ["kps", "ce"],
                                    "settings": {"w1": [0.5, 0.9]}},
                            "ncm": {"method": "ncm", "backbones": ["ce"]},
                            **classifiers}}


def test_points_chains_and_backbones_of_composed_entries():
    c = cfg(tau=dict(method="tau_norm", reads="crt", settings={"tau": [0.5, 1.0]}),
            la_bwlm=dict(method="logit_adjust", reads="bwlm"),
            h2t_ffn=dict(method="h2t", reads="ffn"),
            tau_h2t_ffn=dict(method="tau_norm", reads="h2t_ffn"),
            ens=dict(method="ensemble", reads=["crt", "bwlm"]))
    jobs = sweep_table(c)
    points = {clf: [p for k, p in jobs if k == clf] for clf in c["classifiers"]}
    assert points["tau"] == ["tau=0.5", "tau=1.0"]  # crt has one point: not repeated
    assert points["la_bwlm"] == ["default_on_lam=0.1", "default_on_lam=0.2"]
    assert points["tau_h2t_ffn"] == ["default_on_default_on_w1=0.5",
                                     "default_on_default_on_w1=0.9"]
    assert points["ens"] == ["default_on_default+lam=0.1", "default_on_default+lam=0.2"]
    assert c["classifiers"]["h2t_ffn"]["backbones"] == ("kps", "ce")
    assert c["classifiers"]["tau_h2t_ffn"]["backbones"] == ("kps", "ce")
    c["classifiers"]["ffn"]["backbones"] = ["ce", "kps"]  # a second expansion follows a change
    expand_compositions(c)
    assert c["classifiers"]["tau_h2t_ffn"]["backbones"] == ("ce", "kps")
    c["classifiers"]["ffn"]["backbones"] = ["kps", "ce"]
    assert chain_text(jobs, "tau_h2t_ffn", "default_on_default_on_w1=0.9") == "tau_norm(h2t(ffn))"
    assert chain_text(jobs, "ens", "default_on_default+lam=0.2") == "ensemble(crt,bwlm)"
    assert jobs["crt", "default"]["saves"] == ["head"]
    assert jobs["ffn", "w1=0.5"]["saves"] == ["head", "features"]
    assert "saves" not in jobs["ncm", "default"] and "on" not in jobs["ncm", "default"]
    check_config(c)


def test_a_composed_jobs_params_and_inputs_name_its_input_jobs():
    import json
    from types import SimpleNamespace

    c = cfg(ens=dict(method="ensemble", reads=["ffn", "crt"]))
    jobs = sweep_table(c)
    wc = SimpleNamespace(dataset="d", imb="10", split_seed="0", seed="1", classifier="ens",
                         point="default_on_w1=0.9+default")
    job = json.loads(classifier_params(c, jobs, wc))
    assert job["backbones"] == ["kps", "ce"]
    assert [(u["classifier"], u["point"], u["cache"]) for u in job["on"]] == [
        ("ffn", "w1=0.9", 0), ("crt", "default", 1)]
    assert job["on"][1]["logits"] == "r/d/if10/s0/cls/crt/t1/default/logits.npz"
    inputs = classifier_inputs(c, wc, jobs)
    assert inputs["upstream"] == [u["logits"] for u in job["on"]]
    info = json.loads(classifier_info(c, wc, jobs))
    assert info["chain"] == "ensemble(ffn,crt)"
    plain = SimpleNamespace(**{**wc.__dict__, "classifier": "ncm", "point": "default"})
    assert "on" not in json.loads(classifier_params(c, jobs, plain))
    assert "chain" not in json.loads(classifier_info(c, plain, jobs))
    assert "upstream" not in classifier_inputs(c, plain, jobs)


@pytest.mark.parametrize("entry,message", [
    (dict(method="logit_adjust", reads="ncm"),
     "reads: 'ncm' (method 'ncm') saves no head, so no entry can be composed on it"),
    (dict(method="fsa", reads="crt"), "method 'fsa' reads ['cam', 'fmap'], which only a backbone"),
    (dict(method="ensemble", reads="crt"), "method 'ensemble' reads 2 or more input(s), got 1"),
    (dict(method="crt", reads=["crt", "bwlm"]), "method 'crt' reads 1 input(s), got 2"),
])
def test_compositions_whose_types_do_not_fit_are_refused_by_name(entry, message):
    c = cfg(bad=entry)
    with pytest.raises(LtpipeError, match="classifiers.bad: ") as err:
        check_config(c)
    assert message in str(err.value)


def test_features_of_another_width_are_refused():
    c = cfg(crt_wide={"method": "crt", "backbones": ["wide"]},
            mix={"method": "ffn", "reads": ["crt", "crt_wide"]})
    expand_compositions(c)
    problems = composition_problems(c, "mix")
    assert any("read features of different widths" in p and "resnet32" in p for p in problems)


@pytest.mark.parametrize("entries,message", [
    (dict(a=dict(method="tau_norm", reads="b"), b=dict(method="crt", reads="a")),
     "composed in a circle: a -> b -> a"),
    (dict(a=dict(method="tau_norm", reads="nope")), "classifiers.a.reads: ['nope'] not"),
    (dict(a=dict(method="tau_norm")), "classifiers.a: give backbones"),
    (dict(a={"method": "tau_norm", True: "crt"}), "a key YAML reads as true (on:, yes:)"),
    (dict(a=dict(method="tau_norm", reads="crt", backbones=["kps"])),
     "gives both reads: 'crt' and backbones: ['kps']; a composed entry reads its inputs'"),
])
def test_bad_references_are_refused_by_name(entries, message):
    with pytest.raises(LtpipeError) as err:
        sweep_table(cfg(**entries))
    assert message in str(err.value)
