"""GPU leasing: give each concurrent job its own GPU without a scheduler's help.

``with lease_device(requested) as dev:`` yields a torch device string:

1. ``requested`` names a device ("cpu", "cuda:1", ...): used as given, no lock.
2. ``LTPIPE_FAKE_GPUS=N`` (tests, CPU-only machines): N simulated slots are leased exactly like
   GPUs below, but the device is "cpu".
3. No CUDA: "cpu".
4. Slurm assigned GPUs (``SLURM_JOB_GPUS`` / ``SLURM_STEP_GPUS``, or ``CUDA_VISIBLE_DEVICES``
   inside a Slurm job): Slurm already isolated them, so "cuda" (the first visible one), no lock.
5. Otherwise: every visible GPU index (``CUDA_VISIBLE_DEVICES`` or all) is a slot; the lease
   takes an exclusive, non-blocking ``fcntl.flock`` on ``<lock dir>/gpu-<id>.lock`` for the
   first free slot and holds it for the life of the context. The kernel drops the lock when the
   process dies, so a killed job never leaves a stale lease. Lock dir: ``LTPIPE_LOCK_DIR``
   (default ``/tmp/ltpipe-gpu-locks``).

When every slot is taken the lease WAITS, polling every 0.5 s, for up to ``timeout`` seconds
(argument, else ``LTPIPE_LEASE_TIMEOUT``, default 3600), then raises ``LtpipeError``.
The yielded string is a ``LeasedDevice`` whose ``.slot`` is the leased index (None when no
lock was taken); while held, ``LTPIPE_LEASED_SLOT`` is set to it in ``os.environ``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from ltpipe.utils import LtpipeError

DEFAULT_LOCK_DIR = "/tmp/ltpipe-gpu-locks"
DEFAULT_TIMEOUT_S = 3600.0
POLL_S = 0.5


class LeasedDevice(str):
    """A torch device string that also carries the leased slot index (``.slot``)."""

    slot: int | None

    def __new__(cls, device: str, slot: int | None = None) -> LeasedDevice:
        obj = super().__new__(cls, device)
        obj.slot = slot
        return obj


def _visible_ids() -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES entries, or None when the variable is unset."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [tok.strip() for tok in raw.split(",") if tok.strip()]


def _slurm_assigned() -> bool:
    if os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS"):
        return True
    return bool(os.environ.get("SLURM_JOB_ID")) and _visible_ids() is not None


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lease_slot(ids: list[str], timeout: float) -> tuple[int, int]:
    """Lock the first free slot among ``ids``; return (position, fd). Waits up to ``timeout``."""
    lock_dir = Path(os.environ.get("LTPIPE_LOCK_DIR", DEFAULT_LOCK_DIR))
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LtpipeError(f"cannot create the GPU lock dir {lock_dir} ({err}); set "
                          "LTPIPE_LOCK_DIR to a writable folder") from err
    paths = [lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', i)}.lock" for i in ids]
    deadline = time.monotonic() + timeout
    while True:
        for pos, path in enumerate(paths):
            fd = _try_lock(path)
            if fd is not None:
                return pos, fd
        if time.monotonic() >= deadline:
            raise LtpipeError(
                f"all {len(ids)} GPU slot(s) {ids} are leased by other ltpipe jobs (locks in "
                f"{lock_dir}) and none freed up within {timeout:.0f} s; run fewer GPU jobs at "
                "once (snakemake --resources gpu=N), raise LTPIPE_LEASE_TIMEOUT, or pass an "
                "explicit --device")
        time.sleep(POLL_S)


@contextlib.contextmanager
def lease_device(requested: str | None = None,
                 timeout: float | None = None) -> Iterator[LeasedDevice]:
    """Yield a device string for this job, holding a GPU lease for the context's lifetime."""
    if requested not in (None, "", "auto", "cuda"):
        yield LeasedDevice(requested)
        return
    if timeout is None:
        timeout = float(os.environ.get("LTPIPE_LEASE_TIMEOUT", DEFAULT_TIMEOUT_S))
    fake = os.environ.get("LTPIPE_FAKE_GPUS")
    if fake:
        if not fake.isdigit() or int(fake) < 1:
            raise LtpipeError(f"LTPIPE_FAKE_GPUS={fake!r}: expected a positive integer")
        ids = [f"fake{i}" for i in range(int(fake))]
        device_prefix = None
    else:
        import torch

        if not torch.cuda.is_available():
            yield LeasedDevice("cpu")
            return
        if _slurm_assigned():
            yield LeasedDevice("cuda")
            return
        ids = _visible_ids() or [str(i) for i in range(torch.cuda.device_count())]
        device_prefix = "cuda:"
    pos, fd = _lease_slot(ids, timeout)
    previous = os.environ.get("LTPIPE_LEASED_SLOT")
    os.environ["LTPIPE_LEASED_SLOT"] = str(pos)
    try:
        yield LeasedDevice("cpu" if device_prefix is None else f"{device_prefix}{pos}", pos)
    finally:
        if previous is None:
            os.environ.pop("LTPIPE_LEASED_SLOT", None)
        else:
            os.environ["LTPIPE_LEASED_SLOT"] = previous
        os.close(fd)
