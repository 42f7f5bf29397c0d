"""The craft stage's writer (Sec. 4.2, Table 5): a run's adversarial images, saved to read back.

A craft run (``python -m attackpsm craft``, which runs an ordinary run with
``craft=<dir>``) hands every attacked batch to :class:`CraftWriter`. It saves, for every
triplet, the reference, both distortions (the dataset's 8-bit images, stored exactly) and
the adversarial image (saved by the package's one rule, :func:`attackpsm.images.saved`:
truncated, as the released ``tensor2im``) as 8-bit PNGs
under ``<dir>/images/<triplet_id>/``, and one manifest part per batch under
``<dir>/manifest.parts/``; :func:`finalize_manifest` merges them into
``<dir>/manifest.parquet`` once every shard is done. A row holds the source metric, attack
and its parameters (also in ``<dir>/source.yaml``), which side was the prey, the float flip
and the flip *re-checked on the saved 8-bit images* (``flipped_saved``), and the RMSE of the
saved image (``rmse_saved``, ``[0, 255]`` scale). :mod:`attackpsm.data.transfer` reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from attackpsm.data.transfer import MANIFEST, SIDES, image_dir
from attackpsm.images import from_levels, on_grid, to_uint8, to_uint8_truncated
from attackpsm.locks import write_atomic, write_text_atomic
from attackpsm.metrics.base import Metric
from attackpsm.protocol.stats import PAPER_COLUMNS, perturbation_stats
from attackpsm.protocol.twoafc import human_agrees, rank_flipped

PARTS = "manifest.parts"


def _save_png(array: np.ndarray, path: Path) -> None:
    write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


class CraftWriter:
    """Engine sink of the craft stage: saves PNGs and one manifest part per batch.

    Args:
        out_dir: the craft directory.
        source: what crafted it (the run identity: dataset, metric, attack, resolution, seed).
        reverse: the attack is a reverse attack (success is ``s_adv < s_other``).
    """

    def __init__(self, out_dir: str | Path, source: Mapping[str, Any], reverse: bool = False):
        self.out_dir = Path(out_dir)
        self.source = dict(source)
        self.reverse = bool(reverse)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / PARTS).mkdir(exist_ok=True)
        text = yaml.safe_dump(json.loads(json.dumps(self.source, default=str)), sort_keys=True)
        write_text_atomic(self.out_dir / "source.yaml", text)

    def __call__(
        self,
        metric: Metric,
        batch: Any,
        prey_is_p1: torch.Tensor,
        adv: torch.Tensor,
        rows: pd.DataFrame,
    ) -> None:
        reverse = self.reverse
        keep = np.isfinite(rows["s_adv"].to_numpy(dtype=float))
        if not keep.any():
            return
        # the adversarial image is saved by the package's one rule (truncation, as the
        # released tensor2im; attackpsm.images.saved); the dataset's 8-bit images are stored
        # as they are, float ones by the same rule
        images = {
            side: to_uint8(x) if on_grid(x) else to_uint8_truncated(x)
            for side, x in (("ref", batch.ref), ("p0", batch.p0), ("p1", batch.p1))
        }
        images["adv"] = to_uint8_truncated(adv)
        # the flip as the evaluation stage will see it: every image read back from 8 bits
        saved = {k: from_levels(v) for k, v in images.items()}
        with torch.no_grad():
            prepared = metric.prepare(saved["ref"])
            d0 = metric.score(prepared, saved["p0"])
            d1 = metric.score(prepared, saved["p1"])
            s_adv = metric.score(prepared, saved["adv"])
        prey_saved = torch.where(prey_is_p1[:, None, None, None], saved["p1"], saved["p0"])
        s_other = torch.where(prey_is_p1, d0, d1)
        s_prey = torch.where(prey_is_p1, d1, d0)
        flipped_saved = rank_flipped(s_adv, s_other, reverse) & ~rank_flipped(
            s_prey, s_other, reverse
        )
        stats = perturbation_stats(saved["adv"], prey_saved)

        records = []
        for i in np.flatnonzero(keep):
            tid = rows["triplet_id"].iloc[i]
            folder = image_dir(self.out_dir, tid)
            folder.mkdir(parents=True, exist_ok=True)
            for side in SIDES:
                _save_png(images[side][i].permute(1, 2, 0).cpu().numpy(), folder / f"{side}.png")
            records.append(
                {
                    "triplet_id": tid,
                    "subset": rows["subset"].iloc[i],
                    "judge": float(rows["judge"].iloc[i]),
                    "prey": int(prey_is_p1[i]),
                    "source_metric": metric.name,
                    "attack": self.source.get("attack", {}).get("name", ""),
                    "params": json.dumps(
                        self.source.get("attack", {}), sort_keys=True, default=str
                    ),
                    "human_agrees": rows["human_agrees"].iloc[i],
                    "flipped": bool(rows["flipped"].iloc[i]),
                    "rmse": float(rows[PAPER_COLUMNS["rmse"]].iloc[i]),
                    "d0_saved": float(d0[i]),
                    "d1_saved": float(d1[i]),
                    "s_adv_saved": float(s_adv[i]),
                    "flipped_saved": bool(flipped_saved[i]),
                    "rmse_saved": float(stats[PAPER_COLUMNS["rmse"]][i]),
                    "linf_saved": float(stats["linf"][i]),
                    "dir": str(folder.relative_to(self.out_dir)),
                }
            )
        frame = pd.DataFrame(records)
        agrees = human_agrees(
            torch.tensor(frame["d0_saved"].to_numpy()),
            torch.tensor(frame["d1_saved"].to_numpy()),
            torch.tensor(frame["judge"].to_numpy()),
        )
        frame["human_agrees_saved"] = agrees.to_numpy()
        frame["human_agrees"] = frame["human_agrees"].astype("boolean")
        key = hashlib.sha1("\n".join(frame["triplet_id"]).encode()).hexdigest()[:16]
        part = self.out_dir / PARTS / f"part-{key}.parquet"
        write_atomic(part, lambda tmp: frame.to_parquet(tmp, index=False))

    def finalize(self) -> Path:
        """Merge the parts into ``manifest.parquet`` (idempotent; the parts are kept)."""
        return finalize_manifest(self.out_dir)


def finalize_manifest(out_dir: str | Path) -> Path:
    """Merge a craft's manifest parts into ``manifest.parquet`` (one row per triplet)."""
    out_dir = Path(out_dir)
    parts = sorted((out_dir / PARTS).glob("part-*.parquet"))
    frame = (
        pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        if parts
        else pd.DataFrame()
    )
    if len(frame):
        frame = frame.drop_duplicates("triplet_id", keep="last").sort_values(
            "triplet_id", kind="stable"
        )
    path = out_dir / MANIFEST
    write_atomic(path, lambda tmp: frame.reset_index(drop=True).to_parquet(tmp, index=False))
    return path
