"""The facts a classifier-stage method declares about itself: ``MethodSpec`` (no torch import).

Every method module (built-in or plug-in) holds ``SPEC = MethodSpec(...)`` and a function
``run(inputs, settings, seed, device)``. Everything else reads the facts from the spec: the
config checks (settings, number of backbones), the classify rule's memory request
(:mod:`ltpipe.classifiers.memory`), the device choice (:mod:`ltpipe.classifiers.device`), the
job (which arrays to load, whether to import torch). Reading a spec must not import torch: DAG
building computes a memory request per job in the Snakemake process, so a method module keeps
its torch imports inside its functions. :func:`check_method` is the one validation of the
contract, run on every method when it is first looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ltpipe.classifiers.inputs import ARRAYS, LAZY
from ltpipe.settings import Setting
from ltpipe.utils import LtpipeError


@dataclass(frozen=True)
class MethodSpec:
    """What a classifier-stage method declares (see docs/extending.md for the contract).

    needs: the cached arrays it reads besides the labels, a non-empty subset of
        ``ltpipe.classifiers.inputs.ARRAYS`` ("pooled", "logits", "fmap", "cam").
    num_backbones: how many inputs (backbone caches, or jobs it is composed on) a job reads: 2
        for FFN, 1 for most; None for any number from 2 on (an ensemble).
    torch: whether ``run`` uses torch; False (a closed form in numpy) keeps the job from
        importing it, and ``run`` then gets the device as a string.
    gpu: whether the method benefits from a GPU (trains by many gradient steps): under
        ``classify_device: auto`` its jobs lease one. Needs ``torch``.
    settings: every setting, name -> ``ltpipe.settings.Setting`` (default, check, note).
    map_whole_bytes, map_chunk_bytes: for a method that reads feature maps ("fmap", read
        lazily): a map array up to ``map_whole_bytes`` is read whole, a larger one
        ``map_chunk_bytes`` of rows at a time (the memory request uses both). Required when
        ``needs`` holds a lazy array, else None.
    head: whether ``run`` also returns, under "head", the ``ltpipe.classifiers.outputs.Head``
        that gives its scores from the features it read: the job saves it, and other jobs can
        be composed on this one (``reads:`` in the config; docs/composition.md).
    features: whether that head reads features the method made (FFN's fusion), returned under
        "features" as {split: array} for "train" and each scored split. Needs ``head``.
    """

    needs: frozenset[str]
    num_backbones: int = 1
    torch: bool = True
    gpu: bool = False
    settings: Mapping[str, Setting] = field(default_factory=dict)
    map_whole_bytes: int | None = None
    map_chunk_bytes: int | None = None
    head: bool = False
    features: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def takes(self, n: int) -> bool:
        """Whether a job of this method can read ``n`` inputs."""
        return n >= 2 if self.num_backbones is None else n == self.num_backbones

    @property
    def inputs_text(self) -> str:
        """How many inputs it reads, in words."""
        return "2 or more" if self.num_backbones is None else str(self.num_backbones)

    def problems(self) -> list[str]:
        """What is wrong with these facts (empty when they keep the contract)."""
        out = []
        if not self.needs or not self.needs <= set(ARRAYS):
            out.append(f"needs={sorted(self.needs)} must be a non-empty subset of {list(ARRAYS)}")
        if self.num_backbones is not None and not (
                isinstance(self.num_backbones, int) and not isinstance(self.num_backbones, bool)
                and self.num_backbones >= 1):
            out.append(f"num_backbones={self.num_backbones!r} must be an int >= 1, or None for "
                       "any number from 2 on")
        for key in ("torch", "gpu", "head", "features"):
            if not isinstance(getattr(self, key), bool):
                out.append(f"{key}={getattr(self, key)!r} must be True or False")
        if self.gpu is True and self.torch is False:
            out.append("gpu=True needs torch=True (a numpy method cannot use a GPU)")
        if self.features is True and self.head is not True:
            out.append("features=True needs head=True (the features are what the head reads)")
        if self.head is True and self.num_backbones != 1 and self.features is not True:
            out.append("head=True on several inputs needs features=True (say which features "
                       "the head reads)")
        bad = sorted(str(k) for k, v in self.settings.items()
                     if not isinstance(k, str) or not isinstance(v, Setting))
        if bad:
            out.append(f"settings {bad} must map a name to an ltpipe.settings.Setting (use "
                       "ltpipe.settings.number / choice / flag)")
        lazy = bool(self.needs & LAZY)
        for key in ("map_whole_bytes", "map_chunk_bytes"):
            value = getattr(self, key)
            if lazy and not (isinstance(value, int) and value > 0):
                out.append(f"{key}={value!r}: a method that needs {sorted(self.needs & LAZY)} "
                           "must give a positive int")
            elif not lazy and value is not None:
                out.append(f"{key}={value!r} applies only to a method that needs "
                           f"{sorted(LAZY)}; leave it None")
        return out


def check_method(name: str, module: Any, where: str) -> MethodSpec:
    """``module``'s ``SPEC`` if ``module`` keeps the method contract (a ``MethodSpec`` named
    ``SPEC`` whose facts hold, and a callable ``run``), else an ``LtpipeError`` naming
    ``where`` (the module, or a plug-in's distribution and entry point) and the fix."""
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, MethodSpec):
        raise LtpipeError(f"classifier method {name!r} ({where}) declares no SPEC: give its "
                          "module SPEC = ltpipe.classifiers.spec.MethodSpec(needs=..., ...) "
                          f"(got {type(spec).__name__})")
    problems = spec.problems()
    if not callable(getattr(module, "run", None)):
        problems.append("it has no function run(inputs, settings, seed, device)")
    if problems:
        raise LtpipeError(f"classifier method {name!r} ({where}) breaks the method contract: "
                          + "; ".join(problems))
    return spec
