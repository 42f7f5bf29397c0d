"""The paper's tables, computed from loaded runs (:mod:`attackpsm.report.load`).

Every table is a tidy :class:`pandas.DataFrame` (written as CSV, exact numbers) plus a
markdown rendering in the paper's layout. Rows are always split by "same rank by human &
metric" (✓ accurate, ✗ inaccurate; ``n/a`` without a human label), as in the paper.
Flip rates carry a 95% Wilson score interval. Where a run is one of the paper's own
settings (dataset, resolution, attack parameters), the published number sits next to it
(``paper_*`` columns; see :mod:`attackpsm.report.paper`).

Tables, by file name:

- ``table1_accuracy`` -- clean accuracy and 2AFC score per metric (Table 1), and
  ``table1_accuracy_by_subset``.
- ``table2_attacks`` -- FGSM / PGD / One-pixel side by side (Table 2).
- ``table3_similarity_difference`` -- mean ``|s_0 - s_1|`` (Table 3).
- ``table4_psnr`` -- PSNR of the adversarial images per attack (Table 4).
- ``table5_transfer`` -- flips of transferred adversarial images (Tables 5 and 9).
- ``table6_7_pgd_by_resolution``, ``table8_stadv``, ``table10_fgsm_vs_pgd``,
  ``table11_pgd_alpha``, ``table12_reverse_pgd`` -- the variants, when the runs exist.
- ``attacks_all_runs`` -- every attack run in one long table (the CSV behind the rest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from attackpsm.report import paper
from attackpsm.report.load import Run, attack_title
from attackpsm.results import BASE_COLUMNS
from attackpsm.stats import PAPER_COLUMNS, PAPER_DEFINITIONS, THRESHOLDS
from attackpsm.twoafc import SPLIT_ORDER, accuracy, split_labels, twoafc_scores

Z95 = 1.959963984540054  # two-sided 95% normal quantile
AGREE_ORDER = SPLIT_ORDER
PX_COLUMNS = [f"pct_px_gt_{t:g}" for t in THRESHOLDS]
TABLE2_ATTACKS = ("fgsm", "pgd", "onepixel")  # attack families, in the paper's column order
# The paper's attack settings (Sec. 3, Alg. 1-3); a run is compared with the paper only when
# its parameters match these wherever it has them.
PAPER_PARAMS: dict[str, dict[str, Any]] = {
    "fgsm": {"max_eps": 0.05},
    "pgd": {"eps": 0.03, "alpha": 0.001, "max_iterations": 30, "early_stop": True},
    "onepixel": {"pixels": 1},
    "pgd_reverse": {"eps": 0.03, "alpha": 0.001, "max_iterations": 30, "early_stop": True},
    "stadv": {"alpha": 50.0, "beta": 0.05, "variant": "paper", "max_iterations": None},
}
# Parameters that the paper's tables vary (so they are looked up, not required).
_VARIED = {"fgsm": ("max_eps",), "pgd": ("alpha",), "stadv": ("alpha",)}
# Which tables may hold the published numbers of a run, by dataset and attack family.
_PAPER_TABLES = {
    ("bapps", "fgsm"): (2, 10),
    ("bapps", "pgd"): (2, 11),
    ("bapps", "onepixel"): (2,),
    ("bapps", "pgd_reverse"): (12,),
    ("pieapp", "pgd"): (6,),
    ("pieapp", "stadv"): (8,),
    ("clic", "pgd"): (7,),
}
# Attack-specific per-triplet columns that are not averaged as "extras".
_NOT_EXTRA = set(BASE_COLUMNS) | {"eps_found"}


@dataclass
class Table:
    """One report table: ``name`` (file stem), ``title``, tidy ``data``, ``markdown``."""

    name: str
    title: str
    data: pd.DataFrame
    markdown: str


# --- statistics -----------------------------------------------------------------------------


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


def agree_labels(results: pd.DataFrame) -> pd.Series:
    """✓ / ✗ / n/a per triplet from the nullable ``human_agrees`` column."""
    return split_labels(results["human_agrees"])


def _mean(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    return float(s.mean()) if len(s) else float("nan")


def _std(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    return float(s.std()) if len(s) > 1 else float("nan")


def extra_columns(results: pd.DataFrame) -> list[str]:
    """Numeric per-triplet columns an attack added (iterations aside), e.g. ``queries``."""
    return [
        c
        for c in results.columns
        if c not in _NOT_EXTRA
        and pd.api.types.is_numeric_dtype(results[c])
        and not pd.api.types.is_bool_dtype(results[c])
    ]


def flip_stats(rows: pd.DataFrame) -> dict[str, float]:
    """Flip counts and perturbation statistics of a set of per-triplet rows.

    Perturbation statistics are over the flipped rows, as in the paper (Table 2), with the
    paper's definitions (:data:`attackpsm.stats.PAPER_COLUMNS`): RMSE and PSNR on the
    [0, 255] scale between the 8-bit images (PSNR ignores the infinite values of unchanged
    images), ``pct_px_gt_<t>`` = mean % of values of the float δ with ``|δ| > t`` on the
    [-1, 1] scale, ``mean_eps`` = mean ε at the first flip (FGSM's ``eps_found``).
    ``<col>_mean`` is the mean over flipped rows of each attack-specific column
    (``iterations``, ``queries``, ...).
    """
    n = len(rows)
    flipped_mask = rows["flipped"].astype(bool) if n else pd.Series(dtype=bool)
    k = int(flipped_mask.sum())
    lo, hi = wilson_interval(k, n)
    flipped = rows[flipped_mask]
    out: dict[str, float] = {
        "samples": n,
        "flipped": k,
        "flipped_pct": 100.0 * k / n if n else float("nan"),
        "ci_low_pct": 100.0 * lo,
        "ci_high_pct": 100.0 * hi,
        "flipped_uint8": int(rows["flipped_uint8"].astype(bool).sum())
        if n and "flipped_uint8" in rows
        else 0,
        "rmse_mean": _mean(flipped[PAPER_COLUMNS["rmse"]]),
        "rmse_std": _std(flipped[PAPER_COLUMNS["rmse"]]),
        "psnr_mean": _mean(flipped[PAPER_COLUMNS["psnr"]]),
        "psnr_std": _std(flipped[PAPER_COLUMNS["psnr"]]),
        "linf_mean": _mean(flipped["linf"]),
        "mean_eps": _mean(flipped["eps_found"]) if "eps_found" in rows else float("nan"),
    }
    for col in PX_COLUMNS:
        out[col] = _mean(flipped[PAPER_COLUMNS[col]])
    for col in ["iterations", *extra_columns(rows)]:
        if col in rows:
            out[f"{col}_mean"] = _mean(flipped[col])
    return out


# --- the paper's numbers ------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 + 1e-6 * abs(float(b))
    return a == b


def paper_like(attack: str, params: dict[str, Any], varied_ok: bool = False) -> bool:
    """The run uses the paper's setting of ``attack`` (``varied_ok``: except the varied knob)."""
    spec = PAPER_PARAMS.get(attack, {})
    skip = _VARIED.get(attack, ()) if varied_ok else ()
    return all(k in skip or k not in params or _same(params[k], v) for k, v in spec.items())


def paper_dataset(run: Run) -> bool:
    """The run's triplets are the paper's selection of its dataset."""
    p = run.dataset_params
    if run.dataset == "bapps":
        return p.get("split", "val") == "val" and p.get("subsets") is None
    if run.dataset == "pieapp":
        return p.get("split", "test") == "test" and _same(p.get("threshold", 0.85), 0.85)
    return run.dataset == "clic"


def paper_values(run: Run, agrees: str) -> tuple[int | None, dict[str, float]]:
    """(table number, published values) for ``run``'s ✓ or ✗ row; ``(None, {})`` if none."""
    if agrees not in ("✓", "✗") or not paper_dataset(run):
        return None, {}
    if run.dataset == "bapps" and run.dataset_params.get("filter", "unanimous") != "unanimous":
        return None, {}
    family = run.family
    tables = _PAPER_TABLES.get((run.dataset, family), ())
    params = run.attack_params
    if not tables or not paper_like(family, params, varied_ok=True):
        return None, {}
    keys = {k: params[k] for k in _VARIED.get(family, ()) if k in params}
    for table in tables:
        values = paper.lookup(
            table, run.metric, agrees, run.dataset, run.resolution, attack=family, **keys
        )
        if values is not None:
            values = dict(values)
            if table == 2 and family in ("fgsm", "pgd"):  # Table 4 has their PSNR
                values.update(
                    paper.lookup(
                        4,
                        run.metric,
                        agrees,
                        run.dataset,
                        run.resolution,
                        attack=family,
                        **keys,
                    )
                    or {}
                )
            return table, values
    return None, {}


# --- formatting -------------------------------------------------------------------------


def metric_order(metric: str) -> tuple[int, str]:
    """Sort key: the paper's order of metrics, then the rest alphabetically."""
    order = list(paper.DISPLAY_NAMES)
    return (order.index(metric), metric) if metric in order else (len(order), metric)


def _num(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def fmt_flips(k: Any, pct: Any, lo: Any = None, hi: Any = None) -> str:
    """``7/70% [40–89]`` (count / percent [95% CI]); ``–`` without samples."""
    if k is None or pct is None or (isinstance(pct, float) and not math.isfinite(pct)):
        return "–"
    digits = 0 if float(pct).is_integer() or lo is not None else 1
    text = f"{int(k)}/{float(pct):.{digits}f}%"
    if lo is not None and hi is not None and math.isfinite(lo):
        text += f" [{lo:.0f}–{hi:.0f}]"
    return text


def fmt_paper_flips(values: dict[str, Any]) -> str:
    if "flipped" not in values:
        return ""
    pct = values["flipped_pct"]
    return f"{int(values['flipped'])}/{pct:g}%"


def fmt_mu_sigma(mu: Any, sigma: Any, digits: int = 1) -> str:
    if mu is None or (isinstance(mu, float) and not math.isfinite(mu)):
        return "–"
    return f"{_num(mu, digits)}/{_num(sigma, digits)}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A plain GitHub markdown table of a frame of strings."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def _block_title(dataset: str, dataset_variant: str, resolution: str) -> str:
    extra = f" ({dataset_variant})" if dataset_variant else ""
    return f"{dataset}{extra} · {resolution}"


def _blocks(frame: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    keys = ["dataset", "dataset_variant", "resolution"]
    for key, part in frame.groupby(keys, sort=False, dropna=False):
        yield _block_title(*key), part


def _render_blocks(
    title: str, frame: pd.DataFrame, render: Callable[[pd.DataFrame], pd.DataFrame], note: str = ""
) -> str:
    parts = [f"## {title}\n"]
    if note:
        parts.append(note.strip() + "\n")
    for block, part in _blocks(frame):
        parts.append(f"### {block}\n")
        parts.append(markdown_table(render(part)))
    return "\n".join(parts)


_ATTACK_KEYS = ("attack", "family", "variant")


def _run_keys(run: Run) -> dict[str, Any]:
    return {
        "dataset": run.dataset,
        "dataset_variant": run.dataset_variant,
        "resolution": run.resolution_label,
        "metric": run.metric,
        "attack": run.attack,
        "family": run.family,
        "variant": run.variant,
    }


def _sorted(frame: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    if frame.empty:
        return frame
    frame = frame.assign(
        _m=frame["metric"].map(metric_order),
        _a=frame["agrees"].map(AGREE_ORDER.index) if "agrees" in frame else 0,
    )
    keys = ["dataset", "dataset_variant", "_res", "_m", *(extra or []), "_a"]
    frame = frame.assign(
        _res=frame["resolution"].map(lambda r: (len(r), r)),
        _family=frame["family"].map(_family_order) if "family" in frame else 0,
    )
    return (
        frame.sort_values(keys, kind="stable")
        .drop(columns=["_m", "_a", "_res", "_family"])
        .reset_index(drop=True)
    )


FAMILY_ORDER = ("none", "fgsm", "pgd", "onepixel", "stadv", "stadv_pgd", "pgd_reverse", "transfer")


def _family_order(family: str) -> tuple[int, str]:
    return (
        (FAMILY_ORDER.index(family), family)
        if family in FAMILY_ORDER
        else (len(FAMILY_ORDER), family)
    )


# --- Table 1 and 3: clean metric ------------------------------------------------------------


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


def afc2_score(results: pd.DataFrame) -> float:
    """2AFC score (Zhang et al., 2018): mean fraction of raters who agree with the metric."""
    labelled = results[results["judge"].notna()]
    if labelled.empty:
        return float("nan")
    return float(100.0 * twoafc_scores(labelled["d0"], labelled["d1"], labelled["judge"]).mean())


def _accuracy_row(results: pd.DataFrame) -> dict[str, float]:
    """Accuracy of a set of triplets (:func:`attackpsm.twoafc.accuracy`: a tie is half
    right), its 95% interval, the number with a human choice and the ✓ count."""
    acc, n = accuracy(results["d0"], results["d1"], results["judge"])
    lo, hi = wilson_interval(acc * n, n) if n else (float("nan"), float("nan"))
    return {
        "labelled": n,
        "accurate": int((agree_labels(results) == "✓").sum()),
        "accuracy_pct": 100.0 * acc,
        "ci_low_pct": 100.0 * lo,
        "ci_high_pct": 100.0 * hi,
    }


def table1_accuracy(runs: list[Run]) -> Table:
    """Table 1: accuracy (% of labelled samples ranked as humans did) and 2AFC score."""
    rows = []
    for r in clean_runs(runs):
        res = r.results
        pub = (
            paper.lookup(1, r.metric, None, "bapps", 64, attack="none")
            if (r.dataset == "bapps" and r.resolution == 64 and paper_dataset(r))
            else None
        )
        unanimous = r.dataset_params.get("filter", "unanimous") == "unanimous"
        rows.append(
            {
                **{k_: v for k_, v in _run_keys(r).items() if k_ not in _ATTACK_KEYS},
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
    data = _sorted(pd.DataFrame(rows, columns=cols).assign(agrees="✓")).drop(columns="agrees")

    def render(part: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "Metric": part["metric"].map(paper.display_name),
                "Samples (labelled)": part["labelled"].map(_num),
                "Accuracy % [95% CI]": [
                    f"{_num(a)} [{_num(lo, 0)}–{_num(hi, 0)}]"
                    for a, lo, hi in zip(
                        part["accuracy_pct"], part["ci_low_pct"], part["ci_high_pct"], strict=True
                    )
                ],
                "2AFC %": part["afc2_pct"].map(_num),
            }
        )
        if part["paper_accuracy_pct"].notna().any():
            out["Paper accuracy % (BAPPS 12,227)"] = part["paper_accuracy_pct"].map(_num)
        if part["paper_afc2_full_pct"].notna().any():
            out["Paper 2AFC % (BAPPS 36,344)"] = part["paper_afc2_full_pct"].map(_num)
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
        _render_blocks("Table 1: clean accuracy", data, render, note),
    )


def table1_by_subset(runs: list[Run]) -> Table:
    """Accuracy per subset (BAPPS: traditional, cnn, ...; synthetic: distortion family)."""
    rows = []
    for r in clean_runs(runs):
        for subset, part in r.results.groupby("subset", sort=True):
            rows.append(
                {
                    **{k_: v for k_, v in _run_keys(r).items() if k_ not in _ATTACK_KEYS},
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
    data = _sorted(pd.DataFrame(rows, columns=cols).assign(agrees="✓"), ["subset"]).drop(
        columns="agrees"
    )

    def render(part: pd.DataFrame) -> pd.DataFrame:
        wide = part.assign(
            cell=[
                f"{_num(a)} ({n})"
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
    return Table("table1_accuracy_by_subset", title, data, _render_blocks(title, data, render))


def table3_similarity_difference(runs: list[Run]) -> Table:
    """Table 3: mean ``|s_0 - s_1|`` on ✓ vs ✗ samples (✗ samples sit near the boundary)."""
    rows = []
    for r in clean_runs(runs):
        res = r.results.assign(
            _label=agree_labels(r.results), _diff=(r.results["d0"] - r.results["d1"]).abs()
        )
        for label in AGREE_ORDER:
            part = res[res["_label"] == label]
            if label == "n/a" and part.empty:
                continue
            pub = (
                paper.lookup(3, r.metric, label, "bapps", 64, attack="none")
                if (r.dataset == "bapps" and r.resolution == 64 and paper_dataset(r))
                else None
            )
            rows.append(
                {
                    **{k: v for k, v in _run_keys(r).items() if k not in _ATTACK_KEYS},
                    "agrees": label,
                    "samples": len(part),
                    "sim_diff_mean": _mean(part["_diff"]),
                    "sim_diff_std": _std(part["_diff"]),
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
    data = _sorted(pd.DataFrame(rows, columns=cols))

    def render(part: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "Metric": part["metric"].map(paper.display_name),
                "Same rank by human & metric": part["agrees"],
                "Samples": part["samples"].map(_num),
                "abs(s0 − s1) μ/σ": [
                    fmt_mu_sigma(m, s, 4)
                    for m, s in zip(part["sim_diff_mean"], part["sim_diff_std"], strict=True)
                ],
                "median": part["sim_diff_median"].map(lambda v: _num(v, 4)),
            }
        )
        if part["paper_sim_diff_mean"].notna().any():
            out["Paper μ"] = part["paper_sim_diff_mean"].map(lambda v: _num(v, 3))
        return out

    title = "Table 3: similarity difference |s0 − s1|"
    return Table("table3_similarity_difference", title, data, _render_blocks(title, data, render))


# --- attack tables ------------------------------------------------------------------------------


def attack_rows(runs: list[Run]) -> pd.DataFrame:
    """Every attack run x ✓/✗: :func:`flip_stats` plus the paper's numbers (``paper_*``)."""
    rows = []
    for r in runs:
        if r.family == "none" or r.is_transfer:
            continue
        res = r.results
        labels = agree_labels(res)
        for label in AGREE_ORDER:
            part = res[labels == label]
            if label == "n/a" and part.empty:
                continue
            table, pub = paper_values(r, label)
            rows.append(
                {
                    **_run_keys(r),
                    "agrees": label,
                    **flip_stats(part),
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
    return _sorted(frame, ["_family", "attack", "variant"])


def _flip_cell(row: pd.Series) -> str:
    return fmt_flips(row["flipped"], row["flipped_pct"], row["ci_low_pct"], row["ci_high_pct"])


def _paper_flip_cell(row: pd.Series) -> str:
    return fmt_paper_flips(
        {
            k[6:]: row[k]
            for k in ("paper_flipped", "paper_flipped_pct")
            if k in row and pd.notna(row[k])
        }
    )


def _px_cell(row: pd.Series) -> str:
    vals = [row.get(c) for c in PX_COLUMNS]
    return (
        "–"
        if all(v is None or not math.isfinite(v) for v in vals)
        else " / ".join(_num(v) for v in vals)
    )


def _paper_px_cell(row: pd.Series) -> str:
    vals = [row.get(f"paper_{c}") for c in PX_COLUMNS]
    return "" if any(v is None or pd.isna(v) for v in vals) else " / ".join(_num(v) for v in vals)


def _paper_mu_sigma(row: pd.Series, name: str) -> str:
    mu, sigma = row.get(f"paper_{name}_mean"), row.get(f"paper_{name}_std")
    return "" if mu is None or pd.isna(mu) else fmt_mu_sigma(mu, sigma, 2 if name == "psnr" else 1)


def _has_paper(part: pd.DataFrame, col: str) -> bool:
    return col in part and part[col].notna().any()


def long_render(part: pd.DataFrame) -> pd.DataFrame:
    """One row per run x ✓/✗ with the columns the runs have (Tables 6-12 layout)."""
    out = pd.DataFrame(
        {
            "Metric": part["metric"].map(paper.display_name).to_numpy(),
            "Attack": [
                attack_title(a, v) for a, v in zip(part["attack"], part["variant"], strict=True)
            ],
            "Same rank by human & metric": part["agrees"].to_numpy(),
            "Samples": part["samples"].map(_num).to_numpy(),
            "#Flipped [95% CI]": [_flip_cell(r) for _, r in part.iterrows()],
        }
    )
    if _has_paper(part, "paper_flipped"):
        out["Paper #Flipped"] = [_paper_flip_cell(r) for _, r in part.iterrows()]
    out["Flipped (uint8)"] = part["flipped_uint8"].map(_num).to_numpy()
    if part["mean_eps"].notna().any():
        out["Mean ε"] = part["mean_eps"].map(lambda v: _num(v, 4)).to_numpy()
        if _has_paper(part, "paper_mean_eps"):
            out["Paper mean ε"] = part["paper_mean_eps"].map(lambda v: _num(v, 3)).to_numpy()
    out["%px ε>0.001 / >0.01 / >0.03 (float δ)"] = [_px_cell(r) for _, r in part.iterrows()]
    if _has_paper(part, "paper_pct_px_gt_0.001"):
        out["Paper %px"] = [_paper_px_cell(r) for _, r in part.iterrows()]
    out["RMSE μ/σ (8-bit)"] = [
        fmt_mu_sigma(m, s) for m, s in zip(part["rmse_mean"], part["rmse_std"], strict=True)
    ]
    if _has_paper(part, "paper_rmse_mean"):
        out["Paper RMSE"] = [_paper_mu_sigma(r, "rmse") for _, r in part.iterrows()]
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
            out[f"{col[:-5]} μ"] = part[col].map(lambda v: _num(v, 2)).to_numpy()
    return out


def _select_table2(rows: pd.DataFrame) -> pd.DataFrame:
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
    data = _select_table2(rows)
    if data.empty:
        return None
    data = _sorted(data, ["_family"])

    def render(part: pd.DataFrame) -> pd.DataFrame:
        table, keys = _row_index(part)
        samples = part.drop_duplicates(["metric", "agrees"]).set_index(["metric", "agrees"])
        table["Samples"] = [_num(samples["samples"].get(k)) for k in keys]
        for family in TABLE2_ATTACKS:
            if not (part["family"] == family).any():
                continue
            name, by = _by_family(part, family)
            sub = pd.DataFrame(list(by.values()))

            def col(fn, by=by):
                return [fn(by[k]) if k in by else "–" for k in keys]

            table[f"{name} #Flipped [95% CI]"] = col(_flip_cell)
            if _has_paper(sub, "paper_flipped"):
                table[f"{name} paper"] = col(_paper_flip_cell)
            if family == "fgsm":
                table[f"{name} mean ε"] = col(lambda r: _num(r["mean_eps"], 4))
                if _has_paper(sub, "paper_mean_eps"):
                    table[f"{name} paper mean ε"] = col(lambda r: _num(r.get("paper_mean_eps"), 3))
            if family == "pgd":
                table[f"{name} %px ε>0.001 / >0.01 / >0.03 (float δ)"] = col(_px_cell)
                if _has_paper(sub, "paper_pct_px_gt_0.001"):
                    table[f"{name} paper %px"] = col(_paper_px_cell)
            if family in ("fgsm", "pgd"):
                table[f"{name} RMSE μ/σ (8-bit)"] = col(
                    lambda r: fmt_mu_sigma(r["rmse_mean"], r["rmse_std"])
                )
                if _has_paper(sub, "paper_rmse_mean"):
                    table[f"{name} paper RMSE"] = col(lambda r: _paper_mu_sigma(r, "rmse"))
            if family == "onepixel" and "queries_mean" in sub:
                table[f"{name} queries μ"] = col(lambda r: _num(r.get("queries_mean"), 0))
        return table

    note = (
        "#Flipped: samples whose rank flipped / % of the row's samples [95% Wilson interval, %]. "
        f"Perturbation sizes as in the paper: {PAPER_DEFINITIONS}. "
        "'paper' columns: the published BAPPS numbers for the same metric and setting."
    )
    title = "Table 2: attacks per metric (✓ accurate / ✗ inaccurate samples)"
    return Table("table2_attacks", title, data, _render_blocks(title, data, render, note))


def table4_psnr(rows: pd.DataFrame) -> Table | None:
    """Table 4: PSNR (over flipped samples) of the Table-2 attacks."""
    data = _select_table2(rows)
    if data.empty:
        return None
    cols = [
        "dataset", "dataset_variant", "resolution", "metric", "attack", "family", "variant",
        "agrees", "flipped", "psnr_mean", "psnr_std", "paper_psnr_mean", "paper_psnr_std",
    ]  # fmt: skip
    data = _sorted(data[[c for c in cols if c in data]], ["_family"])

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
            if _has_paper(pd.DataFrame(list(by.values())), "paper_psnr_mean"):
                table[f"{name} paper"] = [
                    _paper_mu_sigma(by[k], "psnr") if k in by else "" for k in keys
                ]
        return table

    title = "Table 4: PSNR of the adversarial images (flipped samples)"
    note = (
        "PSNR as in the paper: 20 log10(255 / RMSE), RMSE on [0, 255] between the 8-bit prey "
        "and adversarial images (truncated to uint8 as the released code's tensor2im does)."
    )
    return Table("table4_psnr", title, data, _render_blocks(title, data, render, note))


def _long_table(name: str, title: str, data: pd.DataFrame, note: str = "") -> Table | None:
    if data.empty:
        return None
    data = _sorted(data, ["_family", "attack", "variant"])
    note = f"{note} Perturbation sizes as in the paper: {PAPER_DEFINITIONS}.".strip()
    return Table(name, title, data, _render_blocks(title, data, long_render, note))


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
        _long_table(
            "table6_7_pgd_by_resolution",
            "Tables 6-7: PGD by resolution",
            paper_pgd[(n_res > 1) | paper_pgd["dataset"].isin(("pieapp", "clic"))],
            "The paper's Table 6 (PieAPP) and Table 7 (CLIC): PGD at several image resolutions.",
        )
    )
    tables.append(
        _long_table(
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
            _long_table(
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
        _long_table(
            "table11_pgd_alpha",
            "Table 11: PGD with other step sizes α",
            alpha_like[n_alpha > 1],
            "The paper's Table 11: PGD with α = 0.001, 0.00375, 0.006.",
        )
    )
    tables.append(
        _long_table(
            "table12_reverse_pgd",
            "Table 12: reverse PGD",
            rows[rows["family"] == "pgd_reverse"],
            "The paper's Table 12 (Appendix F): the less similar image is attacked to become "
            "more similar; a flip is s_adv < s_other.",
        )
    )
    return [t for t in tables if t is not None]


def all_attacks_table(rows: pd.DataFrame) -> Table | None:
    note = (
        "Every attack run. 'Paper' columns appear where the run is one of the paper's "
        "settings (dataset, resolution and attack parameters); the CSV has every statistic."
    )
    return _long_table("attacks_all_runs", "All attack runs", rows, note)


# --- Table 5: transfer ----------------------------------------------------------------------


def _canon_source(label: str) -> str | None:
    """Map a crafted column (``stadv_pgd10``, ``pgd20``, ``PGD(20)``) to Table 5's name."""
    key = "".join(ch for ch in label.lower() if ch.isalnum())
    names = {
        "".join(ch for ch in v.lower() if ch.isalnum()): v for v in paper.TRANSFER_SOURCES.values()
    }
    return names.get(key)


def _transfer_paper(run: Run, source: str | None) -> dict[str, float] | None:
    """Published Table 5 (BAPPS source) or Table 9 (PieAPP source) cell, if comparable."""
    p = run.dataset_params
    if source is None or p.get("source_overrides") or p.get("manifest"):
        return None
    table = {"bapps": 5, "pieapp": 9}.get(str(p.get("source", "")))
    if table is None or p.get("source_metric", "lpips_alex") != "lpips_alex":
        return None
    return paper.lookup(table, run.metric, "✓", attack="transfer", source=source)


def table5_transfer(runs: list[Run]) -> Table | None:
    """Tables 5 and 9: flips of transferred images on each target metric's accurate samples.

    Accurate samples = the target metric ranks the clean pair as the humans did (✓);
    #Flipped counts those whose rank the transferred adversarial image flips. One column
    per crafted attack (the evaluation's ``dataset.column``).
    """
    rows = []
    for r in runs:
        if not r.is_transfer:
            continue
        res = r.results
        labels = agree_labels(res)
        acc = res[labels == "✓"]
        n_lab = int((labels != "n/a").sum())
        k = int(acc["flipped"].astype(bool).sum())
        lo, hi = wilson_interval(k, len(acc))
        canon = _canon_source(r.variant)
        pub = _transfer_paper(r, canon)
        rows.append(
            {
                **_run_keys(r),
                "source": canon or r.variant,
                "samples": len(res),
                "labelled": n_lab,
                "accurate": len(acc),
                "accurate_pct": 100.0 * len(acc) / n_lab if n_lab else float("nan"),
                "flipped": k,
                "flipped_pct": 100.0 * k / len(acc) if len(acc) else float("nan"),
                "ci_low_pct": 100.0 * lo,
                "ci_high_pct": 100.0 * hi,
                "paper_accurate": pub["accurate"] if pub else float("nan"),
                "paper_accurate_pct": pub["accurate_pct"] if pub else float("nan"),
                "paper_flipped": pub["flipped"] if pub else float("nan"),
                "paper_flipped_pct": pub["flipped_pct"] if pub else float("nan"),
                "run_dir": str(r.run_dir),
            }
        )
    if not rows:
        return None
    data = _sorted(pd.DataFrame(rows).assign(agrees="✓"), ["source"]).drop(columns="agrees")
    order = list(paper.TRANSFER_SOURCES.values())

    def render(part: pd.DataFrame) -> pd.DataFrame:
        sources = sorted(
            part["source"].unique(), key=lambda s: (order.index(s) if s in order else len(order), s)
        )
        metrics = sorted(part["metric"].unique(), key=metric_order)
        table = pd.DataFrame({"Metric": [paper.display_name(m) for m in metrics]})
        first = part.drop_duplicates("metric").set_index("metric")
        table["#Accurate samples"] = [
            fmt_flips(first.loc[m, "accurate"], first.loc[m, "accurate_pct"]) for m in metrics
        ]
        if first["paper_accurate"].notna().any():
            table["Paper #Accurate"] = [
                fmt_flips(first.loc[m, "paper_accurate"], first.loc[m, "paper_accurate_pct"])
                if pd.notna(first.loc[m, "paper_accurate"])
                else ""
                for m in metrics
            ]
        for s in sources:
            sub = part[part["source"] == s].set_index("metric")
            cells = []
            for m in metrics:
                if m not in sub.index:
                    cells.append("–")
                    continue
                row = sub.loc[m]
                cell = fmt_flips(
                    row["flipped"], row["flipped_pct"], row["ci_low_pct"], row["ci_high_pct"]
                )
                if pd.notna(row["paper_flipped"]):
                    cell += f" (paper {int(row['paper_flipped'])}/{row['paper_flipped_pct']:g}%)"
                cells.append(cell)
            table[f"{s} #Flipped [95% CI]"] = cells
        return table

    note = (
        "Accurate samples: the target metric ranks the clean pair as the humans did. "
        "#Flipped: accurate samples whose rank the transferred adversarial image flips "
        "(% of the accurate samples [95% Wilson interval])."
    )
    title = "Table 5: transferred adversarial images"
    return Table("table5_transfer", title, data, _render_blocks(title, data, render, note))


def build_tables(runs: list[Run]) -> list[Table]:
    """Every table the runs allow, in the paper's order."""
    rows = attack_rows(runs)
    tables: list[Table | None] = [table1_accuracy(runs), table1_by_subset(runs)]
    tables.append(table2_attacks(rows) if not rows.empty else None)
    tables.append(table3_similarity_difference(runs))
    tables.append(table4_psnr(rows) if not rows.empty else None)
    tables.append(table5_transfer(runs))
    tables.extend(variant_tables(rows))
    tables.append(all_attacks_table(rows) if not rows.empty else None)
    return [t for t in tables if t is not None and not t.data.empty]
