"""Fast Minimum-Norm attack (FMN; Pintor et al., 2021) on the 2AFC rank: per-triplet ε*.

Where PGD asks "does the rank flip within ε?", FMN asks "what is the smallest perturbation
that flips it?". It walks along the normalised gradient of the rank-flip margin
``s_adv - s_other`` (positive exactly when the paper's flip ``s_adv > s_other`` holds,
:func:`attackpsm.protocol.twoafc.flip_margin`) while adapting a norm constraint ``ε_k``:

* not yet flipped, no flip found so far: ``ε_k = ‖δ‖ + |margin| / ‖∇margin‖_*``, the
  first-order distance to the decision boundary (``‖·‖_*`` the dual norm: ℓ1 for ℓ∞, ℓ2
  for ℓ2);
* not flipped, a flip found before: ``ε_k = ε_{k-1} (1 + γ_k)``;
* flipped: ``ε_k = min(ε_{k-1} (1 - γ_k), ‖δ*‖)`` with ``δ*`` the smallest flipping
  perturbation found so far;

then ``δ ← δ + α_k ∇/‖∇‖_2``, projected onto the ε_k ball and clipped to ``[-1, 1]``.
``α_k`` and ``γ_k`` decay by cosine annealing (``α_0 → α_0/100``, ``γ_0 → 0.001``), as in
Algorithm 1 of the paper. The column ``eps_star`` is ``‖δ*‖`` (ℓ∞ or ℓ2 over C×H×W, on the
``[-1, 1]`` scale; ``inf`` when no step flipped the rank); its distribution over triplets
is the metric's robustness curve (fraction flipped against ε).

Every one of the ``steps`` gradient steps is scored, and so is the point after the last
step (``steps + 1`` forward passes, ``steps`` backward passes per triplet: column
``queries`` counts the forward passes, times the EoT draws for a stochastic metric).
Unlike :class:`~attackpsm.attacks.min_eps.MinEps` (bisection over ε with APGD, the exact
reference on small sets) one FMN run gives ε* for every triplet.

References:
    Pintor, M., Roli, F., Brendel, W., Biggio, B. (2021). Fast Minimum-norm Adversarial
    Attacks through Adaptive Norm Constraints. NeurIPS.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attackpsm.attacks.apgd import NORMS, project
from attackpsm.attacks.base import Attack, AttackResult, Threat, check_int, check_positive
from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import Metric
from attackpsm.protocol.twoafc import flip_margin, rank_flipped


def cosine_annealing(start: float, end: float, k: int, steps: int) -> float:
    """``end + (start - end) (1 + cos(π k / steps)) / 2``: ``start`` at k = 0, ``end`` at
    k = steps (the schedule of α and γ in FMN)."""
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _dual_norm(grad: torch.Tensor, norm: str) -> torch.Tensor:
    flat = grad.flatten(1)
    return flat.abs().sum(1) if norm == "linf" else flat.norm(dim=1)


class FMN(Attack):
    """Fast Minimum-Norm attack, ℓ∞ or ℓ2, batched (every triplet runs every step).

    Args:
        norm: ``"linf"`` or ``"l2"`` (ε* in that norm, on the ``[-1, 1]`` scale).
        steps: gradient steps (100; FMN's default).
        alpha: initial step ``α_0`` along the ℓ2-normalised gradient (2.0: the step 1.0
            of the reference implementation on ``[0, 1]`` images, on our ``[-1, 1]``).
        alpha_final: final step (``None``: ``alpha / 100``).
        gamma: initial ε-update factor ``γ_0`` (0.05; decays to 0.001).
        eot_samples: draws averaged per score for stochastic metrics (E-LPIPS).

    Example:
        >>> out = FMN(norm="linf", steps=100).run(metric, metric.prepare(ref), prey, s_other)
        >>> out.columns["eps_star"]  # smallest flipping ℓ∞ perturbation per triplet
    """

    name = "fmn"
    columns = ("iterations", "eps_star", "queries")
    threat = Threat(norm="linf", access="white-box", norm_param="norm", radius="eps_star")

    def __init__(
        self,
        norm: str = "linf",
        steps: int = 100,
        alpha: float = 2.0,
        alpha_final: float | None = None,
        gamma: float = 0.05,
        eot_samples: int = 1,
    ):
        if norm not in NORMS:
            raise ValueError(f"attack parameter norm must be one of {NORMS}, got {norm!r}")
        check_int("steps", steps, minimum=1)
        check_positive("alpha", alpha)
        if alpha_final is not None:
            check_positive("alpha_final", alpha_final)
        check_positive("gamma", gamma)
        if gamma >= 1:
            raise ValueError(f"attack parameter gamma must be < 1, got {gamma}")
        check_int("eot_samples", eot_samples, minimum=1)
        self.norm = norm
        self.steps = int(steps)
        self.alpha = float(alpha)
        self.alpha_final = float(alpha_final) if alpha_final is not None else self.alpha / 100
        self.gamma = float(gamma)
        self.eot_samples = int(eot_samples)

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        n, device = prey.shape[0], prey.device
        draws = self.eot_samples if metric.stochastic else 1
        delta = torch.zeros_like(prey)
        eps = torch.full((n,), float("inf"), device=device)
        best_norm = torch.full((n,), float("inf"), device=device)
        best_adv = prey.clone()
        best_s = torch.full((n,), float("nan"), device=device)
        best_margin = torch.full((n,), -float("inf"), device=device)
        found = torch.zeros(n, dtype=torch.bool, device=device)
        iterations = torch.full((n,), self.steps, dtype=torch.long, device=device)
        for k in range(self.steps + 1):
            last = k == self.steps
            x = (prey + delta).clamp(LOW, HIGH)
            delta = x - prey  # the perturbation actually applied
            x.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                s = metric.expected_score(prepared_ref, x, draws)
            s_det = s.detach()
            margin = flip_margin(s_other, s_det, self.reverse)
            flipped = rank_flipped(s_det, s_other, self.reverse)
            size = _norm(delta, self.norm)
            better = flipped & (size < best_norm)
            # unflipped triplets keep their highest-margin point (what PGD would report)
            closer = ~found & ~flipped & (margin > best_margin)
            keep = better | closer
            best_adv = torch.where(keep[:, None, None, None], x.detach(), best_adv)
            best_s = torch.where(keep, s_det, best_s)
            best_margin = torch.where(closer, margin, best_margin)
            best_norm = torch.where(better, size, best_norm)
            iterations = torch.where(better, k, iterations)
            found = found | flipped
            if last:
                break
            (grad,) = torch.autograd.grad(flip_margin(s_other, s, self.reverse).sum(), x)
            gamma = cosine_annealing(self.gamma, 0.001, k, self.steps)
            alpha = cosine_annealing(self.alpha, self.alpha_final, k, self.steps)
            to_boundary = margin.abs() / _dual_norm(grad, self.norm).clamp_min(1e-12)
            eps = torch.where(
                flipped,
                torch.minimum(eps * (1 - gamma), best_norm),
                torch.where(found, eps * (1 + gamma), size + to_boundary),
            )
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = project(delta + alpha * step, eps, self.norm)
        queries = torch.full((n,), (self.steps + 1) * draws, dtype=torch.long, device=device)
        return AttackResult(
            best_adv,
            best_s,
            found,
            {"iterations": iterations, "eps_star": best_norm, "queries": queries},
        )
