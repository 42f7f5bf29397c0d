"""Per-triplet results tables: their columns and the paper's Table-2 summary.

Where the tables are stored (shards, checkpoints, merging) is :mod:`attackpsm.storage`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from attackpsm.protocol.stats import (
    FLIP_DEFINITIONS,
    PAPER_DEFINITIONS,
    STAT_COLUMNS,
    THRESHOLDS,
    pct_column,
)
from attackpsm.summary.statistics import flip_stats, split_rows

# The per-triplet columns every attack writes (attacks may add their own after these).
BASE_COLUMNS = [
    "triplet_id",
    "subset",
    "judge",
    "d0",
    "d1",
    "human_agrees",
    "prey",
    "s_other",
    "s_prey",
    "s_adv",
    "flipped",
    "s_adv_saved",
    "flipped_saved",
    "iterations",
    *STAT_COLUMNS,
]
ERROR_COLUMNS = ["triplet_id", "subset", "reason"]


# --- Table 2 ------------------------------------------------------------------------------

SUMMARY_COLUMNS = [
    "metric",
    "attack",
    "agrees",
    "samples",
    "flipped",
    "flipped_pct",
    "flipped_saved",
    "rmse_mean",
    "rmse_std",
    "psnr_mean",
    "psnr_std",
    *[f"pct_px_gt_{t:g}" for t in THRESHOLDS],
    "mean_eps",
    "rmse_float_mean",
    "rmse_float_std",
    "psnr_float_mean",
    "psnr_float_std",
    *[pct_column(t, "uint8") for t in THRESHOLDS],
    "stalled",
    "skipped",
]


def summarize(results: pd.DataFrame, metric: str, attack: str, skipped: int = 0) -> pd.DataFrame:
    """The paper's Table-2 layout: rows ✓/✗ (metric agrees with humans), per-flip stats.

    Perturbation statistics are over the *flipped* samples, as in the paper
    (:func:`attackpsm.summary.statistics.flip_stats`, the statistics of the report's tables too).
    ``rmse_*``, ``psnr_*`` and ``pct_px_gt_<t>`` follow the paper's definitions
    (:data:`attackpsm.protocol.stats.PAPER_COLUMNS`: RMSE/PSNR between the 8-bit images, % pixels on
    the float δ); ``rmse_float_*``, ``psnr_float_*`` and ``pct_px_gt_<t>_uint8`` are the
    other way round. ``mean_eps`` is the mean ε at the first flip for attacks that search
    ε (FGSM; column ``eps_found``), empty otherwise. ``stalled`` counts the triplets whose
    attack ended at its starting image without a flip (:func:`attackpsm.engine.stalled`;
    empty for tables written before the column existed).
    """
    rows = [
        {
            "metric": metric,
            "attack": attack,
            "agrees": label,
            **flip_stats(part, both_ways=True),
            "stalled": int(part["stalled"].astype(bool).sum()) if "stalled" in part else np.nan,
            "skipped": skipped,
        }
        for label, part in split_rows(results)
    ]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def extra_columns(results: pd.DataFrame) -> list[str]:
    """Numeric per-triplet columns an attack added to :data:`BASE_COLUMNS` (e.g. ``queries``).

    FGSM's ``eps_found`` is not one: it is reported as ``mean_eps``.
    """
    known = {*BASE_COLUMNS, "eps_found"}
    return [
        c
        for c in results.columns
        if c not in known
        and pd.api.types.is_numeric_dtype(results[c])
        and not pd.api.types.is_bool_dtype(results[c])
    ]


def _fmt(v: Any, digits: int = 1) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def summary_markdown(summary: pd.DataFrame) -> str:
    """Render :func:`summarize` output as a markdown table in the paper's Table-2 style."""
    head = (
        "| Metric | Attack | Same rank by human & metric | Samples | #Flipped | #Flipped after saving "
        "| RMSE μ (8-bit) | RMSE σ (8-bit) | PSNR μ (8-bit) | PSNR σ (8-bit) "
        "| %px ε>0.001 (float δ) | %px ε>0.01 (float δ) | %px ε>0.03 (float δ) | mean ε |"
    )
    lines = [head, "|" + "---|" * 14]
    px = [f"pct_px_gt_{t:g}" for t in THRESHOLDS]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r.metric} | {r.attack} | {r.agrees} | {r.samples} | {r.flipped}/{_fmt(r.flipped_pct, 0)}% "
            f"| {r.flipped_saved} | {_fmt(r.rmse_mean)} | {_fmt(r.rmse_std)} | {_fmt(r.psnr_mean, 2)} "
            f"| {_fmt(r.psnr_std, 2)} | "
            + " | ".join(_fmt(r[c]) for c in px)
            + f" | {_fmt(r.mean_eps, 4)} |"
        )
    skipped = int(summary["skipped"].max()) if len(summary) else 0
    lines.append("")
    lines.append(f"Perturbation sizes as in the paper: {PAPER_DEFINITIONS}.")
    lines.append(f"Flipped: {FLIP_DEFINITIONS}.")
    if "stalled" in summary and summary["stalled"].notna().any():
        counts = ", ".join(f"{r.agrees} {_fmt(r.stalled, 0)}" for _, r in summary.iterrows())
        lines.append(
            "Stalled triplets (the attack ended at the prey without a flip; counted as not "
            f"flipped, column `stalled`): {counts}"
        )
    lines.append(f"Skipped triplets (unreadable or invalid, see errors.parquet): {skipped}")
    return "\n".join(lines) + "\n"


# --- minimum-norm attacks (attack=fmn) ----------------------------------------------------

EPS_STAR_QUANTILES = (0.25, 0.5, 0.75)


def quantile(values: Any, q: float) -> float:
    """``numpy.quantile``'s linear interpolation, with ``inf`` entries ("never flipped")
    kept as ``inf`` instead of ``inf - inf = nan``; ``nan`` for no values."""
    v = np.sort(np.asarray(values, dtype=float))
    if not len(v):
        return float("nan")
    pos = q * (len(v) - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    t = pos - lo
    if t == 0 or v[lo] == v[hi]:
        return float(v[lo])
    if np.isinf(v[hi]):
        return float("inf")
    return float(v[lo] + t * (v[hi] - v[lo]))


def eps_star_summary(results: pd.DataFrame, metric: str, attack: str) -> pd.DataFrame:
    """The distribution of ``eps_star`` (smallest flipping perturbation per triplet) per
    ✓/✗ row: triplets, how many got a finite ε*, its quartiles (``inf`` where at least
    that fraction has none) and mean over the finite ones."""
    rows = []
    for label, part in split_rows(results):
        values = part["eps_star"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        rows.append(
            {
                "metric": metric,
                "attack": attack,
                "agrees": label,
                "samples": len(values),
                "found": len(finite),
                **{f"eps_star_q{int(q * 100)}": quantile(values, q) for q in EPS_STAR_QUANTILES},
                "eps_star_mean_found": float(finite.mean()) if len(finite) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def eps_star_markdown(summary: pd.DataFrame) -> str:
    """Render :func:`eps_star_summary` as a markdown table."""
    lines = [
        "| Metric | Attack | Same rank by human & metric | Samples | ε* found "
        "| ε* 25% | ε* median | ε* 75% | mean ε* (found) |",
        "|" + "---|" * 9,
    ]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r.metric} | {r.attack} | {r.agrees} | {r.samples} | {r.found} "
            f"| {_fmt(r.eps_star_q25, 4)} | {_fmt(r.eps_star_q50, 4)} "
            f"| {_fmt(r.eps_star_q75, 4)} | {_fmt(r.eps_star_mean_found, 4)} |"
        )
    return "\n".join(lines) + "\n"
