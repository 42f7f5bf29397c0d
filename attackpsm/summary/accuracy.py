"""Clean 2AFC evaluation of a metric: the paper's Table 1 (``attack=none``).

Two numbers per subset and overall, from the per-triplet table (``d0``, ``d1``, ``judge``):

- **2AFC score** on every labelled triplet (Zhang et al., 2018): the fraction of raters
  who agree with the metric's choice (:func:`attackpsm.protocol.twoafc.twoafc_scores`);
- **accuracy** on the unanimous triplets only (``judge`` exactly 0 or 1, the paper's
  12,227-sample subset of BAPPS): the fraction where the metric's rank equals the human one
  (:func:`attackpsm.protocol.twoafc.accuracy`).

Both use the one tie rule of :mod:`attackpsm.protocol.twoafc`: ``d0 == d1`` is half right, and both
are computed by :mod:`attackpsm.summary.statistics`, as in the report's Table 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from attackpsm.summary.statistics import accuracy_stats, afc2_score

TABLE1_COLUMNS = ["metric", "subset", "triplets", "twoafc_pct", "unanimous", "accuracy_pct"]


def _row(metric: str, subset: str, part: pd.DataFrame) -> dict:
    judge = part["judge"].to_numpy(dtype=float)
    labelled = ~np.isnan(judge)
    unanimous = accuracy_stats(part[labelled & ((judge == 0.0) | (judge == 1.0))])
    return {
        "metric": metric,
        "subset": subset,
        "triplets": int(labelled.sum()),
        "twoafc_pct": afc2_score(part),
        "unanimous": unanimous["labelled"],
        "accuracy_pct": unanimous["accuracy_pct"],
    }


def clean_accuracy(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Table 1 for one metric: one row per subset (sorted) and a last row ``all``."""
    rows = [
        _row(metric, subset, part)
        for subset, part in sorted(results.groupby("subset"), key=lambda kv: kv[0])
    ]
    rows.append(_row(metric, "all", results))
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def clean_accuracy_markdown(table: pd.DataFrame) -> str:
    """Render :func:`clean_accuracy` in the paper's Table-1 style (percentages, 1 decimal)."""
    lines = [
        "| Metric | Subset | 2AFC (%) on all labelled | Samples | Accuracy (%) on unanimous | Samples |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.itertuples(index=False):
        two = "–" if np.isnan(r.twoafc_pct) else f"{r.twoafc_pct:.1f}"
        acc = "–" if np.isnan(r.accuracy_pct) else f"{r.accuracy_pct:.1f}"
        subset = f"**{r.subset}**" if r.subset == "all" else r.subset
        lines.append(f"| {r.metric} | {subset} | {two} | {r.triplets} | {acc} | {r.unanimous} |")
    return "\n".join(lines) + "\n"


def sweep_clean_accuracy(run_dirs: list[Path]) -> pd.DataFrame:
    """The ``all`` rows of every run's ``table1.csv``: one Table-1 line per metric of a sweep."""
    frames = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "table1.csv"
        if path.exists():
            table = pd.read_csv(path)
            frames.append(table[table["subset"] == "all"])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TABLE1_COLUMNS)
