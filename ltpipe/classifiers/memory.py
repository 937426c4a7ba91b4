"""How much memory a classify job needs, from its caches' manifests (no torch import).

The classify rule's ``mem_mb`` (and so the Slurm request) comes from :func:`classify_mem_mb`:
the arrays the method holds in memory (what ``features_from_cache`` loads, float32 copies of
arrays stored in another dtype, the scores it writes, FSA's gathered map rows), times
``COPIES`` for the working copies methods make (tensors, normalized features, gradients), plus
``BASE_MB`` for the interpreter, numpy and torch. benchmarks/stage2_scale.py prints this request
beside each method's measured peak RSS on an ImageNet-LT-sized cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ltpipe.classifiers import method_spec
from ltpipe.classifiers.inputs import LAZY, SPLITS, TRAIN_ONLY
from ltpipe.classifiers.spec import MethodSpec

BASE_MB = 1000     # python + numpy + torch + ltpipe, with margin (measured RSS 640-730 MB on a
                   # tiny cache, benchmarks/stage2_scale.py)
GPU_HOST_MB = 1500  # host memory of a CUDA context and its libraries, for a job on a GPU
COPIES = 2.0       # held arrays x this: one working copy of everything (tensors, features)
ROUND_MB = 256     # requests are rounded up to a multiple of this
FALLBACK_MB = 4000  # when a cache does not exist yet (a dry run before the dump)
# Peak memory of map handling (FSA) besides the held arrays: the rows of one chunk of batches
# (the spec's map_chunk_bytes of float32 maps), their position-major copy and the recombination
# gather.
MAP_CHUNK_FACTOR = 6


def held_bytes(method: str, reader: Any) -> int:
    """Bytes of the arrays a job of ``method`` holds from one open cache (``reader``)."""
    spec = method_spec(method)  # the method's own declaration; no torch import
    need = spec.needs
    groups = set(reader.groups())
    total = 0
    for split in SPLITS:
        if split not in groups:
            continue
        n = reader.shape(split, "labels")[0]
        total += 8 * n  # labels as int64
        for name in sorted(need):
            if split != "train" and name in TRAIN_ONLY:
                continue
            shape, dtype = reader.shape(split, name), reader.dtype(split, name)
            stored = math.prod(shape) * dtype.itemsize
            if name in LAZY:
                total += _lazy_bytes(stored, shape, spec)
                continue
            total += stored + (0 if dtype.itemsize == 4 else math.prod(shape) * 4)
        if split != "train":
            classes = reader.shape("head", "weight")[0]
            total += 2 * n * classes * 4  # scores (tensor + the float32 array written)
    total += 2 * math.prod(reader.shape("head", "weight")) * 4
    return total


def _lazy_bytes(stored: int, shape: tuple, spec: MethodSpec) -> int:
    """Memory for maps read on demand: whole when small enough (the spec's
    ``map_whole_bytes``), else one chunk of rows (its ``map_chunk_bytes``)."""
    if stored <= spec.map_whole_bytes:
        # the array as read, its position-major copy and the non-zero mask
        return 2 * stored + math.prod(shape[:1] + shape[2:])
    return MAP_CHUNK_FACTOR * spec.map_chunk_bytes


def classify_mem_mb(method: str, cache_paths: Iterable[str | Path],
                    fallback: int = FALLBACK_MB, gpu: bool = False) -> int:
    """Memory (MB) to request for a classify job of ``method`` on ``cache_paths``.

    ``BASE_MB + COPIES x held arrays`` (+ ``GPU_HOST_MB`` for a job on a GPU), rounded up to
    ``ROUND_MB``; ``fallback`` where a cache does not exist yet (Snakemake evaluates resources
    when it schedules the job, after the dump, so a real run gets the computed value).
    """
    from ltpipe.cache import open_cache

    held = 0
    for path in cache_paths:
        if not Path(path).exists():
            return int(fallback)
        with open_cache(path) as reader:
            held += held_bytes(method, reader)
    mb = BASE_MB + (GPU_HOST_MB if gpu else 0) + COPIES * held / 2**20
    return int(math.ceil(mb / ROUND_MB) * ROUND_MB)


def rule_mem_mb(cfg: dict, classifier: str, cache_paths: Iterable[str | Path]) -> int:
    """The classify rule's ``mem_mb``: :func:`classify_mem_mb` for this classifier entry's method,
    with the CUDA host memory added where the config puts it on a GPU."""
    from ltpipe.classifiers.device import rule_gpu

    method = cfg["classifiers"][classifier]["method"]
    return classify_mem_mb(method, cache_paths, gpu=bool(rule_gpu(cfg, classifier)))
