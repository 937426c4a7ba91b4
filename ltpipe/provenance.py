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
