"""The report stage's subcommands of ``ltpipe``: ``plot <kind>``, ``compare`` (published rows)
and ``compare-runs`` (two result sets, row by row).

Registered into the ``ltpipe`` command (``ltpipe/cli.py``) by :func:`add_subcommands`; the rules
call ``python -m ltpipe plot perclass --metrics ... --out x.png``.
"""

from __future__ import annotations

import argparse
import json


def _plot(args: argparse.Namespace) -> None:
    from ltpipe.report import plots

    kind = args.plot_kind
    if kind == "perclass":
        plots.plot_per_class(args.metrics, args.out)
    elif kind == "sweep":
        plots.plot_sweep(args.metrics, args.out, args.classifier)
    elif kind == "wnorm":
        plots.plot_weight_norms(args.metrics, args.caches, args.out)
    elif kind == "confusion":
        plots.plot_confusion(args.metrics, args.caches, args.out)
    else:
        w1, normalize, title = None, False, args.title
        if args.ffn_settings is not None:
            w1, normalize = fusion_settings(args.ffn_settings)
            title += f" (w1 {w1})"
        plots.plot_tsne(args.caches, args.out, title=title, max_points=args.max_points,
                        seed=args.seed, w1=w1, normalize=normalize)
    print(f"plot {kind}: wrote {args.out}")


def fusion_settings(ffn_settings: dict) -> tuple[float, bool]:
    """w1 and whether features are L2-normalised first, as an FFN job with ``ffn_settings``
    resolves them (over the method's declared defaults; imports the method, hence torch)."""
    from ltpipe.classifiers import merge_settings

    settings = merge_settings("ffn", ffn_settings)
    return float(settings["w1"]), settings["variant"] == "reference"


def _compare(args: argparse.Namespace) -> None:
    from ltpipe.report.published import write_comparison

    traits = json.loads(args.traits)
    table = write_comparison(args.published, args.summary, traits, args.csv, args.md, args.html)
    print(f"compare: {sum(r['ours'] != 'not run' for r in table)} of {len(table)} published "
          f"rows matched; wrote {args.csv}, {args.md}")


def _compare_runs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ltpipe.report.compare import compare

    records, text = compare(args.a, args.b, k=args.k, tolerance=args.tolerance)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    bad = [r for r in records if r["verdict"] not in ("identical", "within noise")]
    return 1 if args.check and bad else 0


def _docs_tables(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ltpipe.report import doctables

    root = Path(args.root)
    if args.action == "record":
        if args.results is None or args.name is None or not args.command:
            raise SystemExit("docs-tables record: give RESULTS NAME and at least one --command "
                             "(the command that made the run, as a reader would type it)")
        out = doctables.record(args.results, args.name, args.command, root, args.config,
                               args.extra)
        print(f"docs-tables: recorded {args.results} as {out}")
        return 0
    stale = doctables.update(root, check=args.check)
    for line in stale:
        print(f"docs-tables: {'stale' if args.check else 'updated'}: {line}")
    if args.check and stale:
        print("docs-tables: run `python -m ltpipe docs-tables update` and commit the pages")
        return 1
    print(f"docs-tables: {len(stale)} block(s) {'stale' if args.check else 'updated'}")
    return 0


def add_subcommands(subparsers) -> None:
    """Add ``plot`` (perclass | sweep | wnorm | confusion | tsne), ``compare`` and
    ``compare-runs``."""
    p = subparsers.add_parser("plot", help="draw one report figure (PNG)")
    kinds = p.add_subparsers(dest="plot_kind", required=True)
    specs = {
        "perclass": "per-class test accuracy against class size, per method",
        "sweep": "accuracy (all / many / medium / few) along one classifier entry's sweep",
        "wnorm": "per-class classifier weight norms sorted by class size",
        "confusion": "row-normalised test confusion matrices (C <= 20)",
        "tsne": "2-D t-SNE of cached test features (one cache, or two fused as FFN fuses)",
    }
    for kind, text in specs.items():
        k = kinds.add_parser(kind, help=text)
        k.add_argument("--out", required=True, help="the PNG to write")
        if kind != "tsne":
            k.add_argument("--metrics", nargs="+", required=True, help="metrics.json files")
        if kind in {"wnorm", "confusion", "tsne"}:
            k.add_argument("--caches", nargs="+", required=kind != "wnorm", default=[],
                           help="feature caches (.../s{split}/{backbone}/t{seed}/cache.*)")
        if kind == "sweep":
            k.add_argument("--classifier", required=True, help="the swept classifier entry")
        if kind == "tsne":
            k.add_argument("--title", default="")
            k.add_argument("--max-points", type=int, default=1000)
            k.add_argument("--seed", type=int, default=0)
            k.add_argument("--ffn-settings", type=json.loads, default=None,
                           help='fuse two caches (KPS first) as an FFN job with these settings '
                                'does, e.g. {"w1": 0.9, "variant": "reference"} (JSON)')
        k.set_defaults(func=_plot)

    c = subparsers.add_parser("compare", help="published numbers beside ours (CSV + Markdown)")
    c.add_argument("--published", required=True, help="workflow/published_results.yaml")
    c.add_argument("--summary", required=True, help="results/summary.csv")
    c.add_argument("--traits", required=True,
                   help="JSON: {datasets: {name: source}, backbones: {name: {architecture, "
                        "loss, mixup, afa}}} (ltpipe.workflow.targets.run_traits)")
    c.add_argument("--csv", required=True)
    c.add_argument("--md", required=True)
    c.add_argument("--html", default=None, help="also an HTML page of both tables")
    c.set_defaults(func=_compare)


    from ltpipe.report.compare import DEFAULT_K, DEFAULT_TOLERANCE

    r = subparsers.add_parser(
        "compare-runs", help="two result sets row by row: identical / within noise / different",
        description="Match the rows of two summary.csv files (yours against a documented run, a "
                    "bundle's stage-two rerun against the original) and give each a verdict. "
                    "See ltpipe/report/compare.py for the rule.")
    r.add_argument("a", help="results folder (or its summary.csv): the reference")
    r.add_argument("b", help="results folder (or its summary.csv): the one checked")
    r.add_argument("--k", type=float, default=DEFAULT_K,
                   help="allowed difference in units of the seed noise of a difference of two "
                        "runs, sqrt(2) x std over seeds (default: %(default)s)")
    r.add_argument("--tolerance", default=DEFAULT_TOLERANCE,
                   help="where a configuration has a single seed: 'binomial' (k x sqrt(2) x the "
                        "binomial standard error of the accuracy over the group's test images) "
                        "or a number of points (default: %(default)s)")
    r.add_argument("--out", default=None, help="also write the Markdown here")
    r.add_argument("--check", action="store_true",
                   help="exit 1 when a row is different or on one side only")
    r.set_defaults(func=_compare_runs)

    from ltpipe.report.doctables import ROOT

    d = subparsers.add_parser(
        "docs-tables", help="record a run for the docs; fill the docs' tables from recorded runs",
        description="record RESULTS NAME --command CMD: copy a finished run's report files and "
                    "its stamp into docs/runs/NAME. update [--check]: regenerate every "
                    "<!-- ltpipe-table --> block of README.md and docs/*.md from its run.")
    d.add_argument("action", choices=["record", "update"])
    d.add_argument("results", nargs="?", help="record: the run's results folder")
    d.add_argument("name", nargs="?", help="record: the recorded run's name")
    d.add_argument("--command", action="append", default=[],
                   help="record: a command that made the run (repeat for several)")
    d.add_argument("--config", default=None, help="record: the config file the run used")
    d.add_argument("--extra", action="append", default=[],
                   help="record: another file made from the run to keep beside it (repeat)")
    d.add_argument("--check", action="store_true", help="update: change nothing, exit 1 if stale")
    d.add_argument("--root", default=str(ROOT), help="the repository (default: %(default)s)")
    d.set_defaults(func=_docs_tables)
