"""Clean 2AFC evaluation of a metric: the paper's Table 1 (``attack=none``).

Two numbers per subset and overall, from the per-triplet table (``d0``, ``d1``, ``judge``):

- **2AFC score** on every labelled triplet (Zhang et al., 2018): the fraction of raters
  who agree with the metric's choice -- ``judge`` when the metric prefers ``p1``
  (``d1 < d0``), ``1 - judge`` when it prefers ``p0``, 0.5 on a tie;
- **accuracy** on the unanimous triplets only (``judge`` exactly 0 or 1, the paper's
  12,227-sample subset of BAPPS): the fraction where the metric's rank equals the human one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TABLE1_COLUMNS = ["metric", "subset", "triplets", "twoafc_pct", "unanimous", "accuracy_pct"]


def twoafc_scores(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray) -> np.ndarray:
    """Per-triplet 2AFC score: agreement of the metric's choice with the raters' fraction."""
    d0, d1, judge = (np.asarray(a, dtype=float) for a in (d0, d1, judge))
    return np.where(d1 < d0, judge, np.where(d0 < d1, 1.0 - judge, 0.5))


def _row(metric: str, subset: str, part: pd.DataFrame) -> dict:
    judge = part["judge"].to_numpy(dtype=float)
    labelled = ~np.isnan(judge)
    scores = twoafc_scores(
        part["d0"].to_numpy()[labelled], part["d1"].to_numpy()[labelled], judge[labelled]
    )
    unanimous = labelled & ((judge == 0.0) | (judge == 1.0))
    d0, d1 = (
        part["d0"].to_numpy(dtype=float)[unanimous],
        part["d1"].to_numpy(dtype=float)[unanimous],
    )
    correct = np.where(judge[unanimous] == 1.0, d1 < d0, d0 < d1)
    return {
        "metric": metric,
        "subset": subset,
        "triplets": int(labelled.sum()),
        "twoafc_pct": 100.0 * scores.mean() if len(scores) else float("nan"),
        "unanimous": int(unanimous.sum()),
        "accuracy_pct": 100.0 * correct.mean() if len(correct) else float("nan"),
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
