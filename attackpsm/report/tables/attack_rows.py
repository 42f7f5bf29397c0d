"""Every attack run x ✓/✗ as one row of statistics, and the cells that print such rows.

:func:`attack_rows` is the long table behind Tables 2, 4, 6-8 and 10-12 (and the
``attacks_all_runs`` CSV): :func:`attackpsm.summary.statistics.flip_stats` of each run's ✓, ✗ and
n/a rows plus the published numbers where the run is one of the paper's settings.
:func:`long_render` prints such rows in the layout of Tables 6-12.
"""

from __future__ import annotations

import math

import pandas as pd

from attackpsm.protocol.stats import PAPER_DEFINITIONS
from attackpsm.report import paper
from attackpsm.report.load import Run, attack_title
from attackpsm.report.tables.format import (
    Table,
    fmt_flips,
    fmt_mu_sigma,
    fmt_paper_flips,
    num,
    render_blocks,
    run_keys,
    sort_rows,
)
from attackpsm.report.tables.paper_compare import paper_like, paper_values
from attackpsm.summary.results import extra_columns
from attackpsm.summary.statistics import PX_COLUMNS, as_float64, flip_stats, split_rows


def attack_rows(runs: list[Run]) -> pd.DataFrame:
    """Every attack run x ✓/✗: :func:`flip_stats` plus the paper's numbers (``paper_*``)."""
    rows = []
    for r in runs:
        if r.family == "none" or r.is_transfer:
            continue
        for label, part in split_rows(r.results):
            table, pub = paper_values(r, label)
            rows.append(
                {
                    **run_keys(r),
                    "agrees": label,
                    **as_float64(flip_stats(part, extras=["iterations", *extra_columns(part)])),
                    "paper_setting": paper_like(r.family, r.attack_params),
                    "paper_setting_but_varied": paper_like(
                        r.family, r.attack_params, varied_ok=True
                    ),
                    "paper_table": table if table is not None else pd.NA,
                    **{f"paper_{k}": v for k, v in pub.items()},
                    "skipped": r.skipped,
                    "complete": r.complete,
                    "run_dir": str(r.run_dir),
                }
            )
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    frame["paper_table"] = frame["paper_table"].astype("Int64")
    return sort_rows(frame, ["_family", "attack", "variant"])


# --- cells ------------------------------------------------------------------------------------


def flip_cell(row: pd.Series) -> str:
    """``7/70% [40–89]``: the row's flips with their 95% interval."""
    return fmt_flips(row["flipped"], row["flipped_pct"], row["ci_low_pct"], row["ci_high_pct"])


def paper_flip_cell(row: pd.Series) -> str:
    """The published flips of the row's setting; empty without them."""
    return fmt_paper_flips(
        {
            k[6:]: row[k]
            for k in ("paper_flipped", "paper_flipped_pct")
            if k in row and pd.notna(row[k])
        }
    )


def px_cell(row: pd.Series) -> str:
    """``84.4 / 56.1 / 0.0``: % values of δ above 0.001, 0.01 and 0.03."""
    vals = [row.get(c) for c in PX_COLUMNS]
    return (
        "–"
        if all(v is None or not math.isfinite(v) for v in vals)
        else " / ".join(num(v) for v in vals)
    )


def paper_px_cell(row: pd.Series) -> str:
    """The published % values above the thresholds; empty without them."""
    vals = [row.get(f"paper_{c}") for c in PX_COLUMNS]
    return "" if any(v is None or pd.isna(v) for v in vals) else " / ".join(num(v) for v in vals)


def paper_mu_sigma(row: pd.Series, name: str) -> str:
    """The published ``μ/σ`` of ``name`` (``rmse``, ``psnr``); empty without one."""
    mu, sigma = row.get(f"paper_{name}_mean"), row.get(f"paper_{name}_std")
    return "" if mu is None or pd.isna(mu) else fmt_mu_sigma(mu, sigma, 2 if name == "psnr" else 1)


def has_paper(part: pd.DataFrame, col: str) -> bool:
    """Some row of ``part`` has a published ``col``."""
    return col in part and part[col].notna().any()


# --- the long layout (Tables 6-12, every attack run) --------------------------------------


def long_render(part: pd.DataFrame) -> pd.DataFrame:
    """One row per run x ✓/✗ with the columns the runs have (Tables 6-12 layout)."""
    out = pd.DataFrame(
        {
            "Metric": part["metric"].map(paper.display_name).to_numpy(),
            "Attack": [
                attack_title(a, v) for a, v in zip(part["attack"], part["variant"], strict=True)
            ],
            "Same rank by human & metric": part["agrees"].to_numpy(),
            "Samples": part["samples"].map(num).to_numpy(),
            "#Flipped [95% CI]": [flip_cell(r) for _, r in part.iterrows()],
        }
    )
    if has_paper(part, "paper_flipped"):
        out["Paper #Flipped"] = [paper_flip_cell(r) for _, r in part.iterrows()]
    out["Flipped after saving"] = part["flipped_saved"].map(num).to_numpy()
    if part["mean_eps"].notna().any():
        out["Mean ε"] = part["mean_eps"].map(lambda v: num(v, 4)).to_numpy()
        if has_paper(part, "paper_mean_eps"):
            out["Paper mean ε"] = part["paper_mean_eps"].map(lambda v: num(v, 3)).to_numpy()
    out["%px ε>0.001 / >0.01 / >0.03 (float δ)"] = [px_cell(r) for _, r in part.iterrows()]
    if has_paper(part, "paper_pct_px_gt_0.001"):
        out["Paper %px"] = [paper_px_cell(r) for _, r in part.iterrows()]
    out["RMSE μ/σ (8-bit)"] = [
        fmt_mu_sigma(m, s) for m, s in zip(part["rmse_mean"], part["rmse_std"], strict=True)
    ]
    if has_paper(part, "paper_rmse_mean"):
        out["Paper RMSE"] = [paper_mu_sigma(r, "rmse") for _, r in part.iterrows()]
    out["PSNR μ/σ (8-bit)"] = [
        fmt_mu_sigma(m, s, 2) for m, s in zip(part["psnr_mean"], part["psnr_std"], strict=True)
    ]
    for col in sorted(
        c
        for c in part.columns
        if c.endswith("_mean")
        and c[:-5] not in ("rmse", "psnr", "linf", "sim_diff")
        and not c.startswith("paper_")
        and c != "mean_eps"
    ):
        if part[col].notna().any():
            out[f"{col[:-5]} μ"] = part[col].map(lambda v: num(v, 2)).to_numpy()
    return out


def long_table(name: str, title: str, data: pd.DataFrame, note: str = "") -> Table | None:
    """A table of attack rows in the long layout; ``None`` without rows."""
    if data.empty:
        return None
    data = sort_rows(data, ["_family", "attack", "variant"])
    note = f"{note} Perturbation sizes as in the paper: {PAPER_DEFINITIONS}.".strip()
    return Table(name, title, data, render_blocks(title, data, long_render, note))
