"""Published numbers beside ours: ``results/comparison.csv`` and ``comparison.md``.

``workflow/published_results.yaml`` lists the papers' top-1 accuracies with their sources. A run
of ours matches an entry when its data set's source, imbalance factor, every backbone's
architecture and the classifier method agree, and every backbone has the entry's stage-one traits
(loss, mixup, AFA). Our number is the mean (± sample std) over seeds of the summary rows; every
sweep point is its own row (none is selected on the test set). An entry without a match reads
"not run".
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path

from ltpipe.paths import imb_tag
from ltpipe.report.summary import METRICS, aggregate, markdown_table
from ltpipe.utils import LtpipeError, atomic_path
from ltpipe.yamlfile import load_yaml_strict

ENTRY_KEYS = {"label", "dataset", "imbalance_factor", "architecture", "method", "top1", "source",
              "table", "setting"}
OPTIONAL_KEYS = {"stage_one", "verified"}
TRAITS = {"loss", "mixup", "afa"}
COLUMNS = ["dataset", "imbalance_factor", "architecture", "method", "label", "published",
           "ours", "ours_std", "runs", "difference", "our_dataset", "our_backbone",
           "our_classifier", "our_point", "source", "table", "setting"]
NOT_RUN = "not run"


def load_published(path: str | Path) -> list[dict]:
    """Entries of the published-results file, each with its source resolved (``paper``)."""
    doc = load_yaml_strict(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise LtpipeError(f"{path}: expected a mapping with 'sources' and a 'results' list")
    sources = doc.get("sources") or {}
    out = []
    for i, e in enumerate(doc["results"]):
        where = f"{path}: results[{i}]"
        if not isinstance(e, dict):
            raise LtpipeError(f"{where}: expected a mapping, got {e!r}")
        missing = sorted(ENTRY_KEYS - set(e))
        extra = sorted(set(e) - ENTRY_KEYS - OPTIONAL_KEYS)
        if missing or extra:
            raise LtpipeError(f"{where} ({e.get('label')}): missing keys {missing}, unknown keys "
                              f"{extra}; allowed: {sorted(ENTRY_KEYS | OPTIONAL_KEYS)}")
        if e["source"] not in sources or not sources[e["source"]].get("paper"):
            raise LtpipeError(f"{where}: source {e['source']!r} is not under 'sources' (with a "
                              f"'paper'); known: {sorted(sources)}")
        top1 = e["top1"]
        if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 < top1 <= 100:
            raise LtpipeError(f"{where}: top1 {top1!r} is not a percentage in (0, 100]")
        bad = sorted(set(e.get("stage_one") or {}) - TRAITS)
        if bad:
            raise LtpipeError(f"{where}: stage_one traits {bad} unknown; allowed {sorted(TRAITS)}")
        out.append({**e, "imbalance_factor": imb_tag(e["imbalance_factor"]),
                    "paper": sources[e["source"]]["paper"]})
    return out


def _matches(entry: dict, row: dict, traits: dict) -> bool:
    source = traits["datasets"].get(row["dataset"])
    if source != entry["dataset"] or str(row["imbalance_factor"]) != entry["imbalance_factor"]:
        return False
    if row["method"] != entry["method"]:
        return False
    recipes = [traits["backbones"].get(b) for b in str(row["backbone"]).split("+")]
    if any(r is None or r["architecture"] != entry["architecture"] for r in recipes):
        return False
    want = entry.get("stage_one") or {}
    return all(r.get(k) == v for r in recipes for k, v in want.items())


def compare(published: list[dict], rows: list[dict], traits: dict) -> list[dict]:
    """One output row per (published entry, matching configuration of ours), else "not run".

    ``rows`` are summary rows (one per job: dataset, imbalance_factor, backbone, classifier,
    method, point, all, ...); ``traits`` is :func:`ltpipe.workflow.targets.run_traits`.
    """
    ours = aggregate(rows)
    out = []
    for e in published:
        base = {k: e[k] for k in ("dataset", "imbalance_factor", "architecture", "method",
                                  "label", "source", "table", "setting")}
        base["published"] = float(e["top1"])
        base["source"], base["source_key"] = e["paper"], e["source"]
        hits = [a for a in ours if _matches(e, a, traits)]
        if not hits:
            out.append({**base, "ours": NOT_RUN, "ours_std": "", "runs": 0, "difference": "",
                        "our_dataset": "", "our_backbone": "", "our_classifier": "",
                        "our_point": ""})
        for a in sorted(hits, key=lambda a: (a["dataset"], a["backbone"], a["classifier"],
                                             a["point"])):
            mean, std = a["all"]
            out.append({**base, "ours": mean, "ours_std": "" if std is None or math.isnan(std)
                        else std, "runs": a["runs"],
                        "difference": "" if mean is None else mean - base["published"],
                        "our_dataset": a["dataset"], "our_backbone": a["backbone"],
                        "our_classifier": a["classifier"], "our_point": a["point"]})
    return out


def _num(v, signed: bool = False) -> str:
    if isinstance(v, float):
        return f"{v:+.2f}" if signed else f"{v:.2f}"
    return str(v)


def unmatched_line(table: list[dict], rows: list[dict], traits: dict) -> str:
    """One sentence: how many published rows have no run of ours, and why (the data set, or its
    imbalance factor, is not in this run; else no run has its architecture, method and stage-one
    traits). Empty when every row matched."""
    missing = [r for r in table if r["ours"] == NOT_RUN]
    if not missing:
        return ""
    sources = set(traits["datasets"].values())
    ran = {(traits["datasets"].get(r["dataset"]), str(r["imbalance_factor"])) for r in rows}
    why: dict[str, set] = {"data set": set(), "IF": set(), "other": set()}
    count = dict.fromkeys(why, 0)
    for r in missing:
        reason = _reason(r, sources, ran)
        count[reason] += 1
        why[reason].add({"data set": r["dataset"],
                         "IF": f"{r['dataset']} IF {r['imbalance_factor']}"}.get(
            reason, f"{r['label']} ({r['dataset']} IF {r['imbalance_factor']}, "
                    f"{r['architecture']})"))
    parts = []
    if why["data set"]:
        parts.append(f"{count['data set']} are on data sets this run does not have "
                     f"({', '.join(sorted(why['data set']))})")
    if why["IF"]:
        parts.append(f"{count['IF']} at imbalance factors it did not run "
                     f"({', '.join(sorted(why['IF']))})")
    if why["other"]:
        parts.append(f"{count['other']} have no run with their architecture, method and "
                     f"stage-one traits ({', '.join(sorted(why['other']))})")
    return (f"Not matched: {len(missing)} of {len(table)} published rows, not listed here "
            f"(comparison.csv has them as \"{NOT_RUN}\"): " + "; ".join(parts) + ".")


def _reason(r: dict, sources: set, ran: set) -> str:
    if r["dataset"] not in sources:
        return "data set"
    return "IF" if (r["dataset"], str(r["imbalance_factor"])) not in ran else "other"


def markdown(table: list[dict]) -> str:
    """The published rows that have a run of ours, beside it."""
    table = [r for r in table if r["ours"] != NOT_RUN]
    if not table:
        return ""
    head = ["data set", "IF", "architecture", "method", "published", "ours", "runs", "ours - pub.",
            "our run", "source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        ours = _num(r["ours"]) + (f" ± {r['ours_std']:.2f}" if r["ours_std"] != "" else "")
        run = "" if r["ours"] == NOT_RUN else (
            f"{r['our_dataset']} / {r['our_backbone']} / {r['our_classifier']} / {r['our_point']}")
        cells = [r["dataset"], r["imbalance_factor"], r["architecture"], r["label"],
                 _num(r["published"]), ours, str(r["runs"]), _num(r["difference"], True), run,
                 f"{r.get('source_key', r['source']).upper()} paper, {r['table']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _html_table(md: str) -> str:
    """A Markdown pipe table (as written here and by summary.py) as an HTML table."""
    rows = [[html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
            for line in md.strip().splitlines() if not line.startswith("|---")]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def tables_html(summary_rows: list[dict], table: list[dict], unmatched: str = "") -> str:
    """One self-contained HTML page: our results (mean ± std over seeds) and the comparison."""
    style = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse;"
             "margin-bottom:2em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
             "th{background:#eee}td:nth-child(-n+5){text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head>"
            "<body><h2>Our results</h2><p>Top-1 accuracy (%) on the balanced test set; mean ± "
            "sample std over split and training seeds; every sweep point is its own row.</p>"
            + _html_table(markdown_table(summary_rows))
            + "<h2>Published results beside ours</h2><p>Matched on data source, imbalance "
            "factor, backbone architecture, method and stage-one traits; the published rows "
            "without a matching run are counted below the table.</p>"
            + (_html_table(matched) if (matched := markdown(table)) else "")
            + f"<p>{html.escape(unmatched)}</p></body></html>")


def write_comparison(published_path: str | Path, summary_csv: str | Path, traits: dict,
                     csv_path: str | Path, md_path: str | Path,
                     html_path: str | Path | None = None) -> list[dict]:
    """Read the published file and summary.csv; write the comparison CSV and Markdown (and an
    HTML page with our aggregated results and the comparison, for the Snakemake report)."""
    with open(summary_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in METRICS:
            r[k] = float(r[k]) if r.get(k) not in (None, "", "None") else None
    table = compare(load_published(published_path), rows, traits)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k])
                         for k in COLUMNS})
    with atomic_path(csv_path) as tmp:
        Path(tmp).write_text(buf.getvalue())
    n_run = sum(r["ours"] != NOT_RUN for r in table)
    text = ("# Published results beside ours\n\nTop-1 accuracy (%) on the balanced test set. A "
            "run of ours matches a published entry on the data source, imbalance factor, "
            "backbone architecture, classifier method and stage-one traits; ours is the mean "
            "± sample std over seeds, and every sweep point is its own row (no selection on "
            f"test). {n_run} of {len(table)} published rows have a matching run.\n\n"
            + markdown(table) + ("\n" if n_run else "")
            + unmatched_line(table, rows, traits) + "\n")
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(text)
    if html_path is not None:
        with atomic_path(html_path) as tmp:
            Path(tmp).write_text(tables_html(rows, table, unmatched_line(table, rows, traits)))
    return table
