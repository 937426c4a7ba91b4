"""Pack and unpack stage-one artifacts, so another machine reruns only the classifier stage.

A bundle is a tar file holding, relative to the results directory, every split (``split.npz``,
``split.json``), trained backbone (``model.pt``) and feature cache (``cache.zarr/`` or
``cache.h5``), plus ``BUNDLE.json`` listing each file with its SHA-256. Classifier-stage outputs,
logs and resumable checkpoints stay out.

Why Snakemake then reruns nothing upstream: tar keeps each file's modification time, so every
output stays newer than its inputs; and a file without a Snakemake metadata record (the new
machine has none) triggers no params or code rerun. Consequence worth knowing: on the new
machine, editing a stage-one recipe is not noticed for the unpacked backbones; force it with
``snakemake --forcerun train``.
"""

from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path, PurePosixPath

from ltpipe.paths import CACHE_EXT, TEMPLATES
from ltpipe.utils import LtpipeError, atomic_path, sha256_file, write_json

_SPLIT, _MODEL, _CACHE = (PurePosixPath(TEMPLATES[k]).name for k in ("split", "model", "cache"))
#: the stage-one artifacts (ltpipe.paths), split.json beside the split; zarr caches are folders
STAGE_ONE_FILES = (_SPLIT, PurePosixPath(_SPLIT).with_suffix(".json").name, _MODEL,
                   _CACHE.format(ext=CACHE_EXT["hdf5"]))
STAGE_ONE_DIRS = (_CACHE.format(ext=CACHE_EXT["zarr"]),)
INDEX = "BUNDLE.json"


def stage_one_files(results: Path) -> list[Path]:
    """Every stage-one artifact file under ``results`` (relative paths, sorted)."""
    out = []
    for root, dirs, files in os.walk(results):
        rel_root = Path(root).relative_to(results)
        if rel_root.parts[:1] == ("logs",) or "cls" in rel_root.parts:
            dirs[:] = []
            continue
        in_cache = any(p in STAGE_ONE_DIRS for p in rel_root.parts)
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # skip temporary writes
        for name in files:
            if in_cache or name in STAGE_ONE_FILES:
                out.append(rel_root / name)
    return sorted(out)


def pack(results: str | Path, archive: str | Path) -> dict:
    """Write ``archive`` (a tar) with the stage-one artifacts under ``results``."""
    results = Path(results)
    files = stage_one_files(results)
    if not any(f.name == "model.pt" for f in files):
        raise LtpipeError(f"no trained backbone (model.pt) under {results}: run the workflow "
                          "first, or point --results at the right directory")
    index = {"files": {str(PurePosixPath(*f.parts)): sha256_file(results / f) for f in files}}
    with atomic_path(archive) as tmp:
        with tarfile.open(tmp, "w") as tar:
            for f in files:
                tar.add(results / f, arcname=str(PurePosixPath(*f.parts)), recursive=False)
            idx_path = Path(str(tmp) + ".index")
            write_json(idx_path, index)
            tar.add(idx_path, arcname=INDEX)
            idx_path.unlink()
    print(f"bundle: packed {len(files)} files from {results} into {archive}")
    return index


#: tarfile's "data" extraction filter (Python 3.11.4+, 3.10.12+); older Pythons get the same
#: refusals from :func:`_safe_members` and the same attribute clean-up from :func:`_as_data`
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


def _safe_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Every member, refusing the archive when one is not a plain file or folder at a relative
    path that stays inside ``dest`` once links already on disk are followed (absolute paths,
    ``..``, symbolic and hard links, devices, FIFOs)."""
    root = os.path.realpath(dest)
    members = []
    for m in tar.getmembers():
        p = PurePosixPath(m.name)
        inside = os.path.realpath(os.path.join(root, *p.parts)) if p.parts else root
        if (p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir())
                or os.path.commonpath([root, inside]) != root):
            raise LtpipeError(f"bundle member {m.name!r} is not a plain file or folder at a "
                              "relative path inside the results directory; refusing to unpack "
                              "this archive (make a new one with `ltpipe bundle pack`)")
        members.append(m)
    return members


def _as_data(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """A copy of ``m`` with what the "data" filter drops on Pythons without it: owner (so root
    does not chown to the archive's ids), setuid/setgid/sticky bits and group/other write."""
    m = copy.copy(m)
    m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
    m.mode &= 0o755
    return m


def unpack(archive: str | Path, results: str | Path, force: bool = False) -> int:
    """Extract ``archive`` into ``results``, keeping modification times; verify every checksum.

    A file that already exists with different content is not overwritten (LtpipeError naming it)
    unless ``force``; an identical one is left as it is.
    """
    results = Path(results)
    if not Path(archive).is_file():
        raise LtpipeError(f"bundle {archive} not found; make one with `ltpipe bundle pack`")
    with tarfile.open(archive) as tar:
        members = _safe_members(tar, results)
        try:
            index = read_json_member(tar, INDEX)
        except KeyError:
            raise LtpipeError(f"{archive} has no {INDEX}: not an ltpipe bundle") from None
        todo = []
        for m in members:
            if m.name == INDEX:
                continue
            target = results / m.name
            if target.exists():
                if sha256_file(target) == index["files"].get(m.name):
                    continue
                if not force:
                    raise LtpipeError(f"{target} exists and differs from the bundle's copy; move "
                                      "it away or unpack with --force")
            todo.append(m)
        results.mkdir(parents=True, exist_ok=True)
        if _HAS_DATA_FILTER:
            tar.extractall(results, members=todo, filter="data")
        else:
            tar.extractall(results, members=[_as_data(m) for m in todo])
    bad = [name for name, digest in index["files"].items()
           if sha256_file(results / name) != digest]
    if bad:
        raise LtpipeError(f"checksum mismatch after unpacking: {bad[:5]}; the archive is damaged")
    print(f"bundle: unpacked {len(todo)} files into {results} "
          f"({len(index['files']) - len(todo)} already present)")
    return len(todo)


def read_json_member(tar: tarfile.TarFile, name: str) -> dict:
    import json

    fh = tar.extractfile(name)
    if fh is None:
        raise KeyError(name)
    return json.load(fh)

