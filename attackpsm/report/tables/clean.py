"""Tables of the clean metric: Table 1 (accuracy, 2AFC score, per subset) and Table 3.

Clean numbers do not depend on the attack, so each (dataset, resolution, metric) is read
from one run (:func:`clean_runs`).
"""

from __future__ import annotations

import pandas as pd

from attackpsm.report import paper
from attackpsm.report.load import Run
from attackpsm.report.tables.format import (
    ATTACK_KEYS,
    Table,
    fmt_mu_sigma,
    metric_order,
    num,
    render_blocks,
    run_keys,
    sort_rows,
)
from attackpsm.report.tables.paper_compare import clean_paper_values
from attackpsm.summary.statistics import (
    accuracy_stats,
    afc2_score,
    agree_labels,
    finite_mean,
    finite_std,
    split_rows,
)


def clean_runs(runs: list[Run]) -> list[Run]:
    """One run per (dataset, resolution, metric) for clean numbers: ``attack=none`` if there
    is one, else the run with the most triplets (the clean scores do not depend on the attack)."""
    best: dict[tuple, Run] = {}
    for r in runs:
        if r.is_transfer:
            continue
        key = (r.dataset, r.dataset_variant, r.resolution, r.metric)
        cur = best.get(key)
        rank = (r.family == "none", len(r.results))
        if cur is None or rank > (cur.family == "none", len(cur.results)):
            best[key] = r
    return list(best.values())


def _clean_keys(run: Run) -> dict:
    return {k: v for k, v in run_keys(run).items() if k not in ATTACK_KEYS}


def _accuracy_row(results: pd.DataFrame) -> dict[str, float]:
    """Accuracy of a set of triplets (:func:`attackpsm.summary.statistics.accuracy_stats`: a tie is
    half right), its 95% interval, the number with a human choice and the ✓ count."""
    return {
        **accuracy_stats(results),
        "accurate": int((agree_labels(results) == "✓").sum()),
    }


def table1_accuracy(runs: list[Run]) -> Table:
    """Table 1: accuracy (% of labelled samples ranked as humans did) and 2AFC score."""
    rows = []
    for r in clean_runs(runs):
        res = r.results
        pub = clean_paper_values(r, 1, None)
        unanimous = r.dataset_params.get("filter", "unanimous") == "unanimous"
        rows.append(
            {
                **_clean_keys(r),
                "from_run": r.label,
                "samples": len(res),
                **_accuracy_row(res),
                "afc2_pct": afc2_score(res),
                "paper_accuracy_pct": pub["accuracy"] if pub and unanimous else float("nan"),
                "paper_afc2_full_pct": pub["afc2_full"] if pub and not unanimous else float("nan"),
            }
        )
    cols = [
        "dataset",
        "dataset_variant",
        "resolution",
        "metric",
        "from_run",
        "samples",
        "labelled",
        "accurate",
        "accuracy_pct",
        "ci_low_pct",
        "ci_high_pct",
        "afc2_pct",
        "paper_accuracy_pct",
        "paper_afc2_full_pct",
    ]
    data = sort_rows(pd.DataFrame(rows, columns=cols).assign(agrees="✓")).drop(columns="agrees")

    def render(part: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "Metric": part["metric"].map(paper.display_name),
                "Samples (labelled)": part["labelled"].map(num),
                "Accuracy % [95% CI]": [
                    f"{num(a)} [{num(lo, 0)}–{num(hi, 0)}]"
                    for a, lo, hi in zip(
                        part["accuracy_pct"], part["ci_low_pct"], part["ci_high_pct"], strict=True
                    )
                ],
                "2AFC %": part["afc2_pct"].map(num),
            }
        )
        if part["paper_accuracy_pct"].notna().any():
            out["Paper accuracy % (BAPPS 12,227)"] = part["paper_accuracy_pct"].map(num)
        if part["paper_afc2_full_pct"].notna().any():
            out["Paper 2AFC % (BAPPS 36,344)"] = part["paper_afc2_full_pct"].map(num)
        return out

    note = (
        "Accuracy: % of labelled triplets where the metric ranks the two distortions as the "
        "humans did (the ✓ rows of every other table); a tie d0 = d1 counts as half right, "
        "as in the 2AFC score. 2AFC: mean fraction of raters agreeing with the metric "
        "(equals the accuracy on unanimous triplets)."
    )
    return Table(
        "table1_accuracy",
        "Table 1: clean accuracy",
        data,
        render_blocks("Table 1: clean accuracy", data, render, note),
    )


def table1_by_subset(runs: list[Run]) -> Table:
    """Accuracy per subset (BAPPS: traditional, cnn, ...; synthetic: distortion family)."""
    rows = []
    for r in clean_runs(runs):
        for subset, part in r.results.groupby("subset", sort=True):
            rows.append(
                {
                    **_clean_keys(r),
                    "subset": subset,
                    **_accuracy_row(part),
                    "afc2_pct": afc2_score(part),
                }
            )
    cols = [
        "dataset",
        "dataset_variant",
        "resolution",
        "metric",
        "subset",
        "labelled",
        "accurate",
        "accuracy_pct",
        "ci_low_pct",
        "ci_high_pct",
        "afc2_pct",
    ]
    data = sort_rows(pd.DataFrame(rows, columns=cols).assign(agrees="✓"), ["subset"]).drop(
        columns="agrees"
    )

    def render(part: pd.DataFrame) -> pd.DataFrame:
        wide = part.assign(
            cell=[
                f"{num(a)} ({n})"
                for a, n in zip(part["accuracy_pct"], part["labelled"], strict=True)
            ]
        )
        wide = wide.pivot_table(
            index="metric", columns="subset", values="cell", aggfunc="first", sort=False
        )
        wide = wide.reindex(sorted(wide.index, key=metric_order))
        wide.index = wide.index.map(paper.display_name)
        return wide.fillna("–").reset_index().rename(columns={"metric": "Metric"})

    title = "Table 1 by subset: accuracy % (labelled samples)"
    return Table("table1_accuracy_by_subset", title, data, render_blocks(title, data, render))


def table3_similarity_difference(runs: list[Run]) -> Table:
    """Table 3: mean ``|s_0 - s_1|`` on ✓ vs ✗ samples (✗ samples sit near the boundary)."""
    rows = []
    for r in clean_runs(runs):
        res = r.results.assign(_diff=(r.results["d0"] - r.results["d1"]).abs())
        for label, part in split_rows(res):
            pub = clean_paper_values(r, 3, label)
            rows.append(
                {
                    **_clean_keys(r),
                    "agrees": label,
                    "samples": len(part),
                    "sim_diff_mean": float(finite_mean(part["_diff"])),
                    "sim_diff_std": float(finite_std(part["_diff"])),
                    "sim_diff_median": float(part["_diff"].median()) if len(part) else float("nan"),
                    "paper_sim_diff_mean": pub["sim_diff_mean"] if pub else float("nan"),
                }
            )
    cols = [
        "dataset",
        "dataset_variant",
        "resolution",
        "metric",
        "agrees",
        "samples",
        "sim_diff_mean",
        "sim_diff_std",
        "sim_diff_median",
        "paper_sim_diff_mean",
    ]
    data = sort_rows(pd.DataFrame(rows, columns=cols))

    def render(part: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "Metric": part["metric"].map(paper.display_name),
                "Same rank by human & metric": part["agrees"],
                "Samples": part["samples"].map(num),
                "abs(s0 − s1) μ/σ": [
                    fmt_mu_sigma(m, s, 4)
                    for m, s in zip(part["sim_diff_mean"], part["sim_diff_std"], strict=True)
                ],
                "median": part["sim_diff_median"].map(lambda v: num(v, 4)),
            }
        )
        if part["paper_sim_diff_mean"].notna().any():
            out["Paper μ"] = part["paper_sim_diff_mean"].map(lambda v: num(v, 3))
        return out

    title = "Table 3: similarity difference |s0 − s1|"
    return Table("table3_similarity_difference", title, data, render_blocks(title, data, render))
