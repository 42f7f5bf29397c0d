"""Robustness leaderboard: one JSON per metric x threat model and a ranked markdown table.

Reads the runs below a results (or sweep) directory (:mod:`attackpsm.report.load`) and,
for each dataset x resolution x metric x threat model, writes::

    <out>/<dataset>-res<size>/<metric>.<threat>.json
    <out>/leaderboard.md

A threat model is the perturbation set and the access: ``linf`` (white-box, which may also
use black-box attacks), ``linf-blackbox`` (metric outputs only), ``l2`` and
``l2-blackbox``, and ``certified-l2`` (``attack=certify`` on ``metric=smoothed``: the
certified ℓ2 radius of the smoothed decision next to the empirical one). Its flip rate at a
budget is the worst case over every attack run at that budget: a triplet counts as flipped
when any attack flipped it. ``min_eps`` runs give the per-triplet radius, the robustness
curve and the median robust radius; ``attack=none`` runs give the clean accuracy (Table 1).

Usage::

    python -m attackpsm leaderboard results [--out results/leaderboard] [--budget 0.03]
        [--budget-l2 1.0]
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attackpsm.attacks.min_eps import median_radius, robustness_curve
from attackpsm.protocol.twoafc import accuracy, agreement
from attackpsm.report.cards import card_path, entry_from_card, read_cards, write_card
from attackpsm.report.load import Run, load_runs
from attackpsm.storage.records import load_mapping
from attackpsm.summary.results import quantile

log = logging.getLogger("attackpsm")

PAPER_BUDGET = 0.03  # ℓ∞ ε of PGD in the paper, on the [-1, 1] scale
L2_BUDGET = 1.0  # ε of attack=apgd_l2, on the [-1, 1] scale
CURVE_BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
BLACK_BOX = {"Square", "OnePixel"}
LINF = {"FGSM", "PGD", "APGD", "Square", "Cascade", "EoT"}
# attacks that give a per-triplet minimal budget, and its column: MinEps (bisection, exact
# on small sets) and FMN (one minimum-norm run, column ``eps_star``)
RADIUS = {"MinEps": "min_eps", "FMN": "eps_star"}
CERTIFIED_RADII = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # ℓ2, [-1, 1] scale


def _cls(node: dict[str, Any]) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1]


def _eps(node: dict[str, Any]) -> float | None:
    cls = _cls(node)
    if cls == "Cascade":
        values = [_eps(a) for a in node.get("attacks", [])]
        values = [v for v in values if v is not None]
        return max(values) if values else None
    if cls == "EoT":
        return _eps(node.get("attack", {}))
    value = node.get("eps", node.get("max_eps"))
    return None if value is None else float(value)


def _black_box(node: dict[str, Any]) -> bool:
    cls = _cls(node)
    if cls == "Cascade":
        return all(_black_box(a) for a in node.get("attacks", []))
    if cls in ("EoT", "MinEps"):
        return _black_box(node.get("attack", {"_target_": "APGD"}))
    return cls in BLACK_BOX


def threat_models(node: dict[str, Any]) -> list[str]:
    """The threat models an attack run counts for (``[]``: not a robustness attack).

    A run with ``attack.target`` other than the prey counts for its own threat models,
    suffixed with the target (``linf-reference``, ``l2-both``, ...).
    """
    target = node.get("target", "prey")
    names = _threat_models(node)
    return names if target == "prey" else [f"{t}-{target}" for t in names]


def _threat_models(node: dict[str, Any]) -> list[str]:
    cls = _cls(node)
    if cls == "MinEps":
        inner = node.get("attack", {"_target_": "APGD"})
        return threat_models(inner)
    if cls == "FMN":
        return [node.get("norm", "linf")]
    if cls == "EoT":
        return threat_models(node.get("attack", {}))
    if cls == "Cascade" or cls in LINF:
        if node.get("norm", "linf") == "l2":
            return ["l2", "l2-blackbox"] if _black_box(node) else ["l2"]
        return ["linf", "linf-blackbox"] if _black_box(node) else ["linf"]
    return []


def _key(run: Run) -> tuple[str, str, str]:
    res = run.identity.get("resolution")
    return (
        run.identity["dataset"]["name"],
        f"res{res or 'native'}",
        run.identity["metric"]["name"],
    )


def _rate(values: pd.Series) -> float:
    return float(values.astype(bool).mean()) if len(values) else float("nan")


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def entry(runs: list[Run], threat: str, clean: Run | None, budget: float) -> dict[str, Any] | None:
    """The leaderboard entry of one metric under one threat model (``None``: no runs)."""
    fixed = [r for r in runs if _cls(r.identity["attack"]) not in RADIUS]
    # the exact bisection first: it gives the median radius and curve when both ran
    radius = sorted(
        (r for r in runs if _cls(r.identity["attack"]) in RADIUS),
        key=lambda r: _cls(r.identity["attack"]) != "MinEps",
    )
    if not fixed and not radius:
        return None
    by_eps: dict[float, list[Run]] = defaultdict(list)
    for r in fixed:
        eps = _eps(r.identity["attack"])
        if eps is not None:
            by_eps[round(eps, 6)].append(r)
    worst: dict[str, float] = {}
    worst_saved: dict[str, float] = {}
    triplets = 0
    for eps, group in sorted(by_eps.items()):
        table = pd.concat([g.results[["triplet_id", "flipped", "flipped_saved"]] for g in group])
        per = table.groupby("triplet_id")[["flipped", "flipped_saved"]].any()
        worst[str(eps)] = _rate(per["flipped"])
        worst_saved[str(eps)] = _rate(per["flipped_saved"])
        triplets = max(triplets, len(per))
    by_attack = {
        r.identity["attack"]["name"]: {
            "eps": _eps(r.identity["attack"]),
            "flip_rate": _rate(r.results["flipped"]),
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
        if "queries" in r.results and _black_box(r.identity["attack"])
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
        column = RADIUS[_cls(radius[0].identity["attack"])]
        table = radius[0].results
        per = pd.DataFrame(
            {
                "agrees": table["human_agrees"].to_numpy(),
                "flipped": table[column].to_numpy(dtype=float) <= budget,
            }
        )
    else:
        return None
    labelled = per["agrees"].notna()
    if not labelled.any():
        return None
    agrees = per.loc[labelled, "agrees"].astype(bool)
    return float((agrees & ~per.loc[labelled, "flipped"].astype(bool)).mean())


def _radii(run: Run) -> np.ndarray:
    return run.results[RADIUS[_cls(run.identity["attack"])]].to_numpy(dtype=float)


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
    for _, group in sorted(groups.items(), key=lambda kv: kv[0]):
        clean = next((r for r in group if _cls(r.identity["attack"]) == "NoAttack"), None)
        threats = sorted(
            {t for r in group for t in threat_models(r.identity["attack"])},
            key=lambda t: (t.split("-")[0] != "linf", t),
        )
        for threat in threats:
            members = [r for r in group if threat in threat_models(r.identity["attack"])]
            e = entry(members, threat, clean, budget_l2 if threat.startswith("l2") else budget)
            if e is not None:
                entries.append(e)
        e = certified_entry(group)
        if e is not None:
            entries.append(e)
    return entries


# a count of certified radii above the empirical ones is "consistent with α" while it is at
# most this quantile of Binomial(certified triplets, α)
CONSISTENT_QUANTILE = 0.999


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


def certified_entry(group: list[Run]) -> dict[str, Any] | None:
    """The ``certified-l2`` entry of one metric: certified rate and accuracy at
    :data:`CERTIFIED_RADII`, median certified radius, and the median empirical ℓ2 radius
    of a ``min_eps`` ℓ2 run on the same metric (checked triplet by triplet:
    :func:`check_certified`). ``None`` without an ``attack=certify`` run."""
    cert = next((r for r in group if _cls(r.identity["attack"]) == "Certify"), None)
    if cert is None:
        return None
    table = cert.results
    empirical = next(
        (
            r
            for r in group
            if _cls(r.identity["attack"]) == "MinEps"
            and "l2" in threat_models(r.identity["attack"])
        ),
        None,
    )
    dataset, res, metric = _key(cert)
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


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return "∞" if value == "inf" else value
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return f"{100 * value:.1f}" if pct else f"{value:.4g}"


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
                f"{_fmt(per[a]['flip_rate'], pct=True) if a in per else '–'} | " for a in attacks
            )
            lines.append(
                f"| {rank} | {e['metric']} | {_fmt(e['clean_accuracy'], pct=True)} | "
                f"{_fmt(e['flip_rate'], pct=True)} | {cells}{_fmt(e['median_radius'])} | "
                f"{_eps_star_cell(e.get('eps_star') or {})} | "
                f"{_fmt(e['queries_mean'])} | {e['triplets']} |"
            )
        lines.append("")
    return "\n".join(lines + certified_markdown(entries))


def _eps_star_cell(runs: dict[str, dict[str, Any]]) -> str:
    """``name: median [q25, q75]`` per radius run (FMN, min_eps), ``–`` without one."""
    cells = [
        f"{name}: {_fmt(d['median'])} [{_fmt(d['q25'])}, {_fmt(d['q75'])}]"
        for name, d in sorted(runs.items())
        if d.get("triplets")
    ]
    return "; ".join(cells) or "–"


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
                f"{_fmt(e['certified_rate'][str(r)], pct=True)} | " for r in CERTIFIED_RADII
            )
            lines.append(
                f"| {rank} | {e['metric']} | {_fmt(e['sigma'])} | {e['n']} | "
                f"{_fmt(e['abstain_rate'], pct=True)} | {cells}"
                f"{_fmt(e['median_certified_radius'])} | {_fmt(e['median_empirical_radius'])} | "
                f"{_exceed_cell(e.get('certified_above_empirical'))} | {e['triplets']} |"
            )
        lines.append("")
    return lines


# --- robustness cards (attackpsm.report.cards) ----------------------------------------------------

GRADIENT_ATTACKS = {"PGD", "ReversePGD", "APGD", "FMN", "EoT", "MinEps", "Cascade"}


def _members(runs: list[Run], e: dict[str, Any]) -> list[Run]:
    """The runs a leaderboard entry was built from."""
    key = (e["dataset"], e["resolution"], e["metric"])
    same = [r for r in runs if _key(r) == key]
    if e["threat_model"] == "certified-l2":
        return [
            r
            for r in same
            if _cls(r.identity["attack"]) == "Certify"
            or (
                _cls(r.identity["attack"]) == "MinEps"
                and "l2" in threat_models(r.identity["attack"])
            )
        ]
    return [r for r in same if e["threat_model"] in threat_models(r.identity["attack"])]


def passes(run: Run) -> tuple[float | None, float | None]:
    """Mean forward and backward passes of the metric per triplet, where the run's columns
    say: forward = ``queries`` (metric calls) or, for PGD, ``iterations + 1`` checks;
    backward = the gradient steps (PGD, APGD: ``iterations``; FMN: ``queries·steps/(steps+1)``; a
    black-box attack: 0). ``None`` where the columns do not tell."""
    cls, table = _cls(run.identity["attack"]), run.results
    if not len(table):
        return None, None
    forward = float(table["queries"].mean()) if "queries" in table else None
    backward = None
    if cls in ("PGD", "ReversePGD"):
        forward = float(table["iterations"].mean()) + 1
        backward = float(table["iterations"].mean())
    elif cls == "APGD":
        backward = float(table["iterations"].mean())
    elif cls == "FMN" and forward is not None:  # steps + 1 scored points, steps gradients
        steps = int(run.identity["attack"].get("steps", 100))
        backward = forward * steps / (steps + 1)
    elif _black_box(run.identity["attack"]):
        backward = 0.0
    return forward, backward


def _weights_sha256(metric_cfg: dict[str, Any], cache: dict[str, Any]) -> tuple[str | None, str]:
    """Content checksum of the built metric's parameters and buffers (the weights it ran
    with: :func:`attackpsm.metrics.weights.store.content_sha256`), or ``None`` and why not."""
    from attackpsm.report.cards import config_hash

    key = config_hash(metric_cfg)
    if key not in cache:
        try:
            from omegaconf import OmegaConf

            from attackpsm.config import build
            from attackpsm.metrics.weights.store import content_sha256

            metric = build(OmegaConf.create(metric_cfg))
            cache[key] = (
                content_sha256(metric.state_dict()),
                "sha256 over every tensor of the metric's state, key order",
            )
        except Exception as error:  # noqa: BLE001 -- weights not on this machine: say so
            cache[key] = (None, f"metric not built here: {type(error).__name__}: {error}"[:300])
    return cache[key]


def read_diagnostics(results: str | Path) -> list[dict[str, Any]]:
    """The reports of ``python -m attackpsm diagnose`` below ``<results>/diagnostics``."""
    folder = Path(results) / "diagnostics"
    return (
        [load_mapping(p) for p in sorted(folder.rglob("*.json"))]  # data only
        if folder.is_dir()
        else []
    )


def _diagnostics_for(
    e: dict[str, Any], metric_cfg: dict[str, Any], reports: list[dict[str, Any]]
) -> dict[str, Any] | None:
    from attackpsm.report.cards import config_hash

    wanted = config_hash(metric_cfg)
    for rep in reports:
        if (
            rep.get("metric_config_hash") == wanted
            and rep.get("dataset") == e["dataset"]
            and rep.get("resolution") == e["resolution"]
        ):
            return {
                "passed": bool(rep["passed"]),
                "flags": list(rep["flags"]),
                "checks": {c["name"]: c["status"] for c in rep["checks"]},
                "triplets": rep.get("triplets_agree"),
                "date": rep.get("date"),
            }
    return None


def make_card(
    e: dict[str, Any],
    members: list[Run],
    reports: list[dict[str, Any]] = (),
    weights_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The robustness card of one leaderboard entry (schema: :data:`attackpsm.report.cards.CARD_SCHEMA`)."""
    import datetime

    from attackpsm import __version__

    first = members[0].identity if members else {"dataset": {}, "metric": {"name": e["metric"]}}
    metric_cfg = first["metric"]
    sha, note = _weights_sha256(metric_cfg, {} if weights_cache is None else weights_cache)
    dataset = first["dataset"]
    split = dataset.get("split")
    if split is None and dataset.get("subsets"):
        split = ",".join(map(str, dataset["subsets"]))
    if split is None and "seed" in dataset:
        split = f"seed={dataset['seed']}" + (
            f", variant={dataset['variant']}" if "variant" in dataset else ""
        )
    threat = e["threat_model"]
    attacks = []
    for r in members:
        fwd, bwd = passes(r)
        attacks.append(
            {
                "name": r.identity["attack"]["name"],
                "config": r.identity["attack"],
                "forward_passes": fwd,
                "backward_passes": bwd,
            }
        )
    certified = None
    if threat == "certified-l2":
        certified = {"median": e["median_certified_radius"], "sigma": e.get("sigma")}
    return {
        "schema_version": 1,
        "metric": {
            "name": e["metric"],
            "config": metric_cfg,
            "weights_sha256": sha,
            "weights_note": note,
        },
        "data": {
            "dataset": e["dataset"],
            "split": split,
            "resolution": e["resolution"],
            "triplets": int(e["triplets"]),
            "fingerprint": first.get("data_fingerprint"),
        },
        "threat_model": {
            "name": threat,
            "norm": "l2" if "l2" in threat else "linf",
            "access": "certified"
            if threat.startswith("certified")
            else ("black-box" if "blackbox" in threat else "white-box"),
            # the perturbed image (attack.target): the prey, the distortion the metric ranks
            # closer (Sec. 3, the default), the reference, or both distortions
            "target": next((r.identity["attack"].get("target", "prey") for r in members), "prey"),
        },
        "eps": e.get("budget"),
        "clean_accuracy": e.get("clean_accuracy"),
        "robust_accuracy": e.get("robust_accuracy"),
        "attacks": attacks,
        "diagnostics": _diagnostics_for(e, metric_cfg, list(reports)),
        "certified_radius": certified,
        "tool": {
            "name": "attackpsm",
            "version": __version__,
            "run_versions": sorted({str(r.identity.get("version")) for r in members}),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": {
            k: v
            for k, v in e.items()
            if k not in ("dataset", "resolution", "metric", "threat_model")
        },
    }


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


def diagnostics_markdown(reports: list[dict[str, Any]]) -> str:
    """The gradient-masking diagnostics section: one row per diagnosed metric config."""
    if not reports:
        return ""
    names = ("gradient", "unbounded", "monotone", "blackbox", "randomness")
    lines = [
        "## Gradient-masking diagnostics (python -m attackpsm diagnose)",
        "",
        "| data | metric | config | " + " | ".join(names) + " | cos(∇, FD) | unbounded flip % "
        "| Square-only flips | verdict |",
        "|---|---|---|" + "---|" * len(names) + "---:|---:|---:|---|",
    ]
    for rep in sorted(reports, key=lambda r: (r["dataset"], r["resolution"], r["metric"])):
        checks = {c["name"]: c for c in rep["checks"]}

        def num(check: str, key: str, checks=checks) -> Any:
            return checks.get(check, {}).get("numbers", {}).get(key)

        status = [checks[n]["status"] if n in checks else "–" for n in names]
        verdict = "passed" if rep["passed"] else "FLAGGED: " + ", ".join(rep["flags"])
        lines.append(
            f"| {rep['dataset']}·{rep['resolution']} | {rep['metric']} | "
            f"{rep['metric_config_hash']} | " + " | ".join(status) + f" | "
            f"{_fmt(num('gradient', 'median_cosine'))} | "
            f"{_fmt(num('unbounded', 'flip_rate'), pct=True)} | "
            f"{_fmt(num('blackbox', 'square_only'))} | {verdict} |"
        )
    return "\n".join(["", *lines, ""])


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
        if _cls(r.identity["attack"]) in RADIUS and len(r.results):
            norm = threat_models(r.identity["attack"])[0]
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
