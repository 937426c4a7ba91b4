"""The docs' tables are generated from recorded runs: each block equals what `ltpipe docs-tables
update` writes from the run it names, and a changed run makes the block stale."""

from __future__ import annotations

import csv

import pytest

from ltpipe.cli import main
from ltpipe.report import doctables
from ltpipe.utils import LtpipeError, write_json

SUMMARY_MD = """# ltpipe results

intro

## Methods, sweeps chosen on validation

| dataset | all |
|---|---|
| fmnist | 81.00 ± 0.50 |

## Every job

| x |
"""


def fake_run(tmp_path):
    results = tmp_path / "results"
    (results / "a" / "cls").mkdir(parents=True)
    with open(results / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["dataset", "code", "host", "train_host"])
        w.writeheader()
        w.writerow({"dataset": "fmnist", "code": "0.1.0+gabc", "host": "Xeon/avx512",
                    "train_host": "Xeon/avx512"})
        w.writerow({"dataset": "fmnist", "code": "0.1.0+gabc", "host": "Xeon/avx512",
                    "train_host": "EPYC/avx2"})
    (results / "summary.md").write_text(SUMMARY_MD)
    write_json(results / "a" / "cls" / "metrics.json", {})
    return results


def test_record_then_update_then_check(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    results = fake_run(tmp_path)
    doctables.record(results, "study", ["snakemake --cores 2"], root)
    stamp = (root / "docs" / "runs" / "study" / "run.json").read_text()
    assert '"code": [\n    "0.1.0+gabc"\n  ]' in stamp and "EPYC/avx2" in stamp
    page = root / "docs" / "evidence.md"
    page.write_text('Before.\n\n<!-- ltpipe-table run=study section="Methods, sweeps chosen on '
                    'validation" -->\nhand-typed, stale\n<!-- /ltpipe-table -->\n\nAfter.\n')
    assert doctables.update(root, check=True) == [
        "docs/evidence.md: study / Methods, sweeps chosen on validation"]
    assert "hand-typed" in page.read_text()  # --check changes nothing
    assert len(doctables.update(root)) == 1
    text = page.read_text()
    assert text.startswith("Before.") and text.endswith("After.\n")
    assert "| fmnist | 81.00 ± 0.50 |" in text and "hand-typed" not in text
    assert "Every job" not in text  # only the named section
    assert "code `0.1.0+gabc`; machine `EPYC/avx2`, `Xeon/avx512`" in text
    assert "made by `snakemake --cores 2`" in text
    assert doctables.update(root, check=True) == []
    # the run changes: the block is stale, and the CLI's --check says so with exit status 1
    md = root / "docs" / "runs" / "study" / "summary.md"
    md.write_text(SUMMARY_MD.replace("81.00", "80.00"))
    assert main(["docs-tables", "update", "--check", "--root", str(root)]) == 1
    assert main(["docs-tables", "update", "--root", str(root)]) == 0
    assert "80.00 ± 0.50" in page.read_text()


def test_bad_names_are_refused(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    with pytest.raises(LtpipeError, match="summary.csv not found"):
        doctables.record(tmp_path, "x", ["c"], root)
    doctables.record(fake_run(tmp_path), "study", ["c"], root)
    (root / "docs" / "p.md").write_text('<!-- ltpipe-table run=study section="Nope" -->\n'
                                        '<!-- /ltpipe-table -->\n')
    with pytest.raises(LtpipeError, match="no section 'Nope'.*Methods, sweeps"):
        doctables.update(root, check=True)
    (root / "docs" / "p.md").write_text('<!-- ltpipe-table run=other section="Nope" -->\n'
                                        '<!-- /ltpipe-table -->\n')
    with pytest.raises(LtpipeError, match="recorded run 'other' not found"):
        doctables.update(root, check=True)


def test_the_repositorys_documented_tables_are_current():
    """Every table in README.md and docs/ is what its recorded run gives today."""
    assert doctables.update(check=True) == []


def test_a_block_can_take_another_file_of_the_run(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    saved = tmp_path / "a_vs_b.md"
    saved.write_text("# Comparison\n\n## Verdicts\n\n46 rows: 46 identical.\n\n## Rows\n\n| x |\n")
    doctables.record(fake_run(tmp_path), "kernels", ["c"], root, extra=[saved])
    page = root / "docs" / "r.md"
    page.write_text('<!-- ltpipe-table run=kernels file=a_vs_b.md section="Verdicts" -->\n'
                    '<!-- /ltpipe-table -->\n')
    assert doctables.update(root) == [f"{page.relative_to(root)}: kernels / Verdicts"]
    text = page.read_text()
    assert "46 rows: 46 identical." in text and "| x |" not in text
    with pytest.raises(LtpipeError, match="no such file"):
        doctables.record(fake_run(tmp_path / "2"), "k2", ["c"], root, extra=[tmp_path / "nope"])
