"""The artifact layout: every path the workflow writes, spelled once.

The rule files take their output and log patterns from :class:`Layout` (``{name}`` fields left for
Snakemake's wildcards); Python (targets, input functions, the report) fills the same templates
with :meth:`Layout.path`. Under ``results``::

    {dataset}/if{imb}/s{split_seed}/split.npz                                     split
    {dataset}/if{imb}/s{split_seed}/{backbone}/t{seed}/model.pt                   stage one
    {dataset}/if{imb}/s{split_seed}/{backbone}/t{seed}/cache.zarr|cache.h5        feature cache
    {dataset}/if{imb}/s{split_seed}/cls/{classifier}/t{seed}/{point}/metrics.json classifier stage
    {dataset}/if{imb}/plots/...                                                   figures
    summary.csv, summary.md, paired.csv, comparison.csv, comparison.md, tables.html           tables
    logs/{step}/...                                                               logs

``{backbone}`` names a stage-one recipe (a key of the config's ``backbones:``).
"""

from __future__ import annotations

import re
from typing import Any

#: cache backend -> extension of the cache's path (``cache.zarr`` is a folder, ``cache.h5`` a file)
CACHE_EXT = {"zarr": "zarr", "hdf5": "h5"}

_SPLIT = "{dataset}/if{imb}/s{split_seed}"
_RUN = _SPLIT + "/{backbone}/t{seed}"
_JOB = _SPLIT + "/cls/{classifier}/t{seed}/{point}"
TEMPLATES = {
    "split": _SPLIT + "/split.npz",
    "model": _RUN + "/model.pt",
    "cache": _RUN + "/cache.{ext}",
    "metrics": _JOB + "/metrics.json",
    "logits": _JOB + "/logits.npz",
    "plots": "{dataset}/if{imb}/plots",
    # the report's figures, in that folder (plot_wnorm_confusion's kind: wnorm or confusion;
    # plot_tsne's kind: backbone or fused)
    "plot_perclass": "{dataset}/if{imb}/plots/perclass_{group}.png",
    "plot_sweep": "{dataset}/if{imb}/plots/sweep_{classifier}.png",
    "plot_wnorm_confusion": "{dataset}/if{imb}/plots/{kind}_{group}.png",
    "plot_tsne": "{dataset}/if{imb}/plots/tsne_{kind}_{features}.png",
    "summary_csv": "summary.csv",
    "summary_md": "summary.md",
    "paired_csv": "paired.csv",
    "comparison_csv": "comparison.csv",
    "comparison_md": "comparison.md",
    "tables_html": "tables.html",
}
#: per-job log names under ``logs/{step}/`` (``.log``; train also keeps a ``.tsv`` benchmark)
LOGS = {
    "split": "{dataset}_if{imb}_s{split_seed}",
    "train": "{dataset}_if{imb}_s{split_seed}_{backbone}_t{seed}",
    "dump": "{dataset}_if{imb}_s{split_seed}_{backbone}_t{seed}",
    "classify": "{dataset}_if{imb}_s{split_seed}_{classifier}_t{seed}_{point}",
}


class Layout:
    """The paths of one config: its ``results`` folder and its cache backend's extension."""

    def __init__(self, cfg: dict[str, Any]):
        self.results = str(cfg.get("results", "results"))
        backend = cfg.get("cache", {}).get("backend", "zarr")
        self.ext = CACHE_EXT[backend]
        self.logs = f"{self.results}/logs"

    def pattern(self, name: str) -> str:
        """The path of artifact ``name`` with its ``{fields}`` left open (a rule's pattern)."""
        return f"{self.results}/" + TEMPLATES[name].replace("{ext}", self.ext)

    def path(self, name: str, **fields: Any) -> str:
        """The path of artifact ``name`` with every field filled in."""
        return self.pattern(name).format(**fields)

    def log(self, step: str, suffix: str = "log") -> str:
        """The log pattern of one job of ``step`` (``suffix`` ``tsv``: its benchmark file)."""
        return f"{self.logs}/{step}/{LOGS.get(step, step)}.{suffix}"


def parse(name: str, path: Any) -> dict[str, str] | None:
    """The fields of a path of artifact ``name`` (matched at the path's end), or None."""
    regex = re.escape(TEMPLATES[name].replace("{ext}", "@ext@"))
    regex = regex.replace("@ext@", "(?:" + "|".join(CACHE_EXT.values()) + ")")
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", regex)
    m = re.search(f"(?:^|/){regex}$", str(path))
    return m.groupdict() if m else None


def imb_tag(value: Any) -> str:
    """Path tag of an imbalance factor: 10 -> '10', 12.5 -> '12.5', 'native' -> 'native'."""
    if value == "native":
        return "native"
    value = float(value)
    return str(int(value)) if value.is_integer() else str(value)
