"""Statistics of a per-triplet results table: the numbers of Tables 1-4 and 6-12.

Every summary of the package computes its numbers from these functions: the run's own
``summary.md`` (:func:`attackpsm.summary.results.summarize`, Table-2 layout), its ``table1.md``
(:func:`attackpsm.summary.accuracy.clean_accuracy`), its headline numbers and W&B summary
(:mod:`attackpsm.summary.headline`), the robustness curves and a sweep's tables
(:mod:`attackpsm.summary.curves`, :mod:`attackpsm.summary.sweep`) and the report's tables
(:mod:`attackpsm.report.tables`). What the columns mean is :mod:`attackpsm.protocol.stats`; the
✓/✗ split, the accuracy and the 2AFC score are the rules of :mod:`attackpsm.protocol.twoafc`.

- :func:`split_rows`, :func:`label_rows`: the ✓ / ✗ / n/a rows of every table ("same rank
  by human & metric"), one set of labels (:data:`attackpsm.protocol.twoafc.SPLIT_ORDER`).
- :func:`flip_counts`, :func:`rate`: flipped triplets, before and after 8-bit saving.
- :func:`flip_stats`: flip count and rate with a 95% Wilson interval, and the perturbation
  sizes over the flipped rows (Table 2, Table 4).
- :func:`accuracy_stats`, :func:`afc2_score`: Table 1.
- :func:`finite_mean`, :func:`finite_std`: the means and spreads of Table 3 and the rest.

A run's ``summary.csv`` keeps the precision of the per-triplet columns (float32 sizes print
as float32); the report's tables hold every number as float64 (:func:`as_float64`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from attackpsm.protocol.stats import PAPER_COLUMNS, THRESHOLDS, pct_column
from attackpsm.protocol.twoafc import NO_CHOICE, SPLIT_ORDER, accuracy, split_labels, twoafc_scores

Z95 = 1.959963984540054  # two-sided 95% normal quantile
PX_COLUMNS = [f"pct_px_gt_{t:g}" for t in THRESHOLDS]


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (fractions in [0, 1]).

    Args:
        k: successes (flipped samples).
        n: trials (samples); ``n = 0`` gives ``(nan, nan)``.
        z: normal quantile (1.96 for 95%).

    References:
        E. B. Wilson, "Probable inference, the law of succession, and statistical
        inference", JASA 22 (1927).
    """
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: the bound is 0 or 1
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _finite(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").replace([np.inf, -np.inf], np.nan)


def finite_mean(s: pd.Series) -> float | np.floating:
    """Mean of the finite values (the PSNR of an unchanged image is ``inf``: left out).

    NaN without one. In the column's precision: the engine's float32 sizes give a float32
    mean (``float()`` widens it exactly).
    """
    return _finite(s).mean()


def finite_std(s: pd.Series) -> float | np.floating:
    """Sample standard deviation of the finite values; NaN below two values."""
    return _finite(s).std()


def as_float64(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` with every float widened to a Python float (exactly; integers kept)."""
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in stats.items()}


def agree_labels(results: pd.DataFrame) -> pd.Series:
    """✓ / ✗ / n/a per triplet from the nullable ``human_agrees`` column."""
    return split_labels(results["human_agrees"])


def split_rows(results: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(label, rows)`` for ✓, ✗ and, when there are any, n/a (no human choice or a tie).

    The rows of every table: "same rank by human & metric" as in the paper's Tables 2-4.
    """
    labels = agree_labels(results) if len(results) else pd.Series(dtype=str)
    for label in SPLIT_ORDER:
        part = results[labels == label]
        if label == NO_CHOICE and part.empty:
            continue
        yield label, part


def label_rows(results: pd.DataFrame, label: str) -> pd.DataFrame:
    """The rows of one label of :func:`split_rows` (``AGREE``: Table 2's ✓ row)."""
    assert label in SPLIT_ORDER, f"{label!r} is not one of {SPLIT_ORDER}"  # callers pass these
    if not len(results):
        return results
    return results[(agree_labels(results) == label).to_numpy()]


def flip_counts(rows: pd.DataFrame) -> dict[str, int]:
    """``samples``, ``flipped`` and ``flipped_saved`` (flipped after saving as 8-bit
    images; 0 without the column) of a set of per-triplet rows."""
    n = len(rows)
    return {
        "samples": n,
        "flipped": int(rows["flipped"].astype(bool).sum()) if n else 0,
        "flipped_saved": int(rows["flipped_saved"].astype(bool).sum())
        if n and "flipped_saved" in rows
        else 0,
    }


def rate(count: int, n: int) -> float:
    """``count / n`` as a fraction; NaN for no samples."""
    return count / n if n else float("nan")


def flip_fraction(flipped: pd.Series) -> float:
    """Fraction of the rows flipped (a boolean column); NaN without rows."""
    return float(flipped.astype(bool).mean()) if len(flipped) else float("nan")


def worst_case(
    tables: Iterable[pd.DataFrame], columns: tuple[str, ...] = ("flipped", "flipped_saved")
) -> pd.DataFrame:
    """Per triplet, whether any of the tables flipped it: the worst case over the attacks
    run at one budget (the leaderboard's flip rate). Indexed by ``triplet_id``."""
    cols = list(columns)
    table = pd.concat([t[["triplet_id", *cols]] for t in tables])
    return table.groupby("triplet_id")[cols].any()


def robust_fraction(agrees: pd.Series, flipped: pd.Series) -> float | None:
    """Robust accuracy: the fraction of the labelled triplets ranked as humans did
    (``agrees``, nullable) and not flipped. ``None`` without a labelled triplet."""
    labelled = agrees.notna()
    if not labelled.any():
        return None
    return float((agrees[labelled].astype(bool) & ~flipped[labelled].astype(bool)).mean())


def flip_stats(
    rows: pd.DataFrame, extras: Iterable[str] = (), both_ways: bool = False
) -> dict[str, Any]:
    """Flip counts and perturbation statistics of a set of per-triplet rows.

    Perturbation statistics are over the flipped rows, as in the paper (Table 2), with the
    paper's definitions (:data:`attackpsm.protocol.stats.PAPER_COLUMNS`): RMSE and PSNR on the
    [0, 255] scale between the 8-bit images (PSNR ignores the infinite values of unchanged
    images), ``pct_px_gt_<t>`` = mean % of values of the float δ with ``|δ| > t`` on the
    [-1, 1] scale, ``mean_eps`` = mean ε at the first flip (FGSM's ``eps_found``).

    Args:
        rows: per-triplet rows (:data:`attackpsm.summary.results.BASE_COLUMNS` and the attack's own).
        extras: columns (``iterations``, ``queries``, ...) whose mean over the flipped rows is
            added as ``<col>_mean``, where ``rows`` has them.
        both_ways: also the sizes measured the other way round (``rmse_float_*``,
            ``psnr_float_*``, ``pct_px_gt_<t>_uint8``; see :mod:`attackpsm.protocol.stats`).

    Returns:
        ``{statistic: value}``; counts are integers, means and spreads in the precision of
        their per-triplet column (:func:`finite_mean`; :func:`as_float64` widens them).
    """
    counts = flip_counts(rows)
    n, k = counts["samples"], counts["flipped"]
    lo, hi = wilson_interval(k, n)
    flipped = rows[rows["flipped"].astype(bool)] if n else rows
    out: dict[str, float] = {
        "samples": n,
        "flipped": k,
        "flipped_pct": 100.0 * k / n if n else float("nan"),
        "ci_low_pct": 100.0 * lo,
        "ci_high_pct": 100.0 * hi,
        "flipped_saved": counts["flipped_saved"],
        "rmse_mean": finite_mean(flipped[PAPER_COLUMNS["rmse"]]),
        "rmse_std": finite_std(flipped[PAPER_COLUMNS["rmse"]]),
        "psnr_mean": finite_mean(flipped[PAPER_COLUMNS["psnr"]]),
        "psnr_std": finite_std(flipped[PAPER_COLUMNS["psnr"]]),
        "linf_mean": finite_mean(flipped["linf"]) if "linf" in rows else float("nan"),
        "mean_eps": finite_mean(flipped["eps_found"]) if "eps_found" in rows else float("nan"),
    }
    for col in PX_COLUMNS:
        out[col] = finite_mean(flipped[PAPER_COLUMNS[col]])
    for col in extras:
        if col in rows:
            out[f"{col}_mean"] = finite_mean(flipped[col])
    if both_ways:
        for way in ("rmse_float", "psnr_float"):
            out[f"{way}_mean"] = finite_mean(flipped[way])
            out[f"{way}_std"] = finite_std(flipped[way])
        for t in THRESHOLDS:
            out[pct_column(t, "uint8")] = finite_mean(flipped[pct_column(t, "uint8")])
    return out


def accuracy_stats(results: pd.DataFrame) -> dict[str, float]:
    """Accuracy of a set of triplets and its 95% Wilson interval (Table 1).

    :func:`attackpsm.protocol.twoafc.accuracy`: the fraction ranked as the human majority did, a
    metric tie half right, over the ``labelled`` triplets with a human choice.
    """
    acc, n = accuracy(results["d0"], results["d1"], results["judge"])
    lo, hi = wilson_interval(acc * n, n) if n else (float("nan"), float("nan"))
    return {
        "labelled": n,
        "accuracy_pct": 100.0 * acc,
        "ci_low_pct": 100.0 * lo,
        "ci_high_pct": 100.0 * hi,
    }


def afc2_score(results: pd.DataFrame) -> float:
    """2AFC score in % (Zhang et al., 2018): mean fraction of raters who agree with the
    metric, over the triplets with a label (:func:`attackpsm.protocol.twoafc.twoafc_scores`)."""
    labelled = results[results["judge"].notna()]
    if labelled.empty:
        return float("nan")
    return float(100.0 * twoafc_scores(labelled["d0"], labelled["d1"], labelled["judge"]).mean())
