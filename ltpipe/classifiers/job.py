"""One classifier-stage job: open the cache(s), run a method, evaluate, write results atomically.

Writes ``logits.npz`` (scores per evaluated part) and then ``metrics.json`` (what the summary
reads; it is the job's completion marker, so it is written last). ``metrics.json``'s
``provenance`` traces its numbers: the code (:func:`ltpipe.provenance.code_version`), library
versions, the split's fingerprint, each cache's digest (with the SHA-256 of the backbone file it
was made from) and the SHA-256 of each model file given.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from ltpipe.provenance import code_version, host_info, library_versions
from ltpipe.utils import LtpipeError, atomic_path, sha256_file, write_json

EVAL_PARTS = ("val", "test")  # scored parts; other keys a method returns (head_weight) are kept
#: this process's CPU seconds before its current job (0 for a fresh process or a worker's forked
#: child; a serial worker sets it before each job: :mod:`ltpipe.worker`)
CPU_ORIGIN = 0.0


def cpu_seconds(origin: float | None = None) -> float:
    """User + system CPU seconds of this process since ``origin`` (default ``CPU_ORIGIN``)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime - (CPU_ORIGIN if origin is None else origin)


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None where unknown."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        import os

        return max(0.0, time.time() - (btime + ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def open_checked(cache_path: str | Path, split_fingerprint: str, model_path: str | None = None,
                 model_sha256: str | None = None):
    """Open a cache and refuse it unless it was made from this split (and this backbone file,
    whose SHA-256 is computed unless ``model_sha256`` gives it)."""
    from ltpipe.cache import open_cache

    expect = {"split_fingerprint": split_fingerprint}
    if model_path is not None:
        expect["backbone_sha256"] = model_sha256 or sha256_file(model_path)
    return open_cache(cache_path, expect=expect)


def cache_record(path: str | Path, reader) -> dict:
    """What ``metrics.json`` records of a cache it read: path, digest, and from the manifest the
    backbone file's SHA-256, the code that wrote it and the machines that trained the backbone and
    dumped the cache."""
    m = reader.manifest
    return {"path": str(path), "digest": reader.digest, "backbone_sha256": m.get("backbone_sha256"),
            "code": m.get("code"), "train_host": m.get("train_host"), "dump_host": m.get("host")}


def upstream_features(upstream: list[dict], readers: list, need: set[str]) -> list:
    """The inputs of a composed job: one ``Features`` per job it is composed on (``upstream``:
    {"classifier", "point", "logits": that job's logits.npz, "cache": the index in ``readers``
    of its first backbone's cache}), from its saved head (:mod:`ltpipe.classifiers.outputs`)."""
    from ltpipe.classifiers.inputs import features_from_cache
    from ltpipe.classifiers.outputs import COMPOSABLE_NEEDS, carries_features, features_from_job

    wrong = sorted(need - COMPOSABLE_NEEDS)
    if wrong:
        raise LtpipeError(f"a composed job reads a saved head and its features; this method "
                          f"also needs {wrong}, which only a backbone cache holds")
    base: dict[tuple, object] = {}  # inputs on one cache read it once
    out = []
    for u in upstream:
        # the labels, and the pooled features only where the input job carried none of its own
        key = (int(u.get("cache", 0)), not carries_features(u["logits"]))
        if key not in base:
            base[key] = features_from_cache(readers[key[0]], {"pooled"} if key[1] else set())
        out.append(features_from_job(u["logits"], base[key],
                                     f"job {u.get('classifier')}[{u.get('point')}]"))
    return out


def run_classifier_job(*, split_path: str, cache_paths: list[str], method: str, settings: dict,
                       seed: int, out_dir: str, info: dict | None = None,
                       model_paths: list[str] | None = None, threads: int | None = None,
                       device: str = "cpu", upstream: list[dict] | None = None) -> dict:
    """Run ``method`` on the caches and write ``logits.npz`` and ``metrics.json`` to ``out_dir``.

    ``upstream`` (a composed job, config ``reads:``): the jobs whose saved heads are the method's
    inputs instead of the caches (:func:`upstream_features`); the caches then give the labels
    and, where those jobs carried none, the features.

    ``metrics.json``'s ``seconds``: ``start`` (process start to the end of this function's imports:
    interpreter, torch, ltpipe; None where the process start is unknown), ``load`` (opening the
    caches and reading the arrays), ``fit`` (the method), ``write`` (scoring and writing), ``cpu``
    (this process's user + system CPU seconds for the job, start-up included, just before the
    write of ``metrics.json``: :func:`cpu_seconds`).
    """
    from ltpipe.classifiers import method_needs, method_spec, method_uses_torch, run_method
    from ltpipe.classifiers.inputs import features_from_cache
    from ltpipe.classifiers.outputs import output_arrays
    from ltpipe.data import read_split
    from ltpipe.evaluate import accuracy_report

    if method_uses_torch(method):  # the closed-form methods never import torch (~3 s a job)
        import torch

        if threads:
            torch.set_num_threads(threads)
    t0 = time.perf_counter()
    started = process_age()
    split = read_split(split_path)
    model_paths = model_paths or [None] * len(cache_paths)
    if len(model_paths) != len(cache_paths):
        raise LtpipeError(f"got {len(cache_paths)} caches but {len(model_paths)} model files")
    need = set(method_needs(method))
    features, caches, models, readers = [], [], [], []
    with contextlib.ExitStack() as stack:  # readers stay open: feature maps are read on demand
        for cache_path, model_path in zip(cache_paths, model_paths):
            model_sha = None if model_path is None else sha256_file(model_path)
            if model_sha is not None:
                models.append({"path": str(model_path), "sha256": model_sha})
            reader = stack.enter_context(
                open_checked(cache_path, split.fingerprint, model_path, model_sha))
            readers.append(reader)
            if not upstream:
                features.append(features_from_cache(reader, need))
            caches.append(cache_record(cache_path, reader))
        if upstream:
            features = upstream_features(upstream, readers, need)
        t_load = time.perf_counter()
        scores = run_method(method, features, settings, seed, device)
        saved = output_arrays(method, method_spec(method), scores, features)
        scores = {k: v for k, v in scores.items() if k not in ("head", "features")}
        t_fit = time.perf_counter()

    metrics = {}
    for part in EVAL_PARTS:
        if part not in scores:
            continue
        s = scores[part]
        labels = getattr(features[0], part)["labels"]
        metrics[part] = accuracy_report(s, labels, split.shot_groups)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "logits.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v, dtype=np.float32) for k, v in scores.items()},
                     **saved)
    result = {
        **(info or {}),
        "method": method,
        "settings": settings,
        "seed": seed,
        "split_fingerprint": split.fingerprint,
        "provenance": {"code": code_version(), "versions": library_versions(),
                       "host": host_info(device, used_torch=method_uses_torch(method)),
                       "split": {"path": str(split_path), "fingerprint": split.fingerprint},
                       "caches": caches, "models": models,
                       **({"upstream": [{"classifier": u.get("classifier"),
                                         "point": u.get("point"), "path": str(u["logits"]),
                                         "sha256": sha256_file(u["logits"])}
                                        for u in upstream]} if upstream else {})},
        "class_names": list(split.class_names),
        "class_counts": [int(c) for c in split.class_counts],
        "shot_groups": [int(g) for g in split.shot_groups],
        "metrics": metrics,
        "seconds": {"start": started, "load": t_load - t0, "fit": t_fit - t_load},
    }
    result["seconds"]["write"] = time.perf_counter() - t_fit
    result["seconds"]["cpu"] = cpu_seconds()
    write_json(out / "metrics.json", result)
    test = metrics.get("test", {})
    print(f"classify {method} {settings}: test all {test.get('all'):.2f} many {test.get('many')} "
          f"medium {test.get('medium')} few {test.get('few')} ({t_fit - t0:.1f}s)")
    return result
