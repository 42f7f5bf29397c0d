"""A sweep's numbers: its Table-2 rows in one table, its flip-rate grid, its robustness
curves on one panel per x axis and its leaderboard.

The end of a sweep (:mod:`attackpsm.cluster`) reads the runs and writes or logs these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from attackpsm.protocol.twoafc import AGREE
from attackpsm.summary.curves import CURVE, minimal_eps_column, robustness_curves
from attackpsm.summary.results import SUMMARY_COLUMNS
from attackpsm.summary.statistics import flip_stats, label_rows

# columns of a sweep's summary.csv: every run's Table-2 rows with their axes
SWEEP_COLUMNS = ["dataset", *SUMMARY_COLUMNS[:2], "resolution", *SUMMARY_COLUMNS[2:], "run_dir"]


def sweep_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One table for the whole sweep from each merged run's ``summary.csv`` rows, given
    with their ``dataset``, ``resolution`` and ``run_dir`` (:data:`SWEEP_COLUMNS`)."""
    if not frames:
        return pd.DataFrame(columns=SWEEP_COLUMNS)
    return pd.concat(frames, ignore_index=True)[SWEEP_COLUMNS]


def flip_rate_grid(table: pd.DataFrame) -> pd.DataFrame:
    """A sweep's flip rates (%, ✓ and ✗ together) as one grid: a row per dataset,
    resolution and metric, a column per attack -- a large sweep's results on one screen."""
    keys = ["dataset", "resolution", "metric", "attack"]
    sums = table.groupby(keys, dropna=False)[["flipped", "samples"]].sum()
    rate = (100.0 * sums["flipped"] / sums["samples"].where(sums["samples"] > 0)).round(1)
    return rate.unstack("attack")


def leaderboard_row(table: pd.DataFrame, keys: dict[str, Any]) -> dict[str, Any]:
    """One row of the leaderboard: a run's ✓ triplets (metric × attack × ε).

    The flip rate with its 95% Wilson interval, the flip rate after saving as 8-bit images,
    the mean RMSE of the flips between the 8-bit images (the paper's RMSE, [0, 255]), the
    median minimal ε where the attack measures it (``inf``: most never flipped) and the
    median certified ℓ2 radius of ``attack=certify`` (column ``radius``).
    """
    rows = label_rows(table, AGREE)
    stats = flip_stats(rows) if len(rows) else {}
    n = len(rows)
    out = {
        "dataset": keys.get("dataset.name"),
        "resolution": keys.get("resolution.size"),
        "metric": keys.get("metric.name"),
        "attack": keys.get("attack.name"),
        "threat_model": keys.get("threat_model"),
        "eps": keys.get("eps"),
        "samples": n,
        "flipped": int(stats.get("flipped", 0)),
        "flip_rate": stats["flipped"] / n if n else float("nan"),
        "flip_rate_ci_low": stats["ci_low_pct"] / 100 if n else float("nan"),
        "flip_rate_ci_high": stats["ci_high_pct"] / 100 if n else float("nan"),
        "flip_rate_saved": stats["flipped_saved"] / n if n else float("nan"),
        "rmse_flipped_mean": float(stats["rmse_mean"]) if n else float("nan"),
    }
    col = minimal_eps_column(table)
    if col is not None:
        found = pd.to_numeric(rows[col], errors="coerce").fillna(np.inf).to_numpy(dtype=float)
        out["median_min_eps"] = float(np.median(found)) if n else float("nan")
    if "radius" in table:
        radius = pd.to_numeric(rows["radius"], errors="coerce")
        out["certified_radius_median"] = float(radius.median()) if n else float("nan")
    return out


def leaderboard(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Leaderboard rows ranked per dataset × resolution × attack × ε: ``rank`` 1 is the
    metric with the lowest flip rate (the most robust)."""
    frame = pd.DataFrame(rows)
    if not len(frame):
        return frame
    by = ["dataset", "resolution", "attack", "eps"]
    keyed = frame[by].map(str)  # None and NaN are keys too
    frame.insert(0, "rank", frame.groupby([keyed[c] for c in by])["flip_rate"].rank(method="min"))
    frame["rank"] = frame["rank"].astype("Int64")
    order = {f"_{c}": keyed[c] for c in ("dataset", "resolution", "attack")}
    return (
        frame.assign(**order)
        .sort_values([*order, "eps", "rank", "metric"], na_position="last")
        .drop(columns=list(order))
        .reset_index(drop=True)
    )


def sweep_tables(runs: list[tuple[dict[str, Any], pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """The tables of a sweep's W&B run from its merged runs' ``(keys, results)``: the
    robustness curves of every run (``curves/<x>``), one line per metric (per metric ·
    attack when the sweep holds several attacks; against iterations and queries also per ε
    when it holds several), and the ``leaderboard`` (:func:`leaderboard`).

    Args:
        runs: each run's flat keys (:func:`attackpsm.job.loggers.flat_keys`) and table.
    """
    attacks = len({k["attack.name"] for k, _ in runs}) > 1
    budgets = len({k["eps"] for k, _ in runs}) > 1
    curves: dict[str, list[pd.DataFrame]] = {}
    for keys, table in runs:
        label = f"{keys['metric.name']} · {keys['attack.name']}" if attacks else keys["metric.name"]
        for x, frame in robustness_curves(table, keys).items():
            effort = x != "eps" and budgets and keys["eps"] is not None
            frame[CURVE] = f"{label} · ε={keys['eps']:g}" if effort else label
            curves.setdefault(x, []).append(frame)
    out = {
        f"curves/{x}": pd.concat(frames, ignore_index=True).sort_values([CURVE, x], kind="stable")
        for x, frames in curves.items()
    }
    out["leaderboard"] = leaderboard([leaderboard_row(t, k) for k, t in runs])
    return out
