"""Square attack (Andriushchenko et al., 2020): black-box, score-based, ℓ∞ or ℓ2.

Random search over square-shaped updates, keeping a candidate only if the rank-flip margin
``s_adv - s_other`` grew. Only metric outputs are read, under ``torch.no_grad``: no
gradient is ever formed.

- ℓ∞ (Alg. 2 of the paper): start from vertical stripes of ``±ε``, then at each query
  redraw one random square window (its side shrinks on a fixed schedule) to ``±ε`` per
  channel.
- ℓ2 (Alg. 3 and Sec. 3.2): start from a grid of "meta-squares", each a pair of centred
  bumps of opposite sign (:func:`meta_square`) with a random sign per channel, scaled to
  ``||δ||_2 = ε``; then at each query pick two windows of the same side, move the
  perturbation of the second into the first, add a new meta-square there, and rescale the
  first window per channel so that the total norm is again exactly ε (before clipping to
  the image range).

Every random draw comes from the triplet's own stream (:mod:`attackpsm.protocol.streams`,
keyed by the prey's pixels and ``seed``; query ``q`` uses step ``q``), so a triplet's result
does not depend on the batch it is attacked in.
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
)
from attackpsm.images import HIGH, LOW, saved
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.streams import below, image_keys, signs, uniform
from attackpsm.protocol.twoafc import flip_margin, rank_flipped

NORMS = ("linf", "l2")


def square_fraction(p_init: float, query: int, max_queries: int) -> float:
    """Fraction of the image a square covers at ``query`` (the paper's schedule).

    Halves at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000 queries,
    rescaled to ``max_queries``.
    """
    i = int(query / max_queries * 10000)
    halvings = sum(i > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def centred_bump(rows: int, cols: int) -> torch.Tensor:
    """The ℓ2 attack's centred perturbation on a ``rows x cols`` rectangle, unit ℓ2 norm.

    Sec. 3.2 of the Square paper: nested rectangles around the centre ``(rows // 2,
    cols // 2)``, the ``k``-th (half-width ``k``) adding ``1 / (k + 1)^2``, for
    ``k = 0 .. max(rows, cols) // 2``. A pixel at Chebyshev distance ``d`` from the centre
    therefore holds ``sum_{k >= d} 1 / (k + 1)^2``: largest in the middle, decaying outwards.
    """
    if rows == 0 or cols == 0:
        return torch.zeros(rows, cols)
    levels = max(rows, cols) // 2 + 1
    weights = 1.0 / torch.arange(1, levels + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} weights[k]
    di = (torch.arange(rows) - rows // 2).abs()
    dj = (torch.arange(cols) - cols // 2).abs()
    bump = tail[torch.maximum(di[:, None], dj[None, :])]
    return (bump / bump.norm()).float()


def meta_square(side: int) -> torch.Tensor:
    """A ``side x side`` meta-square of unit ℓ2 norm (Sec. 3.2 of the Square paper).

    The upper ``side // 2`` rows hold a :func:`centred_bump`, the rest the negated bump of
    their own size; the caller transposes it at random so both orientations occur.
    """
    top = side // 2
    out = torch.cat([centred_bump(top, side), -centred_bump(side - top, side)])
    return out / out.norm()


class Square(Attack):
    """Square attack on the rank-flip margin, ℓ∞ or ℓ2, batched with per-triplet early stop.

    Args:
        eps: budget on the ``[-1, 1]`` scale: ℓ∞ (0.03, as PGD) or, with ``norm="l2"``, the
            ℓ2 norm of each triplet's perturbation over C x H x W (as ``apgd_l2``).
        max_queries: metric calls per triplet, the initial perturbation included (1000).
        p_init: initial fraction of the image a square covers (0.8, for both norms: the
            best of a sweep on held-out synthetic triplets at 32 and 64 px and 100-1000
            queries, docs/research.md "Square attack p_init"; the paper's ImageNet setting is 0.05
            for ℓ∞ and 0.1 for ℓ2). The schedule that shrinks it is the paper's, rescaled
            to ``max_queries`` (:func:`square_fraction`).
        norm: ``"linf"`` (Alg. 2 of the paper) or ``"l2"`` (Alg. 3).
        seed: random seed; each triplet's stream is a function of the seed and the prey's
            pixels (identical results batched or one at a time).

    The ``queries`` column records the metric calls each triplet used.

    ``flip_on="saved"``: a triplet stops only when the saved 8-bit image of its best point
    flips (:func:`attackpsm.images.saved`; one more metric call per improvement, counted
    in ``queries``); ``"float"`` (default) stops at the float image's flip.

    References:
        Andriushchenko, M., Croce, F., Flammarion, N., Hein, M. (2020). Square Attack: a
        query-efficient black-box adversarial attack via random search. ECCV.
    """

    name = "square"
    white_box = False
    columns = ("iterations", "queries")
    threat = Threat(norm="linf", access="black-box", budget="eps", norm_param="norm")

    def __init__(
        self,
        eps: float = 0.03,
        max_queries: int = 1000,
        p_init: float = 0.8,
        seed: int = 0,
        norm: str = "linf",
        flip_on: str = "float",
    ):
        check_positive("eps", eps, allow_zero=True)
        check_positive("p_init", p_init)
        check_int("max_queries", max_queries, minimum=1)
        if p_init > 1:
            raise ValueError(f"attack parameter p_init must be <= 1, got {p_init}")
        if norm not in NORMS:
            raise ValueError(f"attack parameter norm must be one of {NORMS}, got {norm!r}")
        if norm == "linf":
            check_at_most("eps", eps, LINF_MAX, "the width of the [-1, 1] image scale")
        self.eps = float(eps)
        self.max_queries = int(max_queries)
        self.p_init = float(p_init)
        self.seed = int(seed)
        self.norm = norm
        self.flip_on = check_flip_on(flip_on)

    def _stop(
        self, metric: Metric, prepared: Any, x: torch.Tensor, s: torch.Tensor, s_other: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """The stop rule on images ``x`` scored ``s``: (verdict, extra metric calls each)."""
        if self.flip_on == "saved":
            return rank_flipped(metric.score(prepared, saved(x)), s_other, self.reverse), 1
        return rank_flipped(s, s_other, self.reverse), 0

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
        keys = image_keys(prey, self.seed)
        start, candidates = (
            (self._stripes, self._linf_candidate)
            if self.norm == "linf"
            else (self._meta_grid, self._l2_candidate)
        )
        adv = start(prey, e, keys)
        s_adv = metric.score(prepared_ref, adv)
        queries = torch.ones(n, dtype=torch.long, device=device)
        best = flip_margin(s_other, s_adv, self.reverse)
        stopped, extra = self._stop(metric, prepared_ref, adv, s_adv, s_other)
        queries += extra
        iterations = torch.zeros(n, dtype=torch.long, device=device)
        for q in range(1, self.max_queries):
            active = (~stopped).nonzero().flatten()
            if len(active) == 0:
                break
            side = int(round(math.sqrt(square_fraction(self.p_init, q, self.max_queries) * h * w)))
            candidate = candidates(prey[active], adv[active], e[active], side, keys[active], q)
            s_new = metric.score(select(prepared_ref, active), candidate)
            queries[active] += 1
            f = flip_margin(s_other[active], s_new, self.reverse)
            better = f > best[active]
            idx = active[better]
            adv[idx] = candidate[better]
            s_adv[idx] = s_new[better]
            best[idx] = f[better]
            now = better.clone()
            if better.any():
                verdict, extra = self._stop(
                    metric,
                    select(prepared_ref, idx),
                    candidate[better],
                    s_new[better],
                    s_other[idx],
                )
                queries[idx] += extra
                now[better] = verdict
            stopped[active[now]] = True
            iterations[active[now]] = q
        iterations[~stopped] = queries[~stopped] - 1
        flipped = rank_flipped(s_adv, s_other, self.reverse)
        return AttackResult(
            adv,
            s_adv,
            flipped,
            {"iterations": iterations, "queries": queries},
            stopped if self.flip_on == "saved" else None,
        )

    # -- ℓ∞ (Alg. 2) --------------------------------------------------------------------

    def _stripes(self, prey: torch.Tensor, e: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """ℓ∞ start: one random sign ``±ε`` per (channel, column)."""
        n, c, _, w = prey.shape
        stripes = signs(uniform(keys, 0, (c, 1, w))).to(prey.device)
        return (prey + e * stripes).clamp(LOW, HIGH)

    def _linf_candidate(
        self,
        center: torch.Tensor,
        adv: torch.Tensor,
        e: torch.Tensor,
        side: int,
        keys: torch.Tensor,
        query: int,
    ) -> torch.Tensor:
        """ℓ∞ update: one random window per triplet set to ``±ε`` per channel."""
        m, c, h, w = center.shape
        side = min(max(side, 1), h, w)
        u = uniform(keys, query, 2 + c)
        rows = below(u[:, 0], h - side + 1).tolist()
        cols = below(u[:, 1], w - side + 1).tolist()
        values = signs(u[:, 2:]).view(m, c, 1, 1).to(center.device) * e
        candidate = adv.clone()
        for j in range(m):
            r, s = rows[j], cols[j]
            window = candidate[j, :, r : r + side, s : s + side]
            # a window that would not change wastes a query: flip its signs instead
            new = (center[j, :, r : r + side, s : s + side] + values[j]).clamp(LOW, HIGH)
            if torch.equal(new, window):
                values[j] = -values[j]
                new = (center[j, :, r : r + side, s : s + side] + values[j]).clamp(LOW, HIGH)
            candidate[j, :, r : r + side, s : s + side] = new
        return candidate

    # -- ℓ2 (Alg. 3) --------------------------------------------------------------------

    @staticmethod
    def _meta_squares(side: int, u: torch.Tensor) -> torch.Tensor:
        """``(m, C, side, side)`` signed meta-squares from ``u (m, 1 + C)`` uniforms.

        ``u[:, 0]``: transposed with probability 1/2; ``u[:, 1:]``: the sign per channel.
        """
        meta = meta_square(side)
        flip = u[:, 0] < 0.5
        tile = torch.where(flip[:, None, None], meta.T, meta).unsqueeze(1)
        return tile * signs(u[:, 1:])[:, :, None, None]

    def _meta_grid(self, prey: torch.Tensor, e: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """ℓ2 start: a centred grid of meta-squares of side ``min(H, W) // 5``.

        Each tile has a random sign per (triplet, channel); the whole perturbation is
        scaled to ``||δ||_2 = ε`` per triplet, then clipped to the image range.
        """
        n, c, h, w = prey.shape
        side = max(min(h, w) // 5, 1)
        delta = torch.zeros(n, c, h, w)
        top, left = (h - h // side * side) // 2, (w - w // side * side) // 2
        tiles = [
            (r, s) for r in range(top, h - side + 1, side) for s in range(left, w - side + 1, side)
        ]
        u = uniform(keys, 0, (len(tiles), 1 + c)).cpu()
        for t, (r, s) in enumerate(tiles):
            delta[:, :, r : r + side, s : s + side] += self._meta_squares(side, u[:, t])
        delta = delta.to(prey.device)
        return (prey + _rescale(delta, e)).clamp(LOW, HIGH)

    def _l2_candidate(
        self,
        center: torch.Tensor,
        adv: torch.Tensor,
        e: torch.Tensor,
        side: int,
        keys: torch.Tensor,
        query: int,
    ) -> torch.Tensor:
        """ℓ2 update (Alg. 3): move the mass of window ``W2`` into window ``W1``.

        Per triplet and channel, ``W1`` gets a new meta-square (random sign) plus its old
        content rescaled to unit norm, scaled to ``sqrt(ν² / C + ||δ_{W1 ∪ W2}||²)`` where
        ``ν² = max(ε² - ||δ||², 0)`` is the budget the current point leaves unused (lost to
        clipping); ``W2`` minus ``W1`` is zeroed. The result is rescaled to ``||δ||_2 = ε``
        exactly and clipped to ``[-1, 1]``.
        """
        m, c, h, w = center.shape
        side = max(side, 3)
        side = min(side + (side % 2 == 0), h, w)  # odd, as in the paper, and inside the image
        device = center.device
        delta = adv - center

        def window(rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """Advanced indices of an ``(m, c, side, side)`` window at ``(rows, cols)``."""
            span = torch.arange(side)
            return (
                torch.arange(m)[:, None, None, None],
                torch.arange(c)[None, :, None, None],
                (rows[:, None] + span)[:, None, :, None],
                (cols[:, None] + span)[:, None, None, :],
            )

        u = uniform(keys, query, 5 + c).cpu()

        def draw(first: int) -> tuple[torch.Tensor, ...]:
            rows = below(u[:, first], h - side + 1)
            cols = below(u[:, first + 1], w - side + 1)
            return tuple(i.to(device) for i in window(rows, cols))

        w1, w2 = draw(0), draw(2)
        union = torch.zeros_like(delta)
        union[w1] = 1.0
        union[w2] = 1.0
        total = delta.flatten(1).pow(2).sum(1).view(m, 1, 1, 1)
        unused = (e**2 - total).clamp_min(0)
        mass = (delta * union).pow(2).sum((2, 3), keepdim=True)  # ||δ_{W1 ∪ W2}||², per channel
        old = delta[w1]
        old = old / (old.pow(2).sum((2, 3), keepdim=True).sqrt() + 1e-10)
        bump = self._meta_squares(side, u[:, 4:])
        new = bump.to(device) + old
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        candidate = delta.clone()
        candidate[w2] = 0.0
        candidate[w1] = new * (unused / c + mass).sqrt()
        return (center + _rescale(candidate, e)).clamp(LOW, HIGH)


def _rescale(delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``delta`` scaled to ℓ2 norm ``e`` per triplet (a zero ``delta`` stays zero)."""
    length = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return delta * (e / length.clamp_min(1e-12))
