"""``dataset=pieapp``: pairwise-preference triplets of PieAPP (Prashnani et al., 2018).

On disk (the PieAPP dataset zip)::

    <root>/<split>_reference_list.txt                                  ref_<n>.png per line
    <root>/reference_images/<split>/ref_<n>.png                        256x256 RGB
    <root>/distorted_images/<split>/ref_<n>/distort_<n>_<type>_<inter|intra>_<id>.png
    <root>/labels/<split>/ref_<n>_pairwise_labels.csv

Each CSV row is a triplet: reference, distorted image A, distorted image B, and the
probability that raters prefer A (header cells start with a space; train/val carry a raw
and a processed preference, test a single one). In the test split the reference itself
may be A or B; such rows are kept, the reference then lives in ``reference_images``.

The paper (App. D) uses the test split and keeps pairs whose preference for A is above
0.85 or below 0.15: 1,381 triplets, at the native 256x256. Here ``p0`` = A and ``p1`` = B,
so ``judge`` (fraction preferring ``p1``) is ``1 - preference for A``.
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

SPLITS = ("train", "val", "test")
# Preference columns by priority: train/val have raw + processed, test only one.
PREFERENCE_COLUMNS = ("processed preference for a", "preference for a")


def _column(header: list[str], *names: str) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


class PieAPP(DiskTriplets):
    """PieAPP pairwise triplets (see the module docstring).

    Args:
        size: output resolution (``None`` = native 256).
        root: the folder that holds ``labels/``, ``reference_images/``, ``distorted_images/``.
        split: ``test`` (the paper's), ``train`` or ``val``.
        threshold: keep pairs with preference for A ``> threshold`` or ``< 1 - threshold``
            (0.85 in the paper); ``None`` keeps every pair.
    """

    name = "pieapp"
    env = "ATTACKPSM_PIEAPP"
    layout = (
        "  <root>/<split>_reference_list.txt\n"
        "  <root>/reference_images/<split>/ref_<n>.png\n"
        "  <root>/distorted_images/<split>/ref_<n>/distort_<n>_<type>_<inter|intra>_<id>.png\n"
        "  <root>/labels/<split>/ref_<n>_pairwise_labels.csv\n"
        "  download: python -m attackpsm data download pieapp --root <root>"
    )

    def __init__(
        self,
        size: int | None = None,
        root: str | os.PathLike | None = None,
        split: str = "test",
        threshold: float | None = 0.85,
        quantize: bool = True,
        max_pixels: int | None = MAX_PIXELS,
        follow_symlinks: bool = False,
    ):
        super().__init__(size, root, quantize, max_pixels, follow_symlinks)
        if split not in SPLITS:
            raise ValueError(f"pieapp split must be one of {list(SPLITS)}, got {split!r}")
        if threshold is not None and not 0.5 <= threshold < 1.0:
            raise ValueError(f"pieapp threshold must be in [0.5, 1) or null, got {threshold}")
        self.split, self.threshold = split, threshold
        self.dropped = 0  # pairs removed by the threshold
        labels = self.root / "labels" / split
        if not labels.is_dir():
            raise self.layout_error(f"no labels/{split} folder under {self.root}")
        for ref in self._references(labels):
            self._index_reference(ref)
        self.check_usable()
        log.info(
            "pieapp %s (threshold %s): %d triplets indexed", split, threshold, len(self.records)
        )

    def _references(self, labels: Path) -> list[str]:
        """Reference stems (``ref_<n>``) from the split's list, else from the label files."""
        listing = self.root / f"{self.split}_reference_list.txt"
        if listing.is_file():
            names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
            return [Path(n).stem for n in names]
        log.warning("pieapp: %s missing; using the label files in %s", listing.name, labels)
        suffix = "_pairwise_labels.csv"
        return sorted(p.name[: -len(suffix)] for p in labels.glob(f"*{suffix}"))

    def _index_reference(self, ref: str) -> None:
        rel_csv = f"labels/{self.split}/{ref}_pairwise_labels.csv"

        def fail(reason: str) -> None:  # the whole reference is unusable: one error row
            self.records.append(TripletRecord(f"{self.split}/{ref}", ref, None, None, reason))

        try:
            with open(self.root / rel_csv, newline="") as fh:
                rows = [
                    r for r in csv.reader(fh, skipinitialspace=True) if any(c.strip() for c in r)
                ]
        except OSError as exc:
            return fail(f"missing label file {rel_csv}: {type(exc).__name__}: {exc}")
        if not rows:
            return fail(f"empty label file {rel_csv}")
        header = [c.strip().lower() for c in rows[0]]
        col_a = _column(header, "distorted image a")
        col_b = _column(header, "distorted image b")
        col_p = _column(header, *PREFERENCE_COLUMNS)
        if None in (col_a, col_b, col_p):
            return fail(
                f"label file {rel_csv} lacks the distorted image A/B or preference columns: {rows[0]}"
            )
        ref_file = f"reference_images/{self.split}/{ref}.png"
        seen: dict[str, int] = {}
        for line, row in enumerate(rows[1:], start=2):
            cells = [c.strip() for c in row]
            try:
                name_a, name_b, pref_text = cells[col_a], cells[col_b], cells[col_p]
            except IndexError:
                self.records.append(
                    TripletRecord(
                        f"{self.split}/{ref}/line{line:04d}",
                        ref,
                        None,
                        None,
                        f"{rel_csv} line {line}: too few columns",
                    )
                )
                continue
            triplet_id = f"{self.split}/{ref}/{Path(name_a).stem}-vs-{Path(name_b).stem}"
            seen[triplet_id] = seen.get(triplet_id, 0) + 1
            if seen[triplet_id] > 1:  # a repeated pair keeps a distinct, stable id
                triplet_id += f"#{seen[triplet_id]}"
            files = (ref_file, self._image(ref, name_a), self._image(ref, name_b))
            escaping = outside_root_reason(self.root, files)
            if escaping is not None:  # a ../ or absolute name in the label file
                self.records.append(TripletRecord(triplet_id, ref, None, files, escaping))
                continue
            try:
                pref_a = float(pref_text)
            except ValueError:
                pref_a = math.nan
            if not (math.isfinite(pref_a) and 0.0 <= pref_a <= 1.0):
                reason = f"{rel_csv} line {line}: preference for A {pref_text!r} outside [0, 1]"
                self.records.append(TripletRecord(triplet_id, ref, None, files, reason))
                continue
            t = self.threshold
            # (1 - pref_a) > t, not pref_a < 1 - t: exact at 0.15 in floating point
            if t is not None and not (pref_a > t or 1.0 - pref_a > t):
                self.dropped += 1
                continue
            self.records.append(TripletRecord(triplet_id, ref, 1.0 - pref_a, files))

    def _image(self, ref: str, name: str) -> str:
        # the reference compared with a distortion (test split) is stored with the references
        if Path(name).stem == ref:
            return f"reference_images/{self.split}/{name}"
        return f"distorted_images/{self.split}/{ref}/{name}"
