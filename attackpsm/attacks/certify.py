"""Certified ℓ2 robustness of a metric's 2AFC decision by randomized smoothing.

Attacks give *upper* bounds on how far a prey must move before the rank flips (the
``min_eps`` radius). Randomized smoothing (Cohen et al., 2019) gives a *lower* bound for
the smoothed decision of :class:`~attackpsm.metrics.smoothed.Smoothed`: with ``p`` the
probability that the prey stays closer than the other image under noise ``N(0, σ²I)``,
no perturbation ``δ`` with ``||δ||_2 < σ Φ⁻¹(p)`` changes the majority decision (their
Theorem 1 with ``p_B = 1 - p_A``).

``attack=certify`` runs Cohen et al.'s CERTIFY (their Sec. 3.2, "Pseudocode") per triplet
through the ordinary run pipeline (sharding, resume, results):

1. *selection*: ``n0`` noisy copies of the prey; the smoothed decision is the majority
   (a tie or a majority of flips is a flipped smoothed decision, which certifies nothing
   about the clean rank);
2. *estimation*: ``n`` fresh copies; ``p_lower`` is the one-sided Clopper-Pearson lower
   bound on ``p`` at level ``1 - alpha``;
3. the certified radius is ``σ Φ⁻¹(p_lower)``; the triplet *abstains* (radius 0) when
   ``p_lower <= 0.5`` or the selection did not keep the rank.

The noisy copies of all triplets of a batch go through the metric's batch dimension
together (``max_batch`` images per call). Each triplet draws its noise from its own
generator, seeded by ``(seed, triplet_id)``, in blocks of ``chunk`` samples: the numbers
do not depend on the batch size, the shard or the order of the triplets.

Columns: ``p_lower``, ``radius`` (``[-1, 1]`` scale, like the paper's ε), ``abstained``,
``samples`` (``n0 + n``) and ``p_hat`` (the estimate ``k / n``); ``flipped`` is the
smoothed decision differing from the clean one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from scipy.stats import beta, norm

from attackpsm.attacks.base import (
    Attack,
    AttackResult,
    Threat,
    Triplets,
    check_int,
    check_positive,
)
from attackpsm.metrics.base import Metric, select
from attackpsm.metrics.smoothed import Smoothed
from attackpsm.protocol.twoafc import rank_flipped


def clopper_pearson_lower(successes: Any, trials: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion.

    ``Beta(alpha; k, n - k + 1)`` quantile, 0 for ``k = 0`` -- what Cohen et al.'s released
    code computes with ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
    """
    k = np.asarray(successes, dtype=float)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, k, trials - k + 1)
    return np.where(k <= 0, 0.0, bound)


def certified_radius(p_lower: Any, sigma: float) -> np.ndarray:
    """``σ Φ⁻¹(p_lower)`` where ``p_lower > 0.5``, else 0 (abstain) -- Cohen et al., Thm. 1."""
    p = np.asarray(p_lower, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = sigma * norm.ppf(np.clip(p, 0.5, 1.0))
    return np.where(p > 0.5, radius, 0.0)


def triplet_generator(seed: int, triplet_id: str) -> torch.Generator:
    """A CPU generator seeded by ``(seed, triplet_id)`` only (stable across runs and shards)."""
    digest = hashlib.sha256(f"{seed}:{triplet_id}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little"))


def stay_counts(
    metric: Smoothed,
    prepared: Any,
    prey: torch.Tensor,
    s_other: torch.Tensor,
    generators: list[torch.Generator],
    samples: int,
    chunk: int = 100,
    max_batch: int = 512,
) -> torch.Tensor:
    """How many of ``samples`` noisy copies of each prey keep it closer than ``s_other``.

    A copy keeps the rank when it is not flipped (:func:`attackpsm.protocol.twoafc.rank_flipped`:
    equal scores are no flip). Every triplet draws ``chunk`` noise images at a time from its
    own generator; as many triplets as fit in ``max_batch`` images are scored together.
    """
    n = prey.shape[0]
    counts = torch.zeros(n, dtype=torch.long)
    group = max(1, max_batch // chunk)
    shape = tuple(prey.shape[1:])
    with torch.no_grad():
        for start in range(0, n, group):
            members = torch.arange(start, min(start + group, n), device=prey.device)
            done = 0
            while done < samples:
                m = min(chunk, samples - done)
                noise = torch.cat(
                    [torch.randn((m, *shape), generator=generators[i]) for i in members.tolist()]
                )
                index = members.repeat_interleave(m)
                scores = metric.noisy_scores(select(prepared, index), prey[index], noise)
                stay = ~rank_flipped(scores, s_other[index])
                counts[members.cpu()] += stay.view(len(members), m).sum(1).cpu()
                done += m
    return counts


class Certify(Attack):
    """CERTIFY of Cohen et al. (2019) on the smoothed 2AFC decision (``attack=certify``).

    Runs on ``metric=smoothed``; perturbs nothing (``adv`` is the prey).

    Args:
        n0: selection samples (100).
        n: estimation samples (1000; Cohen et al. use 100,000).
        alpha: failure probability of the Clopper-Pearson bound (0.001).
        chunk: noise samples drawn per triplet at a time (100); part of the random stream.
        max_batch: noisy images per metric call (512): a speed knob, not in the numbers.
        seed: base seed of the per-triplet generators.

    Example:
        >>> python -m attackpsm metric=smoothed metric.base=lpips_alex attack=certify
    """

    name = "certify"
    can_stall = False
    white_box = False
    columns = ("p_lower", "radius", "abstained", "samples", "p_hat")
    needs_triplets = True  # each triplet's noise comes from a generator seeded by its id
    threat = Threat(norm="l2", access="certified")

    def __init__(
        self,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        chunk: int = 100,
        max_batch: int = 512,
        seed: int = 0,
    ):
        check_int("n0", n0, minimum=1)
        check_int("n", n, minimum=1)
        check_int("chunk", chunk, minimum=1)
        check_int("max_batch", max_batch, minimum=1)
        check_positive("alpha", alpha)
        if alpha >= 1:
            raise ValueError(f"attack parameter alpha must be in (0, 1), got {alpha}")
        self.n0, self.n, self.alpha = int(n0), int(n), float(alpha)
        self.chunk, self.max_batch, self.seed = int(chunk), int(max_batch), int(seed)

    def certify(
        self,
        metric: Smoothed,
        prepared: Any,
        prey: torch.Tensor,
        s_other: torch.Tensor,
        triplet_ids: list[str],
    ) -> dict[str, torch.Tensor]:
        """The per-triplet columns (``flipped`` included) for ``triplet_ids``."""
        if not isinstance(metric, Smoothed):
            raise ValueError(
                f"attack=certify needs metric=smoothed (metric.base=<metric>), got {metric.name!r}"
            )
        if len(triplet_ids) != prey.shape[0]:
            raise ValueError(f"{len(triplet_ids)} triplet ids for {prey.shape[0]} preys")
        gens = [triplet_generator(self.seed, t) for t in triplet_ids]
        args = (metric, prepared, prey, s_other, gens)
        selected = stay_counts(*args, self.n0, self.chunk, self.max_batch)
        counts = stay_counts(*args, self.n, self.chunk, self.max_batch)
        keeps = 2 * selected > self.n0  # majority of the selection draws keeps the rank
        p_lower = clopper_pearson_lower(counts.numpy(), self.n, self.alpha)
        abstained = ~keeps.numpy() | (p_lower <= 0.5)
        radius = np.where(abstained, 0.0, certified_radius(p_lower, metric.sigma))
        device = prey.device
        return {
            "p_lower": torch.as_tensor(p_lower, dtype=torch.float64, device=device),
            "radius": torch.as_tensor(radius, dtype=torch.float64, device=device),
            "abstained": torch.as_tensor(abstained, device=device),
            "samples": torch.full((len(gens),), self.n0 + self.n, dtype=torch.long, device=device),
            "p_hat": (counts.double() / self.n).to(device),
            "flipped": ~keeps.to(device),
        }

    def run(
        self,
        metric: Metric,
        prepared_ref: Any,
        prey: torch.Tensor,
        s_other: torch.Tensor,
        triplets: Triplets | None = None,
    ) -> AttackResult:
        if triplets is None:
            raise ValueError("attack=certify needs the triplet ids (run(..., triplets=...))")
        cols = self.certify(metric, prepared_ref, prey, s_other, triplets.triplet_id)
        flipped = cols.pop("flipped")
        with torch.no_grad():
            s_prey = metric.score(prepared_ref, prey)
        return AttackResult(prey.detach().clone(), s_prey, flipped, cols)
