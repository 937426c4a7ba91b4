"""Config checks the JSON Schema cannot express, sweep expansion, and the workflow's targets.

The Snakefile validates ``config.yaml`` against ``workflow/schemas/config.schema.yaml`` and then
calls :func:`check_config`. Everything the rules need to know about targets and per-job settings
comes from here, so that it is unit-tested and the rule files stay thin; the paths themselves are
spelled in :mod:`ltpipe.paths`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltpipe.data.sources import LIST_SOURCES, PROFILE_SOURCES, SOURCES, USER_SOURCES
from ltpipe.paths import Layout, imb_tag
from ltpipe.utils import LtpipeError
from ltpipe.yamlfile import load_yaml_strict

RECIPE_META_KEYS = {"seeds", "datasets"}  # recipe keys that place jobs, not trainer settings


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def schema_with_choices() -> dict:
    """The config schema with every list of choices filled in from the code that owns it: the
    schema file holds structure only, so no choice is spelled twice. Data sources from their
    registry (``ltpipe.data.sources.SOURCES``), cache backends, compressions and feature-map
    precisions from ``ltpipe.cache.format``, ``change_detection`` from ``ltpipe.data.watch``,
    ``classify_device`` from
    ``ltpipe.classifiers.device.CHOICES``. A recipe's values are checked by its declarations
    (``ltpipe.train.recipe.RECIPE_SETTINGS``), not by the schema."""
    from ltpipe.cache.format import BACKENDS, FMAP_DTYPES, compressions
    from ltpipe.classifiers.device import CHOICES
    from ltpipe.data.watch import MODES

    schema = load_yaml_strict(SCHEMA_PATH)
    props = schema["properties"]
    dataset = props["datasets"]["additionalProperties"]["properties"]
    dataset["source"]["enum"] = list(SOURCES)
    dataset["change_detection"]["enum"] = list(MODES)
    cache = props["cache"]["properties"]
    cache["backend"]["enum"] = list(BACKENDS)
    cache["compression"]["enum"] = sorted({c for cs in compressions().values() for c in cs})
    cache["fmap_dtype"]["enum"] = list(FMAP_DTYPES)
    props["classify_device"]["enum"] = list(CHOICES)
    return schema


def validate_schema(cfg: dict) -> None:
    """Check ``cfg`` against the JSON Schema; one error listing every violation by key path."""
    import jsonschema

    from ltpipe.settings import retired

    old = [f"{where}.{fix}" for where, keys in [("cache", cfg.get("cache") or {})] + [
        (f"backbones.{name}", rc) for name, rc in (cfg.get("backbones") or {}).items()]
        if isinstance(keys, dict) for fix in retired(keys)]
    if old:
        raise LtpipeError("config uses retired keys:\n  - " + "\n  - ".join(old))
    schema = schema_with_choices()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=str)
    if errors:
        lines = []
        for e in errors:
            where = ".".join(map(str, e.absolute_path)) or "(top level)"
            lines.append(f"{where}: {_schema_hint(e)}")
        raise LtpipeError("config does not match workflow/schemas/config.schema.yaml:\n  - "
                          + "\n  - ".join(lines))


def _schema_hint(e) -> str:
    if e.validator == "additionalProperties":
        allowed = sorted(e.schema.get("properties", {}))
        return f"{e.message}; allowed keys here: {allowed}"
    if e.validator == "enum":
        return f"{e.instance!r} is not allowed; choose one of {e.validator_value}"
    if e.validator == "oneOf" and "imbalance_factors" in map(str, e.absolute_path):
        return f"{e.instance!r} is not an imbalance factor: give a number >= 1 (or 'native')"
    if e.validator == "required":
        return f"{e.message}: add it"
    if isinstance(e.schema, dict) and e.schema.get("description"):
        return f"{e.message}; expected: {e.schema['description']}"
    return e.message


# ---------------------------------------------------------------------------------------- sweeps
def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value).replace("/", "_").replace(" ", "")


def sweep_points(settings: dict) -> list[tuple[str, dict]]:
    """Expand list-valued settings into their cartesian product.

    Returns ``[(point_id, settings_of_that_point), ...]``; ``point_id`` is ``default`` when
    nothing is swept, else ``key=value`` pairs joined by ``,`` in key order.
    """
    swept = sorted(k for k, v in settings.items() if isinstance(v, list))
    if not swept:
        return [("default", dict(settings))]
    points = []
    for values in itertools.product(*(settings[k] for k in swept)):
        point = dict(settings)
        point.update(zip(swept, values))
        pid = ",".join(f"{k}={_fmt(v)}" for k, v in zip(swept, values))
        points.append((pid, point))
    return points


# ------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class SplitKey:
    dataset: str
    imb: str
    split_seed: int

    @property
    def fields(self) -> dict[str, Any]:
        """The split's path fields (:mod:`ltpipe.paths`)."""
        return {"dataset": self.dataset, "imb": self.imb, "split_seed": self.split_seed}


def dataset_imbalance_factors(ds_cfg: dict) -> list:
    if ds_cfg["source"] in LIST_SOURCES or ds_cfg["source"] in USER_SOURCES:
        return ds_cfg.get("imbalance_factors", ["native"])
    return ds_cfg["imbalance_factors"]


def splits(cfg: dict) -> list[SplitKey]:
    """Every (dataset, imbalance factor, split seed) of the config."""
    out = []
    for name, ds in cfg["datasets"].items():
        for imb in dataset_imbalance_factors(ds):
            for seed in ds.get("split_seeds", [0]):
                out.append(SplitKey(name, imb_tag(imb), int(seed)))
    return out


def recipe_datasets(cfg: dict, backbone: str) -> list[str]:
    return cfg["backbones"][backbone].get("datasets", list(cfg["datasets"]))


def classifier_datasets(cfg: dict, clf: str) -> list[str]:
    """Data sets on which every backbone a classifier reads is trained."""
    names = cfg["classifiers"][clf]["backbones"]
    common = set(cfg["datasets"])
    for b in names:
        common &= set(recipe_datasets(cfg, b))
    return [d for d in cfg["datasets"] if d in common]


def shared_seeds(cfg: dict, backbones: list[str]) -> list[int]:
    """Training seeds that every one of ``backbones`` (recipe names) is trained with."""
    seeds = None
    for b in backbones:
        s = cfg["backbones"][b].get("seeds", [0])
        seeds = list(s) if seeds is None else [x for x in seeds if x in s]
    return seeds or []


def classifier_seeds(cfg: dict, clf: str) -> list[int]:
    """Training seeds shared by every backbone a classifier reads (one job each)."""
    return shared_seeds(cfg, cfg["classifiers"][clf]["backbones"])


def sweep_table(cfg: dict) -> dict[tuple[str, str], dict]:
    """``{(classifier, point): job}`` for every classifier entry and sweep point, built once.

    A job is the method, the backbones it reads and the settings of that point; a composed
    entry's job also lists, as ``on``, the input jobs (classifier and point) it reads
    (:mod:`ltpipe.workflow.compose`: one job per own point and combination of its inputs' points),
    and a job whose method saves a head says so (``saves``: what its logits.npz holds for jobs
    composed on it; a job that ran before heads were saved reruns once for it).
    """
    from ltpipe.classifiers import method_names, method_spec
    from ltpipe.workflow.compose import (
        composed_points,
        composition_order,
        expand_compositions,
        upstream_of,
    )

    expand_compositions(cfg)
    per: dict[str, list[tuple[str, dict]]] = {}
    for clf in composition_order(cfg):
        ccfg = cfg["classifiers"][clf]
        base = {"method": ccfg["method"], "backbones": list(ccfg["backbones"])}
        spec = method_spec(ccfg["method"]) if ccfg["method"] in method_names() else None
        if spec is not None and spec.head:
            base["saves"] = ["head", "features"] if spec.features else ["head"]
        own = sweep_points(ccfg.get("settings", {}))
        ups = upstream_of(ccfg)
        if not ups:
            per[clf] = [(pid, {**base, "settings": settings}) for pid, settings in own]
            continue
        points = [(u, [pid for pid, _ in per[u]]) for u in ups]
        per[clf] = [(pid, {**base, "settings": settings, "on": on})
                    for pid, settings, on in composed_points(own, points)]
    return {(clf, pid): job for clf in cfg["classifiers"] for pid, job in per[clf]}


def classifier_job(jobs: dict[tuple[str, str], dict], clf: str, point: str) -> dict:
    """The job of one sweep point of one classifier entry (``jobs``: :func:`sweep_table`)."""
    try:
        return jobs[clf, point]
    except KeyError:
        points = [p for c, p in jobs if c == clf]
        raise LtpipeError(f"classifier {clf!r} has no sweep point {point!r}; its points: "
                          f"{points}") from None


def metric_targets(cfg: dict, jobs: dict[tuple[str, str], dict] | None = None) -> list[str]:
    """Every classifier-stage job's metrics.json: the workflow's leaves."""
    layout, jobs = Layout(cfg), jobs or sweep_table(cfg)  # (sweep_table expands compositions)
    return [layout.path("metrics", **key.fields, classifier=clf, seed=seed, point=point)
            for key in splits(cfg) for clf in cfg["classifiers"]
            if key.dataset in classifier_datasets(cfg, clf)
            for seed in classifier_seeds(cfg, clf)
            for c, point in jobs if c == clf]


# ------------------------------------------------------------------------ per-job settings (params)
def split_settings(cfg: dict, dataset: str) -> dict:
    """The settings a split job depends on (the dataset entry minus the sweep lists, and as
    :func:`ltpipe.data.split.data_settings` records it)."""
    from ltpipe.data.split import data_settings

    ds = dict(cfg["datasets"][dataset])
    ds.pop("imbalance_factors", None)
    ds.pop("split_seeds", None)
    return data_settings(ds)


def recipe_settings(cfg: dict, backbone: str) -> dict:
    """The trainer settings of one stage-one recipe that decide its result: the train rule's
    params (without seeds / dataset placement, and without the runtime keys, ltpipe.runtime)."""
    from ltpipe.runtime import split_recipe

    settings, _ = split_recipe(cfg["backbones"][backbone])
    return {k: v for k, v in settings.items() if k not in RECIPE_META_KEYS}


def dump_settings(cfg: dict) -> dict:
    c = cfg.get("cache", {})
    return {
        "backend": c.get("backend", "zarr"),
        "compression": c.get("compression", "none"),
        "fmap_dtype": c.get("fmap_dtype", "float16"),
        "batch_size": c.get("batch_size", 256),
    }


def _run_fields(wc: Any) -> dict:
    return {"dataset": wc.dataset, "imb": wc.imb, "split_seed": wc.split_seed, "seed": wc.seed}


def classifier_inputs(cfg: dict, wc: Any, jobs: dict[tuple[str, str], dict] | None = None) -> dict:
    """Input files of one classify job (``wc``: the rule's wildcards): split, caches, models,
    and for a composed entry the logits.npz of each job it reads (``upstream``; ``jobs``:
    :func:`sweep_table`, built here when not given)."""
    from ltpipe.workflow.compose import upstream_of

    layout = Layout(cfg)
    run = _run_fields(wc)
    ccfg = cfg["classifiers"][wc.classifier]
    backbones = ccfg["backbones"]
    out = {
        "split": layout.path("split", **run),
        "caches": [layout.path("cache", **run, backbone=b) for b in backbones],
        "models": [layout.path("model", **run, backbone=b) for b in backbones],
    }
    if upstream_of(ccfg):
        job = classifier_job(jobs or sweep_table(cfg), wc.classifier, wc.point)
        out["upstream"] = [layout.path("logits", **run, classifier=u["classifier"],
                                       point=u["point"]) for u in job["on"]]
    return out


def classifier_params(cfg: dict, jobs: dict[tuple[str, str], dict], wc: Any) -> str:
    """The classify rule's ``job`` param (JSON): the job of :func:`classifier_job`, and for a
    composed job each input job's logits.npz and cache index (the job reads them)."""
    from ltpipe.workflow.compose import upstream_jobs

    job = classifier_job(jobs, wc.classifier, wc.point)
    if job.get("on"):
        job = {**job, "on": upstream_jobs(cfg, job, _run_fields(wc), Layout(cfg))}
    return as_json(job)


def classifier_info(cfg: dict, wc: Any, jobs: dict[tuple[str, str], dict] | None = None) -> str:
    """The row labels a classify job writes into its metrics.json (JSON); a composed job's also
    name its inputs (``on``) and the chain of methods (``chain``, e.g. ``tau_norm(crt)``)."""
    from ltpipe.workflow.compose import chain_text, upstream_of

    info = {
        "dataset": wc.dataset,
        "imbalance_factor": wc.imb,
        "split_seed": int(wc.split_seed),
        "classifier": wc.classifier,
        "point": wc.point,
        "backbones": cfg["classifiers"][wc.classifier]["backbones"],
    }
    if upstream_of(cfg["classifiers"][wc.classifier]):
        jobs = jobs or sweep_table(cfg)
        info["on"] = classifier_job(jobs, wc.classifier, wc.point)["on"]
        info["chain"] = chain_text(jobs, wc.classifier, wc.point)
    return as_json(info)


def as_json(obj: Any) -> str:
    """Canonical JSON (sorted keys): the form params take, so equal settings compare equal."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------------------------------ domain checks
def check_config(cfg: dict) -> None:
    """Raise one :class:`LtpipeError` listing every problem the schema cannot see."""
    from ltpipe.plugins import plugin_problems

    problems: list[str] = plugin_problems(cfg)  # clashing names, plug-ins that fail to load
    problems += _check_cache(cfg.get("cache", {}))
    from ltpipe.workflow.compose import expand_compositions

    expand_compositions(cfg)  # on: names, cycles; fills in composed entries' backbones
    for name, ds in cfg["datasets"].items():
        problems += [f"datasets.{name}: {p}" for p in _check_dataset(ds)]
    for name, rc in cfg["backbones"].items():
        # a problem of one key comes as ".key: ...": backbones.NAME.key names it
        problems += [f"backbones.{name}{p}" if p.startswith(".") else f"backbones.{name}: {p}"
                     for p in _check_recipe(cfg, rc)]
    for name, cc in cfg["classifiers"].items():
        problems += [f"classifiers.{name}: {p}" for p in _check_classifier(cfg, name, cc)]
    if problems:
        raise LtpipeError("config has problems:\n  - " + "\n  - ".join(problems))


def _check_cache(c: dict) -> list[str]:
    from ltpipe.cache.format import compressions

    backend, comp = c.get("backend", "zarr"), c.get("compression", "none")
    if comp not in (allowed := compressions()[backend]):
        return [f"cache.compression: {comp!r} is not available with backend {backend!r}; "
                f"choose one of {sorted(allowed)}"]
    return []


def _check_dataset(ds: dict) -> list[str]:
    from ltpipe.data.sources import val_per_class_problem

    out = []
    src = ds["source"]
    imbs = ds.get("imbalance_factors")
    if src in PROFILE_SOURCES:
        if not imbs:
            out.append("imbalance_factors: required for a profile data set, e.g. [10, 100]")
        elif "native" in imbs:
            out.append(f"imbalance_factors: 'native' is only for list-file data sets; source "
                       f"{src!r} needs numbers >= 1, e.g. [10, 100]")
    elif src in USER_SOURCES:
        out += _check_user_data(ds)
    else:
        for key in ("root", "lists"):
            if key not in ds:
                out.append(f"{key}: required for source {src!r} (image root and the folder "
                           "of list files)")
        if imbs and imbs != ["native"]:
            out.append(f"imbalance_factors: {src!r} is long-tailed natively; use [native] or "
                       "leave it out")
    if src in {"cifar10", "cifar100"} and "root" not in ds:
        out.append(f"root: required for {src!r}: the folder holding cifar-10-batches-py/ or "
                   "cifar-100-python/ (torchvision's format)")
    if src != "digits" and "test_per_class" in ds:
        out.append("test_per_class: only the digits source holds out its own test set")
    problem = val_per_class_problem(src, ds.get("val_per_class", 0))
    if problem:
        out.append(problem)
    th = ds.get("shot_thresholds")
    if th and th["few"] > th["many"]:
        out.append(f"shot_thresholds: few ({th['few']}) must not exceed many ({th['many']})")
    return out


def _check_user_data(ds: dict) -> list[str]:
    """The user's own data (image folders, list files): native or profile; opened here (class
    folders / list names, no image read) so that a wrong root is reported before any job."""
    from ltpipe.data.sources import num_classes_of

    imbs = ds.get("imbalance_factors") or ["native"]
    if ds.get("val_per_class", 0) and "native" in imbs:
        return [f"val_per_class: {ds['val_per_class']} needs an imbalance factor (a native split "
                "uses every image as given); remove 'native' from imbalance_factors or "
                "remove val_per_class"]
    if "root" not in ds:
        return [f"root: required for source {ds['source']!r} (the folder of the images)"]
    try:
        num_classes_of(ds)
    except LtpipeError as err:
        return [str(err)]
    return []


def _check_recipe(cfg: dict, rc: dict) -> list[str]:
    # torch-free declarations (ltpipe.models.catalog, ltpipe.losses.spec): this runs while
    # Snakemake builds the DAG, where importing torch would cost ~2 s and ~600 MB
    from ltpipe.losses import default_settings, loss_names
    from ltpipe.models import architecture_names, check_model_kwargs
    from ltpipe.train.recipe import RECIPE_DEFAULTS

    out = []
    unknown = sorted(set(rc) - set(RECIPE_DEFAULTS) - RECIPE_META_KEYS)
    if unknown:
        out.append(f"unknown key(s) {unknown}; allowed: {sorted(RECIPE_DEFAULTS)} + "
                   f"{sorted(RECIPE_META_KEYS)}")
    if rc["architecture"] not in architecture_names():
        out.append(f"architecture: {rc['architecture']!r} is not registered; choose one of "
                   f"{architecture_names()}")
    else:
        try:
            check_model_kwargs(rc["architecture"], rc.get("architecture_kwargs", {}))
        except LtpipeError as err:
            out.append(f"architecture_kwargs: {err}")
    loss = rc.get("loss", RECIPE_DEFAULTS.get("loss", "ce"))
    if loss not in loss_names():
        out.append(f"loss: {loss!r} is not registered; choose one of {loss_names()}")
    from ltpipe.train.recipe import RECIPE_SETTINGS

    for key in sorted(set(rc) & set(RECIPE_SETTINGS)):  # each value against its declaration
        setting = RECIPE_SETTINGS[key]
        if not setting.ok(rc[key]):
            doc = f" ({setting.doc})" if setting.doc else ""
            out.append(f".{key}: {rc[key]!r} is invalid; expected {setting.expect}{doc}")
    if not out:  # the trainer's own checks across keys: loss and AFA settings
        from ltpipe.train.recipe import normalize_recipe

        try:
            normalize_recipe({k: v for k, v in rc.items() if k not in RECIPE_META_KEYS})
        except LtpipeError as err:
            out.append(str(err))
        bad = sorted(set(rc.get("loss_settings", {})) - set(default_settings(loss)))
        if bad:
            out.append(f"loss_settings: {bad} not settings of loss {loss!r}; allowed: "
                       f"{sorted(default_settings(loss))}")
    for ds in rc.get("datasets", []):
        if ds not in cfg["datasets"]:
            out.append(f"datasets: {ds!r} is not a data set of this config; known: "
                       f"{sorted(cfg['datasets'])}")
    return out


def _check_classifier(cfg: dict, name: str, cc: dict) -> list[str]:
    from ltpipe.classifiers import merge_settings, method_names, method_spec
    from ltpipe.workflow.compose import composition_problems, upstream_of

    out = []
    method = cc["method"]
    if method not in method_names():
        return [f"method: {method!r} is not registered; choose one of {method_names()}"]
    try:  # a plug-in method is imported here: an import error or a broken SPEC is refused now
        spec = method_spec(method)
    except LtpipeError as err:
        return [f"method: {err}"]
    missing = [b for b in cc["backbones"] if b not in cfg["backbones"]]
    if missing:
        out.append(f"backbones: {missing} not defined under backbones: (defined: "
                   f"{sorted(cfg['backbones'])})")
        return out
    if upstream_of(cc):
        out += composition_problems(cfg, name)
    elif not spec.takes(len(cc["backbones"])):
        out.append(f"backbones: method {method!r} reads {spec.inputs_text} backbone(s), got "
                   f"{len(cc['backbones'])}: {cc['backbones']}")
    if not classifier_datasets(cfg, name):
        out.append(f"backbones {cc['backbones']} share no data set; align their datasets: lists")
    if not classifier_seeds(cfg, name):
        out.append(f"backbones {cc['backbones']} share no training seed; align their seeds")
    settings = cc.get("settings", {})
    for key, value in settings.items():
        if isinstance(value, list) and not value:
            out.append(f"settings.{key}: an empty sweep; give at least one value")
        elif isinstance(value, list) and len(set(map(repr, value))) != len(value):
            out.append(f"settings.{key}: the sweep {value} repeats a value")
    if not out:  # every sweep point through the method's own declarations (ltpipe.settings)
        for point, values in sweep_points(settings):
            try:
                merge_settings(method, values)
            except LtpipeError as err:
                out.append(f"settings ({point}): {err}")
                break
    return out
