"""Auto-PGD (Croce & Hein, 2020) on the rank-flip margin of a 2AFC triplet.

APGD needs no step size: it starts with a large step, keeps a momentum term, and halves
the step at fixed checkpoints whenever progress stalls, restarting from the best point
found so far. Here it maximises the rank-flip margin ``s_adv - s_other`` (the paper's
success condition ``s_adv > s_other`` is a positive margin), so every metric is attacked
with the same scale-free objective.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attackpsm.attacks.base import (
    LINF_MAX,
    Attack,
    AttackResult,
    Threat,
    check_at_most,
    check_flip_on,
    check_int,
    check_positive,
    judge,
)
from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.streams import image_keys, uniform
from attackpsm.protocol.twoafc import flip_margin, rank_flipped

NORMS = ("linf", "l2")


def checkpoints(iterations: int) -> list[int]:
    """APGD's step-size checkpoints ``w_j = ceil(p_j N)`` (Croce & Hein, 2020, Sec. 3.2).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.
    """
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(round(q * iterations, 6)) for q in p[1:] if q <= 1.0})
    return [w for w in points if 0 < w < iterations]


def _per_sample(value: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if torch.is_tensor(value):
        return value.to(device=device, dtype=torch.float32).reshape(n)
    return torch.full((n,), float(value), device=device)


def project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project each ``delta[i]`` onto the ``norm`` ball of radius ``eps[i]``."""
    e = eps.view(-1, 1, 1, 1)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, e), -e)
    length = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return delta * torch.clamp(e / length.clamp_min(1e-12), max=1.0)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest ascent direction of unit size: ``sign(g)`` (ℓ∞) or ``g / ||g||_2`` (ℓ2)."""
    if norm == "linf":
        return grad.sign()
    length = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return grad / length


class APGD(Attack):
    """Auto-PGD on the rank-flip margin, ℓ∞ or ℓ2, batched with per-triplet early stop.

    Distance measure: ℓ∞ (or ℓ2) on the ``[-1, 1]`` scale. Budget as :class:`PGD`:
    ``max_iterations`` gradient steps and one more check (31 metric calls by default).
    Per triplet: step ``η = 2ε``; ``z = P(x + η·dir(∇f))``, ``x ← P(x + 0.75(z - x) +
    0.25(x - x_prev))``; at each checkpoint ``w_j`` the step halves and ``x`` restarts
    from the best point if fewer than ``ρ = 0.75`` of the steps since ``w_{j-1}`` improved
    the margin, or if neither step nor best margin changed since then. A triplet leaves
    the active set at its first flip and keeps that image.

    With ``eot_samples > 1`` (stochastic metrics such as E-LPIPS) every gradient is that of
    the mean of ``eot_samples`` fresh draws; flips (and the best point) are judged on the
    metric's decision score, under the triplet's common draws.

    Args:
        eps: budget on the ``[-1, 1]`` scale (0.03 for ℓ∞, as PGD).
        max_iterations: gradient steps (30, as PGD).
        norm: ``"linf"`` or ``"l2"``.
        rho: checkpoint condition (0.75).
        momentum: weight of the new step ``α`` (0.75).
        eot_samples: score draws per step for stochastic metrics (1).
        random_start: start the first run from a uniform point of the ball around the prey
            instead of the prey itself, as the reference APGD does (False).
        restarts: extra runs from random starts for triplets still unflipped (0); the
            reference APGD's ``n_restarts`` is ``restarts + 1`` with ``random_start``.
        seed: random starts, drawn from each triplet's own stream (keyed by the prey's
            pixels and the seed: identical results batched or one at a time).
        flip_on: ``"float"`` (the paper's flip) or ``"saved"``: a triplet leaves the active
            set (and restarts stop) only when its saved 8-bit image flips.

    References:
        Croce, F., Hein, M. (2020). Reliable evaluation of adversarial robustness with an
        ensemble of diverse parameter-free attacks. ICML.

    Example:
        >>> result = APGD(eps=0.03).run(metric, metric.prepare(ref), prey, s_other)
    """

    name = "apgd"
    columns = ("iterations", "queries")
    threat = Threat(norm="linf", access="white-box", budget="eps", norm_param="norm")

    def __init__(
        self,
        eps: float = 0.03,
        max_iterations: int = 30,
        norm: str = "linf",
        rho: float = 0.75,
        momentum: float = 0.75,
        eot_samples: int = 1,
        restarts: int = 0,
        seed: int = 0,
        random_start: bool = False,
        flip_on: str = "float",
    ):
        check_positive("eps", eps, allow_zero=True)
        if norm not in NORMS:
            raise ValueError(f"attack parameter norm must be one of {NORMS}, got {norm!r}")
        if norm == "linf":
            check_at_most("eps", eps, LINF_MAX, "the width of the [-1, 1] image scale")
        check_int("max_iterations", max_iterations, minimum=0)
        check_int("eot_samples", eot_samples, minimum=1)
        check_int("restarts", restarts, minimum=0)
        check_positive("rho", rho)
        check_positive("momentum", momentum)
        self.eps = float(eps)
        self.max_iterations = int(max_iterations)
        self.norm = norm
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.eot_samples = int(eot_samples)
        if not isinstance(random_start, bool):
            raise ValueError(
                f"attack parameter random_start must be true or false, got {random_start!r}"
            )
        self.restarts = int(restarts)
        self.seed = int(seed)
        self.flip_on = check_flip_on(flip_on)
        self.random_start = random_start

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        return self.attack(metric, prepared_ref, prey, s_other, self.eps)

    def attack(
        self,
        metric: Metric,
        prepared_ref: Any,
        prey: torch.Tensor,
        s_other: torch.Tensor,
        eps: float | torch.Tensor,
    ) -> AttackResult:
        """APGD with a per-triplet budget ``eps`` (a float or an ``(N,)`` tensor)."""
        n = prey.shape[0]
        eps = _per_sample(eps, n, prey.device)
        keys = image_keys(prey, self.seed)
        everyone = torch.arange(n, device=prey.device)
        first = self._random_start(keys, prey, eps, everyone, 0) if self.random_start else None
        result = self._single(metric, prepared_ref, prey, s_other, eps, start=first)
        offset = 1 if self.random_start else 0  # stream step 0 is the first start's
        for restart in range(self.restarts):
            todo = (~result.success).nonzero().flatten()
            if len(todo) == 0:
                break
            start = self._random_start(keys, prey, eps, todo, restart + offset)
            again = self._single(
                metric, select(prepared_ref, todo), prey[todo], s_other[todo], eps[todo], start
            )
            result.columns["queries"][todo] += again.columns["queries"]
            better = again.success | (
                flip_margin(s_other[todo], again.s_adv, self.reverse)
                > flip_margin(s_other[todo], result.s_adv[todo], self.reverse)
            )
            idx = todo[better]
            result.adv[idx] = again.adv[better]
            result.s_adv[idx] = again.s_adv[better]
            result.flipped[idx] = again.flipped[better]
            if result.stopped is not None:
                result.stopped[idx] = again.stopped[better]
            result.columns["iterations"][idx] = again.columns["iterations"][better]
        return result

    def _random_start(
        self,
        keys: torch.Tensor,
        prey: torch.Tensor,
        eps: torch.Tensor,
        todo: torch.Tensor,
        step: int,
    ) -> torch.Tensor:
        """Uniform noise in ``[-ε, ε]`` around ``prey[todo]`` (ℓ2: projected onto the ball).

        Drawn from each triplet's own stream at ``step``, so the start does not depend on
        the batch (Croce & Hein, 2020, Alg. 1 starts from such a point).
        """
        noise = uniform(keys[todo], step, prey.shape[1:]).to(prey.device) * 2 - 1
        return prey[todo] + project(noise * eps[todo].view(-1, 1, 1, 1), eps[todo], self.norm)

    def _score(self, metric: Metric, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        return metric.expected_score(prepared, x, self.eot_samples)

    def _single(
        self,
        metric: Metric,
        prepared_ref: Any,
        prey: torch.Tensor,
        s_other: torch.Tensor,
        eps: torch.Tensor,
        start: torch.Tensor | None,
    ) -> AttackResult:
        """One APGD run from ``start`` (default: the prey) on every triplet of the batch."""
        draws = self.eot_samples if metric.stochastic else 1
        state = _State(prey if start is None else start, eps, self.max_iterations)
        marks = checkpoints(self.max_iterations)
        previous_mark = 0
        active = torch.arange(prey.shape[0], device=prey.device)
        for k in range(self.max_iterations + 1):
            final = k == self.max_iterations
            xa = state.x[active].clone().requires_grad_(not final)
            with torch.set_grad_enabled(not final):
                s = self._score(metric, select(prepared_ref, active), xa)
            state.queries[active] += draws
            hit, s_det = self._decide(metric, prepared_ref, s_other, active, xa, s, final)
            self._record(state, s_other, active, xa, s_det, hit, k)
            if final:
                break
            keep = ~hit
            if not keep.any():
                break
            (grad,) = torch.autograd.grad(flip_margin(s_other[active], s, self.reverse).sum(), xa)
            active = self._advance(state, prey, eps, xa.detach()[keep], grad[keep], active[keep], k)
            if k + 1 in marks:  # checkpoint w_j: halve the step where progress stalled
                self._checkpoint(state, active, k + 1 - previous_mark)
                previous_mark = k + 1
        return AttackResult(
            state.adv,
            state.s_adv,
            state.flipped,
            {"iterations": state.iterations, "queries": state.queries},
            state.stopped if self.flip_on == "saved" else None,
        )

    def _decide(
        self,
        metric: Metric,
        prepared_ref: Any,
        s_other: torch.Tensor,
        active: torch.Tensor,
        xa: torch.Tensor,
        s: torch.Tensor,
        final: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hit, s_det)`` of the active triplets: the stop rule and the decision score.

        A randomised metric decides under the common draws, ``flip_on=saved`` on the saved
        image (:func:`attackpsm.attacks.base.judge`).
        """
        s_det = s.detach()
        if not (metric.stochastic or self.flip_on == "saved"):
            return rank_flipped(s_det, s_other[active], self.reverse), s_det
        return judge(
            lambda p, v: self._score(metric, p, v),
            select(prepared_ref, active),
            xa,
            s_other[active],
            self.reverse,
            self.flip_on,
            s,
            metric.stochastic and not final,  # without a gradient s is the decision
        )

    def _record(
        self,
        state: _State,
        s_other: torch.Tensor,
        active: torch.Tensor,
        xa: torch.Tensor,
        s_det: torch.Tensor,
        hit: torch.Tensor,
        k: int,
    ) -> None:
        """Keep the best point of each active triplet, and the image that stopped it."""
        f = flip_margin(s_other[active], s_det, self.reverse)
        gain = f > state.best[active]
        if k > 0:
            state.improved[active] += (f > state.best[active]).float()
        ia = active[gain]
        state.best[ia] = f[gain]
        state.adv[ia] = xa.detach()[gain]
        state.s_adv[ia] = s_det[gain]
        if hit.any():
            idx = active[hit]
            state.adv[idx] = xa.detach()[hit]
            state.s_adv[idx] = s_det[hit]
            state.flipped[idx] = rank_flipped(s_det[hit], s_other[idx], self.reverse)
            state.stopped[idx] = True
            state.iterations[idx] = k

    def _advance(
        self,
        state: _State,
        prey: torch.Tensor,
        eps: torch.Tensor,
        xa: torch.Tensor,
        grad: torch.Tensor,
        a: torch.Tensor,
        k: int,
    ) -> torch.Tensor:
        """The momentum step of the triplets ``a`` (at ``xa``); returns them, the new active set."""
        center, e = prey[a], eps[a]
        direction = ascent_direction(grad, self.norm)
        z = (
            center
            + project(xa + state.step[a].view(-1, 1, 1, 1) * direction - center, e, self.norm)
        ).clamp(LOW, HIGH)
        if k == 0:
            new = z
        else:
            new = xa + self.momentum * (z - xa) + (1 - self.momentum) * (xa - state.x_prev[a])
            new = (center + project(new - center, e, self.norm)).clamp(LOW, HIGH)
        state.x_prev[a] = xa
        state.x[a] = new
        return a

    def _checkpoint(self, state: _State, a: torch.Tensor, span: int) -> None:
        """At a checkpoint: halve the step and restart from the best point where progress
        stalled over the last ``span`` steps."""
        stalled = (state.improved[a] < self.rho * span) | (
            (state.last_step[a] == state.step[a]) & (state.last_best[a] == state.best[a])
        )
        state.last_step[a] = state.step[a]
        state.last_best[a] = state.best[a]
        idx = a[stalled]
        state.step[idx] = state.step[idx] / 2
        state.x[idx] = state.adv[idx]  # restart from the best point
        state.x_prev[idx] = state.adv[idx]
        state.improved[a] = 0


class _State:
    """Per triplet, the state of one APGD run (Croce & Hein, 2020, Alg. 1)."""

    def __init__(self, start: torch.Tensor, eps: torch.Tensor, max_iterations: int):
        n, device = start.shape[0], start.device
        self.x = start.clone().clamp(LOW, HIGH)
        self.x_prev = self.x.clone()
        self.adv = self.x.clone()  # best point so far; the flipping image once flipped
        self.s_adv = torch.full((n,), float("nan"), device=device)
        self.best = torch.full((n,), -float("inf"), device=device)  # best margin f_max
        self.flipped = torch.zeros(n, dtype=torch.bool, device=device)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=device)
        self.iterations = torch.full((n,), max_iterations, dtype=torch.long, device=device)
        self.queries = torch.zeros(n, dtype=torch.long, device=device)
        self.step = 2.0 * eps
        self.improved = torch.zeros(n, device=device)  # successful steps since the last checkpoint
        self.last_best = self.best.clone()  # f_max at the last checkpoint
        self.last_step = self.step.clone()
