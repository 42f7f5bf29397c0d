"""Per-triplet results tables: their columns and the paper's Table-2 summary.

Where the tables are stored (shards, checkpoints, merging) is :mod:`attackpsm.storage`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from attackpsm.stats import PAPER_COLUMNS, PAPER_DEFINITIONS, STAT_COLUMNS, THRESHOLDS, pct_column
from attackpsm.twoafc import NO_CHOICE, SPLIT_ORDER, split_labels

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
    "s_adv_uint8",
    "flipped_uint8",
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
    "flipped_uint8",
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
    "skipped",
]


def summarize(results: pd.DataFrame, metric: str, attack: str, skipped: int = 0) -> pd.DataFrame:
    """The paper's Table-2 layout: rows ✓/✗ (metric agrees with humans), per-flip stats.

    Perturbation statistics are over the *flipped* samples, as in the paper. ``rmse_*``,
    ``psnr_*`` and ``pct_px_gt_<t>`` follow the paper's definitions
    (:data:`attackpsm.stats.PAPER_COLUMNS`: RMSE/PSNR between the 8-bit images, % pixels on
    the float δ); ``rmse_float_*``, ``psnr_float_*`` and ``pct_px_gt_<t>_uint8`` are the
    other way round. ``mean_eps`` is the mean ε at the first flip for attacks that search
    ε (FGSM; column ``eps_found``), empty otherwise.
    """
    rows = []
    labels = split_labels(results["human_agrees"]) if len(results) else pd.Series(dtype=str)
    for label in SPLIT_ORDER:
        part = results[labels == label]
        if label == NO_CHOICE and part.empty:
            continue
        flipped = part[part["flipped"].astype(bool)]
        # PSNR of an unchanged image is infinite: left out of the means
        psnr = flipped[PAPER_COLUMNS["psnr"]].replace([np.inf, -np.inf], np.nan)
        psnr_float = flipped["psnr_float"].replace([np.inf, -np.inf], np.nan)
        row = {
            "metric": metric,
            "attack": attack,
            "agrees": label,
            "samples": len(part),
            "flipped": len(flipped),
            "flipped_pct": 100.0 * len(flipped) / len(part) if len(part) else float("nan"),
            "flipped_uint8": int(part["flipped_uint8"].astype(bool).sum()) if len(part) else 0,
            "rmse_mean": flipped[PAPER_COLUMNS["rmse"]].mean(),
            "rmse_std": flipped[PAPER_COLUMNS["rmse"]].std(),
            "psnr_mean": psnr.mean(),
            "psnr_std": psnr.std(),
            "mean_eps": flipped["eps_found"].mean() if "eps_found" in flipped else float("nan"),
            "rmse_float_mean": flipped["rmse_float"].mean(),
            "rmse_float_std": flipped["rmse_float"].std(),
            "psnr_float_mean": psnr_float.mean(),
            "psnr_float_std": psnr_float.std(),
            "skipped": skipped,
        }
        for t in THRESHOLDS:
            row[f"pct_px_gt_{t:g}"] = flipped[PAPER_COLUMNS[f"pct_px_gt_{t:g}"]].mean()
            row[pct_column(t, "uint8")] = flipped[pct_column(t, "uint8")].mean()
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _fmt(v: Any, digits: int = 1) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def summary_markdown(summary: pd.DataFrame) -> str:
    """Render :func:`summarize` output as a markdown table in the paper's Table-2 style."""
    head = (
        "| Metric | Attack | Same rank by human & metric | Samples | #Flipped | Flipped (uint8) "
        "| RMSE μ (8-bit) | RMSE σ (8-bit) | PSNR μ (8-bit) | PSNR σ (8-bit) "
        "| %px ε>0.001 (float δ) | %px ε>0.01 (float δ) | %px ε>0.03 (float δ) | mean ε |"
    )
    lines = [head, "|" + "---|" * 14]
    px = [f"pct_px_gt_{t:g}" for t in THRESHOLDS]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r.metric} | {r.attack} | {r.agrees} | {r.samples} | {r.flipped}/{_fmt(r.flipped_pct, 0)}% "
            f"| {r.flipped_uint8} | {_fmt(r.rmse_mean)} | {_fmt(r.rmse_std)} | {_fmt(r.psnr_mean, 2)} "
            f"| {_fmt(r.psnr_std, 2)} | "
            + " | ".join(_fmt(r[c]) for c in px)
            + f" | {_fmt(r.mean_eps, 4)} |"
        )
    skipped = int(summary["skipped"].max()) if len(summary) else 0
    lines.append("")
    lines.append(f"Perturbation sizes as in the paper: {PAPER_DEFINITIONS}.")
    lines.append(f"Skipped triplets (unreadable or invalid, see errors.parquet): {skipped}")
    return "\n".join(lines) + "\n"
