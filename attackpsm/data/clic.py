"""``dataset=clic``: triplets of the CLIC 2022 perceptual metric track.

On disk (the track's devkit CSVs and image patches)::

    <root>/validation.csv     O,A,B per line, no header
    <root>/oracle.csv         O,A,B,T per line: the same triplets with the human label
    <root>/**/<32 hex>.png    768x768 RGB patches, in any folder under <root>

``O`` is the original, ``A`` and ``B`` two decoded versions; ``T = 0`` means raters found
``A`` closer to ``O``. Here ``p0`` = A and ``p1`` = B, so ``judge`` (fraction preferring
``p1``) is ``T``. Without a ``T`` column the run still attacks (the prey is the metric's
own choice) and ``human_agrees`` stays empty. The paper (App. D) attacks the 5,220
validation triplets at 256, 512 and 768.

Images are found by file name anywhere under the root (or at the path the CSV gives,
relative to the root), so the patches may sit next to the CSV or in a subfolder.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

from attackpsm.data.base import TripletRecord
from attackpsm.data.files import MAX_PIXELS, DiskTriplets, outside_root_reason

log = logging.getLogger("attackpsm")

CSV_CANDIDATES = ("oracle.csv", "validation.csv")  # labelled first
IMAGE_SUFFIXES = (".png",)


def _index_images(root: Path) -> dict[str, str]:
    """File name -> path relative to ``root`` for every image below it (first in sorted order)."""
    found: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for name in sorted(names):
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.setdefault(name, name if rel == "." else f"{rel}/{name}")
    return found


class CLIC(DiskTriplets):
    """CLIC 2022 perceptual-track triplets (see the module docstring).

    Args:
        size: output resolution (``None`` = native 768).
        root: the folder that holds the CSV and, below it, the images.
        csv: the triplet file, relative to ``root`` or absolute; ``None`` = ``oracle.csv`` if
            present (human labels), else ``validation.csv``.
    """

    name = "clic"
    env = "ATTACKPSM_CLIC"
    layout = (
        "  <root>/oracle.csv (O,A,B,T rows, no header) or <root>/validation.csv (O,A,B rows)\n"
        "  <root>/**/<name>.png for every name in the CSV (768x768 RGB)\n"
        "  source: the CLIC 2022 perceptual metric track (see docs/datasets.md, 'Getting the data')"
    )

    def __init__(
        self,
        size: int | None = None,
        root: str | os.PathLike | None = None,
        csv: str | None = None,
        quantize: bool = True,
        max_pixels: int | None = MAX_PIXELS,
        follow_symlinks: bool = False,
    ):
        super().__init__(size, root, quantize, max_pixels, follow_symlinks)
        if csv is None:
            found = [c for c in CSV_CANDIDATES if (self.root / c).is_file()]
            if not found:
                raise self.layout_error(f"neither {' nor '.join(CSV_CANDIDATES)} under {self.root}")
            csv = found[0]
        table = Path(csv) if Path(csv).is_absolute() else self.root / csv
        if not table.is_file():
            raise self.layout_error(f"triplet file {table} not found")
        self.csv = table
        self.images = _index_images(self.root)
        self._index(table)
        self.check_usable()
        labelled = sum(r.judge is not None for r in self.records)
        log.info(
            "clic %s: %d triplets indexed, %d with a human label",
            table.name,
            len(self.records),
            labelled,
        )

    def _resolve(self, name: str) -> str | None:
        if (self.root / name).is_file():
            return name
        return self.images.get(Path(name).name)

    def _index(self, table: Path) -> None:
        subset = table.stem
        with open(table, newline="") as fh:
            rows = [[c.strip() for c in r] for r in csv.reader(fh)]
        seen: dict[str, int] = {}
        for line, cells in enumerate(rows, start=1):
            if not any(cells):
                continue
            if line == 1 and [c.upper() for c in cells[:3]] == ["O", "A", "B"]:
                continue  # tolerate a header line, the devkit files have none
            if len(cells) not in (3, 4) or not all(cells[:3]):
                reason = f"{table.name} line {line}: expected O,A,B[,T], got {len(cells)} cells"
                self.records.append(
                    TripletRecord(f"{subset}/line{line:05d}", subset, None, None, reason)
                )
                continue
            triplet_id = f"{subset}/" + "-".join(Path(c).stem for c in cells[:3])
            seen[triplet_id] = seen.get(triplet_id, 0) + 1
            if seen[triplet_id] > 1:  # a repeated triplet keeps a distinct, stable id
                triplet_id += f"#{seen[triplet_id]}"
            escaping = outside_root_reason(self.root, cells[:3])
            if escaping is not None:  # ../ or an absolute path: never looked up
                self.records.append(
                    TripletRecord(triplet_id, subset, None, tuple(cells[:3]), escaping)
                )
                continue
            resolved = [self._resolve(c) for c in cells[:3]]
            files = tuple(
                r if r is not None else c for r, c in zip(resolved, cells[:3], strict=True)
            )
            error = None
            missing = [c for r, c in zip(resolved, cells[:3], strict=True) if r is None]
            if missing:
                error = f"missing image {', '.join(missing)} under {self.root}"
            judge = None
            if len(cells) == 4 and cells[3] != "":
                try:
                    judge = float(cells[3])
                except ValueError:
                    judge = math.nan
                if not (math.isfinite(judge) and 0.0 <= judge <= 1.0):
                    error = (
                        error or f"{table.name} line {line}: label T={cells[3]!r} outside [0, 1]"
                    )
                    judge = None
            self.records.append(TripletRecord(triplet_id, subset, judge, files, error))
