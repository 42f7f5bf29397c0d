"""The ``certified-l2`` threat model of the leaderboard: certificates next to attacks.

``attack=certify`` on ``metric=smoothed`` gives each triplet a certified ℓ2 radius of the
smoothed 2AFC decision (Cohen et al., 2019), a lower bound on its robust radius;
``attack=min_eps_smoothed`` gives the empirical ℓ2 radius, an upper bound. Per metric the
entry holds the certified rate and accuracy at :data:`CERTIFIED_RADII`, both median radii
and a check that the certificates stay below the attack's radii as often as their failure
probability allows (:func:`check_certified`); its table (:func:`certified_markdown`) and
figure (:func:`certified_figure`) sit beside the leaderboard's.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attackpsm.attacks.base import threat_of
from attackpsm.attacks.min_eps import median_radius
from attackpsm.protocol.twoafc import agreement
from attackpsm.report.load import Run
from attackpsm.report.tables.format import fmt_cell

log = logging.getLogger("attackpsm")

CERTIFIED_RADII = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # ℓ2, [-1, 1] scale

# a count of certified radii above the empirical ones is "consistent with α" while it is at
# most this quantile of Binomial(certified triplets, α)
CONSISTENT_QUANTILE = 0.999


def is_certify(run: Run) -> bool:
    """The run certifies radii (``attack=certify``: access ``certified``)."""
    return threat_of(run.identity["attack"]).access == "certified"


def is_empirical_l2(run: Run) -> bool:
    """The run bisects the ℓ2 radius an attack needs (``attack=min_eps_smoothed``): the
    empirical radius a certificate is checked against."""
    threat = threat_of(run.identity["attack"])
    return threat.radius == "min_eps" and "l2" in threat.counts_for


def check_certified(
    certified: pd.DataFrame, empirical: pd.DataFrame, metric: str, alpha: float | None = None
) -> dict[str, Any]:
    """How many certified radii exceed the empirical ℓ2 radius of the same triplet, and
    whether that many is consistent with the certificate's failure probability ``alpha``.

    A certificate is a lower bound on the robust radius that holds with probability at
    least ``1 - alpha`` (Cohen et al., 2019, Theorem 1 with a Clopper-Pearson bound); an
    attack's radius is an upper bound, itself estimated (a bisection, a smoothed decision
    judged on a finite set of draws). ``radius > min_eps`` on a few triplets is therefore
    allowed: up to the :data:`CONSISTENT_QUANTILE` quantile of ``Binomial(n, alpha)`` over
    the ``n`` triplets with a certificate. More means one of the two is wrong.

    Returns:
        ``exceeding`` (count), ``checked`` (triplets with a certificate, ``radius > 0``,
        and an empirical radius), ``allowed`` (the count consistent with ``alpha``),
        ``consistent`` (bool) and ``first`` (the first exceeding triplet id, or ``None``).
    """
    from scipy.stats import binom

    both = certified[["triplet_id", "radius"]].merge(
        empirical[["triplet_id", "min_eps"]], on="triplet_id"
    )
    radius = both["radius"].astype(float)
    bad = both[radius > both["min_eps"].astype(float)]
    checked = int((radius > 0).sum())
    allowed = int(binom.ppf(CONSISTENT_QUANTILE, checked, alpha)) if alpha and checked else 0
    out = {
        "exceeding": len(bad),
        "checked": checked,
        "allowed": allowed,
        "consistent": len(bad) <= allowed,
        "first": str(bad.iloc[0]["triplet_id"]) if len(bad) else None,
    }
    if not out["consistent"]:
        first = bad.iloc[0]
        log.warning(
            "%s: certified ℓ2 radius exceeds the empirical one on %d of %d certified "
            "triplet(s), more than the %d consistent with alpha=%s; first %r: certified %.4g > "
            "empirical %.4g",
            metric,
            len(bad),
            checked,
            allowed,
            alpha,
            first["triplet_id"],
            first["radius"],
            first["min_eps"],
        )
    return out


def certified_entry(group: list[Run], key: tuple[str, str, str]) -> dict[str, Any] | None:
    """The ``certified-l2`` entry of one metric: certified rate and accuracy at
    :data:`CERTIFIED_RADII`, median certified radius, and the median empirical ℓ2 radius
    of a ``min_eps`` ℓ2 run on the same metric (checked triplet by triplet:
    :func:`check_certified`). ``key``: the group's dataset, resolution and metric.
    ``None`` without an ``attack=certify`` run."""
    cert = next((r for r in group if is_certify(r)), None)
    if cert is None:
        return None
    table = cert.results
    empirical = next((r for r in group if is_empirical_l2(r)), None)
    dataset, res, metric = key
    radius = table["radius"].to_numpy(dtype=float)
    kept = ~table["abstained"].astype(bool).to_numpy()
    agrees = (agreement(table["d0"], table["d1"], table["judge"]) == 1.0) & kept
    out: dict[str, Any] = {
        "dataset": dataset,
        "resolution": res,
        "metric": metric,
        "threat_model": "certified-l2",
        "triplets": len(table),
        "sigma": cert.identity["metric"].get("sigma"),
        "n0": cert.identity["attack"].get("n0"),
        "n": cert.identity["attack"].get("n"),
        "alpha": cert.identity["attack"].get("alpha"),
        "abstain_rate": float((~kept).mean()) if len(table) else None,
        "certified_rate": {str(r): float((kept & (radius >= r)).mean()) for r in CERTIFIED_RADII},
        "certified_accuracy": {
            str(r): float((agrees & (radius >= r)).mean()) for r in CERTIFIED_RADII
        },
        "median_certified_radius": float(np.median(radius)) if len(table) else None,
        "median_empirical_radius": None,
        "empirical_robust_rate": None,
        "empirical_attack": None,
        "certified_above_empirical": None,
    }
    if empirical is not None:
        alpha = cert.identity["attack"].get("alpha")
        out["certified_above_empirical"] = check_certified(
            table, empirical.results, metric, None if alpha is None else float(alpha)
        )
        min_eps = empirical.results["min_eps"].to_numpy(dtype=float)
        out["empirical_robust_rate"] = {
            str(r): float((min_eps > r).mean()) for r in CERTIFIED_RADII
        }
        med = median_radius(min_eps)
        out["median_empirical_radius"] = med if math.isfinite(med) else "inf"
        out["empirical_attack"] = empirical.identity["attack"]["name"]
    return out


def _exceed_cell(check: dict[str, Any] | None) -> str:
    """``k of n (≤ a expected with α: consistent)`` for :func:`check_certified`'s result."""
    if not check:
        return "–"
    verdict = "consistent with α" if check["consistent"] else "**more than α allows**"
    return f"{check['exceeding']} of {check['checked']} (≤ {check['allowed']}: {verdict})"


def certified_markdown(entries: list[dict[str, Any]]) -> list[str]:
    """The ``certified-l2`` tables: largest median certified radius first."""
    lines: list[str] = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        if e["threat_model"] == "certified-l2":
            groups[(e["dataset"], e["resolution"])].append(e)
    for (dataset, res), group in sorted(groups.items()):
        group.sort(key=lambda e: -(e["median_certified_radius"] or 0.0))
        lines += [
            f"## {dataset} · {res} · certified-l2 (randomized smoothing, ℓ2 on [-1, 1])",
            "",
            "| rank | metric | σ | n | abstain % | "
            + "".join(f"cert. % @{r} | " for r in CERTIFIED_RADII)
            + "median certified radius | median empirical radius | certified > empirical "
            + "| triplets |",
            "|---:|---|---:|---:|---:|" + "---:|" * len(CERTIFIED_RADII) + "---:|---:|---|---:|",
        ]
        for rank, e in enumerate(group, 1):
            cells = "".join(
                f"{fmt_cell(e['certified_rate'][str(r)], pct=True)} | " for r in CERTIFIED_RADII
            )
            lines.append(
                f"| {rank} | {e['metric']} | {fmt_cell(e['sigma'])} | {e['n']} | "
                f"{fmt_cell(e['abstain_rate'], pct=True)} | {cells}"
                f"{fmt_cell(e['median_certified_radius'])} | {fmt_cell(e['median_empirical_radius'])} | "
                f"{_exceed_cell(e.get('certified_above_empirical'))} | {e['triplets']} |"
            )
        lines.append("")
    return lines


def certified_figure(entries: list[dict[str, Any]], out: Path) -> list[Path]:
    """``<out>/<dataset>-<res>/certified-l2.png``: per metric, the fraction of triplets
    certified at each ℓ2 radius (solid, a lower bound on the robust fraction) and the
    fraction the attack did not flip there (dashed, an upper bound)."""
    from matplotlib.figure import Figure

    from attackpsm.report.figures import save_figure

    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        if e["threat_model"] == "certified-l2":
            groups[(e["dataset"], e["resolution"])].append(e)
    written: list[Path] = []
    radii = np.array(CERTIFIED_RADII)
    for (dataset, res), group in sorted(groups.items()):
        fig = Figure(figsize=(5.5, 3.8))
        ax = fig.add_subplot()
        for i, e in enumerate(group):
            color = f"C{i}"
            ax.plot(
                radii,
                [e["certified_rate"][str(r)] for r in radii],
                "-o",
                color=color,
                label=f"{e['metric']} certified",
            )
            if e.get("empirical_robust_rate"):
                ax.plot(
                    radii,
                    [e["empirical_robust_rate"][str(r)] for r in radii],
                    "--s",
                    color=color,
                    label=f"{e['metric']} empirical",
                )
        ax.set_xscale("log")
        ax.set_xlabel("ℓ2 radius ([-1, 1] scale)")
        ax.set_ylabel("fraction of triplets")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{dataset} · {res} · certified vs empirical")
        ax.legend(fontsize=7)
        written += save_figure(fig, out / f"{dataset}-{res}", "certified-l2")
    return written
