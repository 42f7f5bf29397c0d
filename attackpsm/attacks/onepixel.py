"""One-pixel attack (Su et al., 2019): black-box differential evolution on the metric's output."""

from __future__ import annotations

import math
from typing import Any

import torch

from attackpsm.attacks.base import (
    Attack,
    AttackResult,
    Threat,
    check_flip_on,
    check_int,
    check_positive,
)
from attackpsm.images import from_levels, saved
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.streams import counter_uniform, image_keys
from attackpsm.protocol.twoafc import rank_flipped

__all__ = ["OnePixel", "counter_uniform", "image_keys"]

# Images per metric call when ``max_batch`` is left unset. A CPU scores a CNN metric's
# images fastest in calls whose activations stay in its caches: on a 2-core Xeon,
# LPIPS(Alex) at 64x64 scores 55-70% as many images/s in calls of 800 as in calls of 64
# to 256 (docs/performance.md). An accelerator wants the whole population at once.
CPU_BATCH = 128
DEVICE_BATCH = 2048


def _distinct(u: torch.Tensor, exclude: list[torch.Tensor], size: int) -> torch.Tensor:
    """Map uniforms to indices in ``[0, size)`` that avoid every index in ``exclude``.

    Draws from the ``size - len(exclude)`` allowed values, then skips the excluded ones
    in increasing order (they are distinct by construction).
    """
    v = (u * (size - len(exclude))).long().clamp(max=size - len(exclude) - 1)
    for e in torch.stack(exclude, dim=-1).sort(dim=-1).values.unbind(-1):
        v = v + (v >= e).long()
    return v


class OnePixel(Attack):
    """Su et al.'s One-pixel attack (Eq. 3): maximise ``s_adv`` changing ``pixels`` pixels.

    Distance measure: ℓ0 -- at most ``pixels`` pixel locations change (all three channels
    of a pixel may change). Black-box: the attack only reads metric outputs; it runs under
    ``torch.no_grad`` and never calls backward.

    Each candidate is ``(x, y, r, g, b)`` per pixel; the population is initialised with
    uniform coordinates and ``N(128, 127)`` colours (Su et al.) and evolved with DE/rand/1
    (``child = a + F·(b - c)``, no crossover); a child replaces its parent when its score is
    at least as high. A triplet stops at the generation where its best candidate flips the
    rank (``s_adv > s_other``), otherwise after ``generations`` generations. The whole
    population of every active triplet is scored in batched metric calls. Colours are
    whole 8-bit levels, so a flip survives saving the image.

    Per-triplet columns: ``queries`` (metric evaluations) and ``iterations`` (generations).

    Args:
        pixels: pixels changed per candidate (1).
        population: candidates per triplet (400, Su et al.).
        generations: maximum generations (100, Su et al.).
        mutation: DE scale factor ``F`` (0.5, Su et al.).
        seed: random seed; each triplet's random stream is a function of the seed and the
            prey's pixels (identical results batched or one at a time).
        max_batch: images per metric call (a speed and memory knob; decisions do not
            depend on it). ``None``: :data:`CPU_BATCH` (128) on a CPU, in calls of equal
            size, and :data:`DEVICE_BATCH` (2048) on any other device.
        flip_on: ``"float"`` (default) or ``"saved"``: the evolution stops only when the
            saved 8-bit image of the best candidate flips (:func:`attackpsm.images.saved`).

    Example:
        >>> result = OnePixel(population=400, generations=100).run(metric, prepared, prey, s_other)
        >>> result.columns["queries"]
    """

    name = "onepixel"
    white_box = False
    columns = ("queries", "iterations")
    threat = Threat(norm="l0", access="black-box")
    family = "onepixel"

    def __init__(
        self,
        pixels: int = 1,
        population: int = 400,
        generations: int = 100,
        mutation: float = 0.5,
        seed: int = 0,
        max_batch: int | None = None,
        flip_on: str = "float",
    ):
        check_int("pixels", pixels, minimum=1)
        check_int("population", population, minimum=4, note="DE/rand/1")
        check_int("generations", generations, minimum=0)
        check_positive("mutation", mutation)
        if max_batch is not None:
            check_int("max_batch", max_batch, minimum=1)
        self.pixels = int(pixels)
        self.population = int(population)
        self.generations = int(generations)
        self.mutation = float(mutation)
        self.seed = int(seed)
        self.max_batch = None if max_batch is None else int(max_batch)
        self.flip_on = check_flip_on(flip_on)

    # -- candidates ---------------------------------------------------------------------

    def _clip(self, cand: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Keep ``(x, y, r, g, b)`` inside the image and the 8-bit colour range."""
        c = cand.view(*cand.shape[:-1], self.pixels, 5)
        hi = torch.tensor([width - 1, height - 1, 255, 255, 255], dtype=c.dtype, device=c.device)
        return torch.minimum(c.clamp(min=0), hi).flatten(-2)

    def _initial(self, keys: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Initial population ``(n, P, 5·pixels)``: uniform positions, ``N(128, 127)`` colours."""
        n, p, d = keys.shape[0], self.population, 5 * self.pixels
        k = keys[:, None, None]
        member = torch.arange(p, device=keys.device)[None, :, None]
        slot = torch.arange(d, device=keys.device)[None, None, :]
        u1 = counter_uniform(k, 0, member, slot)
        u2 = counter_uniform(k, 0, member, slot + d)
        normal = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)  # Box-Muller
        scale = torch.tensor(
            [width - 1, height - 1, 0, 0, 0], dtype=torch.float32, device=keys.device
        )
        is_pos = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool, device=keys.device)
        scale, is_pos = scale.repeat(self.pixels), is_pos.repeat(self.pixels)
        cand = torch.where(is_pos, u1 * scale, 128.0 + 127.0 * normal)
        return self._clip(cand.expand(n, p, d), height, width)

    def _mutants(self, keys: torch.Tensor, pop: torch.Tensor, generation: int) -> torch.Tensor:
        """DE/rand/1: ``a + F·(b - c)`` with ``a, b, c`` distinct members other than the parent."""
        n, p, _ = pop.shape
        k = keys[:, None]
        member = torch.arange(p, device=pop.device)[None, :].expand(n, p)
        u = [counter_uniform(k, generation + 1, member, 1_000_000 + j) for j in range(3)]
        r1 = _distinct(u[0], [member], p)
        r2 = _distinct(u[1], [member, r1], p)
        r3 = _distinct(u[2], [member, r1, r2], p)

        def take(r: torch.Tensor) -> torch.Tensor:
            return torch.gather(pop, 1, r[..., None].expand_as(pop))

        return take(r1) + self.mutation * (take(r2) - take(r3))

    def apply(self, prey: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Images with the candidates' pixels set: ``prey (m, 3, H, W)``, ``cand (m, 5·pixels)``."""
        return self._set_pixels(prey.clone(), cand)

    def _set_pixels(self, images: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Write the candidates' pixels into ``images`` (contiguous, modified in place)."""
        m, channels, height, width = images.shape
        c = cand.view(m, self.pixels, 5)
        x = c[..., 0].round().long()
        y = c[..., 1].round().long()
        rgb = from_levels(c[..., 2:].round())  # whole 8-bit levels on the [-1, 1] scale
        out = images.view(m, channels, height * width)
        index = (y * width + x)[:, None, :].expand(m, channels, self.pixels)
        out.scatter_(2, index, rgb.transpose(1, 2).to(out.dtype))
        return images

    def call_size(self, total: int, device: torch.device) -> int:
        """Images per metric call when ``total`` candidate images are scored on ``device``.

        ``max_batch`` when set; otherwise :data:`DEVICE_BATCH` off a CPU, and on a CPU the
        calls of at most :data:`CPU_BATCH` images made equal in size (no small remainder).
        """
        if self.max_batch is not None:
            return self.max_batch
        if device.type != "cpu":
            return DEVICE_BATCH
        calls = max(1, math.ceil(total / CPU_BATCH))
        return max(1, math.ceil(total / calls))

    def _score(
        self,
        metric: Metric,
        prepared_ref: Any,
        prey: torch.Tensor,
        rows: torch.Tensor,
        cand: torch.Tensor,
    ) -> torch.Tensor:
        """Scores of candidates ``cand (m, P, D)`` of the triplets ``rows`` (indices into prey)."""
        m, p, d = cand.shape
        flat_rows = rows.repeat_interleave(p)
        flat = cand.reshape(m * p, d)
        out = torch.empty(m * p, device=cand.device)
        step = self.call_size(m * p, cand.device)
        for i in range(0, m * p, step):
            sl = slice(i, i + step)
            # indexing copies the prey images: the pixels are written into that copy
            images = self._set_pixels(prey[flat_rows[sl]], flat[sl])
            out[sl] = metric.score(select(prepared_ref, flat_rows[sl]), images)
        return out.view(m, p)

    # -- attack --------------------------------------------------------------------------

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        with torch.no_grad():
            return self._evolve(metric, prepared_ref, prey, s_other)

    def _evolve(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        n, _, height, width = prey.shape
        device = prey.device
        keys = image_keys(prey, self.seed)
        best = torch.empty(n, 5 * self.pixels, device=device)
        s_adv = torch.empty(n, device=device)
        generations = torch.zeros(n, dtype=torch.long, device=device)

        active = torch.arange(n, device=device)
        pop = self._initial(keys, height, width)
        fit = self._score(metric, prepared_ref, prey, active, pop)
        if fit.requires_grad:
            raise RuntimeError("One-pixel is black-box: metric scores must not carry gradients")
        stopped = torch.zeros(n, dtype=torch.bool, device=device)
        for g in range(self.generations + 1):
            top, arg = fit.max(dim=1)
            done = rank_flipped(top, s_other[active], self.reverse)
            if self.flip_on == "saved" and done.any():  # the saved image of the best candidate
                rows = done.nonzero().flatten()
                images = saved(self.apply(prey[active[rows]], pop[rows, arg[rows]]))
                s_saved = metric.score(select(prepared_ref, active[rows]), images)
                done[rows] = rank_flipped(s_saved, s_other[active[rows]], self.reverse)
            stopped[active] = done
            if g == self.generations:
                done = torch.ones_like(done)
            if done.any():
                idx = active[done]
                best[idx] = pop[done, arg[done]]
                s_adv[idx] = top[done]
                generations[idx] = g
            keep = ~done
            if not keep.any():
                break
            active, pop, fit = active[keep], pop[keep], fit[keep]
            child = self._clip(self._mutants(keys[active], pop, g), height, width)
            child_fit = self._score(metric, prepared_ref, prey, active, child)
            better = child_fit >= fit
            pop = torch.where(better[..., None], child, pop)
            fit = torch.where(better, child_fit, fit)

        adv = self.apply(prey, best)
        flipped = rank_flipped(s_adv, s_other, self.reverse)
        queries = self.population * (generations + 1)
        return AttackResult(
            adv,
            s_adv,
            flipped,
            {"queries": queries, "iterations": generations},
            stopped if self.flip_on == "saved" else None,
        )
