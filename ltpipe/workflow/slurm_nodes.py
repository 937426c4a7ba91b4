"""What a Slurm cluster offers: ``sinfo``'s node configurations per partition.

``parse_sinfo`` reads ``sinfo --all --exact --noheader --format "%P|%c|%m|%G|%l|%D"`` (one line per
partition and node configuration) into ``Partition`` records of ``NodeKind``; ``run_sinfo`` asks
the cluster. :mod:`ltpipe.workflow.slurm_fit` holds each job's request against them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

SINFO_FORMAT = "%P|%c|%m|%G|%l|%D"
SINFO_CMD = ["sinfo", "--all", "--exact", "--noheader", "--format", SINFO_FORMAT]


class SinfoError(ValueError):
    """`sinfo` output that this module cannot read; the message quotes the line."""


@dataclass(frozen=True)
class NodeKind:
    """One node configuration of a partition: CPUs, memory (MB), GPUs by model, and how many."""

    cpus: int
    mem_mb: int
    gpus: tuple[tuple[str, int], ...] = ()  # (model or "", count); "" = no model named
    count: int = 1

    @property
    def n_gpus(self) -> int:
        return sum(n for _, n in self.gpus)

    def gpus_of(self, model: str | None) -> int:
        """GPUs of this model ("" or None: any model)."""
        return sum(n for m, n in self.gpus if not model or m == model)


@dataclass
class Partition:
    """A partition: its name, whether it is the default, its time limit and its node kinds."""

    name: str
    default: bool = False
    time_limit_min: int | None = None  # None: no limit
    nodes: list[NodeKind] = field(default_factory=list)

    def largest(self, what: str) -> int:
        """The largest value of `what` (cpus, mem_mb, n_gpus) over this partition's nodes."""
        return max((getattr(n, what) for n in self.nodes), default=0)

    def gpu_models(self) -> list[str]:
        return sorted({m for n in self.nodes for m, _ in n.gpus if m})


def parse_time(text: str) -> int | None:
    """A Slurm time limit as minutes (rounded up); None for no limit.

    Forms: ``infinite``/``UNLIMITED``, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``.
    """
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise SinfoError(f"unreadable time limit {text!r}: expected e.g. 1-00:00:00 or infinite")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    return -(-seconds // 60)


def parse_gres(text: str) -> tuple[tuple[str, int], ...]:
    """The GPUs in a sinfo GRES field: ``(null)``, ``gpu:2``, ``gpu:a100:4(S:0-1)``,
    ``gpu:a100:2,gpu:v100:2,mps:100`` -> ``(("a100", 2), ("v100", 2))``."""
    out: dict[str, int] = {}
    # split on commas outside parentheses: "gpu:a100:4(S:0,1)" is one entry
    for entry in re.split(r",(?![^()]*\))", text.strip()):
        entry = re.sub(r"\(.*?\)", "", entry).strip()
        parts = entry.split(":")
        if parts[0] != "gpu":
            continue
        if len(parts) == 1:
            model, count = "", "1"
        elif len(parts) == 2:
            model, count = ("", parts[1]) if parts[1].isdigit() else (parts[1], "1")
        else:
            model, count = parts[1], parts[2]
        if not count.isdigit():
            raise SinfoError(f"unreadable GPU count in GRES {text!r}")
        out[model] = out.get(model, 0) + int(count)
    return tuple(sorted(out.items()))


def _number(text: str, what: str, line: str) -> int:
    m = re.fullmatch(r"(\d+)\+?", text.strip())
    if not m:
        raise SinfoError(f"unreadable {what} {text!r} in sinfo line {line!r}")
    return int(m.group(1))


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions by name from the output of ``SINFO_CMD`` (a ``*`` marks the default one)."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 6:
            raise SinfoError(f"sinfo line {line!r} does not have the 6 fields of {SINFO_FORMAT!r}")
        name, cpus, mem, gres, limit, count = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        part = parts.setdefault(name, Partition(name, default, parse_time(limit)))
        part.default = part.default or default
        part.nodes.append(NodeKind(_number(cpus, "CPU count", line), _number(mem, "memory", line),
                                   parse_gres(gres), _number(count, "node count", line)))
    return parts


def run_sinfo(env: dict[str, str] | None = None) -> str:
    """The text of ``SINFO_CMD``; OSError or CalledProcessError when sinfo cannot answer."""
    proc = subprocess.run(SINFO_CMD, capture_output=True, text=True, env=env, timeout=60,
                          check=True)
    return proc.stdout
