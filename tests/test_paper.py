"""The paper's published numbers: ``python -m attackpsm paper-tables`` reads the paper's tables.

Cells of continuation rows (the paper's merged cells) come from the row above; a file that
is not the paper's tables stops the command with a message naming the cell or row.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attackpsm.report import paper

ROOT = Path(__file__).resolve().parents[1]
TABLES_TXT = ROOT.parent / "shared" / "paper" / "tables.txt"
SHIPPED = ROOT / "attackpsm" / "report" / paper.DATA_FILE

pytestmark = pytest.mark.skipif(
    not TABLES_TXT.exists(), reason="the paper's tables.txt is not next to this checkout"
)


def test_the_command_writes_the_shipped_file_byte_for_byte(tmp_path):
    out = tmp_path / "paper_tables.json"
    proc = subprocess.run(
        [sys.executable, "-m", "attackpsm", "paper-tables", str(TABLES_TXT), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {len(paper.records())} records" in proc.stdout
    assert out.read_bytes() == SHIPPED.read_bytes()


def _one(table: int, **keys) -> dict:
    found = [
        r
        for r in paper.parse_tables(TABLES_TXT.read_text())
        if r["table"] == table and all(r[k] == v for k, v in keys.items())
    ]
    assert len(found) == 1, found
    return found[0]


def test_continuation_rows_take_the_omitted_cells_from_the_row_above():
    # Table 6: "L2 | 64x64 | ✓ | 899 | ..." then "✗ | 482 | 65/13.5% | ..." (metric and
    # resolution omitted), then "256x256 | ✓ | 963 | 59/6.1% | ..." (metric omitted)
    rec = _one(6, metric="l2", resolution=64, agrees="✗")
    assert rec["values"]["samples"] == 482 and rec["values"]["flipped"] == 65
    rec = _one(6, metric="l2", resolution=256, agrees="✓")
    assert rec["values"]["samples"] == 963 and rec["values"]["flipped_pct"] == 6.1
    # Table 8: "64x64 | 1016 | 50 | ..." then "200 | 1000/98.4% | 5.8/3.1" (resolution and
    # samples omitted); alpha is an attack parameter
    rec = _one(8, resolution=64, params={"alpha": 200.0})
    assert rec["values"] == {
        "samples": 1016,
        "flipped": 1000,
        "flipped_pct": 98.4,
        "rmse_mean": 5.8,
        "rmse_std": 3.1,
    }
    # Table 11: the step size is carried like the metric
    rec = _one(11, metric="ssim", agrees="✗", params={"alpha": 0.00375})
    assert rec["values"]["samples"] == 2344 and rec["values"]["flipped"] == 1858


def test_one_row_makes_one_record_per_attack_of_its_table():
    recs = [r for r in paper.parse_tables(TABLES_TXT.read_text()) if r["table"] == 2]
    assert len(recs) == 12 * 3  # 6 metrics x (✓, ✗) x (FGSM, PGD, One-pixel)
    l2 = [r for r in recs if r["metric"] == "l2" and r["agrees"] == "✓"]
    assert [(r["attack"], r["params"]) for r in l2] == [
        ("fgsm", {"max_eps": 0.05}),
        ("pgd", {"alpha": 0.001}),
        ("onepixel", {}),
    ]
    assert [r["values"]["flipped"] for r in l2] == [3759, 2348, 4225]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "L2 | ✓ | 9750 | 3759/39%",
            "Foo | ✓ | 9750 | 3759/39%",
            "unknown metric in paper row: 'Foo'",
        ),
        ("| 0.017 | 2.2 | 1.6 | 1202/49%", "| 0.017 | 2.2 | 1202/49%", "Table 2 has 14 columns"),
        ("L2 | 64x64 | ✓ | 899", "L2 | 64y64 | ✓ | 899", "expected a resolution such as 64x64"),
        ("L2 | ✓ | 0.036", "L2 | + | 0.036", "expected ✓ or ✗, got '+'"),
        ("L2 | 448/71% | 2/0.4%", "L2 | 448/71% | 2/0.4", "expected 'count/pct%', got '2/0.4'"),
        ("PGD(10) | PGD(20) | stAdv", "PGD(10) | PGD(30) | stAdv", "Table 5 lacks its header row"),
        ("## [17] Table 12:", "## [17] Tab 12:", "no '## [i] Table 12:' block"),
    ],
)
def test_a_file_that_is_not_the_papers_tables_is_refused(old, new, message):
    text = TABLES_TXT.read_text()
    assert text.count(old) >= 1
    with pytest.raises(ValueError, match=re.escape(message)):
        paper.parse_tables(text.replace(old, new, 1))
