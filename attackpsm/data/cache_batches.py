"""Batches read from a decoded-triplet cache, bit-identical to those of the PNG path.

:class:`CachedBatches` reads the rows of a shard from the memory-mapped cache
(:mod:`attackpsm.data.cache`) and turns the ``uint8`` levels into the float images with
:func:`attackpsm.images.from_levels` (on the CPU with its numpy form, checked equal on all
256 levels), so every per-triplet result equals that of the PNG path.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from attackpsm.data.base import Batch, TripletRecord
from attackpsm.data.cache_format import CacheError, TripletCache
from attackpsm.images import from_levels, from_levels_numpy

LEVELS = from_levels(torch.arange(256, dtype=torch.uint8))  # the 256 floats, on the CPU

# only 256 inputs exist: if numpy's float32 arithmetic matches torch's on all of them, it is
# bit-identical on every image; otherwise the table itself is used (equal by construction)
_NUMPY_EXACT = np.array_equal(from_levels_numpy(np.arange(256, dtype=np.uint8)), LEVELS.numpy())


_CHUNK_BYTES = 1 << 20  # floats converted per step: half a core's L2 cache here


def _to_float_cpu(u8: np.ndarray, out: np.ndarray | None = None) -> torch.Tensor:
    """``uint8`` images ``(N, C, H, W)`` (any strides, e.g. a view of the memmap) -> floats.

    Converted a few images at a time: the subtraction then reads what the division just
    wrote from the CPU cache instead of from memory: about 10% faster than two whole passes.
    """
    if out is None:
        out = np.empty(u8.shape, dtype=np.float32)
    if not _NUMPY_EXACT:
        return torch.from_numpy(np.take(LEVELS.numpy(), u8, out=out))
    step = max(1, _CHUNK_BYTES // max(1, out[0].nbytes)) if len(out) else 1
    for a in range(0, len(out), step):
        from_levels_numpy(u8[a : a + step], out[a : a + step])
    return torch.from_numpy(out)


READ_AHEAD = 2  # batches read (and on the CPU converted) ahead of the one in use


def _ascending(rows: np.ndarray) -> bool:
    return bool(np.all(rows[1:] > rows[:-1]))


class BufferPool:
    """Float buffers lent to the converted images of one batch and taken back after it.

    Writing a batch's floats into freshly allocated memory costs a page fault per 4 KiB
    (large arrays come straight from the kernel, zeroed), which slows the conversion down.
    :meth:`take` lends a buffer through a new array whose memory is owned by a loan object:
    every view of that array and every tensor made from it (``torch.from_numpy`` keeps the
    array) holds the loan, and only when the last of them is gone is the loan finalized and
    the buffer given back. A batch that is kept (a list of batches, an example image)
    therefore never changes; at most ``keep`` returned buffers of each shape are held.
    """

    def __init__(self, keep: int = 3 * (READ_AHEAD + 2)):  # in use, read ahead, being converted
        self.keep, self.allocated = keep, 0
        self.free: dict[tuple[int, ...], deque[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """A ``float32`` array of ``shape``, lent until nothing refers to it any more."""
        free = self.free.setdefault(shape, deque())
        try:
            buf = free.pop()  # the last given back: the likeliest still in the CPU's cache
        except IndexError:
            buf = np.empty(shape, dtype=np.float32)
            self.allocated += 1
        loan = _Loan(buf)
        weakref.finalize(loan, self._give_back, free, buf).atexit = False
        return np.asarray(loan)

    def _give_back(self, free: deque[np.ndarray], buf: np.ndarray) -> None:
        # a deque's appends and pops are thread-safe: a finalizer runs in whichever thread
        # dropped the last reference
        if len(free) < self.keep:
            free.append(buf)


class _Loan:
    """The owner of one lent buffer's memory, as seen by numpy (``__array_interface__``)."""

    __slots__ = ("__array_interface__", "__weakref__", "buffer")

    def __init__(self, buf: np.ndarray):
        self.buffer = buf
        self.__array_interface__ = buf.__array_interface__


class CachedBatches:
    """Batches of ``records`` read from ``cache``: the rows of these records only.

    The same batches as ``DataLoader(dataset_view, batch_size, collate_fn=collate)``: the
    same records in the same order and batch boundaries, error rows apart, and bit-identical
    images. The rows travel as ``uint8`` (pinned memory, ``non_blocking`` on CUDA) and are
    converted on the device: elsewhere than the CPU through a 256-entry table computed by
    :func:`~attackpsm.images.from_levels` on the CPU; on the CPU by the same arithmetic in numpy, checked
    equal to that table on all 256 levels (else the table is used). The next batches are read
    from the memmap (and, on the CPU, converted) in a background thread while the current one
    is used. ``convert=False`` yields the ``uint8`` rows as read (the 8-bit levels, on the CPU):
    the reader's whole work in a run whose device converts.
    """

    def __init__(
        self,
        cache: TripletCache,
        records: list[TripletRecord],
        batch_size: int,
        device: torch.device | str = "cpu",
        spans: list[tuple[int, int]] | None = None,
        convert: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        missing = [r.triplet_id for r in records if r.triplet_id not in cache.row_of]
        if missing:
            raise CacheError(f"{cache.path}: {len(missing)} triplets not cached, e.g. {missing[0]}")
        self.cache, self.records, self.batch_size = cache, list(records), batch_size
        # position ranges of ``records``, one per batch (a resumed shard's pending batches)
        self.spans = (
            list(spans)
            if spans is not None
            else [
                (a, min(a + batch_size, len(self.records)))
                for a in range(0, len(self.records), batch_size)
            ]
        )
        self.device = torch.device(device)
        self.rows = np.array([cache.row_of[r.triplet_id] for r in self.records], dtype=np.int64)
        cache.verify(self.rows)  # each row once per opened cache (ensure_cache did it already)
        self.convert = convert
        self.pin = convert and self.device.type == "cuda"
        self.table = LEVELS.to(self.device) if self.device.type != "cpu" else None
        self.pool = BufferPool()

    def __len__(self) -> int:
        return len(self.spans)

    def _read(self, span: tuple[int, int]) -> tuple[list[TripletRecord], tuple, list[dict]]:
        """Rows of one batch: on the CPU converted here (in the reader thread), else pinned."""
        start, stop = span
        records = self.records[start:stop]
        rows = self.rows[start:stop]
        errors = self.cache.errors
        bad = [
            {"triplet_id": r.triplet_id, "subset": r.subset, "reason": errors[int(row)]}
            for r, row in zip(records, rows, strict=True)
            if int(row) in errors
        ]
        keep = [i for i, row in enumerate(rows) if int(row) not in errors]
        wanted = rows[keep]
        if len(wanted) and wanted[-1] - wanted[0] == len(wanted) - 1 and _ascending(wanted):
            # consecutive rows (a shard's batches, usually): a view of the memmap, no copy
            u8 = self.cache.images[int(wanted[0]) : int(wanted[-1]) + 1].view(np.ndarray)
        else:
            u8 = self.cache.images[wanted].view(np.ndarray)  # a copy of just these rows
        if self.table is None and self.convert:
            shape = (u8.shape[0], *u8.shape[2:])
            images = tuple(_to_float_cpu(u8[:, k], self.pool.take(shape)) for k in range(3))
        else:
            # a contiguous, writable copy (a one-row view of the read-only memmap is neither)
            images = tuple(
                torch.from_numpy(np.require(u8[:, k], requirements=("C", "W"))) for k in range(3)
            )
            if self.pin:
                images = tuple(t.pin_memory() for t in images)
        return [records[i] for i in keep], images, bad

    def _convert(self, u8: torch.Tensor) -> torch.Tensor:
        return self.table[u8.to(self.device, non_blocking=True).long()]

    def __iter__(self) -> Iterator[Batch]:
        spans = self.spans
        with ThreadPoolExecutor(1) as reader:
            # READ_AHEAD batches queued: the reader never waits for this thread to wake up
            pending = deque(reader.submit(self._read, s) for s in spans[:READ_AHEAD])
            for k in range(len(spans)):
                records, u8, bad = pending.popleft().result()
                if k + READ_AHEAD < len(spans):
                    pending.append(reader.submit(self._read, spans[k + READ_AHEAD]))
                if not records:
                    empty = torch.empty(0, 3, 1, 1)
                    yield Batch([], [], torch.empty(0), empty, empty, empty, bad)
                    continue
                judge = torch.tensor(
                    [float("nan") if r.judge is None else r.judge for r in records]
                )
                convert = self.convert and self.table is not None
                ref, p0, p1 = (self._convert(t) for t in u8) if convert else u8
                digests = [self.cache.data_digest[self.cache.row_of[r.triplet_id]] for r in records]
                yield Batch(
                    [r.triplet_id for r in records],
                    [r.subset for r in records],
                    judge.to(self.device, non_blocking=True) if self.convert else judge,
                    ref,
                    p0,
                    p1,
                    bad,
                    digests if any(d is not None for d in digests) else None,
                )
