"""Data: sources, long-tail profiles, list files and the split artifact (docs/methods.md#splits).

``FileListDataset`` (a torch ``Dataset``) is loaded on first access so that importing this
package does not import torch. Samplers live in :mod:`ltpipe.data.samplers`.
"""

from __future__ import annotations

from typing import Any

from ltpipe.data.listfile import FileListData, parse_list_file
from ltpipe.data.profiles import lt_counts, select_lt_indices, shot_groups, stratified_holdout
from ltpipe.data.sources import SOURCES, InMemoryData, open_source
from ltpipe.data.split import Split, build_split, read_split, split_data, write_split

__all__ = [
    "FileListData", "FileListDataset", "InMemoryData", "SOURCES", "Split", "build_split",
    "lt_counts", "open_source", "parse_list_file", "read_split", "select_lt_indices",
    "shot_groups", "split_data", "stratified_holdout", "write_split",
]


def __getattr__(name: str) -> Any:
    if name == "FileListDataset":
        from ltpipe.data.torch_dataset import FileListDataset

        return FileListDataset
    raise AttributeError(f"module 'ltpipe.data' has no attribute {name!r}")
