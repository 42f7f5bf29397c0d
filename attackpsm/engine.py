"""The batched 2AFC attack step shared by every attack (Sec. 3, Algorithms 1-3, lines 1-5).

For a batch of triplets: score both distortions against the reference, pick the prey
(:func:`attackpsm.protocol.twoafc.choose_prey`), run the attack, decide the flip again on the 8-bit
image the attack's output becomes when saved (:func:`attackpsm.images.saved`), and compute
the perturbation statistics. The rules themselves (prey, flip, human agreement) live in
:mod:`attackpsm.protocol.twoafc`.

A randomised metric scores every image of a batch under the batch's common draws, kept in
the prepared reference (:func:`attackpsm.metrics.base.common_draws`): the clean ranking,
the attack's flip checks and the saved image's check of a triplet all compare under the
same draws.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from attackpsm.attacks.base import Attack, AttackResult, Triplets
from attackpsm.data.base import Batch
from attackpsm.images import on_grid, saved
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.stats import perturbation_stats
from attackpsm.protocol.twoafc import Prey, choose_prey, human_agrees, target_flipped

log = logging.getLogger("attackpsm")

# The metric contract (docs/metrics.md): a distance is finite and >= 0. Rounding may
# leave a true zero slightly below 0; anything lower is a broken metric, never a flip.
NEGATIVE_TOLERANCE = 1e-6
# An unflipped attack whose image stayed within half an 8-bit level (1/255 on the [-1, 1]
# scale) of the prey everywhere ended where it started: ``stalled``, which says nothing
# about robustness.
STALL_LINF = 1.0 / 255.0


def stalled(attack: Attack, flipped: torch.Tensor, linf: torch.Tensor) -> torch.Tensor:
    """Per triplet: the attack ended at its starting image without a flip.

    True where the rank did not flip and ``max |adv - prey| < 1/255`` (no value moved by
    half an 8-bit step: rounded to 8 bits, the image is the prey's); always False for
    attacks that return the prey on purpose (:attr:`attackpsm.attacks.base.Attack.can_stall`).
    """
    if not getattr(attack, "can_stall", True):
        return torch.zeros_like(flipped, dtype=torch.bool)
    return ~flipped.bool() & (linf.to(flipped.device) < STALL_LINF)


def contract_violations(**scores: torch.Tensor) -> list[str | None]:
    """Per triplet, why its scores break the metric contract (``None``: they keep it).

    ``scores`` maps a column name (``d0``, ``s_adv``, ...) to its ``(N,)`` distances; the
    reason names the first bad column and its value.
    """
    reasons: list[str | None] = [None] * len(next(iter(scores.values())))
    for name, values in scores.items():
        values = values.detach().cpu().double()
        bad = ~torch.isfinite(values) | (values < -NEGATIVE_TOLERANCE)
        for i in bad.nonzero().flatten().tolist():
            if reasons[i] is None:
                kind = "non-finite" if not torch.isfinite(values[i]) else "negative"
                reasons[i] = f"metric contract: {kind} distance {name}={values[i].item():.6g}"
    return reasons


def attack_batch(
    metric: Metric, attack: Attack, batch: Batch, sink: Callable[..., None] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attack one batch; returns (per-triplet rows, error rows).

    The steps: score the clean distortions and skip those that break the metric contract
    (:func:`score_clean`), pick the prey, attack it and rescore the saved image
    (:func:`run_attack`), build the rows (:func:`triplet_rows`) and skip the triplets
    whose attack broke the contract (:func:`drop_broken`).

    ``sink`` (optional) receives ``(metric, batch, prey_is_p1, adv, rows)`` once the rows
    are built -- the transfer benchmark's craft stage saves the adversarial images there.
    """
    errors = pd.DataFrame(batch.errors, columns=["triplet_id", "subset", "reason"])
    if len(batch) == 0:
        return pd.DataFrame(), errors
    batch, prepared, d0, d1, errors = score_clean(metric, batch, errors)
    if len(batch) == 0:
        return pd.DataFrame(), errors
    reverse = bool(getattr(attack, "reverse", False))
    grid = all(on_grid(x) for x in (batch.ref, batch.p0, batch.p1))
    if getattr(attack, "flip_on", "float") == "saved" and not grid:
        raise ValueError(
            "attack.flip_on=saved judges the saved adversarial image against the dataset's "
            "8-bit images, but these images are not on the 8-bit grid: set "
            "dataset.quantize=true (the paper's loader) or attack.flip_on=float"
        )
    chosen = choose_prey(d0, d1, reverse)
    attacked = run_attack(metric, attack, batch, prepared, chosen, grid)
    rows = triplet_rows(attack, batch, d0, d1, chosen, attacked)
    if sink is not None and attacked.target == "prey":  # saved and shown images are preys
        sink(metric, batch, chosen.is_p1, attacked.adv, rows)
    return drop_broken(rows, errors, attacked)


def score_clean(
    metric: Metric, batch: Batch, errors: pd.DataFrame
) -> tuple[Batch, Any, torch.Tensor, torch.Tensor, pd.DataFrame]:
    """The prepared references and the clean distances ``d0``, ``d1`` of the batch.

    A triplet whose clean distances break the metric contract (:func:`contract_violations`)
    is a recorded skip: it leaves the returned batch and joins the returned errors.
    """
    prepared = metric.prepare(batch.ref)
    with torch.no_grad():
        d0 = metric.score(prepared, batch.p0)
        d1 = metric.score(prepared, batch.p1)
    reasons = contract_violations(d0=d0, d1=d1)
    ok = torch.tensor([r is None for r in reasons], device=d0.device)
    if ok.all():
        return batch, prepared, d0, d1, errors
    bad = (~ok).nonzero().flatten().tolist()
    extra = pd.DataFrame(
        [
            {"triplet_id": batch.triplet_id[i], "subset": batch.subset[i], "reason": reasons[i]}
            for i in bad
        ]
    )
    errors = pd.concat([errors, extra], ignore_index=True)
    keep = ok.nonzero().flatten()
    return batch.take(keep), select(prepared, keep), d0[keep], d1[keep], errors


@dataclass(frozen=True)
class Attacked:
    """What :func:`run_attack` returns for a batch.

    Attributes:
        target: the perturbed image (``attack.target``: prey, reference or both).
        result: the attack's result (its ``flipped_saved`` column taken out).
        adv: the adversarial images, detached.
        clean: the images ``adv`` perturbs (for the perturbation statistics).
        s_adv_saved: the adversarial distance once saved as 8 bits.
        flipped_saved: the saved image's own flip decision.
    """

    target: str
    result: AttackResult
    adv: torch.Tensor
    clean: torch.Tensor
    s_adv_saved: torch.Tensor
    flipped_saved: torch.Tensor


def run_attack(
    metric: Metric, attack: Attack, batch: Batch, prepared: Any, chosen: Prey, grid: bool
) -> Attacked:
    """Attack the chosen prey (or ``attack.target``) and decide the flip of its saved image."""
    reverse = bool(getattr(attack, "reverse", False))
    prey = chosen.images(batch.p0, batch.p1)
    # attacks that read per-triplet state (a saved image, a seeded stream) get the ids as input
    extra = (
        {"triplets": Triplets(list(batch.triplet_id), chosen.is_p1)}
        if getattr(attack, "needs_triplets", False)
        else {}
    )
    # attack.target (attackpsm.attacks.target): the prey (the paper), the reference or both
    target = getattr(attack, "target", "prey")
    if target == "prey":
        result = attack.run(metric, prepared, prey, chosen.s_other, **extra)
        adv, clean = result.adv.detach(), prey
        s_adv_saved, s_other_saved = _rescore_saved(metric, prepared, batch, chosen, adv, grid)
    else:
        other = chosen.others(batch.p0, batch.p1)
        result, clean = attack.run_target(
            metric, batch.ref, prepared, prey, other, chosen.s_prey, chosen.s_other
        )
        adv = result.adv.detach()
        s_adv_saved, s_other_saved = attack.distances_saved(
            metric, batch.ref, prey, other, adv, grid
        )
    flipped_saved = result.columns.pop("flipped_saved", None)
    if flipped_saved is None:  # the saved image's own decision, whatever the float one was
        flipped_saved = target_flipped(target, s_adv_saved, s_other_saved, reverse)
    return Attacked(target, result, adv, clean, s_adv_saved, flipped_saved)


def triplet_rows(
    attack: Attack,
    batch: Batch,
    d0: torch.Tensor,
    d1: torch.Tensor,
    chosen: Prey,
    attacked: Attacked,
) -> pd.DataFrame:
    """The per-triplet rows of an attacked batch, with the perturbation statistics."""
    result = attacked.result
    stats = perturbation_stats(attacked.adv, attacked.clean)
    return pd.DataFrame(
        {
            "triplet_id": batch.triplet_id,
            "subset": batch.subset,
            "judge": batch.judge.cpu().numpy(),
            "d0": d0.cpu().numpy(),
            "d1": d1.cpu().numpy(),
            "human_agrees": human_agrees(d0, d1, batch.judge),
            "prey": chosen.is_p1.long().cpu().numpy(),
            "s_other": chosen.s_other.cpu().numpy(),
            "s_prey": chosen.s_prey.cpu().numpy(),
            "s_adv": result.s_adv.detach().cpu().numpy(),
            "flipped": result.flipped.cpu().numpy(),
            "s_adv_saved": attacked.s_adv_saved.cpu().numpy(),
            # the rank of the adversarial image once saved as an 8-bit PNG (the released
            # code decided flips on float tensors but saved 8-bit images)
            "flipped_saved": attacked.flipped_saved.cpu().numpy(),
            "stalled": stalled(attack, result.flipped, stats["linf"]).cpu().numpy(),
            "iterations": result.columns.get(
                "iterations", torch.zeros(len(batch), dtype=torch.long)
            )
            .cpu()
            .numpy(),
            **{k: v.cpu().numpy() for k, v in stats.items()},
            "target": attacked.target,  # the perturbed image (attack.target), after the base columns
            **{k: v.detach().cpu().numpy() for k, v in result.columns.items() if k != "iterations"},
            # the digest of the files the row was computed from (attackpsm.data.digests)
            **({"data_digest": batch.data_digest} if batch.data_digest is not None else {}),
        }
    )


def drop_broken(
    rows: pd.DataFrame, errors: pd.DataFrame, attacked: Attacked
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move the triplets whose attack broke the metric contract from ``rows`` to ``errors``.

    A NaN or a negative distance during the attack is a recorded skip, never a flip.
    """
    reasons = contract_violations(s_adv=attacked.result.s_adv, s_adv_saved=attacked.s_adv_saved)
    broken = np.array([r is not None for r in reasons], dtype=bool)
    if not broken.any():
        return rows, errors
    bad = rows[broken]
    skipped = pd.DataFrame(
        {
            "triplet_id": bad["triplet_id"],
            "subset": bad["subset"],
            "reason": [r for r in reasons if r is not None],
        }
    )
    errors = pd.concat([errors, skipped], ignore_index=True)
    return rows[~broken].reset_index(drop=True), errors


def _rescore_saved(
    metric: Metric, prepared: Any, batch: Batch, chosen: Prey, adv: torch.Tensor, grid: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s_adv, s_other)`` of the images a user holds after saving the adversarial one.

    With the paper's 8-bit inputs (``dataset.quantize=true``, ``grid``) the reference and
    the other image are the dataset's 8-bit files and ``s_other`` is reused; the
    adversarial image is saved (:func:`attackpsm.images.saved`). With float inputs all
    three images are saved, so both sides of the comparison see saved images. A randomised
    metric scores them under the draws of the clean ranking
    (:meth:`~attackpsm.metrics.base.Metric.prepare_like`).
    """
    with torch.no_grad():
        if grid:
            return metric.score(prepared, saved(adv)), chosen.s_other
        prepared_q = metric.prepare_like(saved(batch.ref), prepared)
        other = saved(chosen.others(batch.p0, batch.p1))
        return metric.score(prepared_q, saved(adv)), metric.score(prepared_q, other)


def _chunk(batch: Batch, start: int, stop: int) -> Batch:
    """Triplets ``start:stop`` of ``batch``; the load errors travel with the first chunk."""
    return batch.take(slice(start, stop), batch.errors if start == 0 else [])


class FittingBatches:
    """:func:`attack_batch` that halves its batch when the device runs out of memory.

    The batch size of a resolution file is a guess for one device; a larger image, a
    heavier metric or a smaller GPU can exceed it (``resolution=768`` on a VGG metric). On
    an out-of-memory error the batch is split in two and each half attacked on its own;
    the size that fits is remembered, so later batches are cut to it at once. Every
    triplet is attacked independently, so the split changes no deterministic result
    (attacks that draw random numbers draw them per triplet). One triplet that does not fit
    is an error that names the fix.
    """

    def __init__(self, limit: int | None = None):
        self.limit = limit  # the largest batch known to fit (None: not yet limited)

    def __call__(
        self,
        metric: Metric,
        attack: Attack,
        batch: Batch,
        sink: Callable[..., None] | None = None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        n = len(batch)
        step = n if self.limit is None else max(1, min(n, self.limit))
        rows, errors = [], []
        start = 0
        while start < max(n, 1):
            stop = min(start + step, n)
            try:
                r, e = attack_batch(metric, attack, _chunk(batch, start, stop), sink=sink)
            except torch.OutOfMemoryError as error:
                if stop - start == 1:
                    raise RuntimeError(
                        "a single triplet does not fit in device memory for metric "
                        f"{metric.name!r} at {tuple(batch.ref.shape[-2:])}: use a smaller "
                        "`resolution`, a lighter metric, or a device with more memory"
                    ) from error
                step = max(1, (stop - start) // 2)
                self.limit = step
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("out of device memory at batch %d: continuing with %d", n, step)
                continue
            rows.append(r)
            errors.append(e)
            start = stop
            if n == 0:
                break
        if len(rows) == 1:
            return rows[0], errors[0]
        nonempty = [r for r in rows if len(r)]
        return (
            pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame(),
            pd.concat([e for e in errors if len(e)] or errors[:1], ignore_index=True),
        )
