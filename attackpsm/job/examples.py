"""Example images of a shard's W&B run: a few flipped triplets per ✓/✗ row.

``examples/agree`` and ``examples/disagree`` (docs/wandb.md): each image is one strip of
panels -- reference, other, prey, adversarial image and the amplified perturbation -- with
the triplet's scores in the caption. The triplets are kept from the engine's ``sink``
(:meth:`attackpsm.job.progress.ShardProgress.sink`), 8-bit on the CPU: bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from attackpsm.images import to_uint8
from attackpsm.protocol.stats import PAPER_COLUMNS
from attackpsm.summary.headline import SPLIT_KEYS
from attackpsm.summary.statistics import agree_labels


class Examples:
    """At most ``per_row`` flipped triplets per ✓/✗ row (the first ones the shard flips).

    Args:
        per_row: triplets kept per row (``logger.examples``; 0: none).
    """

    def __init__(self, per_row: int):
        self.per_row = int(per_row)
        self.kept: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLIT_KEYS.values()}

    @property
    def full(self) -> bool:
        """Every row holds ``per_row`` triplets: nothing more to keep."""
        return all(len(kept) >= self.per_row for kept in self.kept.values())

    def keep(self, batch, prey_is_p1: torch.Tensor, adv: torch.Tensor, rows: pd.DataFrame) -> None:
        """Keep the flipped triplets of a batch (the engine's ``sink`` arguments) while
        their row has room: reference, other, prey and adversarial image as 8-bit, the
        perturbation ``adv - prey`` as float, and the triplet's row."""
        flipped = rows["flipped"].astype(bool).to_numpy()
        finite = np.isfinite(rows["s_adv"].to_numpy(dtype=float))
        labels = agree_labels(rows).map(SPLIT_KEYS).to_numpy()  # n/a rows: no name
        for i in np.flatnonzero(flipped & finite):
            label = labels[i]
            if label not in self.kept or len(self.kept[label]) >= self.per_row:
                continue
            p1 = bool(prey_is_p1[i])
            prey = batch.p1[i] if p1 else batch.p0[i]
            other = batch.p0[i] if p1 else batch.p1[i]
            images = torch.stack([batch.ref[i], other, prey, adv[i]]).detach().float().cpu()
            self.kept[label].append(
                {
                    "images": to_uint8(images),  # 8 bit on the CPU: bounded memory
                    "delta": (adv[i] - prey).detach().float().cpu(),
                    "row": rows.iloc[i].to_dict(),
                }
            )

    def media(self) -> dict[str, Callable[[], Any]]:
        """``{examples/<row>: build the row's wandb.Image list}`` for the rows with any."""
        return {
            f"examples/{label}": (lambda k=kept: [example_image(e) for e in k])
            for label, kept in self.kept.items()
            if kept
        }


def example_strip(images: torch.Tensor, delta: torch.Tensor) -> tuple[np.ndarray, float]:
    """One row of panels, ``H x 5W x 3`` uint8: reference, other, prey, adversarial image and
    the perturbation ``adv - prey`` amplified to fill ``[0, 255]`` around mid-grey.

    Returns the strip and the amplification factor.
    """
    peak = float(delta.abs().max())
    gain = 1.0 / peak if peak > 0 else 1.0
    amplified = to_uint8((delta * gain).clamp(-1, 1)[None])  # [-1, 1] -> [0, 255], 0 = grey
    panels = torch.cat([images, amplified])  # (5, 3, H, W)
    strip = panels.permute(2, 0, 3, 1).reshape(panels.shape[2], -1, 3)
    return strip.numpy(), gain


def example_image(example: dict[str, Any]):
    """A kept example as a ``wandb.Image`` with the scores in the caption."""
    import wandb

    strip, gain = example_strip(example["images"], example["delta"])
    r = example["row"]

    def f(v) -> str:
        return f"{float(v):.4g}" if v is not None and math.isfinite(float(v)) else "n/a"

    caption = (
        f"{r['triplet_id']} ({r['subset']}) · ref | other | prey | adv | δ×{gain:.0f} · "
        f"s_other {f(r['s_other'])} · s_prey {f(r['s_prey'])} · s_adv {f(r['s_adv'])} · "
        f"s_adv 8-bit {f(r['s_adv_saved'])} · RMSE {f(r[PAPER_COLUMNS['rmse']])} · ℓ∞ {f(r['linf'])}"
    )
    return wandb.Image(strip, caption=caption)
