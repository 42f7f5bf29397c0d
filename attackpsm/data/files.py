"""Reading triplets from disk: strict RGB image decoding, dataset roots, layout errors.

Shared by the on-disk loaders (:mod:`~attackpsm.data.bapps`, :mod:`~attackpsm.data.pieapp`,
:mod:`~attackpsm.data.clic`). Problems with one triplet (a missing, truncated, grey or
RGBA image) raise :class:`ImageError`, which the dataset turns into an error row; problems
with the dataset as a whole (no root, wrong layout, nothing usable) raise
:class:`DatasetLayoutError`, which stops the run with the expected layout in the message.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attackpsm.data.base import TripletDataset, TripletRecord
from attackpsm.images import from_uint8

ROLES = ("ref", "p0", "p1")


class DatasetLayoutError(FileNotFoundError):
    """The dataset root is missing, laid out differently, or yields no usable triplet."""


class ImageError(ValueError):
    """One image of a triplet cannot be used (the triplet is skipped, not the run)."""


def outside_root(rel: str | os.PathLike) -> bool:
    """Whether a path named by an index file leaves the folder it is relative to.

    An absolute path, or one whose ``..`` components climb above the folder, is outside:
    index files (CSV rows, manifests) must not make a loader read anywhere else. Checked
    on the text of the path, before the file system is touched.
    """
    path = Path(rel)
    if path.is_absolute() or path.drive:
        return True
    norm = os.path.normpath(rel)
    return norm == os.pardir or norm.startswith(os.pardir + os.sep)


def outside_root_reason(root: Path, files: tuple[str, ...] | list[str]) -> str | None:
    """The error row of a triplet whose files leave ``root`` (``None``: all inside)."""
    bad = [str(f) for f in files if outside_root(f)]
    if bad:
        return f"path outside the dataset root {root}: {', '.join(bad)}"
    return None


def read_rgb(path: Path) -> torch.Tensor:
    """Decode an 8-bit RGB image file to a ``(3, H, W)`` tensor in ``[-1, 1]``.

    Only true RGB is accepted: a grey, palette or RGBA file is refused rather than
    converted, since the datasets of the paper are RGB and a silent conversion would
    hide a broken file. Truncated files fail in ``load()``.
    """
    with Image.open(path) as im:
        if im.mode != "RGB":
            raise ImageError(f"mode {im.mode}, expected RGB")
        im.load()
        array = np.asarray(im)
    return from_uint8(array)


class DiskTriplets(TripletDataset):
    """A triplet set whose records carry ``files`` relative to ``root``.

    Args:
        size: output side length (``None`` = native), see :class:`TripletDataset`.
        root: dataset folder; ``None`` is an error naming ``env`` and the expected layout.
        quantize: 8-bit images after resizing (the paper's protocol), see :class:`TripletDataset`.
    """

    layout = ""  # the expected folder layout, quoted in every DatasetLayoutError
    env = ""  # environment variable that may hold the root (see conf/dataset/*.yaml)

    def __init__(
        self,
        size: int | None = None,
        root: str | os.PathLike | None = None,
        quantize: bool = True,
    ):
        super().__init__(size, quantize)
        if root is None or str(root) == "":
            raise self.layout_error(f"no dataset.root given (set dataset.root=... or ${self.env})")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise self.layout_error(f"dataset root {self.root} does not exist")

    def layout_error(self, message: str) -> DatasetLayoutError:
        # one line: hydra's instantiate re-raises it inside a repr(), which escapes newlines
        layout = "; ".join(line.strip() for line in self.layout.splitlines())
        return DatasetLayoutError(f"{self.name}: {message}. Expected layout: {layout}")

    def check_usable(self) -> None:
        """Fail unless the index holds at least one triplet not already known to be bad."""
        if not any(r.error is None for r in self.records):
            bad = sum(r.error is not None for r in self.records)
            detail = f" ({bad} listed, all unusable)" if bad else ""
            raise self.layout_error(f"zero usable triplets under {self.root}{detail}")

    def load_images(self, record: TripletRecord) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reason = outside_root_reason(self.root, record.files)
        if reason is not None:  # the index should have caught it; never read it anyway
            raise ImageError(reason)
        images = []
        for role, rel in zip(ROLES, record.files, strict=True):
            try:
                images.append(read_rgb(self.root / rel))
            except Exception as exc:  # name the image so the errors table says which one
                raise ImageError(f"{role} {rel}: {type(exc).__name__}: {exc}") from exc
        return tuple(images)
