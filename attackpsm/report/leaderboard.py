"""Robustness leaderboard: one JSON per metric x threat model and a ranked markdown table.

Reads the runs below a results (or sweep) directory (:mod:`attackpsm.report.load`) and,
for each dataset x resolution x metric x threat model, writes::

    <out>/<dataset>-res<size>/<metric>.<threat>.json
    <out>/leaderboard.md

A threat model is the perturbation set and the access: ``linf`` (white-box, which may also
use black-box attacks), ``linf-blackbox`` (metric outputs only), ``l2`` and
``l2-blackbox``, and ``certified-l2`` (``attack=certify`` on ``metric=smoothed``: the
certified ℓ2 radius of the smoothed decision next to the empirical one,
:mod:`attackpsm.report.certified`). Which ones a run counts for, its budget and whether it
gives a per-triplet radius are declared by its attack class
(:func:`attackpsm.attacks.base.threat_of`). Its flip rate at a
budget is the worst case over every attack run at that budget: a triplet counts as flipped
when any attack flipped it. ``min_eps`` runs give the per-triplet radius, the robustness
curve and the median robust radius; ``attack=none`` runs give the clean accuracy (Table 1).

Usage::

    python -m attackpsm leaderboard results [--out results/leaderboard] [--budget 0.03]
        [--budget-l2 1.0]
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attackpsm.attacks.base import Threat, threat_of
from attackpsm.attacks.min_eps import median_radius, robustness_curve
from attackpsm.protocol.twoafc import accuracy
from attackpsm.report.cards import card_path, entry_from_card, make_card, read_cards, write_card
from attackpsm.report.certified import (
    certified_entry,
    certified_figure,
    certified_markdown,
    is_certify,
    is_empirical_l2,
)
from attackpsm.report.diagnostics import diagnostics_markdown, read_diagnostics
from attackpsm.report.load import Run, load_runs
from attackpsm.report.tables.format import fmt_cell
from attackpsm.summary.results import quantile
from attackpsm.summary.statistics import flip_fraction, robust_fraction, worst_case

PAPER_BUDGET = 0.03  # ℓ∞ ε of PGD in the paper, on the [-1, 1] scale
L2_BUDGET = 1.0  # ε of attack=apgd_l2, on the [-1, 1] scale
CURVE_BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


def _threat(run: Run) -> Threat:
    """The threat model of the run's attack (:func:`attackpsm.attacks.base.threat_of`)."""
    return threat_of(run.identity["attack"])


def _key(run: Run) -> tuple[str, str, str]:
    res = run.identity.get("resolution")
    return (
        run.identity["dataset"]["name"],
        f"res{res or 'native'}",
        run.identity["metric"]["name"],
    )


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def entry(runs: list[Run], threat: str, clean: Run | None, budget: float) -> dict[str, Any] | None:
    """The leaderboard entry of one metric under one threat model (``None``: no runs)."""
    # attacks that give a per-triplet minimal budget (Threat.radius): the exact bisection
    # first (min_eps, exact on small sets), it gives the median radius and curve when both ran
    fixed = [r for r in runs if _threat(r).radius is None]
    radius = sorted(
        (r for r in runs if _threat(r).radius is not None),
        key=lambda r: _threat(r).radius != "min_eps",
    )
    if not fixed and not radius:
        return None
    by_eps: dict[float, list[Run]] = defaultdict(list)
    for r in fixed:
        eps = _threat(r).eps
        if eps is not None:
            by_eps[round(eps, 6)].append(r)
    worst: dict[str, float] = {}
    worst_saved: dict[str, float] = {}
    triplets = 0
    for eps, group in sorted(by_eps.items()):
        per = worst_case(g.results for g in group)
        worst[str(eps)] = flip_fraction(per["flipped"])
        worst_saved[str(eps)] = flip_fraction(per["flipped_saved"])
        triplets = max(triplets, len(per))
    by_attack = {
        r.identity["attack"]["name"]: {
            "eps": _threat(r).eps,
            "flip_rate": flip_fraction(r.results["flipped"]),
            **(
                {"queries_mean": float(r.results["queries"].mean())}
                if "queries" in r.results
                else {}
            ),
        }
        for r in fixed
    }
    queries = [
        float(r.results["queries"].mean())
        for r in fixed
        if "queries" in r.results and _threat(r).access == "black-box"
    ]
    at_budget = by_eps.get(round(budget, 6), [])
    out: dict[str, Any] = {
        "dataset": _key((fixed or radius)[0])[0],
        "resolution": _key((fixed or radius)[0])[1],
        "metric": _key((fixed or radius)[0])[2],
        "threat_model": threat,
        "triplets": triplets or (len(radius[0].results) if radius else 0),
        "clean_accuracy": _clean(
            accuracy(clean.results["d0"], clean.results["d1"], clean.results["judge"])[0]
            if clean is not None and len(clean.results)
            else float("nan")
        ),
        "budget": budget,
        "flip_rate": _clean(worst.get(str(round(budget, 6)), float("nan"))),
        "robust_accuracy": robust_accuracy(at_budget, radius[:1], budget),
        "flip_rate_by_eps": worst,
        "flip_rate_saved_by_eps": worst_saved,
        "flip_rate_by_attack": by_attack,
        "median_radius": None,
        "radius_attack": None,
        "robustness_curve": {},
        "eps_star": {r.identity["attack"]["name"]: eps_star_distribution(r) for r in radius},
        "queries_mean": float(np.mean(queries)) if queries else None,
        "attacks": sorted({r.identity["attack"]["name"] for r in runs}),
    }
    if radius:
        radii = _radii(radius[0])
        med = median_radius(radii)
        out["median_radius"] = med if math.isfinite(med) else "inf"
        out["radius_attack"] = radius[0].identity["attack"]["name"]
        out["robustness_curve"] = {
            str(b): float(v)
            for b, v in zip(
                CURVE_BUDGETS, robustness_curve(radii, np.array(CURVE_BUDGETS)), strict=True
            )
        }
    return out


def robust_accuracy(at_budget: list[Run], radius: list[Run], budget: float) -> float | None:
    """Fraction of the labelled triplets that the metric ranks as humans did and that no
    attack flipped at ``budget`` (from the runs at that budget; else from a radius run:
    ``radius > budget``). ``None`` without either."""
    if at_budget:
        table = pd.concat([r.results[["triplet_id", "human_agrees", "flipped"]] for r in at_budget])
        per = table.groupby("triplet_id").agg(
            agrees=("human_agrees", "first"), flipped=("flipped", "any")
        )
    elif radius:
        table = radius[0].results
        per = pd.DataFrame(
            {
                "agrees": table["human_agrees"].to_numpy(),
                "flipped": _radii(radius[0]) <= budget,
            }
        )
    else:
        return None
    return robust_fraction(per["agrees"], per["flipped"])


def _radii(run: Run) -> np.ndarray:
    return run.results[_threat(run).radius].to_numpy(dtype=float)


def _finite_or_inf(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"


def eps_star_distribution(run: Run) -> dict[str, Any]:
    """Quartiles of a radius run's per-triplet minimal budget (``"inf"`` where at least that
    fraction never flipped), how many flipped, and its robustness curve."""
    radii = _radii(run)
    if not len(radii):
        return {"triplets": 0}
    return {
        "triplets": len(radii),
        "found": int(np.isfinite(radii).sum()),
        "q25": _finite_or_inf(quantile(radii, 0.25)),
        "median": _finite_or_inf(quantile(radii, 0.5)),
        "q75": _finite_or_inf(quantile(radii, 0.75)),
        "robustness_curve": {
            str(b): float(v)
            for b, v in zip(
                CURVE_BUDGETS, robustness_curve(radii, np.array(CURVE_BUDGETS)), strict=True
            )
        },
    }


def build_leaderboard(
    runs: list[Run], budget: float = PAPER_BUDGET, budget_l2: float = L2_BUDGET
) -> list[dict[str, Any]]:
    """One entry per dataset x resolution x metric x threat model, from loaded runs.

    ``budget`` ranks the ℓ∞ threat models, ``budget_l2`` the ℓ2 one.
    """
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[_key(run)].append(run)
    entries = []
    for key, group in sorted(groups.items(), key=lambda kv: kv[0]):
        clean = next((r for r in group if _threat(r).access == "none"), None)
        threats = sorted(
            {t for r in group for t in _threat(r).counts_for},
            key=lambda t: (t.split("-")[0] != "linf", t),
        )
        for threat in threats:
            members = [r for r in group if threat in _threat(r).counts_for]
            e = entry(members, threat, clean, budget_l2 if threat.startswith("l2") else budget)
            if e is not None:
                entries.append(e)
        e = certified_entry(group, key)
        if e is not None:
            entries.append(e)
    return entries


def _radius_sort(value: Any) -> float:
    if value is None:
        return -1.0
    return math.inf if value == "inf" else float(value)


def leaderboard_markdown(entries: list[dict[str, Any]]) -> str:
    """Ranked tables, one per dataset x resolution x threat model: most robust first.

    Ranked by the worst-case flip rate at the budget (lower first), then by the median
    robust radius (larger first).
    """
    lines = ["# Robustness leaderboard", ""]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        if e["threat_model"] == "certified-l2":
            continue  # own table: certified_markdown
        groups[(e["dataset"], e["resolution"], e["threat_model"])].append(e)
    for (dataset, res, threat), group in sorted(groups.items()):
        budget = group[0]["budget"]
        group.sort(
            key=lambda e: (
                e["flip_rate"] if e["flip_rate"] is not None else math.inf,
                -_radius_sort(e["median_radius"]),
            )
        )
        attacks = sorted({a for e in group for a in e["flip_rate_by_attack"]})
        lines += [
            f"## {dataset} · {res} · {threat} (ε = {budget})",
            "",
            "| rank | metric | clean acc. % | flip % (worst case) | "
            + "".join(f"{a} % | " for a in attacks)
            + "median radius | ε* median [25%, 75%] | queries | triplets |",
            "|---:|---|---:|---:|" + "---:|" * len(attacks) + "---:|---|---:|---:|",
        ]
        for rank, e in enumerate(group, 1):
            per = e["flip_rate_by_attack"]
            cells = "".join(
                f"{fmt_cell(per[a]['flip_rate'], pct=True) if a in per else '–'} | "
                for a in attacks
            )
            lines.append(
                f"| {rank} | {e['metric']} | {fmt_cell(e['clean_accuracy'], pct=True)} | "
                f"{fmt_cell(e['flip_rate'], pct=True)} | {cells}{fmt_cell(e['median_radius'])} | "
                f"{_eps_star_cell(e.get('eps_star') or {})} | "
                f"{fmt_cell(e['queries_mean'])} | {e['triplets']} |"
            )
        lines.append("")
    return "\n".join(lines + certified_markdown(entries))


def _eps_star_cell(runs: dict[str, dict[str, Any]]) -> str:
    """``name: median [q25, q75]`` per radius run (FMN, min_eps), ``–`` without one."""
    cells = [
        f"{name}: {fmt_cell(d['median'])} [{fmt_cell(d['q25'])}, {fmt_cell(d['q75'])}]"
        for name, d in sorted(runs.items())
        if d.get("triplets")
    ]
    return "; ".join(cells) or "–"


def _members(runs: list[Run], e: dict[str, Any]) -> list[Run]:
    """The runs a leaderboard entry was built from."""
    key = (e["dataset"], e["resolution"], e["metric"])
    same = [r for r in runs if _key(r) == key]
    if e["threat_model"] == "certified-l2":
        return [r for r in same if is_certify(r) or is_empirical_l2(r)]
    return [r for r in same if e["threat_model"] in _threat(r).counts_for]


def write_leaderboard(
    path: str | Path,
    out: str | Path | None = None,
    budget: float = PAPER_BUDGET,
    budget_l2: float = L2_BUDGET,
) -> Path:
    """Load the runs below ``path``, write the JSON entries and ``leaderboard.md`` to ``out``."""
    out = Path(out) if out is not None else Path(path) / "leaderboard"
    runs = load_runs(path, progress=True)
    entries = build_leaderboard(runs, budget, budget_l2)
    if not entries:
        raise SystemExit(f"no attack runs below {path}")
    reports = read_diagnostics(path)
    weights_cache: dict[str, Any] = {}
    for e in entries:
        folder = out / f"{e['dataset']}-{e['resolution']}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{e['metric']}.{e['threat_model']}.json").write_text(
            json.dumps(e, indent=2) + "\n"
        )
        card = make_card(e, _members(runs, e), reports, weights_cache)
        write_card(card, card_path(out, e))
    md = out / "leaderboard.md"
    md.write_text(leaderboard_markdown(entries) + diagnostics_markdown(reports))
    certified_figure(entries, out)
    robustness_figure(runs, out)
    return md


def leaderboard_from_cards(folder: str | Path) -> str:
    """``leaderboard.md`` rebuilt from the cards below ``folder`` alone."""
    cards = read_cards(folder)
    if not cards:
        raise SystemExit(f"no *.card.json below {folder}")
    return leaderboard_markdown([entry_from_card(c) for c in cards])


def robustness_figure(runs: list[Run], out: Path) -> list[Path]:
    """``<out>/<dataset>-<res>/robustness-<norm>.png``: per metric, the fraction of triplets
    flipped at each ε (the empirical CDF of its per-triplet minimal budget: ``eps_star`` of
    ``attack=fmn`` or ``min_eps``), one figure per norm."""
    from matplotlib.figure import Figure

    from attackpsm.report.figures import save_figure

    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for r in runs:
        if _threat(r).radius is not None and len(r.results):
            norm = _threat(r).counts_for[0]
            groups[(*_key(r)[:2], norm)].append(r)
    written: list[Path] = []
    for (dataset, res, norm), group in sorted(groups.items()):
        fig = Figure(figsize=(5.5, 3.8))
        ax = fig.add_subplot()
        for r in sorted(group, key=lambda r: (_key(r)[2], r.identity["attack"]["name"])):
            radii = np.sort(_radii(r))
            finite = radii[np.isfinite(radii)]
            if not len(finite):
                continue
            rate = np.arange(1, len(finite) + 1) / len(radii)
            ax.step(
                finite, rate, where="post", label=f"{_key(r)[2]} ({r.identity['attack']['name']})"
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"{'ℓ∞' if norm == 'linf' else 'ℓ2'} budget ε ([-1, 1] scale)")
        ax.set_ylabel("fraction of triplets flipped")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{dataset} · {res} · robustness curve ({norm})")
        ax.legend(fontsize=7)
        written += save_figure(fig, out / f"{dataset}-{res}", f"robustness-{norm}")
    return written
