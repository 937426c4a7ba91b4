"""List-file data sets (ImageNet-LT, Places-LT, iNaturalist 2018): parsing and the data record.

Each list file has one ``relative/path label`` per line; blank lines are skipped. Images are
decoded lazily by :class:`ltpipe.data.torch_dataset.FileListDataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltpipe.utils import LtpipeError


@dataclass
class FileListData:
    """Images named by path under ``root``; ``ids`` index the source's own list file."""

    root: Path
    paths: list[str]
    labels: np.ndarray  # int64 [N]
    ids: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.paths)


def parse_list_file(path: str | Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Read ``relative/path label`` lines; return the paths and ``int64`` labels.

    A line that is not exactly two whitespace-separated fields, whose label is not an integer,
    or whose label is outside ``[0, num_classes)`` raises :class:`LtpipeError` naming the file
    and the 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise LtpipeError(
            f"list file {path} not found; put the list files in the folder named by "
            "dataset.lists (one 'relative/path label' per line)"
        )
    paths: list[str] = []
    labels: list[int] = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = path.read_bytes()[:err.start].count(b"\n") + 1
        raise LtpipeError(f"{path}:{lineno}: not UTF-8 text ({err.reason} at byte {err.start}); "
                          "save the list file as UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise LtpipeError(
                f"{path}:{lineno}: expected 'relative/path label' (two fields), got "
                f"{len(fields)} fields: {line.strip()!r}"
            )
        try:
            label = int(fields[1])
        except ValueError:
            raise LtpipeError(
                f"{path}:{lineno}: label {fields[1]!r} is not an integer"
            ) from None
        if not 0 <= label < num_classes:
            raise LtpipeError(
                f"{path}:{lineno}: label {label} is outside [0, {num_classes}); "
                "check the list file or dataset.num_classes"
            )
        paths.append(fields[0])
        labels.append(label)
    if not paths:
        raise LtpipeError(f"list file {path} has no entries; expected 'relative/path label' lines")
    return paths, np.asarray(labels, dtype=np.int64)
