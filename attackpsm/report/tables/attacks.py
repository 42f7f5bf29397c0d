"""Tables 2 and 4: FGSM, PGD and One-pixel side by side, and their PSNR.

One attack per family and dataset block (:func:`select_table2`), ✓/✗ rows per metric, the
published BAPPS numbers next to runs of the paper's settings.
"""

from __future__ import annotations

import pandas as pd

from attackpsm.protocol.stats import PAPER_DEFINITIONS
from attackpsm.report import paper
from attackpsm.report.load import attack_title
from attackpsm.report.tables.attack_rows import (
    flip_cell,
    has_paper,
    paper_flip_cell,
    paper_mu_sigma,
    paper_px_cell,
    px_cell,
)
from attackpsm.report.tables.format import (
    AGREE_ORDER,
    Table,
    fmt_mu_sigma,
    metric_order,
    num,
    render_blocks,
    sort_rows,
)

TABLE2_ATTACKS = ("fgsm", "pgd", "onepixel")  # attack families, in the paper's column order


def select_table2(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset block and attack family, the paper's setting if it was run, else the
    attack (and variant) with the most runs; one attack per family and block."""
    keep = []
    chosen_rows = rows[rows["family"].isin(TABLE2_ATTACKS)]
    for _, part in chosen_rows.groupby(
        ["dataset", "dataset_variant", "resolution", "family"], sort=False
    ):
        label = part["attack"] + "\0" + part["variant"]
        runs = part.assign(_label=label).drop_duplicates("run_dir")
        ok = runs["paper_setting"].astype(bool)
        candidates = runs.loc[ok, "_label"] if ok.any() else runs["_label"]
        keep.append(part[label == candidates.value_counts().index[0]])
    return pd.concat(keep, ignore_index=True) if keep else rows.iloc[0:0]


def _by_family(part: pd.DataFrame, family: str) -> tuple[str, dict]:
    """(printed attack name, {(metric, agrees): row}) of one family in a Table-2 block."""
    sub = part[part["family"] == family]
    first = sub.iloc[0]
    by = {(r["metric"], r["agrees"]): r for _, r in sub.iterrows()}
    return attack_title(first["attack"], first["variant"]), by


def _row_index(part: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    index = part[["metric", "agrees"]].drop_duplicates()
    index = index.assign(
        _m=index["metric"].map(metric_order), _a=index["agrees"].map(AGREE_ORDER.index)
    ).sort_values(["_m", "_a"])
    table = pd.DataFrame(
        {
            "Metric": index["metric"].map(paper.display_name).to_numpy(),
            "Same rank by human & metric": index["agrees"].to_numpy(),
        }
    )
    return table, list(zip(index["metric"], index["agrees"], strict=True))


def table2_attacks(rows: pd.DataFrame) -> Table | None:
    """Table 2: FGSM, PGD and One-pixel side by side, ✓/✗ rows per metric."""
    data = select_table2(rows)
    if data.empty:
        return None
    data = sort_rows(data, ["_family"])

    def render(part: pd.DataFrame) -> pd.DataFrame:
        table, keys = _row_index(part)
        samples = part.drop_duplicates(["metric", "agrees"]).set_index(["metric", "agrees"])
        table["Samples"] = [num(samples["samples"].get(k)) for k in keys]
        for family in TABLE2_ATTACKS:
            if not (part["family"] == family).any():
                continue
            name, by = _by_family(part, family)
            sub = pd.DataFrame(list(by.values()))

            def col(fn, by=by):
                return [fn(by[k]) if k in by else "–" for k in keys]

            table[f"{name} #Flipped [95% CI]"] = col(flip_cell)
            if has_paper(sub, "paper_flipped"):
                table[f"{name} paper"] = col(paper_flip_cell)
            if family == "fgsm":
                table[f"{name} mean ε"] = col(lambda r: num(r["mean_eps"], 4))
                if has_paper(sub, "paper_mean_eps"):
                    table[f"{name} paper mean ε"] = col(lambda r: num(r.get("paper_mean_eps"), 3))
            if family == "pgd":
                table[f"{name} %px ε>0.001 / >0.01 / >0.03 (float δ)"] = col(px_cell)
                if has_paper(sub, "paper_pct_px_gt_0.001"):
                    table[f"{name} paper %px"] = col(paper_px_cell)
            if family in ("fgsm", "pgd"):
                table[f"{name} RMSE μ/σ (8-bit)"] = col(
                    lambda r: fmt_mu_sigma(r["rmse_mean"], r["rmse_std"])
                )
                if has_paper(sub, "paper_rmse_mean"):
                    table[f"{name} paper RMSE"] = col(lambda r: paper_mu_sigma(r, "rmse"))
            if family == "onepixel" and "queries_mean" in sub:
                table[f"{name} queries μ"] = col(lambda r: num(r.get("queries_mean"), 0))
        return table

    note = (
        "#Flipped: samples whose rank flipped / % of the row's samples [95% Wilson interval, %]. "
        f"Perturbation sizes as in the paper: {PAPER_DEFINITIONS}. "
        "'paper' columns: the published BAPPS numbers for the same metric and setting."
    )
    title = "Table 2: attacks per metric (✓ accurate / ✗ inaccurate samples)"
    return Table("table2_attacks", title, data, render_blocks(title, data, render, note))


def table4_psnr(rows: pd.DataFrame) -> Table | None:
    """Table 4: PSNR (over flipped samples) of the Table-2 attacks."""
    data = select_table2(rows)
    if data.empty:
        return None
    cols = [
        "dataset", "dataset_variant", "resolution", "metric", "attack", "family", "variant",
        "agrees", "flipped", "psnr_mean", "psnr_std", "paper_psnr_mean", "paper_psnr_std",
    ]  # fmt: skip
    data = sort_rows(data[[c for c in cols if c in data]], ["_family"])

    def render(part: pd.DataFrame) -> pd.DataFrame:
        table, keys = _row_index(part)
        for family in TABLE2_ATTACKS:
            if not (part["family"] == family).any():
                continue
            name, by = _by_family(part, family)
            table[f"{name} PSNR μ/σ (8-bit)"] = [
                fmt_mu_sigma(by[k]["psnr_mean"], by[k]["psnr_std"], 2) if k in by else "–"
                for k in keys
            ]
            if has_paper(pd.DataFrame(list(by.values())), "paper_psnr_mean"):
                table[f"{name} paper"] = [
                    paper_mu_sigma(by[k], "psnr") if k in by else "" for k in keys
                ]
        return table

    title = "Table 4: PSNR of the adversarial images (flipped samples)"
    note = (
        "PSNR as in the paper: 20 log10(255 / RMSE), RMSE on [0, 255] between the 8-bit prey "
        "and adversarial images (truncated to uint8 as the released code's tensor2im does)."
    )
    return Table("table4_psnr", title, data, render_blocks(title, data, render, note))
