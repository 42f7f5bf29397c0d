"""Tables 6-8 and 10-12, the paper's attack variants, and the table of every attack run.

Each is built when its runs exist (any dataset), in the long layout of
:func:`attackpsm.report.tables.attack_rows.long_render`.
"""

from __future__ import annotations

import pandas as pd

from attackpsm.report.tables.attack_rows import long_table
from attackpsm.report.tables.format import Table


def variant_tables(rows: pd.DataFrame) -> list[Table]:
    """Tables 6-8 and 10-12: the attack variants, when the runs exist (any dataset)."""
    if rows.empty:
        return []
    tables = []
    block = ["dataset", "dataset_variant", "resolution", "metric"]
    pgd = rows[rows["family"] == "pgd"]
    paper_pgd = pgd[pgd["paper_setting"].astype(bool)]
    n_res = paper_pgd.groupby(["dataset", "dataset_variant", "metric"])["resolution"].transform(
        "nunique"
    )
    tables.append(
        long_table(
            "table6_7_pgd_by_resolution",
            "Tables 6-7: PGD by resolution",
            paper_pgd[(n_res > 1) | paper_pgd["dataset"].isin(("pieapp", "clic"))],
            "The paper's Table 6 (PieAPP) and Table 7 (CLIC): PGD at several image resolutions.",
        )
    )
    tables.append(
        long_table(
            "table8_stadv",
            "Table 8: stAdv",
            rows[rows["family"] == "stadv"],
            "The paper's Table 8: stAdv on LPIPS(Alex), PieAPP, α of Eq. 4 = 50, 200, 1000.",
        )
    )
    fgsm = rows[rows["family"] == "fgsm"]
    small = fgsm[~fgsm["paper_setting"].astype(bool)]  # FGSM at another budget (fgsm003)
    if not small.empty:
        keys = set(small[block].itertuples(index=False, name=None))
        match = paper_pgd[[k in keys for k in paper_pgd[block].itertuples(index=False, name=None)]]
        tables.append(
            long_table(
                "table10_fgsm_vs_pgd",
                "Table 10: FGSM and PGD at the same ℓ∞ budget",
                pd.concat([small, match]),
                "The paper's Table 10: FGSM with max ε = 0.03 next to PGD (ε = 0.03).",
            )
        )
    # PGD in the paper's setting but for the step size (Table 11 varies only α)
    alpha_like = pgd[pgd["paper_setting_but_varied"].astype(bool)]
    n_alpha = alpha_like.groupby(block)["run_dir"].transform("nunique")
    tables.append(
        long_table(
            "table11_pgd_alpha",
            "Table 11: PGD with other step sizes α",
            alpha_like[n_alpha > 1],
            "The paper's Table 11: PGD with α = 0.001, 0.00375, 0.006.",
        )
    )
    tables.append(
        long_table(
            "table12_reverse_pgd",
            "Table 12: reverse PGD",
            rows[rows["family"] == "pgd_reverse"],
            "The paper's Table 12 (Appendix F): the less similar image is attacked to become "
            "more similar; a flip is s_adv < s_other.",
        )
    )
    return [t for t in tables if t is not None]


def all_attacks_table(rows: pd.DataFrame) -> Table | None:
    """Every attack run x ✓/✗ (``attacks_all_runs``), with the paper's numbers where any."""
    note = (
        "Every attack run. 'Paper' columns appear where the run is one of the paper's "
        "settings (dataset, resolution and attack parameters); the CSV has every statistic."
    )
    return long_table("attacks_all_runs", "All attack runs", rows, note)
