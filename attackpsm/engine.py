"""The batched 2AFC attack step shared by every attack (Sec. 3, Algorithms 1-3, lines 1-5).

For a batch of triplets: score both distortions against the reference, pick the prey
(the one the metric ranks closer: ``rank = int(s_0 > s_1)``), run the attack, re-score
the adversarial image after an 8-bit round trip, and compute the perturbation statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from attackpsm.attacks.base import Attack, rank_flipped
from attackpsm.data.base import Batch
from attackpsm.images import quantize
from attackpsm.metrics.base import Metric, select
from attackpsm.stats import perturbation_stats


def human_agreement(d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> pd.Series:
    """Whether the metric's rank matches the human one (✓/✗ rows of every table).

    ``judge`` is the fraction of raters preferring ``I_1``; the metric prefers ``I_1`` when
    ``d1 < d0``. Undefined (``<NA>``) without a label or for a tied vote (0.5).
    """
    judge = judge.cpu().numpy()
    metric_p1 = (d1 < d0).cpu().numpy()
    agrees = pd.array(metric_p1 == (judge > 0.5), dtype="boolean")
    agrees[np.isnan(judge) | (judge == 0.5)] = pd.NA
    return pd.Series(agrees)


def attack_batch(
    metric: Metric, attack: Attack, batch: Batch, sink: Callable[..., None] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attack one batch; returns (per-triplet rows, error rows).

    ``sink`` (optional) receives ``(metric, batch, prey_is_p1, adv, rows)`` once the rows
    are built -- the transfer benchmark's craft stage saves the adversarial images there.
    """
    errors = pd.DataFrame(batch.errors, columns=["triplet_id", "subset", "reason"])
    if len(batch) == 0:
        return pd.DataFrame(), errors
    prepared = metric.prepare(batch.ref)
    with torch.no_grad():
        d0 = metric.score(prepared, batch.p0)
        d1 = metric.score(prepared, batch.p1)
    ok = torch.isfinite(d0) & torch.isfinite(d1)
    if not ok.all():
        bad = (~ok).nonzero().flatten().tolist()
        extra = pd.DataFrame(
            [
                {
                    "triplet_id": batch.triplet_id[i],
                    "subset": batch.subset[i],
                    "reason": "non-finite metric score",
                }
                for i in bad
            ]
        )
        errors = pd.concat([errors, extra], ignore_index=True)
        keep = ok.nonzero().flatten()
        batch = Batch(
            [batch.triplet_id[i] for i in keep.tolist()],
            [batch.subset[i] for i in keep.tolist()],
            batch.judge[keep],
            batch.ref[keep],
            batch.p0[keep],
            batch.p1[keep],
            [],
        )
        prepared, d0, d1 = select(prepared, keep), d0[keep], d1[keep]
        if len(batch) == 0:
            return pd.DataFrame(), errors

    rank = d0 > d1  # True: I_1 is more similar, so it is the prey (Alg. 1, lines 2-5)
    reverse = bool(getattr(attack, "reverse", False))
    if reverse:  # Appendix F: the prey is the *less* similar image
        rank = ~rank
    prey = torch.where(rank[:, None, None, None], batch.p1, batch.p0)
    s_other = torch.where(rank, d0, d1)
    s_prey = torch.where(rank, d1, d0)

    if hasattr(attack, "on_batch"):
        attack.on_batch(batch, rank)
    result = attack.run(metric, prepared, prey, s_other)
    adv = result.adv.detach()
    with torch.no_grad():
        s_adv_uint8 = metric.score(prepared, quantize(adv))
    stats = perturbation_stats(adv, prey)

    rows = pd.DataFrame(
        {
            "triplet_id": batch.triplet_id,
            "subset": batch.subset,
            "judge": batch.judge.cpu().numpy(),
            "d0": d0.cpu().numpy(),
            "d1": d1.cpu().numpy(),
            "human_agrees": human_agreement(d0, d1, batch.judge),
            "prey": rank.long().cpu().numpy(),
            "s_other": s_other.cpu().numpy(),
            "s_prey": s_prey.cpu().numpy(),
            "s_adv": result.s_adv.detach().cpu().numpy(),
            "flipped": result.flipped.cpu().numpy(),
            "s_adv_uint8": s_adv_uint8.cpu().numpy(),
            # the flip survives saving the adversarial image as an 8-bit PNG (REFERENCE §2)
            "flipped_uint8": (result.flipped & rank_flipped(s_adv_uint8, s_other, reverse))
            .cpu()
            .numpy(),
            "iterations": result.columns.get(
                "iterations", torch.zeros(len(batch), dtype=torch.long)
            )
            .cpu()
            .numpy(),
            **{k: v.cpu().numpy() for k, v in stats.items()},
            **{k: v.detach().cpu().numpy() for k, v in result.columns.items() if k != "iterations"},
        }
    )
    if sink is not None:
        sink(metric, batch, rank, adv, rows)
    nonfinite = ~np.isfinite(rows["s_adv"].to_numpy(dtype=float))
    if nonfinite.any():  # a NaN during the attack: record the triplet as skipped, never a number
        bad = rows[nonfinite]
        errors = pd.concat(
            [
                errors,
                pd.DataFrame(
                    {
                        "triplet_id": bad["triplet_id"],
                        "subset": bad["subset"],
                        "reason": "non-finite score during attack",
                    }
                ),
            ],
            ignore_index=True,
        )
        rows = rows[~nonfinite].reset_index(drop=True)
    return rows, errors
