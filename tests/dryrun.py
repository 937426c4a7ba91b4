"""Reading Snakemake dry runs in tests: the rule -> job count table."""

from __future__ import annotations

import re


def job_counts(text: str) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table ({} when nothing is to be done)."""
    if "Nothing to be done" in text:
        return {}
    counts: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        if re.match(r"^job\s+count", line.strip()):
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if m and m.group(1) != "total":
                counts[m.group(1)] = int(m.group(2))
            elif line.strip().startswith("total"):
                break
    assert counts, f"no job table in dry run output:\n{text[-3000:]}"
    return counts
