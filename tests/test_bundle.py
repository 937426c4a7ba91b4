"""Unpacking a bundle refuses every member that could write outside the results directory, on
every supported Python: with tarfile's "data" filter where the Python has it (3.11.4+), with
ltpipe's own member checks where it does not (Debian 12's 3.11.2). Both paths run here."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile

import pytest

from ltpipe import bundle
from ltpipe.utils import LtpipeError

PATHS = ["with data filter", "own checks"]


@pytest.fixture(params=PATHS)
def extract_path(request, monkeypatch):
    """Run the test once through each extraction path."""
    if request.param == PATHS[0]:
        if not hasattr(tarfile, "data_filter"):
            pytest.skip("this Python's tarfile has no data filter (added in 3.11.4 / 3.10.12)")
        monkeypatch.setattr(bundle, "_HAS_DATA_FILTER", True)
    else:
        monkeypatch.setattr(bundle, "_HAS_DATA_FILTER", False)
    return request.param


def _member(tar, name, data=b"", **attrs):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def _archive(path, members, extra=()):
    """A bundle with regular files ``members`` ({name: bytes}, indexed) and raw ``extra``
    members ((name, attrs) pairs, not indexed)."""
    index = {"files": {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}}
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            _member(tar, name, data, mode=0o6777)  # setuid, setgid, world-writable
        for name, attrs in extra:
            _member(tar, name, **attrs)
        _member(tar, bundle.INDEX, json.dumps(index).encode())
    return path


def test_plain_bundle_unpacks_with_modes_cleaned(tmp_path, extract_path):
    archive = _archive(tmp_path / "b.tar", {"d/if10/s0/split.json": b"{}", "d/model.pt": b"w"})
    assert bundle.unpack(archive, tmp_path / "results") == 2
    target = tmp_path / "results" / "d" / "model.pt"
    assert target.read_bytes() == b"w"
    mode = stat.S_IMODE(target.stat().st_mode)
    # the "data" filter's rule, by hand: no setuid/setgid/sticky, no group/other write
    assert mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022) == 0
    assert target.stat().st_uid == os.getuid()


@pytest.mark.parametrize("name, attrs", [
    ("../escaped", {}),
    ("/tmp/absolute-escape", {}),
    ("d/../../escaped", {}),
    ("link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
    ("hard", {"type": tarfile.LNKTYPE, "linkname": "d/model.pt"}),
    ("fifo", {"type": tarfile.FIFOTYPE}),
])
def test_member_outside_or_not_plain_is_refused(tmp_path, extract_path, name, attrs):
    archive = _archive(tmp_path / "b.tar", {"d/model.pt": b"w"}, extra=[(name, attrs)])
    with pytest.raises(LtpipeError, match=f"bundle member '{name}'"):
        bundle.unpack(archive, tmp_path / "results")
    assert not (tmp_path / "results").exists()  # refused before anything is written
    assert not (tmp_path / "escaped").exists()


def test_member_through_a_link_on_disk_is_refused(tmp_path, extract_path):
    """A folder of the results directory that is a link to elsewhere must not carry a write out
    of it (tar's members are plain, the danger is on disk)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    results = tmp_path / "results"
    results.mkdir()
    (results / "d").symlink_to(outside)
    archive = _archive(tmp_path / "b.tar", {"d/model.pt": b"w"})
    with pytest.raises(LtpipeError, match="bundle member 'd/model.pt'"):
        bundle.unpack(archive, results)
    assert list(outside.iterdir()) == []
