"""The report's figures (matplotlib, written as PNG and SVG).

- :func:`accuracy_vs_robustness` -- clean accuracy against robustness per metric, one
  marker per attack (the paper's Figure 5).
- :func:`flip_rate_vs_eps` -- % of samples flipped within an ℓ∞ budget ε. FGSM scans ε
  upwards and records the first ε that flips (``eps_found``), so its curve is exact. PGD
  records only the number of steps ``k`` to the flip; after ``k`` sign steps of size α
  every value of δ lies within ``min(k·α, ε)``, which is used as an ε-at-flip proxy (an
  upper bound on the ε that flip needed; the axis label says so).
- :func:`perturbation_histograms` -- RMSE and ℓ∞ of the flipped samples, per attack.
- Example grids: :mod:`attackpsm.report.examples`.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state, any
backend): save them with :func:`save_figure`, or show them in a notebook with ``display``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from attackpsm.report import paper
from attackpsm.report.load import Run, attack_title
from attackpsm.report.tables.format import metric_order
from attackpsm.summary.statistics import agree_labels

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h"]


def slug(*parts: str) -> str:
    """File-name-safe join: ``slug('synthetic', '64x64')`` -> ``synthetic_64x64``."""
    text = "_".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def metric_colour(metric: str, metrics: list[str]) -> tuple:
    cmap = matplotlib.colormaps["tab10" if len(metrics) <= 10 else "tab20"]
    return cmap(sorted(metrics, key=metric_order).index(metric) % cmap.N)


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.svg``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def _block(run: Run) -> tuple[str, str, str]:
    return run.dataset, run.dataset_variant, run.resolution_label


def _block_title(block: tuple[str, str, str]) -> str:
    dataset, variant, res = block
    return f"{dataset}{f' ({variant})' if variant else ''} · {res}"


def blocks(runs: list[Run]) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []
    for r in runs:
        if _block(r) not in seen:
            seen.append(_block(r))
    return seen


def _by_metric(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: metric_order(r.metric))


# --- Figure 5 -------------------------------------------------------------------------------


_POINT_COLUMNS = [
    "dataset",
    "dataset_variant",
    "resolution",
    "metric",
    "attack",
    "flipped_pct",
    "lo",
    "hi",
    "n",
]


def _robustness_points(attacks: pd.DataFrame, transfer: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (block, metric, attack) with samples: the ✓ rows of ``attacks_all_runs``
    and one per transfer source of ``table5_transfer``."""
    points = []
    if attacks is not None and not attacks.empty:
        acc_rows = attacks[attacks["agrees"] == "✓"]
        for _, r in acc_rows.iterrows():
            label = attack_title(r["attack"], r["variant"])
            points.append(
                (
                    r["dataset"],
                    r["dataset_variant"],
                    r["resolution"],
                    r["metric"],
                    label,
                    r["flipped_pct"],
                    r["ci_low_pct"],
                    r["ci_high_pct"],
                    r["samples"],
                )
            )
    if transfer is not None and not transfer.empty:
        for _, r in transfer.iterrows():
            points.append(
                (
                    r["dataset"],
                    r["dataset_variant"],
                    r["resolution"],
                    r["metric"],
                    f"transfer: {r['source']}",
                    r["flipped_pct"],
                    r["ci_low_pct"],
                    r["ci_high_pct"],
                    r["accurate"],
                )
            )
    pts = pd.DataFrame(points, columns=_POINT_COLUMNS)
    return pts[pts["n"] > 0]


def _plot_attack(ax, sub: pd.DataFrame, label: str, marker: str, acc, acc_ci) -> None:
    """One attack's markers with both Wilson intervals (traditional metrics blue, learned
    red), each labelled with its metric's name."""
    for kind, colour in (("traditional", "tab:blue"), ("learned", "tab:red")):
        chosen = sub[sub["metric"].isin(paper.TRADITIONAL) == (kind == "traditional")]
        if chosen.empty:
            continue
        x = acc.loc[chosen["metric"]].to_numpy()
        y = 100.0 - chosen["flipped_pct"].to_numpy()
        yerr = np.vstack(
            [y - (100.0 - chosen["hi"].to_numpy()), (100.0 - chosen["lo"].to_numpy()) - y]
        )
        ci = acc_ci.loc[chosen["metric"]].to_numpy()
        xerr = np.vstack([x - ci[:, 0], ci[:, 1] - x])
        ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt=marker,
            color=colour,
            ms=7,
            capsize=3,
            alpha=0.85,
            label=f"{label} · {kind}",
        )
    for _, r in sub.iterrows():
        ax.annotate(
            paper.display_name(r["metric"]),
            (acc.loc[r["metric"]], 100.0 - r["flipped_pct"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )


def _accuracy_vs_robustness_block(
    part: pd.DataFrame, acc: pd.Series, acc_ci: pd.DataFrame, title: str
) -> Figure:
    """The figure of one dataset block: one marker per attack, axes, legend, note."""
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    labels = list(dict.fromkeys(part["attack"]))
    for i, label in enumerate(labels):
        sub = part[part["attack"] == label]
        _plot_attack(ax, sub, label, MARKERS[i % len(MARKERS)], acc, acc_ci)
    ax.set_xlabel("clean accuracy on labelled samples (%)")
    ax.set_ylabel("robustness: accurate samples not flipped (%)")
    ax.set_title(f"Accuracy vs robustness · {title}")
    ax.grid(alpha=0.3)
    ax.set_ylim(-3, 103)
    ci = acc_ci.loc[part["metric"]].to_numpy()
    ax.set_xlim(max(0.0, float(np.nanmin(ci)) - 3.0), min(101.0, float(np.nanmax(ci)) + 3.0))
    ax.legend(fontsize=8, loc="best")
    ax.text(
        0.99,
        0.01,
        "error bars: 95% Wilson intervals",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="0.4",
    )
    return fig


def accuracy_vs_robustness(
    accuracy: pd.DataFrame, attacks: pd.DataFrame, transfer: pd.DataFrame | None = None
) -> dict[str, Figure]:
    """Per dataset block: x = clean accuracy (%), y = % of accurate samples *not* flipped.

    Args:
        accuracy: ``table1_accuracy`` data.
        attacks: ``attacks_all_runs`` data (its ✓ rows are used).
        transfer: ``table5_transfer`` data, plotted as one marker per transfer source.

    Returns:
        ``{file stem: figure}``, one per dataset/resolution block with attack results.
    """
    pts = _robustness_points(attacks, transfer)
    figs: dict[str, Figure] = {}
    for (dataset, variant, res), part in pts.groupby(
        ["dataset", "dataset_variant", "resolution"], sort=False
    ):
        acc = accuracy[
            (accuracy["dataset"] == dataset)
            & (accuracy["dataset_variant"] == variant)
            & (accuracy["resolution"] == res)
        ]
        acc_ci = acc.set_index("metric")[["ci_low_pct", "ci_high_pct"]]
        acc = acc.set_index("metric")["accuracy_pct"]
        part = part[part["metric"].isin(acc.index)]
        if part.empty:
            continue
        title = _block_title((dataset, variant, res))
        figs[slug("fig5_accuracy_vs_robustness", dataset, variant, res)] = (
            _accuracy_vs_robustness_block(part, acc, acc_ci, title)
        )
    return figs


# --- flip rate vs ε --------------------------------------------------------------------------


def eps_at_flip(run: Run) -> tuple[pd.Series, float, str] | None:
    """(ε at which each flipped sample flipped, NaN if not flipped; max ε; how it was found).

    FGSM: ``eps_found`` (exact). PGD with early stopping: ``min(iterations·α, ε)`` (proxy).
    ``None`` for attacks without either.
    """
    res = run.results
    params = run.attack_params
    flipped = res["flipped"].astype(bool)
    if "eps_found" in res:
        eps = pd.to_numeric(res["eps_found"], errors="coerce").where(flipped)
        top = float(params.get("max_eps") or eps.max() or 0.05)
        return eps, top, "exact (first ε of the scan that flips)"
    if (
        run.family in ("pgd", "pgd_reverse")
        and params.get("early_stop", True)
        and "alpha" in params
    ):
        alpha, budget = float(params["alpha"]), float(params.get("eps", np.inf))
        eps = np.minimum(res["iterations"].astype(float) * alpha, budget)
        return (
            eps.where(flipped),
            budget if math.isfinite(budget) else float(eps.max()),
            "proxy min(k·α, ε), k = steps to the flip;\ncurve = lower bound on the flip rate of PGD with budget ε",
        )
    return None


def flip_rate_vs_eps(runs: list[Run]) -> dict[str, Figure]:
    """Per dataset block: % of samples flipped within ε, one panel per attack (FGSM, PGD)."""
    figs: dict[str, Figure] = {}
    for block in blocks(runs):
        curves = [(r, eps_at_flip(r)) for r in _by_metric(runs) if _block(r) == block]
        curves = [(r, c) for r, c in curves if c is not None and len(r.results)]
        if not curves:
            continue
        panels = list(dict.fromkeys(r.title for r, _ in curves))
        metrics = sorted({r.metric for r, _ in curves}, key=metric_order)
        fig = Figure(figsize=(5.2 * len(panels), 4.2))
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, panel in zip(axes[0], panels, strict=True):
            here = [(r, c) for r, c in curves if r.title == panel]
            how = here[0][1][2]
            for r, (eps, top, _) in here:
                labels = agree_labels(r.results)
                grid = np.linspace(0.0, top, 201)
                for agree, style in (("✓", "-"), ("✗", "--")):
                    mask = (labels == agree).to_numpy()
                    n = int(mask.sum())
                    if n == 0:
                        continue
                    e = np.sort(eps[mask].dropna().to_numpy())
                    rate = 100.0 * np.searchsorted(e, grid, side="right") / n
                    ax.plot(
                        grid,
                        rate,
                        style,
                        color=metric_colour(r.metric, metrics),
                        label=f"{paper.display_name(r.metric)} {agree} (n={n})",
                    )
            ax.set_title(f"{panel}\nε at flip: {how}", fontsize=9)
            ax.set_xlabel("ℓ∞ budget ε ([-1, 1] scale)")
            ax.set_ylabel("samples flipped within ε (%)")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"Flip rate vs ε · {_block_title(block)}  (solid ✓ accurate, dashed ✗ inaccurate)",
            fontsize=10,
        )
        fig.tight_layout()
        figs[slug("flip_rate_vs_eps", *block)] = fig
    return figs


# --- perturbation sizes ---------------------------------------------------------------------------


def perturbation_histograms(runs: list[Run]) -> dict[str, Figure]:
    """Per dataset block: histograms of RMSE ([0, 255]) and ℓ∞ ([-1, 1]) of flipped samples."""
    figs: dict[str, Figure] = {}
    for block in blocks(runs):
        chosen = [
            r
            for r in _by_metric(runs)
            if _block(r) == block
            and r.family != "none"
            and not r.is_transfer
            and len(r.results)
            and r.results["flipped"].astype(bool).any()
        ]
        if not chosen:
            continue
        panels = list(dict.fromkeys(r.title for r in chosen))
        metrics = sorted({r.metric for r in chosen}, key=metric_order)
        fig = Figure(figsize=(10, 3.2 * len(panels)))
        axes = fig.subplots(len(panels), 2, squeeze=False)
        for row, panel in zip(axes, panels, strict=True):
            runs_here = [r for r in chosen if r.title == panel]
            for ax, col, xlabel in (
                (row[0], "rmse_uint8", "RMSE, 8-bit images ([0, 255] scale)"),
                (row[1], "linf", "ℓ∞ of δ ([-1, 1] scale)"),
            ):
                values = [
                    r.results.loc[r.results["flipped"].astype(bool), col].astype(float)
                    for r in runs_here
                ]
                finite = (
                    np.concatenate([v[np.isfinite(v)].to_numpy() for v in values])
                    if values
                    else np.array([])
                )
                if finite.size == 0:
                    continue
                hi = float(finite.max()) if finite.max() > 0 else 1.0
                bins = np.linspace(0.0, hi * 1.02, 31)
                for r, v in zip(runs_here, values, strict=True):
                    ax.hist(
                        v[np.isfinite(v)],
                        bins=bins,
                        histtype="step",
                        linewidth=1.6,
                        color=metric_colour(r.metric, metrics),
                        label=f"{paper.display_name(r.metric)} (n={len(v)})",
                    )
                ax.set_title(f"{panel} · flipped samples", fontsize=9)
                ax.set_xlabel(xlabel)
                ax.set_ylabel("samples")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        fig.suptitle(f"Perturbation size · {_block_title(block)}", fontsize=10)
        fig.tight_layout()
        figs[slug("perturbation_histograms", *block)] = fig
    return figs
