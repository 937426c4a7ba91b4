"""Change detection for a data set's files: a digest of their state, taken when the DAG is built.

The split rule carries :func:`ltpipe.data.sources.data_state` of its data set in its params, so
Snakemake's params trigger reruns the split (and with it everything downstream) when a file of
the data set is changed, added or removed, and nothing else. Two modes (the data set's
``change_detection`` key):

- ``stat`` (default): each file's relative path, size and ``mtime_ns`` (one ``stat`` call per
  file, no reads): cheap enough for ImageNet-LT's 186k images (docs/data-sources.md has the
  measured cost). Touching a file with unchanged bytes counts as a change.
- ``content``: each file's SHA-256 (reads every byte): only real content changes count, at the
  cost of reading the whole data set at every DAG build.

A missing file is recorded as missing (not an error): the split job reports it, with its fix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from ltpipe.utils import LtpipeError, sha256_file

MODES = ("stat", "content")


def files_state(root: Path, rel_paths: Iterable[str], mode: str = "stat") -> str:
    """Hex SHA-256 over ``rel_path, size, mtime_ns`` (``stat``) or ``rel_path, sha256``
    (``content``) of each file ``root / rel_path``, in the order given."""
    if mode not in MODES:
        raise LtpipeError(f"change_detection: {mode!r} is unknown; choose one of {list(MODES)}")
    h = hashlib.sha256()
    for rel in rel_paths:
        path = os.path.join(root, rel)
        try:
            if mode == "stat":
                st = os.stat(path)
                line = f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n"
            else:
                line = f"{rel}\t{sha256_file(path)}\n"
        except FileNotFoundError:
            line = f"{rel}\tmissing\n"
        except OSError as exc:  # unreadable: recorded as such, the split job names the file
            line = f"{rel}\t{type(exc).__name__}\n"
        h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()
