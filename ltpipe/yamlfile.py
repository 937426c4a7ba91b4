"""Reading YAML strictly: a duplicate key or a syntax error is an error naming the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ltpipe.utils import LtpipeError


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (plain YAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise LtpipeError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line "
                f"{seen[key]}): YAML keeps only the last one; rename or merge the two entries"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_strict(path: str | Path) -> Any:
    """Load a YAML file, raising :class:`LtpipeError` on duplicate keys or a syntax error."""
    try:
        with open(path) as fh:
            return yaml.load(fh, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise LtpipeError(f"{path}: not valid YAML: {err}") from None
    except LtpipeError as err:
        raise LtpipeError(f"{path}: {err}") from None
