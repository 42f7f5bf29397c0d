"""Tables 5 and 9: flips of transferred adversarial images on other metrics.

Reads the transfer evaluations among the runs (``dataset=transfer attack=saved``); the
published cells are Table 5 (images crafted on BAPPS) and Table 9 (on PieAPP).
"""

from __future__ import annotations

import pandas as pd

from attackpsm.report import paper
from attackpsm.report.load import Run
from attackpsm.report.tables.format import (
    Table,
    fmt_flips,
    metric_order,
    render_blocks,
    run_keys,
    sort_rows,
)
from attackpsm.summary.statistics import agree_labels, flip_counts, wilson_interval


def _canon_source(label: str) -> str | None:
    """Map a crafted column (``stadv_pgd10``, ``pgd20``, ``PGD(20)``) to Table 5's name."""
    key = "".join(ch for ch in label.lower() if ch.isalnum())
    names = {
        "".join(ch for ch in v.lower() if ch.isalnum()): v for v in paper.TRANSFER_SOURCES.values()
    }
    return names.get(key)


def _transfer_paper(run: Run, source: str | None) -> dict[str, float] | None:
    """Published Table 5 (BAPPS source) or Table 9 (PieAPP source) cell, if comparable."""
    p = run.dataset_params
    if source is None or p.get("source_overrides") or p.get("manifest"):
        return None
    table = {"bapps": 5, "pieapp": 9}.get(str(p.get("source", "")))
    if table is None or p.get("source_metric", "lpips_alex") != "lpips_alex":
        return None
    return paper.lookup(table, run.metric, "✓", attack="transfer", source=source)


def _transfer_row(r: Run) -> dict:
    """One transfer evaluation: its accurate samples, their flips with a Wilson interval,
    and the published cell where comparable."""
    res = r.results
    labels = agree_labels(res)
    acc = res[labels == "✓"]
    n_lab = int((labels != "n/a").sum())
    k = flip_counts(acc)["flipped"]
    lo, hi = wilson_interval(k, len(acc))
    canon = _canon_source(r.variant)
    pub = _transfer_paper(r, canon)
    return {
        **run_keys(r),
        "source": canon or r.variant,
        "samples": len(res),
        "labelled": n_lab,
        "accurate": len(acc),
        "accurate_pct": 100.0 * len(acc) / n_lab if n_lab else float("nan"),
        "flipped": k,
        "flipped_pct": 100.0 * k / len(acc) if len(acc) else float("nan"),
        "ci_low_pct": 100.0 * lo,
        "ci_high_pct": 100.0 * hi,
        "paper_accurate": pub["accurate"] if pub else float("nan"),
        "paper_accurate_pct": pub["accurate_pct"] if pub else float("nan"),
        "paper_flipped": pub["flipped"] if pub else float("nan"),
        "paper_flipped_pct": pub["flipped_pct"] if pub else float("nan"),
        "run_dir": str(r.run_dir),
    }


def _flipped_cells(part: pd.DataFrame, source: str, metrics: list[str]) -> list[str]:
    """One source's column: ``k/pct% [lo–hi]`` per metric, the paper's cell beside it."""
    sub = part[part["source"] == source].set_index("metric")
    cells = []
    for m in metrics:
        if m not in sub.index:
            cells.append("–")
            continue
        row = sub.loc[m]
        cell = fmt_flips(row["flipped"], row["flipped_pct"], row["ci_low_pct"], row["ci_high_pct"])
        if pd.notna(row["paper_flipped"]):
            cell += f" (paper {int(row['paper_flipped'])}/{row['paper_flipped_pct']:g}%)"
        cells.append(cell)
    return cells


def _render_transfer(part: pd.DataFrame) -> pd.DataFrame:
    """One block of Table 5: a row per target metric, a column per crafted source."""
    order = list(paper.TRANSFER_SOURCES.values())
    sources = sorted(
        part["source"].unique(), key=lambda s: (order.index(s) if s in order else len(order), s)
    )
    metrics = sorted(part["metric"].unique(), key=metric_order)
    table = pd.DataFrame({"Metric": [paper.display_name(m) for m in metrics]})
    first = part.drop_duplicates("metric").set_index("metric")
    table["#Accurate samples"] = [
        fmt_flips(first.loc[m, "accurate"], first.loc[m, "accurate_pct"]) for m in metrics
    ]
    if first["paper_accurate"].notna().any():
        table["Paper #Accurate"] = [
            fmt_flips(first.loc[m, "paper_accurate"], first.loc[m, "paper_accurate_pct"])
            if pd.notna(first.loc[m, "paper_accurate"])
            else ""
            for m in metrics
        ]
    for s in sources:
        table[f"{s} #Flipped [95% CI]"] = _flipped_cells(part, s, metrics)
    return table


def table5_transfer(runs: list[Run]) -> Table | None:
    """Tables 5 and 9: flips of transferred images on each target metric's accurate samples.

    Accurate samples = the target metric ranks the clean pair as the humans did (✓);
    #Flipped counts those whose rank the transferred adversarial image flips. One column
    per crafted attack (the evaluation's ``dataset.column``).
    """
    rows = [_transfer_row(r) for r in runs if r.is_transfer]
    if not rows:
        return None
    data = sort_rows(pd.DataFrame(rows).assign(agrees="✓"), ["source"]).drop(columns="agrees")
    note = (
        "Accurate samples: the target metric ranks the clean pair as the humans did. "
        "#Flipped: accurate samples whose rank the transferred adversarial image flips "
        "(% of the accurate samples [95% Wilson interval])."
    )
    title = "Table 5: transferred adversarial images"
    return Table("table5_transfer", title, data, render_blocks(title, data, _render_transfer, note))
