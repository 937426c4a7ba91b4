"""Which code and which libraries made an artifact: recorded in ``model.pt``, in every cache's
manifest and in every classifier-stage ``metrics.json``.

:func:`code_version` identifies the ltpipe code: its version, a SHA-256 over the package's
``.py`` files, and, when the package lives in a git checkout, the commit and whether the
package's files differ from it. :func:`library_versions` gives the versions of Python and of the
libraries that shape the artifacts. Both are computed once per process and import no torch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: distributions whose versions an artifact records (those installed)
LIBRARIES = ("torch", "torchvision", "numpy", "scikit-learn", "zarr", "h5py", "snakemake")
#: git variables that would point git at another repository than the package's
_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                 "GIT_COMMON_DIR")


def package_sha256(root: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the relative path and bytes of every ``.py`` file under ``root``, in path
    order: the same for the same code wherever it is installed (``__pycache__`` ignored)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel.split("/"):
            continue
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git -C root args`` or None when git is missing or fails (no checkout, an
    untrusted owner, ...)."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=20, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(root: Path = PACKAGE_DIR) -> dict[str, object] | None:
    """``{"git_commit": sha, "git_dirty": bool}`` when the package at ``root`` is tracked in a
    git checkout, else None. Dirty: a file under ``root`` is modified, staged, deleted or new
    (untracked, not ignored) relative to the commit."""
    if _git(root, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None  # no git, no checkout, or a copy inside some repository without tracking
    status = _git(root, "status", "--porcelain=v2", "--branch", "--", ".")
    if status is None:
        return None
    lines = status.splitlines()
    commit = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":
        return None
    return {"git_commit": commit, "git_dirty": any(not ln.startswith("#") for ln in lines)}


def code_version() -> dict[str, object]:
    """The ltpipe code that runs: ``ltpipe`` (version), ``package_sha256`` (see
    :func:`package_sha256`) and, in a git checkout, ``git_commit`` and ``git_dirty``. Computed
    once per process; each call returns a fresh dict."""
    return dict(_code_version())


@functools.cache
def _code_version() -> dict[str, object]:
    from ltpipe import __version__

    out: dict[str, object] = {"ltpipe": __version__, "package_sha256": package_sha256()}
    out.update(git_state() or {})
    return out


def code_label(code: dict | None) -> str:
    """Short text for a :func:`code_version` record (a ``summary.csv`` column):
    ``0.1.0+g1a2b3c4d5e6f`` (git commit), ``...-dirty``, or ``0.1.0+p<package sha256>`` outside
    git; "" for artifacts written before ltpipe recorded it."""
    if not code:
        return ""
    if code.get("git_commit"):
        label = f"{code.get('ltpipe', '')}+g{str(code['git_commit'])[:12]}"
        return label + ("-dirty" if code.get("git_dirty") else "")
    return f"{code.get('ltpipe', '')}+p{str(code.get('package_sha256', ''))[:12]}"


def library_versions() -> dict[str, str]:
    """Versions of ltpipe, Python and the installed :data:`LIBRARIES`. Computed once per
    process; each call returns a fresh dict."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str]:
    from importlib import metadata

    from ltpipe import __version__

    out = {"ltpipe": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


#: environment variables that change which CPU kernels or how many threads torch and numpy use
HOST_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "CUBLAS_WORKSPACE_CONFIG")


@functools.cache
def cpu_model() -> dict[str, str]:
    """The processor: ``name`` (its model name) and, on x86 Linux, ``id`` ("family/model/stepping",
    which tells processors apart where virtual machines show a generic name) and ``flags_sha``
    (12 hex digits over its feature flags: the instructions kernels may pick). From
    ``/proc/cpuinfo``; ``platform.processor()`` elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), " ".join(value.split()))
    except OSError:
        pass
    name = next((fields[k] for k in ("model name", "Model", "Hardware", "cpu model")
                 if fields.get(k)), "") or platform.processor() or platform.machine() or "unknown"
    out = {"name": name}
    if all(k in fields for k in ("cpu family", "model", "stepping")):
        out["id"] = f"{fields['cpu family']}/{fields['model']}/{fields['stepping']}"
    if fields.get("flags"):
        flags = " ".join(sorted(fields["flags"].split()))
        out["flags_sha"] = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return out


def host_info(device: object = None, used_torch: bool | None = None) -> dict[str, object]:
    """The machine that computed an artifact: what makes float results differ between machines.

    Always: ``machine`` (architecture), ``cpu`` (:func:`cpu_model`), ``cpus``, ``os``, and
    ``env`` (the :data:`HOST_ENV` variables that are set). Where the process has imported torch
    (never imported here): ``torch_cpu_capability`` (the kernel family torch dispatches to: another
    processor kind, or ``ATEN_CPU_CAPABILITY``, gives other bits), ``torch_threads``,
    ``deterministic`` (``torch.are_deterministic_algorithms_enabled()``), and when ``device`` is
    a CUDA device, ``gpu``: model, compute capability, driver, CUDA and cuDNN versions, and
    cuDNN's determinism and benchmark flags. ``used_torch=False`` leaves the torch fields out
    although torch is loaded (a numpy-only job in a worker that imported torch for others: its
    record must not depend on how it was started).
    """
    import sys

    info: dict[str, object] = {
        "machine": platform.machine(), "cpu": dict(cpu_model()), "cpus": os.cpu_count(),
        "os": platform.platform(terse=True),
        "env": {k: os.environ[k] for k in HOST_ENV if k in os.environ},
    }
    torch = sys.modules.get("torch") if used_torch is not False else None
    if torch is None:
        return info
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["torch_threads"] = torch.get_num_threads()
    info["deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        try:
            driver = torch._C._cuda_getDriverVersion()  # e.g. 12040 for 12.4
            driver = f"{driver // 1000}.{driver % 1000 // 10}"
        except (AttributeError, RuntimeError):
            driver = None
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gb": round(props.total_memory / 2**30, 1), "driver": driver,
                       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                       "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
                       "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
    return info


_CPU_NOISE = ("(R)", "(TM)", "(tm)", " CPU", " Processor", " with Radeon Graphics")


def host_label(host: dict | None) -> str:
    """Short text for a :func:`host_info` record (a ``summary.csv`` column): the GPU's model where
    one ran, else the processor's model, its family/model/stepping and torch's CPU capability,
    e.g. ``Intel Xeon Platinum 8375C @ 2.90GHz 6/106/6/avx512``; "" for artifacts written before
    ltpipe recorded the host. Artifacts with different labels came from different kinds of
    machine (the reverse holds only as far as these fields tell)."""
    if not host:
        return ""
    gpu = host.get("gpu")
    if gpu:
        return f"{gpu.get('name', 'gpu')}/cuda{gpu.get('cuda')}"
    cpu_rec = host.get("cpu") or {}
    cpu = str(cpu_rec.get("name", ""))
    for noise in _CPU_NOISE:
        cpu = cpu.replace(noise, "")
    cpu = " ".join(cpu.split() + ([cpu_rec["id"]] if cpu_rec.get("id") else []))
    cap = host.get("torch_cpu_capability")
    return f"{cpu}/{cap.lower()}" if cap else cpu
