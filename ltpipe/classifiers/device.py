"""Where a classify job computes: the config's ``classify_device`` (cpu | cuda | auto).

``cpu``: every job on the CPU. ``cuda``: every job leases a GPU exactly as train and dump do
(:func:`ltpipe.train.device.lease_device`: a Slurm-assigned GPU, else a free local one under a
lock, else the CPU where there is no CUDA; ``LTPIPE_FAKE_GPUS`` simulates slots on a CPU
machine). ``auto``: the methods that declare ``gpu=True`` in their spec (those that train a head by
many gradient steps) lease a GPU, the others (the closed forms) stay on the CPU. The method code
is the same on either device (tested on the CPU).

The choice is a runtime setting (:mod:`ltpipe.runtime`): it reaches the job through the
environment, never its params, so changing it reruns nothing that finished.
"""

from __future__ import annotations

from ltpipe.runtime import DEVICE_ENV, classify_device
from ltpipe.utils import LtpipeError

CHOICES = ("cpu", "cuda", "auto")


def check_choice(choice: str) -> str:
    """``choice`` if it is one of ``CHOICES``, else an error naming the fix."""
    if choice not in CHOICES:
        raise LtpipeError(f"classify_device={choice!r}: expected one of {list(CHOICES)} (config "
                          f"key classify_device, or the environment variable {DEVICE_ENV})")
    return choice


def wants_gpu(choice: str, method: str) -> bool:
    """Whether a job of ``method`` asks for a GPU (Snakemake resource ``gpu``) under ``choice``."""
    from ltpipe.classifiers import method_spec

    choice = check_choice(choice)
    return choice == "cuda" or (choice == "auto" and method_spec(method).gpu)


def job_device(requested: str | None, method: str) -> str | None:
    """What to give ``lease_device``: an explicit ``--device`` (e.g. "cuda:1", "cpu") as given;
    otherwise None (lease a GPU) when the environment's choice wants one for ``method``, else
    "cpu"."""
    if requested:
        return requested
    return None if wants_gpu(classify_device(), method) else "cpu"


def rule_gpu(cfg: dict, classifier: str) -> int:
    """The classify rule's ``gpu`` resource: 1 where ``cfg``'s classify_device wants a GPU for
    this classifier entry's method, else 0."""
    method = cfg["classifiers"][classifier]["method"]
    return int(wants_gpu(cfg.get("classify_device", "cpu"), method))
