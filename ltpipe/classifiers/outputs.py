"""What a classifier-stage job leaves for another job: its head and, where they are not a cache's,
the features that head reads (composition, docs/composition.md).

A method whose spec declares ``head=True`` returns, besides its scores, ``"head"``: a
:class:`Head` that reproduces those scores from the features it scored. A method that declares
``features=True`` (FFN: the fusion of two backbones' features) also returns ``"features"``:
``{split: array}`` for the train split and every evaluated split. The job checks that the head
reproduces the scores (:func:`check_head`) and saves both into its ``logits.npz`` under the keys
of :data:`KEYS` (beside the scores). A job composed on it (config ``reads: <entry>``) reads
them back as a :class:`ltpipe.classifiers.inputs.Features` (:func:`features_from_job`), so
that every method that runs on a backbone's cache runs unchanged on another job's head:
tau-norm and logit adjustment on a retrained head, cRT or H2T on fused features, an ensemble of
several heads.
No torch here: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ltpipe.classifiers.inputs import SPLITS, Features
from ltpipe.classifiers.tau_norm import l2_normalize
from ltpipe.utils import LtpipeError

#: the logits.npz keys of a saved head and of carried features
KEYS = {"weight": "head.weight", "bias": "head.bias", "scale": "head.scale",
        "normalize": "head.normalize"}
FEATURE_KEY = "features.{split}"
CHUNK = 8192  # rows scored at a time
#: the arrays a job composed on another one can read (no feature maps or CAMs: jobs save none)
COMPOSABLE_NEEDS = frozenset({"pooled", "logits"})


@dataclass
class Head:
    """Scores = scale * (x' W'^T + b), with x' = x / ||x|| when ``normalize_input`` and the rows of
    W' = W / ||W_j|| when ``normalize_weight``: a linear head is (False, False), a cosine head
    (True, True); ``bias`` [C] or None (a cosine head has none)."""

    weight: np.ndarray
    bias: np.ndarray | None
    scale: float
    normalize_input: bool = False
    normalize_weight: bool = False

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        if self.weight.ndim != 2:
            raise LtpipeError(f"a head's weight must be [classes, dim], got {self.weight.shape}")
        if self.bias is not None:
            self.bias = np.asarray(self.bias, dtype=np.float32).reshape(-1)
            if len(self.bias) != len(self.weight):
                raise LtpipeError(f"a head's bias has {len(self.bias)} classes, its weight "
                                  f"{len(self.weight)}")
        self.scale = float(self.scale)
        if self.bias is not None and self.normalize_input and self.normalize_weight:
            raise LtpipeError("a cosine head (input and weight normalized) takes no bias")

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The head's scores on features ``x`` [N, D] (float32, in chunks)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1]:
            raise LtpipeError(f"the head reads {self.weight.shape[1]}-dim features, got "
                              f"{x.shape}: a head on features of another width")
        w = l2_normalize(self.weight) if self.normalize_weight else self.weight
        wt = np.ascontiguousarray(w.T)
        out = []
        for i in range(0, len(x), CHUNK):
            f = x[i:i + CHUNK]
            z = (l2_normalize(f) if self.normalize_input else f) @ wt
            if self.bias is not None:
                z = z + self.bias
            out.append(np.float32(self.scale) * z)
        return np.concatenate(out).astype(np.float32, copy=False) if out else \
            np.empty((0, len(w)), np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """The logits.npz entries of this head (:data:`KEYS`)."""
        out = {KEYS["weight"]: self.weight, KEYS["scale"]: np.float32(self.scale),
               KEYS["normalize"]: np.array([self.normalize_input, self.normalize_weight])}
        if self.bias is not None:
            out[KEYS["bias"]] = self.bias
        return out

    @classmethod
    def from_arrays(cls, z: Any) -> Head:
        """The head saved in an open logits.npz (``z``: ``np.load``'s result)."""
        norm = np.asarray(z[KEYS["normalize"]]).astype(bool)
        return cls(weight=z[KEYS["weight"]],
                   bias=z[KEYS["bias"]] if KEYS["bias"] in z.files else None,
                   scale=float(z[KEYS["scale"]]), normalize_input=bool(norm[0]),
                   normalize_weight=bool(norm[1]))


def check_head(method: str, head: Any, scores: dict, features: dict[str, np.ndarray]) -> None:
    """Refuse a returned head that does not reproduce the method's own scores on ``features``
    (``{split: array}``) to float32 precision: a plug-in that declared ``head=True`` but returns
    another head would otherwise feed a wrong head to every job composed on it."""
    if not isinstance(head, Head):
        raise LtpipeError(f"method {method!r} declares head=True but returned "
                          f"{type(head).__name__} under 'head'; return an "
                          "ltpipe.classifiers.outputs.Head (or declare head=False)")
    for split, x in features.items():
        if split not in scores:
            continue
        want = np.asarray(scores[split], dtype=np.float32)
        got = head.scores(x)
        tol = 1e-4 * max(1.0, float(np.abs(want).max(initial=0.0)))
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=tol):
            diff = (float(np.abs(got - want).max()) if got.shape == want.shape
                    else f"shape {got.shape} vs {want.shape}")
            raise LtpipeError(f"method {method!r}: the head it returned does not reproduce its "
                              f"{split} scores (largest difference {diff}); a job composed on "
                              "it would read another classifier. Fix the method's run()")


def output_arrays(method: str, spec: Any, scores: dict, inputs: list[Features]) -> dict:
    """The logits.npz entries a job saves for jobs composed on it: the head (checked against the
    scores), and the features it reads where they are not the first cache's pooled arrays (a
    method declaring ``features=True``, or a job whose own input features were carried)."""
    if not spec.head:
        return {}
    if spec.features:
        feats = scores.get("features")
        if not isinstance(feats, dict) or "train" not in feats:
            raise LtpipeError(f"method {method!r} declares features=True but returned no "
                              "'features' dict with a 'train' array (and one per scored split)")
        carry = True
    else:
        first = inputs[0]
        feats = {s: getattr(first, s)["pooled"] for s in SPLITS
                 if getattr(first, s) is not None and "pooled" in getattr(first, s)}
        carry = not first.from_cache
        if "train" not in feats:  # a method on logits only: its head reads the first cache
            raise LtpipeError(f"method {method!r} declares head=True but reads no pooled "
                              "features; declare head=False")
    head = scores.get("head")
    check_head(method, head, scores, feats)
    out = head.arrays()
    if carry:
        out.update({FEATURE_KEY.format(split=s): np.asarray(x, dtype=np.float32)
                    for s, x in feats.items()})
    return out


def carries_features(logits_path: str) -> bool:
    """Whether a job's logits.npz carries the features its head reads (else they are its first
    cache's pooled arrays)."""
    with np.load(logits_path) as z:
        return FEATURE_KEY.format(split="train") in z.files


def features_from_job(logits_path: str, cache: Features, label: str) -> Features:
    """The ``Features`` a job composed on the job of ``logits_path`` receives: that job's head,
    the features it reads (carried in its logits.npz, else the pooled arrays of ``cache``, its
    first backbone's cache loaded with "pooled"), and the head's logits on every split.
    ``label`` names the upstream job in errors."""
    with np.load(logits_path) as z:
        if KEYS["weight"] not in z.files:
            raise LtpipeError(f"{label}: {logits_path} holds no saved head (its job ran before "
                              "heads were saved, or its method saves none); rerun that job "
                              "(snakemake --forcerun <its metrics.json>)")
        head = Head.from_arrays(z)
        carried = {s: z[FEATURE_KEY.format(split=s)] for s in SPLITS
                   if FEATURE_KEY.format(split=s) in z.files}
    # a Features holds a linear or a cosine head: the other two forms fold into the features
    # (normalized input, linear head) or into the weight (unit rows, linear head)
    cosine = head.normalize_input and head.normalize_weight
    fold_input = head.normalize_input and not cosine
    splits = {}
    for s in SPLITS:
        base = getattr(cache, s)
        if base is None:
            splits[s] = None
            continue
        x = carried[s] if s in carried else base.get("pooled")
        if x is None:
            raise LtpipeError(f"{label}: no features for split {s!r}")
        x = np.asarray(x, dtype=np.float32)
        if len(x) != len(base["labels"]):
            raise LtpipeError(f"{label}: its {s} features have {len(x)} rows, the cache "
                              f"{len(base['labels'])}: it was made on another split")
        splits[s] = {"labels": base["labels"], "logits": head.scores(x),
                     "pooled": l2_normalize(x) if fold_input else x}
    weight = l2_normalize(head.weight) if head.normalize_weight and not cosine else head.weight
    return Features(train=splits["train"], test=splits["test"], val=splits["val"],
                    head_weight=weight, head_bias=head.bias,
                    head_kind="cosine" if cosine else "linear", logit_scale=head.scale,
                    class_counts=cache.class_counts, from_cache=not carried and not fold_input)
