"""Square attack (Andriushchenko et al., 2020): black-box, score-based, ℓ∞.

Random search over square-shaped updates: start from vertical stripes of ``±ε``, then at
each query redraw one random square window (its side shrinks on a fixed schedule) to
``±ε`` per channel and keep the candidate if the rank-flip margin ``s_adv - s_other``
grew. Only metric outputs are read, under ``torch.no_grad``: no gradient is ever formed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attackpsm.attacks.apgd import margin
from attackpsm.attacks.base import Attack, AttackResult, check_positive, rank_flipped
from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import Metric, select


def square_fraction(p_init: float, query: int, max_queries: int) -> float:
    """Fraction of the image a square covers at ``query`` (the paper's schedule).

    Halves at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000 queries,
    rescaled to ``max_queries``.
    """
    i = int(query / max_queries * 10000)
    halvings = sum(i > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


class Square(Attack):
    """ℓ∞ Square attack on the rank-flip margin, batched with per-triplet early stop.

    Args:
        eps: ℓ∞ budget on the ``[-1, 1]`` scale (0.03).
        max_queries: metric calls per triplet, the stripe start included (1000).
        p_init: initial fraction of the image a square covers (0.05).
        seed: random stream.

    The ``queries`` column records the metric calls each triplet used.

    References:
        Andriushchenko, M., Croce, F., Flammarion, N., Hein, M. (2020). Square Attack: a
        query-efficient black-box adversarial attack via random search. ECCV.
    """

    name = "square"
    white_box = False
    columns = ("iterations", "queries")

    def __init__(
        self, eps: float = 0.03, max_queries: int = 1000, p_init: float = 0.05, seed: int = 0
    ):
        check_positive("eps", eps, allow_zero=True)
        check_positive("p_init", p_init)
        if int(max_queries) != max_queries or max_queries < 1:
            raise ValueError(
                f"attack parameter max_queries must be an integer >= 1, got {max_queries}"
            )
        if p_init > 1:
            raise ValueError(f"attack parameter p_init must be <= 1, got {p_init}")
        self.eps = float(eps)
        self.max_queries = int(max_queries)
        self.p_init = float(p_init)
        self.seed = int(seed)

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        return self.attack(metric, prepared_ref, prey, s_other, self.eps)

    @torch.no_grad()
    def attack(
        self,
        metric: Metric,
        prepared_ref: Any,
        prey: torch.Tensor,
        s_other: torch.Tensor,
        eps: float | torch.Tensor,
    ) -> AttackResult:
        """Square attack with a per-triplet budget ``eps`` (a float or an ``(N,)`` tensor)."""
        n, c, h, w = prey.shape
        device = prey.device
        e = (
            eps.to(device).float().view(n, 1, 1, 1)
            if torch.is_tensor(eps)
            else torch.full((n, 1, 1, 1), float(eps), device=device)
        )
        gen = torch.Generator(device="cpu").manual_seed(self.seed)

        def signs(*shape: int) -> torch.Tensor:
            return (torch.randint(0, 2, shape, generator=gen).float() * 2 - 1).to(device)

        # stripes: one random sign per (channel, column)
        adv = (prey + e * signs(n, c, 1, w)).clamp(LOW, HIGH)
        s_adv = metric.score(prepared_ref, adv)
        queries = torch.ones(n, dtype=torch.long, device=device)
        best = margin(s_other, s_adv, self.reverse)
        flipped = rank_flipped(s_adv, s_other, self.reverse)
        iterations = torch.zeros(n, dtype=torch.long, device=device)
        for q in range(1, self.max_queries):
            active = (~flipped).nonzero().flatten()
            if len(active) == 0:
                break
            side = max(
                int(round(math.sqrt(square_fraction(self.p_init, q, self.max_queries) * h * w))), 1
            )
            side = min(side, h, w)
            m = len(active)
            rows = torch.randint(0, h - side + 1, (m,), generator=gen).tolist()
            cols = torch.randint(0, w - side + 1, (m,), generator=gen).tolist()
            values = signs(m, c, 1, 1) * e[active]
            center = prey[active]
            candidate = adv[active].clone()
            for j in range(m):
                r, s = rows[j], cols[j]
                window = candidate[j, :, r : r + side, s : s + side]
                # a window that would not change wastes a query: flip its signs instead
                new = (center[j, :, r : r + side, s : s + side] + values[j]).clamp(LOW, HIGH)
                if torch.equal(new, window):
                    values[j] = -values[j]
                    new = (center[j, :, r : r + side, s : s + side] + values[j]).clamp(LOW, HIGH)
                candidate[j, :, r : r + side, s : s + side] = new
            s_new = metric.score(select(prepared_ref, active), candidate)
            queries[active] += 1
            f = margin(s_other[active], s_new, self.reverse)
            better = f > best[active]
            idx = active[better]
            adv[idx] = candidate[better]
            s_adv[idx] = s_new[better]
            best[idx] = f[better]
            now = rank_flipped(s_new, s_other[active], self.reverse) & better
            flipped[active[now]] = True
            iterations[active[now]] = q
        iterations[~flipped] = queries[~flipped] - 1
        return AttackResult(adv, s_adv, flipped, {"iterations": iterations, "queries": queries})
