"""Per-triplet minimal ℓ∞ budget: bisection over ε with a strong attack.

Robustness as a function of the budget rather than at one ε: for each triplet, the
smallest ε (up to ``tol``) at which ``attack`` flips the rank. The flip rate at any ε
is then the fraction of triplets with ``min_eps <= ε`` (a robustness curve), and the
median of ``min_eps`` is the metric's median robust radius.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from attackpsm.attacks.apgd import APGD
from attackpsm.attacks.base import (
    LINF_MAX,
    Attack,
    AttackResult,
    Threat,
    check_at_most,
    check_positive,
    threat_of,
)
from attackpsm.metrics.base import Metric, select


class MinEps(Attack):
    """Bisection over the ℓ∞ budget per triplet, batched.

    First ``attack`` runs at ``eps_max``; triplets it cannot flip get ``min_eps = inf``
    and keep that attempt. For the others ``[lo, hi] = [0, eps_max]`` is halved until
    ``hi - lo <= tol``: at each step the attack runs at ``(lo + hi) / 2`` on every
    triplet at once (a per-triplet ε), a flip lowers ``hi`` and keeps the image.
    The returned image flips at ``min_eps = hi``; the attack did not flip at ``lo``.

    Args:
        attack: an attack with ``attack(metric, prepared, prey, s_other, eps)`` taking a
            per-triplet ε (:class:`~attackpsm.attacks.apgd.APGD`,
            :class:`~attackpsm.attacks.square.Square`); default APGD(30 steps).
        eps_max: largest budget tried (0.1, on the ``[-1, 1]`` scale).
        tol: bisection tolerance on ε (0.001).

    The ``min_eps`` column holds the budget; ``queries`` adds up the attack's metric calls.
    """

    name = "min_eps"
    can_stall = False
    columns = ("iterations", "min_eps", "queries")
    threat = Threat(norm="linf", access="white-box", budget="eps_max", radius="min_eps")

    @classmethod
    def resolve_threat(cls, node: Mapping[str, Any]) -> Threat:
        """The inner attack's norm and access (APGD when none is given), the bisection's
        largest budget ``eps_max`` and its per-triplet radius ``min_eps``."""
        inner = node.get("attack")
        part = threat_of(inner) if inner else APGD.resolve_threat({})
        eps = node.get(cls.threat.budget)
        return replace(
            part,
            budget=cls.threat.budget,
            radius=cls.threat.radius,
            eps=None if eps is None else float(eps),
        )

    def __init__(self, attack: Attack | None = None, eps_max: float = 0.1, tol: float = 0.001):
        check_positive("eps_max", eps_max)
        check_positive("tol", tol)
        if getattr(attack, "norm", "linf") == "linf":
            check_at_most("eps_max", eps_max, LINF_MAX, "the width of the [-1, 1] image scale")
        self.attack = APGD() if attack is None else attack
        if not hasattr(self.attack, "attack"):
            raise ValueError(f"{type(self.attack).__name__} cannot take a per-triplet eps")
        self.eps_max = float(eps_max)
        self.tol = float(tol)
        self.white_box = self.attack.white_box
        self.reverse = self.attack.reverse
        self.flip_on = getattr(self.attack, "flip_on", "float")  # the bisection's success

    @property
    def steps(self) -> int:
        """Bisection steps after the first try at ``eps_max``."""
        return max(math.ceil(math.log2(self.eps_max / self.tol)), 0)

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        n, device = prey.shape[0], prey.device
        first = self.attack.attack(metric, prepared_ref, prey, s_other, self.eps_max)
        adv, s_adv, flipped = (
            first.adv.detach().clone(),
            first.s_adv.detach().clone(),
            first.flipped.clone(),
        )
        success = first.success.clone()
        queries = first.columns.get(
            "queries", torch.zeros(n, dtype=torch.long, device=device)
        ).clone()
        lo = torch.zeros(n, device=device)
        hi = torch.full((n,), self.eps_max, device=device)
        todo = success.nonzero().flatten()
        for _ in range(self.steps):
            todo = todo[(hi[todo] - lo[todo]) > self.tol]
            if len(todo) == 0:
                break
            mid = (lo[todo] + hi[todo]) / 2
            out = self.attack.attack(
                metric, select(prepared_ref, todo), prey[todo], s_other[todo], mid
            )
            if "queries" in out.columns:
                queries[todo] += out.columns["queries"]
            ok = out.success
            flipped[todo[ok]] = out.flipped[ok]
            hi[todo[ok]] = mid[ok]
            lo[todo[~ok]] = mid[~ok]
            adv[todo[ok]] = out.adv.detach()[ok]
            s_adv[todo[ok]] = out.s_adv.detach()[ok]
        min_eps = torch.where(success, hi, torch.full_like(hi, float("inf")))
        iterations = torch.full((n,), self.steps, dtype=torch.long, device=device)
        return AttackResult(
            adv,
            s_adv,
            flipped,
            {"iterations": iterations, "min_eps": min_eps, "queries": queries},
            success if self.flip_on == "saved" else None,
        )


def robustness_curve(min_eps: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Flip rate at each budget: the fraction of triplets with ``min_eps <= ε``."""
    min_eps = np.asarray(min_eps, dtype=float)
    return np.array([(min_eps <= b).mean() if len(min_eps) else np.nan for b in budgets])


def median_radius(min_eps: np.ndarray) -> float:
    """Median robust radius (``inf`` when at least half the triplets never flip)."""
    min_eps = np.asarray(min_eps, dtype=float)
    return float(np.median(min_eps)) if len(min_eps) else float("nan")
