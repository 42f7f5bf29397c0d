"""Per-triplet results tables: their columns and the paper's Table-2 summary.

Where the tables are stored (shards, checkpoints, merging) is :mod:`attackpsm.storage`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from attackpsm.stats import THRESHOLDS, frac_column

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
    "linf",
    "rmse",
    "psnr",
    *[frac_column(t) for t in THRESHOLDS],
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
    "skipped",
]


def _agree_label(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "n/a"
    return "✓" if bool(value) else "✗"


def summarize(results: pd.DataFrame, metric: str, attack: str, skipped: int = 0) -> pd.DataFrame:
    """The paper's Table-2 layout: rows ✓/✗ (metric agrees with humans), per-flip stats.

    Perturbation statistics (RMSE, PSNR, % pixels) are over the *flipped* samples, as in
    the paper. ``mean_eps`` is the mean ε at the first flip for attacks that search ε
    (FGSM; column ``eps_found``), empty otherwise.
    """
    rows = []
    labels = results["human_agrees"].map(_agree_label) if len(results) else pd.Series(dtype=str)
    for label in ("✓", "✗", "n/a"):
        part = results[labels == label]
        if label == "n/a" and part.empty:
            continue
        flipped = part[part["flipped"].astype(bool)]
        finite_psnr = flipped["psnr"].replace([np.inf, -np.inf], np.nan)
        row = {
            "metric": metric,
            "attack": attack,
            "agrees": label,
            "samples": len(part),
            "flipped": len(flipped),
            "flipped_pct": 100.0 * len(flipped) / len(part) if len(part) else float("nan"),
            "flipped_uint8": int(part["flipped_uint8"].astype(bool).sum()) if len(part) else 0,
            "rmse_mean": flipped["rmse"].mean(),
            "rmse_std": flipped["rmse"].std(),
            "psnr_mean": finite_psnr.mean(),
            "psnr_std": finite_psnr.std(),
            "mean_eps": flipped["eps_found"].mean() if "eps_found" in flipped else float("nan"),
            "skipped": skipped,
        }
        for t in THRESHOLDS:
            row[f"pct_px_gt_{t:g}"] = flipped[frac_column(t)].mean()
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
        "| RMSE μ | RMSE σ | PSNR μ | PSNR σ | %px ε>0.001 | %px ε>0.01 | %px ε>0.03 | mean ε |"
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
    lines.append(f"Skipped triplets (unreadable or invalid, see errors.parquet): {skipped}")
    return "\n".join(lines) + "\n"
