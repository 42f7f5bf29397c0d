"""Triplets: the 2AFC sample of the paper (Sec. 3, "Dataset").

A triplet is a reference ``I_ref``, two distortions ``I_0`` and ``I_1``, and ``judge``: the
fraction of raters who preferred ``I_1`` (0 = everyone chose ``I_0``; ``None`` when there
is no human label). Datasets list light :class:`TripletRecord` entries and load pixels
lazily in ``__getitem__``, so memory stays bounded whatever the resolution.

Every dataset hands the metric **8-bit images** by default, as the paper's loader does (it
resizes the 8-bit PNGs with PIL and gives the metric 8-bit images): after the resize the
three images are rounded to the nearest of the 256 levels (:func:`attackpsm.images.quantize`).
``dataset.quantize=false`` keeps the resized floats.

A triplet whose *data* cannot be used (an undecodable file, a wrong shape or mode, a bad
judge, a path outside the root, too many pixels) is not an exception: ``__getitem__``
returns it as an error row, :func:`collate` keeps it apart, and the run records it in its
errors table and goes on. Anything else -- a file that cannot be read right now (moved
away, unreadable, an I/O error), an out-of-memory error, a file whose bytes changed since
the run's fingerprint was taken -- raises :class:`DataUnavailable`: the batch fails, nothing
of it is recorded, and a re-run retries it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import Dataset

from attackpsm.images import quantize, resize


def as_names(value: Any, what: str) -> list[str] | None:
    """A config value that lists names, as a list: ``None`` stays ``None``.

    A single string is one name (``dataset.subsets=cnn`` means ``['cnn']``; a quoted
    ``"cnn,traditional"`` means both), never its characters.

    Raises:
        ValueError: naming ``what`` when the value is neither a string nor a list of strings.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if (
        isinstance(value, (list, tuple))
        or hasattr(value, "__iter__")
        and not hasattr(value, "keys")
    ):
        names = list(value)
        if all(isinstance(v, str) for v in names):
            return names
    raise ValueError(f"{what} must be a name or a list of names, got {value!r}")


class DataError(ValueError):
    """A property of a triplet's data (undecodable, wrong size, ...): a recorded skip."""


class DataUnavailable(RuntimeError):
    """A triplet could not be loaded *now* (a file missing, unreadable or changed, an I/O or
    out-of-memory error): never a recorded skip; the batch fails and a re-run retries it."""


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


@dataclass(frozen=True)
class TripletRecord:
    """Index entry of one triplet: a stable id (subset + file name), its subset, its label.

    ``files`` are the ``(ref, p0, p1)`` paths relative to the dataset root (for datasets read
    from disk). ``error`` marks a triplet already known to be unusable when the index is
    built (e.g. a missing judge file): it stays in the index, so sharding and the errors
    table see it, and loads as an error row.
    """

    triplet_id: str
    subset: str
    judge: float | None
    files: tuple[str, str, str] | None = None
    error: str | None = None


class TripletDataset(Dataset):
    """Base class: a list of records plus a lazy pixel loader.

    Subclasses fill ``self.records`` and implement :meth:`load_images`, returning the
    native-resolution ``(ref, p0, p1)`` as ``(3, H, W)`` tensors in ``[-1, 1]``.

    Args:
        size: output side length (``None`` = native); the same antialiased resize is applied
            to the three images.
        quantize: round the three images to 8 bits after resizing (True, the paper's
            protocol); False keeps the resized float values.
    """

    name = "triplets"

    def __init__(self, size: int | None = None, quantize: bool = True):
        if size is not None and size <= 0:
            raise ValueError(f"resolution size must be positive or null (native), got {size}")
        if not isinstance(quantize, bool):
            raise ValueError(f"dataset.quantize must be true or false, got {quantize!r}")
        self.size = size
        self.quantize = quantize
        self.records: list[TripletRecord] = []

    def load_images(self, record: TripletRecord) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def file_digests(self) -> dict[str, str]:
        """The content digest of every file the records name (``{}``: no files).

        Datasets read from disk override it (:class:`~attackpsm.data.files.DiskTriplets`).
        """
        return {}

    def fingerprint(self) -> str:
        """A hash of the data, part of a run's identity: the data the results are of.

        Covers every record's id, subset, label and known error and, for records read from
        disk, the digest of each file's *bytes* (:meth:`file_digests`, memoised per file so
        an unchanged dataset is not read again, see :mod:`attackpsm.data.digests`). Changed,
        added or removed data gives a new fingerprint, so results of other data are never
        reused or merged in. A dataset without files (the synthetic set) is fingerprinted by
        its ids and labels; its generator parameters are part of the run identity already.

        Computed once per dataset object: the files a run then reads are checked against
        the digests it covers (a file edited during the run fails its batch).
        """
        cached = getattr(self, "_fingerprint", None)
        if cached is not None:
            return cached
        digests = self.file_digests()
        lines = []
        for r in sorted(self.records, key=lambda r: r.triplet_id):
            line = [repr((r.triplet_id, r.subset, r.judge, r.error))]
            line.extend(f"{rel}:{digests.get(rel, 'unlisted')}" for rel in r.files or ())
            lines.append("|".join(line))
        self._fingerprint = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
        return self._fingerprint

    def row_digests(self) -> dict[str, str]:
        """Per triplet id, the ``data_digest`` its row must carry: the digest of its files as
        the fingerprint covers them (only triplets whose files were all read)."""
        return {}

    def counts(self) -> dict[str, dict[str, int]]:
        """Triplets kept per subset and those already known to be unusable (``errors``)."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            c = out.setdefault(r.subset, {"triplets": 0, "errors": 0})
            c["errors" if r.error is not None else "triplets"] += 1
        return out

    def load_triplet(
        self, record: TripletRecord
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], str | None]:
        """:meth:`load_images` and the digest of the files they were decoded from
        (``None``: the dataset reads no files)."""
        return self.load_images(record), None

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        item: dict[str, Any] = {"triplet_id": record.triplet_id, "subset": record.subset}
        if record.error is not None:
            item["error"] = record.error
            return item
        try:
            judge = record.judge
            if judge is not None and not (0.0 <= judge <= 1.0 and math.isfinite(judge)):
                raise DataError(f"judge {judge} outside [0, 1]")
            (ref, p0, p1), digest = self.load_triplet(record)
            shapes = {tuple(t.shape) for t in (ref, p0, p1)}
            if len(shapes) != 1:
                raise DataError(f"mismatched image sizes in triplet: {sorted(shapes)}")
            if ref.dim() != 3 or ref.shape[0] != 3:
                raise DataError(f"expected 3xHxW RGB images, got {tuple(ref.shape)}")
        except DataError as exc:  # a property of the data: recorded and skipped
            item["error"] = f"{type(exc).__name__}: {exc}"
            return item
        except DataUnavailable:
            raise
        except Exception as exc:  # not the data's fault: the batch fails, a re-run retries
            raise self.unavailable(record, exc) from exc
        try:
            images = resize(torch.stack([ref, p0, p1]), self.size)
            if self.quantize:
                images = quantize(images)
        except Exception as exc:  # e.g. out of memory at a huge resolution: never a skip
            raise self.unavailable(record, exc) from exc
        item.update(ref=images[0], p0=images[1], p1=images[2], judge=judge)
        if digest is not None:
            item["data_digest"] = digest
        return item

    def unavailable(self, record: TripletRecord, exc: BaseException) -> DataUnavailable:
        """The error of a triplet that failed for a reason other than its data."""
        what = "out of memory" if _out_of_memory(exc) else "could not be loaded"
        hint = " (a smaller resolution.size needs less)" if _out_of_memory(exc) else ""
        return DataUnavailable(
            f"triplet {record.triplet_id}: {what}{hint}: {type(exc).__name__}: {exc}. "
            "Not recorded as a skip: the batch fails and a re-run retries it"
        )


@dataclass
class Batch:
    """A collated batch of loadable triplets plus the error rows of the unloadable ones."""

    triplet_id: list[str]
    subset: list[str]
    judge: torch.Tensor  # float, NaN where there is no human label
    ref: torch.Tensor
    p0: torch.Tensor
    p1: torch.Tensor
    errors: list[dict[str, str]]
    # per triplet, the digest of the files its images were decoded from (None: no files)
    data_digest: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.triplet_id)

    def to(self, device: torch.device | str) -> Batch:
        move = dict(device=device, non_blocking=True)
        return self.map_images(lambda t: t.to(**move), judge=self.judge.to(**move))

    def map_images(self, fn: Callable[[torch.Tensor], torch.Tensor], **changes: Any) -> Batch:
        """The same triplets with ``fn`` applied to the reference and both distortions."""
        return replace(self, ref=fn(self.ref), p0=fn(self.p0), p1=fn(self.p1), **changes)

    def take(self, index: slice | torch.Tensor | list[int], errors: list | None = None) -> Batch:
        """The triplets at ``index`` (a slice or positions), with ``errors`` (default: none)."""
        if isinstance(index, slice):
            ids, subsets = self.triplet_id[index], self.subset[index]
        else:
            positions = [int(i) for i in index]
            ids = [self.triplet_id[i] for i in positions]
            subsets = [self.subset[i] for i in positions]
            index = torch.as_tensor(positions, dtype=torch.long)
        digests = None
        if self.data_digest is not None:
            digests = (
                self.data_digest[index]
                if isinstance(index, slice)
                else [self.data_digest[i] for i in positions]
            )
        return Batch(
            ids,
            subsets,
            self.judge[index],
            self.ref[index],
            self.p0[index],
            self.p1[index],
            list(errors or []),
            digests,
        )


def collate(items: list[dict[str, Any]]) -> Batch:
    good = [it for it in items if "error" not in it]
    errors = [
        {"triplet_id": it["triplet_id"], "subset": it["subset"], "reason": it["error"]}
        for it in items
        if "error" in it
    ]
    if not good:
        empty = torch.empty(0, 3, 1, 1)
        return Batch([], [], torch.empty(0), empty, empty, empty, errors)
    judge = torch.tensor([float("nan") if it["judge"] is None else it["judge"] for it in good])
    return Batch(
        [it["triplet_id"] for it in good],
        [it["subset"] for it in good],
        judge,
        torch.stack([it["ref"] for it in good]),
        torch.stack([it["p0"] for it in good]),
        torch.stack([it["p1"] for it in good]),
        errors,
        [it.get("data_digest") for it in good] if any("data_digest" in it for it in good) else None,
    )


def shard_records(records: list[TripletRecord], index: int, count: int) -> list[TripletRecord]:
    """Deterministic shard ``index`` of ``count``: disjoint, complete, machine-independent.

    Records are ordered by their stable id and dealt round-robin, so every shard gets a mix
    of subsets and the split depends only on the ids.
    """
    if count < 1:
        raise ValueError(f"shard.count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard.index must be in [0, {count - 1}], got {index}")
    ordered = sorted(records, key=lambda r: r.triplet_id)
    return ordered[index::count]
