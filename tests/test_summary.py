"""attackpsm.summary: the numbers of every table from hand-built per-triplet tables whose
counts, means and intervals are worked out by hand here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attackpsm.protocol.stats import THRESHOLDS, pct_column
from attackpsm.summary.statistics import (
    accuracy_stats,
    afc2_score,
    finite_mean,
    flip_fraction,
    flip_stats,
    robust_fraction,
    split_rows,
    wilson_interval,
    worst_case,
)


def test_wilson_interval_matches_the_published_values():
    # Wilson (1927) at 95%: 5 of 10 -> [0.2366, 0.7634]; 1 of 20 -> [0.0089, 0.2361]
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    assert wilson_interval(1, 20) == pytest.approx((0.0089, 0.2361), abs=5e-5)
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_split_rows_orders_agree_disagree_and_omits_an_empty_na():
    table = pd.DataFrame({"triplet_id": [0, 1, 2, 3], "human_agrees": [True, False, None, True]})
    table["human_agrees"] = table["human_agrees"].astype("boolean")
    parts = {label: list(rows["triplet_id"]) for label, rows in split_rows(table)}
    assert list(parts) == ["✓", "✗", "n/a"]
    assert parts == {"✓": [0, 3], "✗": [1], "n/a": [2]}
    labelled = table.iloc[[0, 1]]
    assert [label for label, _ in split_rows(labelled)] == ["✓", "✗"]


def _rows() -> pd.DataFrame:
    n = 4
    rows = {
        "flipped": [True, False, True, True],
        "flipped_saved": [True, False, False, True],
        "rmse_uint8": [1.0, 50.0, 3.0, 0.0],
        "psnr_uint8": [40.0, 10.0, 30.0, np.inf],  # an unchanged 8-bit image: PSNR inf
        "linf": [0.01, 0.5, 0.03, 0.02],
        "iterations": [2, 30, 4, 6],
    }
    for t in THRESHOLDS:
        rows[pct_column(t, "float")] = [10.0, 99.0, 20.0, 30.0]
    return pd.DataFrame(rows, index=range(n))


def test_flip_stats_counts_flips_and_averages_sizes_over_flipped_rows_only():
    stats = flip_stats(_rows(), extras=["iterations", "queries"])
    assert (stats["samples"], stats["flipped"], stats["flipped_saved"]) == (4, 3, 2)
    assert stats["flipped_pct"] == 75.0
    lo, hi = wilson_interval(3, 4)
    assert (stats["ci_low_pct"], stats["ci_high_pct"]) == (100 * lo, 100 * hi)
    assert stats["rmse_mean"] == pytest.approx((1.0 + 3.0 + 0.0) / 3)
    assert stats["rmse_std"] == pytest.approx(np.std([1.0, 3.0, 0.0], ddof=1))
    assert stats["psnr_mean"] == pytest.approx(35.0)  # the infinite PSNR is left out
    assert stats["linf_mean"] == pytest.approx(0.02)
    assert stats["iterations_mean"] == pytest.approx(4.0)
    assert "queries_mean" not in stats  # asked for, but not a column of these rows
    assert stats[f"pct_px_gt_{THRESHOLDS[0]:g}"] == pytest.approx(20.0)
    assert math.isnan(stats["mean_eps"])


def test_flip_stats_of_no_rows_is_empty_not_an_error():
    stats = flip_stats(_rows().iloc[:0])
    assert (stats["samples"], stats["flipped"]) == (0, 0)
    assert math.isnan(stats["flipped_pct"]) and math.isnan(stats["rmse_mean"])


def test_accuracy_and_2afc_score_use_one_tie_rule():
    table = pd.DataFrame(
        {
            "d0": [0.1, 0.3, 0.2, 0.1, 0.1],
            "d1": [0.2, 0.2, 0.2, 0.3, 0.3],
            # the fraction of raters who preferred p1; 0.5: no human choice; NaN: unlabelled
            "judge": [0.0, 0.0, 1.0, 0.5, np.nan],
        }
    )
    acc = accuracy_stats(table)
    # right (p0, p0), wrong (p1 vs p0), a metric tie is half right; 0.5 and NaN not labelled
    assert acc["labelled"] == 3
    assert acc["accuracy_pct"] == pytest.approx(100 * 1.5 / 3)
    # raters agreeing with the metric: 1.0, 0.0, tie 0.5, 0.5 (judge 0.5) over 4 labelled
    assert afc2_score(table) == pytest.approx(100 * (1.0 + 0.0 + 0.5 + 0.5) / 4)


def test_finite_mean_skips_inf_and_nan():
    assert finite_mean(pd.Series([1.0, np.inf, np.nan, 3.0])) == 2.0


def test_worst_case_counts_a_triplet_flipped_by_any_attack_once():
    pgd = pd.DataFrame({"triplet_id": [0, 1, 2], "flipped": [True, False, False]})
    square = pd.DataFrame({"triplet_id": [0, 1, 2], "flipped": [True, True, False]})
    per = worst_case([pgd, square], columns=("flipped",))
    assert per["flipped"].to_dict() == {0: True, 1: True, 2: False}
    assert flip_fraction(per["flipped"]) == pytest.approx(2 / 3)
    assert math.isnan(flip_fraction(pd.Series([], dtype=bool)))


def test_robust_fraction_is_over_labelled_triplets_ranked_as_humans_did_and_not_flipped():
    agrees = pd.Series([True, True, False, None, True], dtype="boolean")
    flipped = pd.Series([False, True, False, False, False])
    # labelled: 4; agreeing and not flipped: triplets 0 and 4
    assert robust_fraction(agrees, flipped) == pytest.approx(2 / 4)
    assert robust_fraction(pd.Series([None], dtype="boolean"), pd.Series([False])) is None
