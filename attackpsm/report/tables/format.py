"""How the report's tables print: the :class:`Table` record, cells, blocks, row order.

Numbers print as in the paper: ``7/70%`` flips (count / percent, here with a 95% Wilson
interval ``[40–89]``), ``μ/σ`` pairs, ``–`` where there is nothing to show. Each table is
one markdown block per (dataset, dataset variant, resolution), rows in the paper's order of
metrics, then ✓ / ✗ / n/a.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from attackpsm.protocol.twoafc import SPLIT_ORDER
from attackpsm.report import paper
from attackpsm.report.load import Run

AGREE_ORDER = SPLIT_ORDER
FAMILY_ORDER = ("none", "fgsm", "pgd", "onepixel", "stadv", "stadv_pgd", "pgd_reverse", "transfer")
# What tells runs of one dataset, resolution and metric apart (left out of clean tables).
ATTACK_KEYS = ("attack", "family", "variant")


@dataclass
class Table:
    """One report table: ``name`` (file stem), ``title``, tidy ``data``, ``markdown``."""

    name: str
    title: str
    data: pd.DataFrame
    markdown: str


def metric_order(metric: str) -> tuple[int, str]:
    """Sort key: the paper's order of metrics, then the rest alphabetically."""
    order = list(paper.DISPLAY_NAMES)
    return (order.index(metric), metric) if metric in order else (len(order), metric)


def family_order(family: str) -> tuple[int, str]:
    """Sort key: attack families in the paper's order (:data:`FAMILY_ORDER`), then the rest."""
    return (
        (FAMILY_ORDER.index(family), family)
        if family in FAMILY_ORDER
        else (len(FAMILY_ORDER), family)
    )


def num(v: Any, digits: int = 1) -> str:
    """A number with ``digits`` decimals (integers as they are); ``–`` for none or NaN."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def fmt_cell(value: Any, pct: bool = False) -> str:
    """A leaderboard cell: 4 significant digits, or a percent with one decimal (``pct``);
    ``∞`` for ``"inf"``, ``–`` for none or NaN."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return "∞" if value == "inf" else value
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return f"{100 * value:.1f}" if pct else f"{value:.4g}"


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
    """A published flip cell as the paper prints it (``3759/39%``); empty without one."""
    if "flipped" not in values:
        return ""
    pct = values["flipped_pct"]
    return f"{int(values['flipped'])}/{pct:g}%"


def fmt_mu_sigma(mu: Any, sigma: Any, digits: int = 1) -> str:
    """``μ/σ`` as in the paper's Tables 2 and 4; ``–`` without a mean."""
    if mu is None or (isinstance(mu, float) and not math.isfinite(mu)):
        return "–"
    return f"{num(mu, digits)}/{num(sigma, digits)}"


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


def render_blocks(
    title: str, frame: pd.DataFrame, render: Callable[[pd.DataFrame], pd.DataFrame], note: str = ""
) -> str:
    """``## title``, the note, then one ``### dataset · resolution`` table per block."""
    parts = [f"## {title}\n"]
    if note:
        parts.append(note.strip() + "\n")
    for block, part in _blocks(frame):
        parts.append(f"### {block}\n")
        parts.append(markdown_table(render(part)))
    return "\n".join(parts)


def run_keys(run: Run) -> dict[str, Any]:
    """The columns that say which run a table row comes from."""
    return {
        "dataset": run.dataset,
        "dataset_variant": run.dataset_variant,
        "resolution": run.resolution_label,
        "metric": run.metric,
        "attack": run.attack,
        "family": run.family,
        "variant": run.variant,
    }


def sort_rows(frame: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    """Rows in the paper's order: dataset block, metric, ``extra`` keys, then ✓ / ✗ / n/a.

    ``extra`` may name ``_family`` (attack families in :data:`FAMILY_ORDER`).
    """
    if frame.empty:
        return frame
    frame = frame.assign(
        _m=frame["metric"].map(metric_order),
        _a=frame["agrees"].map(AGREE_ORDER.index) if "agrees" in frame else 0,
    )
    keys = ["dataset", "dataset_variant", "_res", "_m", *(extra or []), "_a"]
    frame = frame.assign(
        _res=frame["resolution"].map(lambda r: (len(r), r)),
        _family=frame["family"].map(family_order) if "family" in frame else 0,
    )
    return (
        frame.sort_values(keys, kind="stable")
        .drop(columns=["_m", "_a", "_res", "_family"])
        .reset_index(drop=True)
    )
