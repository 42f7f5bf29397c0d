"""A run's headline numbers, their ✓/✗ and per-subset split, and its size distributions.

- :func:`headline`: what a run returns, prints and logs (``run()``'s return value, the W&B
  summary of a shard and of an aggregate run, ``cluster merge``'s status lines).
- :func:`split_headline`: the same numbers per ✓/✗ row (Table 2) and per subset, named
  ``<number>/<row>`` (:data:`SPLIT_KEYS`) and ``<number>/<subset>``.
- :func:`distributions`: the per-triplet values a run shows as histograms.

The counts and rates are those of :mod:`attackpsm.summary.statistics`; the ✓/✗ labels are
:data:`attackpsm.protocol.twoafc.SPLIT_ORDER`'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attackpsm.protocol.stats import PAPER_COLUMNS
from attackpsm.protocol.twoafc import AGREE, DISAGREE, accuracy
from attackpsm.summary.statistics import finite_mean, flip_counts, label_rows, rate

# The ✓ / ✗ rows as keys name them (``flip_rate/agree``, ``progress/flip_rate_disagree``,
# ``examples/agree``): plain words, since W&B keys are typed and filtered by hand.
SPLIT_KEYS = {AGREE: "agree", DISAGREE: "disagree"}


def headline(table: pd.DataFrame, skipped: int) -> dict[str, float]:
    """The numbers a run returns and logs: samples, flip rates, accuracy (one tie rule,
    :func:`attackpsm.protocol.twoafc.accuracy`), RMSE of the flips (the paper's 8-bit RMSE).

    Args:
        table: per-triplet rows (one per attacked triplet).
        skipped: triplets skipped (they have no row).
    """
    counts = flip_counts(table)
    n = counts["samples"]
    nan = float("nan")
    flipped = table["flipped"].astype(bool) if n else pd.Series(dtype=bool)
    return {
        "samples": n,
        "skipped": skipped,
        "flipped": counts["flipped"],
        "flipped_saved": counts["flipped_saved"],
        "flip_rate": rate(counts["flipped"], n),
        "flip_rate_saved": rate(counts["flipped_saved"], n),
        "stalled": int(table["stalled"].astype(bool).sum()) if n and "stalled" in table else 0,
        "accuracy": accuracy(table["d0"], table["d1"], table["judge"])[0] if n else nan,
        "rmse_flipped_mean": float(finite_mean(table.loc[flipped, PAPER_COLUMNS["rmse"]]))
        if flipped.any()
        else nan,
    }


def _numbers(table: pd.DataFrame) -> dict[str, float]:
    numbers = headline(table, skipped=0)
    numbers.pop("skipped")  # skipped triplets have no row, so no split
    return numbers


def split_headline(table: pd.DataFrame) -> dict[str, float]:
    """The headline numbers per ✓/✗ row (Table 2) and per subset: ``flip_rate/agree``,
    ``flip_rate/disagree``, ``flip_rate/<subset>``, ``accuracy/<subset>``, ...

    Accuracy has no ✓/✗ split (it is 1 and 0 there by definition).
    """
    out: dict[str, float] = {}
    if not len(table):
        return out
    for label, name in SPLIT_KEYS.items():
        for key, value in _numbers(label_rows(table, label)).items():
            if key != "accuracy":
                out[f"{key}/{name}"] = value
    for subset, part in table.groupby(table["subset"].astype(str), sort=True):
        for key, value in _numbers(part).items():
            out[f"{key}/{subset}"] = value
    return out


# the columns whose distributions a run shows (dist/<name>); min_eps only for that attack
DISTRIBUTIONS = ("rmse", "linf", "margin", "iterations", "queries", "min_eps")


def distributions(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Finite values per distribution: RMSE ([0, 255]), ℓ∞ ([-1, 1]), the margin
    ``s_adv - s_other`` (distances: positive once the prey is the farther image, i.e. the
    rank flipped, Sec. 3; the opposite sign for the reverse attack of Appendix F),
    iterations, queries, and the minimal ε of ``attack=min_eps`` (flipped triplets only)."""
    cols = {
        "rmse": table.get(PAPER_COLUMNS["rmse"]),
        "linf": table.get("linf"),
        "margin": table["s_adv"] - table["s_other"] if len(table) else None,
        "iterations": table.get("iterations"),
        "queries": table.get("queries"),
        "min_eps": table.get("min_eps"),
    }
    out = {}
    for name, col in cols.items():
        if col is None:
            continue
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            out[name] = values
    return out


def unflipped_min_eps(table: pd.DataFrame) -> int | None:
    """Triplets ``attack=min_eps`` never flipped (minimal ε ``inf``: not in its histogram);
    ``None`` without the column."""
    if "min_eps" not in table:
        return None
    return int(np.isinf(pd.to_numeric(table["min_eps"], errors="coerce")).sum())
