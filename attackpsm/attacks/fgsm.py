"""FGSM on a similarity metric (Goodfellow et al., 2015; the paper's Algorithm 3)."""

from __future__ import annotations

from typing import Any

import torch

from attackpsm.attacks.base import (
    LINF_MAX,
    MAX_FGSM_STEPS,
    Attack,
    AttackResult,
    Threat,
    check_at_most,
    check_flip_on,
    check_int,
    check_positive,
)
from attackpsm.images import HIGH, LOW, saved
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.twoafc import rank_flipped, rank_loss


class FGSM(Attack):
    """One signed gradient of Eq. 1 at the prey, then the smallest ε that flips the rank.

    Distance measure: ℓ∞ on the ``[-1, 1]`` scale. Algorithm 3 computes
    ``g = sign(∇ J(I_prey))`` once and scans ``ε = 0.0001, 0.0002, … ≤ max_eps`` (ε grows
    by repeated addition, so 499 values up to 0.05: :meth:`eps_grid`), returning
    at the first ``ε`` whose ``I_adv = clip(I_prey + ε·g, -1, 1)`` flips the rank. Here the
    scan is evaluated many ε at a time (up to ``max_batch`` images per metric call); each
    triplet keeps the first flipping ε of the scan order, so the result is exactly what the
    one-ε-at-a-time loop returns. A triplet that never flips keeps the image of the last ε.

    Per-triplet columns: ``eps_found`` (NaN if no flip) and ``iterations`` (how many ε
    were tried, i.e. metric queries after the gradient).

    Args:
        max_eps: largest ε tried (0.05 as in Table 2; 0.03 reproduces Table 10).
        eps_step: scan step and first ε (0.0001).
        max_batch: images per metric call while scanning (memory knob, no effect on results).
        flip_on: ``"float"`` (the paper) or ``"saved"``: the scan stops at the first ε whose
            saved 8-bit image flips (:func:`attackpsm.images.saved`); ``eps_found`` is that ε.

    Example:
        >>> result = FGSM(max_eps=0.05).run(metric, metric.prepare(ref), prey, s_other)
        >>> result.columns["eps_found"]  # first flipping ε per triplet
    """

    name = "fgsm"
    columns = ("eps_found", "iterations")
    threat = Threat(norm="linf", access="white-box", budget="max_eps")
    family = "fgsm"

    def __init__(
        self,
        max_eps: float = 0.05,
        eps_step: float = 0.0001,
        max_batch: int = 2048,
        flip_on: str = "float",
    ):
        check_positive("max_eps", max_eps)
        check_positive("eps_step", eps_step)
        check_at_most("max_eps", max_eps, LINF_MAX, "the width of the [-1, 1] image scale")
        check_int("max_batch", max_batch, minimum=1)
        steps = max_eps / eps_step
        if steps > MAX_FGSM_STEPS:
            raise ValueError(
                f"attack parameters max_eps / eps_step = {max_eps} / {eps_step} = {steps:.0f} "
                f"budgets to scan, more than {MAX_FGSM_STEPS}: raise eps_step or lower max_eps"
            )
        self.max_eps = float(max_eps)
        self.eps_step = float(eps_step)
        self.max_batch = int(max_batch)
        self.flip_on = check_flip_on(flip_on)

    def eps_grid(self) -> torch.Tensor:
        """The ε values Algorithm 3 tries, in order (float64).

        Lines 8-15 as written: ``ε = eps_step``; ``while ε ≤ max_ε``: try ε, then
        ``ε = ε + eps_step``. The sum accumulates float64 round-off, so the loop's last ε is
        where the running sum stops being ``≤ max_ε``: with the defaults (0.0001 up to 0.05)
        the 500th sum is 0.0500000000000004 > 0.05 and the loop tries **499** values
        (0.0001 … 0.0499); up to 0.03 it tries 300 (the 300th sum is 0.02999… ≤ 0.03).
        """
        values = []
        eps = self.eps_step
        while eps <= self.max_eps:
            values.append(eps)
            eps += self.eps_step
        if not values:
            raise ValueError(f"max_eps={self.max_eps} is smaller than eps_step={self.eps_step}")
        return torch.tensor(values, dtype=torch.float64)

    def gradient_sign(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> torch.Tensor:
        """``sign(∇_{I_prey} J)`` of Eq. 1 for every triplet (Alg. 3, lines 5-7)."""
        x = prey.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = rank_loss(s_other, metric.score(prepared_ref, x)).sum()
            (grad,) = torch.autograd.grad(loss, x)
        return grad.sign()

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        n = prey.shape[0]
        device = prey.device
        direction = self.gradient_sign(metric, prepared_ref, prey, s_other)
        grid = self.eps_grid()
        steps = grid.numel()
        eps_values = grid.to(device=device, dtype=prey.dtype)

        adv = prey.clone()
        s_adv = torch.full((n,), float("nan"), device=device)
        flipped = torch.zeros(n, dtype=torch.bool, device=device)
        stopped = torch.zeros(n, dtype=torch.bool, device=device)
        eps_found = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
        tried = torch.full((n,), steps, dtype=torch.long, device=device)
        active = torch.arange(n, device=device)
        k0 = 0
        with torch.no_grad():
            while k0 < steps and active.numel():
                m = active.numel()
                c = max(1, min(steps - k0, self.max_batch // m))
                eps = eps_values[k0 : k0 + c]
                cand = prey[active, None] + eps[None, :, None, None, None] * direction[active, None]
                cand = cand.clamp(LOW, HIGH)  # (m, c, 3, H, W)
                rows_ref = select(prepared_ref, active.repeat_interleave(c))
                s = metric.score(rows_ref, cand.flatten(0, 1)).view(m, c)
                s_check = s
                if self.flip_on == "saved":  # the scan stops at the first ε whose saved image flips
                    s_check = metric.score(rows_ref, saved(cand.flatten(0, 1))).view(m, c)
                hit = rank_flipped(s_check, s_other[active, None], self.reverse)
                any_hit = hit.any(dim=1)
                last_chunk = k0 + c == steps
                # first flipping ε in scan order; the max-ε image for triplets that never flip
                pick = torch.where(
                    any_hit,
                    hit.to(torch.int8).argmax(dim=1),
                    torch.full_like(any_hit, c - 1, dtype=torch.long),
                )
                record = any_hit | last_chunk
                if record.any():
                    rows = record.nonzero().flatten()
                    idx = active[rows]
                    adv[idx] = cand[rows, pick[rows]]
                    s_adv[idx] = s[rows, pick[rows]]
                    flipped[idx] = rank_flipped(s_adv[idx], s_other[idx], self.reverse)
                    stopped[idx] = any_hit[rows]
                    hit_rows = rows[any_hit[rows]]
                    eps_found[active[hit_rows]] = grid.to(device)[k0 + pick[hit_rows]]
                    tried[active[hit_rows]] = k0 + pick[hit_rows] + 1
                active = active[~any_hit]
                k0 += c
        return AttackResult(
            adv,
            s_adv,
            flipped,
            {"eps_found": eps_found, "iterations": tried},
            stopped if self.flip_on == "saved" else None,
        )
