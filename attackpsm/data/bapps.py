"""``dataset=bapps``: the 2AFC part of BAPPS (Zhang et al., 2018), the paper's main dataset.

On disk (the LPIPS project's download script; ``python -m attackpsm data download bapps``)::

    <root>/2afc/<split>/<subset>/{ref,p0,p1}/NNNNNN.png    256x256 RGB
    <root>/2afc/<split>/<subset>/judge/NNNNNN.npy          float array of shape (1,)

``judge`` is the fraction of raters who preferred ``p1`` (0 = all chose ``p0``), which is
exactly :class:`~attackpsm.data.base.TripletRecord`'s convention. The paper (Sec. 3,
"Dataset") keeps only the *unanimous* val triplets, judge exactly 0 or 1: 12,227 of the
36,344 (superres 3731, cnn 2822, traditional 2424, deblur 1707, color 1091,
frameinterp 452).

The judges are read when the index is built (filtering needs them); pixels are read
lazily. A missing or unreadable judge, or one outside [0, 1], keeps its triplet in the
index as an error row, whatever the filter.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from attackpsm.data.base import TripletRecord, as_names
from attackpsm.data.files import MAX_PIXELS, DiskTriplets

log = logging.getLogger("attackpsm")

SUBSETS = {
    "val": ("traditional", "cnn", "superres", "deblur", "color", "frameinterp"),
    "train": ("traditional", "cnn", "mix"),
}
FILTERS = ("unanimous", "all")
IMAGE_DIRS = ("ref", "p0", "p1")


def _listed(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a symlink loop: listed, and a recorded skip naming it when loaded
        return True


def _stems(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as it:
        return {e.name[: -len(suffix)] for e in it if e.name.endswith(suffix) and _listed(e)}


def read_judge(path: Path) -> float:
    """The single value of a ``judge/NNNNNN.npy`` file; raises if it is not one number in [0, 1]."""
    value = np.load(path, allow_pickle=False)
    if value.size != 1:
        raise ValueError(f"judge has shape {value.shape}, expected (1,)")
    judge = float(value.reshape(-1)[0])
    if not (math.isfinite(judge) and 0.0 <= judge <= 1.0):
        raise ValueError(f"judge {judge} outside [0, 1]")
    return judge


class BAPPS(DiskTriplets):
    """BAPPS 2AFC triplets (see the module docstring).

    Args:
        size: output resolution (``None`` = native 256).
        root: the folder that holds ``2afc/`` (the ``2afc`` folder itself is accepted too).
        split: ``val`` (the paper's) or ``train``.
        subsets: subsets of the split to use (``None`` = all that are present).
        filter: ``unanimous`` (judge exactly 0 or 1, the paper's) or ``all``.
    """

    name = "bapps"
    env = "ATTACKPSM_BAPPS"
    layout = (
        "  <root>/2afc/{val,train}/<subset>/{ref,p0,p1}/NNNNNN.png and .../judge/NNNNNN.npy\n"
        f"  val subsets: {', '.join(SUBSETS['val'])}; train subsets: {', '.join(SUBSETS['train'])}\n"
        "  download: make data-bapps  (or: python -m attackpsm data download bapps --root <root>)"
    )

    def __init__(
        self,
        size: int | None = None,
        root: str | os.PathLike | None = None,
        split: str = "val",
        subsets: list[str] | None = None,
        filter: str = "unanimous",
        quantize: bool = True,
        max_pixels: int | None = MAX_PIXELS,
        follow_symlinks: bool = False,
    ):
        super().__init__(size, root, quantize, max_pixels, follow_symlinks)
        if split not in SUBSETS:
            raise ValueError(f"bapps split must be one of {sorted(SUBSETS)}, got {split!r}")
        if filter not in FILTERS:
            raise ValueError(f"bapps filter must be one of {list(FILTERS)}, got {filter!r}")
        requested = as_names(subsets, "bapps subsets") or None
        unknown = sorted(set(requested or ()) - set(SUBSETS[split]))
        if unknown:
            raise ValueError(
                f"unknown bapps {split} subsets {unknown}; valid: {list(SUBSETS[split])}"
            )
        base = self.root / "2afc"
        if not base.is_dir() and self.root.name == "2afc":
            base = self.root  # the user pointed at 2afc/ itself
        self.base = base
        self.split, self.filter = split, filter
        self.dropped: dict[str, int] = {}  # subset -> triplets removed by the filter

        present = [s for s in SUBSETS[split] if (base / split / s).is_dir()]
        if requested:
            missing = [s for s in requested if s not in present]
            if missing:
                raise self.layout_error(f"subsets {missing} not found under {base / split}")
            present = requested
        elif not present:
            raise self.layout_error(f"no {split} subset found under {base / split}")
        else:
            absent = [s for s in SUBSETS[split] if s not in present]
            if absent:
                log.warning("bapps: %s subsets %s are absent under %s", split, absent, base / split)
        for subset in present:
            self._index_subset(subset)
        self.check_usable()
        log.info("bapps %s (%s): %d triplets indexed", split, filter, len(self.records))

    def _index_subset(self, subset: str) -> None:
        folder = self.base / self.split / subset
        prefix = os.path.relpath(folder, self.root)
        images = {d: _stems(folder / d, ".png") for d in IMAGE_DIRS}
        judges = _stems(folder / "judge", ".npy")
        dropped = 0
        for stem in sorted(set().union(judges, *images.values())):
            triplet_id = f"{self.split}/{subset}/{stem}"
            files = tuple(f"{prefix}/{d}/{stem}.png" for d in IMAGE_DIRS)
            error = judge = None
            if stem not in judges:
                error = f"missing judge file {prefix}/judge/{stem}.npy"
            else:
                try:
                    judge = read_judge(folder / "judge" / f"{stem}.npy")
                except Exception as exc:  # unreadable or out of range: an error row
                    error = f"bad judge {prefix}/judge/{stem}.npy: {type(exc).__name__}: {exc}"
            if error is None and self.filter == "unanimous" and judge not in (0.0, 1.0):
                dropped += 1
                continue
            self.records.append(TripletRecord(triplet_id, subset, judge, files, error))
        self.dropped[subset] = dropped
