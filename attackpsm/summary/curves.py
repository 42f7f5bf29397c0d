"""Robustness curves: the fraction of ✓ triplets flipped against the budget and the effort.

A run's curves (:func:`robustness_curves`) are logged with its W&B run
(:func:`attackpsm.job.loggers.log_curves`); a sweep's put every run's on one panel per x
axis (:func:`attackpsm.summary.sweep.sweep_tables`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from attackpsm.protocol.twoafc import AGREE
from attackpsm.summary.statistics import label_rows

CURVE = "curve"  # column naming the line a curve point belongs to (the metric, in a sweep)
# Per-triplet minimal budget, first found wins: a minimum-norm attack's ``eps_star``, the
# bisection of ``attack=min_eps``, FGSM's scan (Alg. 3, ``eps_found``). NaN or inf: no flip.
MINIMAL_EPS = ("eps_star", "min_eps", "eps_found")
MAX_POINTS = 256  # points of one curve; a longer one keeps evenly spaced ones (and both ends)


def minimal_eps_column(table: pd.DataFrame) -> str | None:
    """The per-triplet minimal-ε column of a results table (:data:`MINIMAL_EPS`), if any."""
    return next((c for c in MINIMAL_EPS if c in table.columns), None)


def _grid(values: np.ndarray, start: float, stop: float | None = None) -> np.ndarray:
    xs = np.unique(np.concatenate([[start], values, [] if stop is None else [stop]]))
    if len(xs) > MAX_POINTS:
        xs = xs[np.unique(np.linspace(0, len(xs) - 1, MAX_POINTS).round().astype(int))]
    return xs


def _curve(label: dict[str, Any], x: str, xs: np.ndarray, flips: np.ndarray, n: int, source: str):
    return pd.DataFrame(
        {
            **{k: [v] * len(xs) for k, v in label.items()},
            x: xs.astype(float),
            "flip_rate": flips / n if n else np.full(len(xs), np.nan),
            "flipped": flips.astype(int),
            "samples": n,
            "source": source,
        }
    )


def robustness_curves(table: pd.DataFrame, keys: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The fraction of ✓ triplets flipped against the budget and the attack's effort.

    * ``eps``: from a per-triplet minimal ε (:func:`minimal_eps_column`), the fraction with
      a minimal ε at most ε, at every distinct minimal ε (0 and the attack's largest ε
      added); otherwise one point, the flip rate at the run's ε (``keys["eps"]``).
    * ``iterations`` / ``queries`` (attacks without a minimal ε): the fraction flipped
      within ``k`` iterations (PGD's check index of the flip, Alg. 1) or metric queries.

    Args:
        table: a results table (one row per attacked triplet).
        keys: the run's keys: ``metric.name``, ``attack.name``, ``eps``
            (:data:`attackpsm.job.loggers.RUN_KEYS`). The ``curve`` column names the line a
            point belongs to: ``metric · attack`` for ε, ``metric · attack · ε=…`` for
            iterations and queries (runs of one metric at several ε draw one line against
            ε, and one line each against the effort).

    Returns:
        ``{x: frame}`` with columns ``curve``, ``metric``, ``attack``, ``<x>``, ``flip_rate``,
        ``flipped``, ``samples`` (the ✓ triplets) and ``source`` (the column behind ``x``).
    """
    rows = label_rows(table, AGREE)
    n = len(rows)
    eps = keys.get("eps")
    name = f"{keys.get('metric.name')} · {keys.get('attack.name')}"
    label = {CURVE: name, "metric": keys.get("metric.name"), "attack": keys.get("attack.name")}
    flipped = rows["flipped"].astype(bool).to_numpy() if n else np.zeros(0, bool)
    out: dict[str, pd.DataFrame] = {}
    col = minimal_eps_column(table)
    if col is not None:
        found = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        reached = np.isfinite(found)
        xs = _grid(found[reached], 0.0, eps)
        flips = np.array([(reached & (found <= x)).sum() for x in xs])
        out["eps"] = _curve(label, "eps", xs, flips, n, col)
        return out
    if eps is not None:
        out["eps"] = _curve(label, "eps", np.array([eps]), np.array([flipped.sum()]), n, "flipped")
        label = {**label, CURVE: f"{name} · ε={eps:g}"}
    for x in ("iterations", "queries"):
        if x not in rows or not n:
            continue
        effort = pd.to_numeric(rows[x], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(effort).any() or np.nanmax(effort) <= 0:
            continue  # no effort counted: not an iterative or black-box attack
        xs = _grid(effort[flipped & np.isfinite(effort)], 0.0, float(np.nanmax(effort)))
        flips = np.array([(flipped & (effort <= k)).sum() for k in xs])
        out[x] = _curve(label, x, xs, flips, n, x)
    return out
