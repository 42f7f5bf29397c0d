"""The transfer set (Sec. 4.2, Table 5) as a triplet dataset: a crafted directory, read back.

A *craft* (written by ``python -m attackpsm craft``, see :mod:`attackpsm.storage.craft`) is a
directory holding, per triplet, the reference, both distortions and the adversarial image as
lossless 8-bit PNGs under ``images/<triplet_id>/`` and one row per triplet in
``manifest.parquet``: the prey side, the flip re-checked on the saved images
(``flipped_saved``), the RMSE of the saved image (``rmse_saved``, ``[0, 255]`` scale) and
whether the source metric agreed with humans on them (``human_agrees_saved``).

``dataset=transfer`` (:class:`TransferTriplets`) only *reads* crafts: the triplets are those
the *selection* craft (stAdv in the paper) flipped on the source after saving, with
``rmse_saved <= max_rmse`` (3 in the paper) and, by default, on which the source metric
agreed with humans; every column of Table 5 uses the same selection. A craft that is not
there is an error naming the craft command that makes it, raised before any work.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from attackpsm.data.base import TripletRecord
from attackpsm.data.files import FileTriplets, outside_root
from attackpsm.images import from_uint8

MANIFEST = "manifest.parquet"
IMAGES = "images"
SIDES = ("ref", "p0", "p1", "adv")


class CraftMissing(FileNotFoundError):
    """A transfer set that has not been crafted yet; the message names the command."""


def image_dir(root: Path, triplet_id: str) -> Path:
    """Where a triplet's PNGs live; ids are relative paths (``subset/name``) when safe."""
    parts = Path(triplet_id).parts
    if not parts or Path(triplet_id).is_absolute() or any(p in ("..", ".", "") for p in parts):
        parts = (hashlib.sha1(triplet_id.encode()).hexdigest(),)
    return root / IMAGES / Path(*parts)


def load_png(path: Path) -> torch.Tensor:
    """A saved PNG as a ``(3, H, W)`` tensor in ``[-1, 1]``."""
    with Image.open(path) as im:
        return from_uint8(np.asarray(im.convert("RGB")))


def read_manifest(craft_dir: str | Path) -> pd.DataFrame:
    """A craft's manifest.

    Raises:
        CraftMissing: naming the file looked for (``python -m attackpsm craft`` makes it).
    """
    path = Path(craft_dir) / MANIFEST
    if not path.exists():
        raise CraftMissing(
            f"no transfer set crafted at {craft_dir} (no {MANIFEST}); "
            "craft it first with python -m attackpsm craft"
        )
    return pd.read_parquet(path)


def selected_ids(
    manifest: pd.DataFrame, max_rmse: float | None = 3.0, accurate_only: bool = True
) -> set[str]:
    """Triplets kept for transfer: flipped on the source after saving, RMSE filter, accuracy."""
    keep = manifest["flipped_saved"].astype(bool)
    if max_rmse is not None:
        keep &= manifest["rmse_saved"] <= max_rmse
    if accurate_only:
        keep &= manifest["human_agrees_saved"].fillna(False).astype(bool)
    return set(manifest.loc[keep, "triplet_id"])


def craft_location(
    store: str | Path,
    source: str,
    source_overrides: Sequence[str],
    source_metric: str,
    size: int | None,
    column: str,
    seed: int = 0,
) -> Path:
    """``<store>/<source>-<tag>/<source_metric>/res<size>/<column>``; the tag hashes the
    source dataset's overrides and the seed, so differently built crafts never mix."""
    tag = hashlib.sha1(json.dumps([list(source_overrides), int(seed)]).encode()).hexdigest()[:8]
    res = "native" if size is None else str(size)
    return Path(store) / f"{source}-{tag}" / source_metric / f"res{res}" / column


def craft_command(
    column: str,
    select: str,
    source: str,
    source_overrides: Sequence[str],
    source_metric: str,
    size: int | None,
    seed: int,
    store: str | Path,
    select_manifest: str | None = None,
) -> str:
    """The ``python -m attackpsm craft`` command line that crafts ``column`` (and the
    ``select`` craft that chooses the triplets, unless ``select_manifest`` names it) where
    :func:`craft_location` looks."""
    overrides = ",".join(json.dumps(str(o)) for o in source_overrides)
    chooser = f"dataset.select_manifest={select_manifest}" if select_manifest else None
    args = [
        column,
        chooser or f"dataset.select={select}",
        f"dataset.source={source}",
        f"dataset.source_metric={source_metric}",
        *([f"dataset.source_overrides=[{overrides}]"] if source_overrides else []),
        f"resolution.size={'null' if size is None else size}",
        f"dataset.seed={seed}",
        f"dataset.store={store}",
    ]
    return "python -m attackpsm craft " + " ".join(shlex.quote(a) for a in args)


class TransferTriplets(FileTriplets):
    """``dataset=transfer``: the saved triplets of a craft, filtered for transfer.

    Reads crafts only; a missing one raises :class:`CraftMissing` naming the exact
    ``python -m attackpsm craft`` command that makes it.

    Args:
        size: the crafting resolution (images are read back at the size they were saved).
        manifest: a crafted directory to evaluate; ``None``: the craft of ``column`` below.
        select_manifest: the crafted directory whose flips choose the triplets; ``None``:
            ``manifest`` itself when given, else the craft of ``select``.
        source: the ``dataset`` option the craft was made from (with ``source_overrides``,
            ``source_metric``, ``seed`` and ``store``, it locates the craft; see
            :func:`craft_location`).
        source_overrides: overrides of every craft run.
        source_metric: the metric the craft attacked.
        column: the ``attack`` option of the evaluated column.
        select: the ``attack`` option whose flips choose the triplets.
        seed: the crafting runs' seed.
        store: the folder holding the crafts.
        max_rmse: keep triplets whose saved selection image has RMSE ≤ this (3; ``None``: all).
        accurate_only: keep triplets on which the source metric agrees with humans (True).
    """

    name = "transfer"

    def __init__(
        self,
        size: int | None = None,
        manifest: str | None = None,
        select_manifest: str | None = None,
        source: str = "synthetic",
        source_overrides: Sequence[str] = (),
        source_metric: str = "lpips_alex",
        column: str = "stadv",
        select: str = "stadv",
        max_rmse: float | None = 3.0,
        accurate_only: bool = True,
        store: str = "results/crafted",
        seed: int = 0,
        quantize: bool = True,
    ):
        super().__init__(size, quantize)
        where = dict(
            source=source,
            source_overrides=list(source_overrides),
            source_metric=source_metric,
            size=size,
            seed=seed,
            store=store,
        )
        command = craft_command(column, select, select_manifest=select_manifest, **where)
        if manifest:  # evaluate a given craft; it selects its own triplets unless told otherwise
            self.column_dir = Path(manifest)
            self.select_dir = Path(select_manifest) if select_manifest else self.column_dir
            command = None  # a directory given by hand: made by whoever named it
        else:
            self.column_dir = craft_location(column=column, **where)
            self.select_dir = (
                Path(select_manifest) if select_manifest else craft_location(column=select, **where)
            )
            if select_manifest and not (self.select_dir / MANIFEST).exists():
                command = None  # a directory given by hand: no command makes it
        # both manifests before anything else: the error names every missing craft at once
        missing = [
            d
            for d in dict.fromkeys((self.select_dir, self.column_dir))
            if not (d / MANIFEST).exists()
        ]
        if missing:
            dirs = ", ".join(str(d) for d in missing)
            how = f"; craft first with:\n    {command}" if command else ""
            raise CraftMissing(f"no transfer set crafted at {dirs} (no {MANIFEST}){how}")
        chosen = selected_ids(read_manifest(self.select_dir), max_rmse, accurate_only)
        frame = read_manifest(self.column_dir)
        frame = frame[frame["triplet_id"].isin(chosen)]
        self._dirs = dict(zip(frame["triplet_id"], frame["dir"], strict=True))
        for r in frame.itertuples(index=False):
            judge = None if r.judge != r.judge else float(r.judge)  # NaN: no human label
            error = None
            if outside_root(str(r.dir)):  # a manifest row must not point outside its craft
                error = f"path outside the crafted directory {self.column_dir}: {r.dir}"
            files = tuple(f"{r.dir}/{side}.png" for side in ("ref", "p0", "p1"))
            self.records.append(TripletRecord(r.triplet_id, r.subset, judge, files, error))
        # read like every dataset on disk: checked against the fingerprint's digests
        self.root = self.column_dir
