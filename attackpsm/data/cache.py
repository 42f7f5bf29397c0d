"""Decoded-triplet cache: the 8-bit images of every triplet, decoded once, memory-mapped.

The paper's protocol feeds the metric the three images of a triplet resized and rounded to
8 bits (Sec. 3, "Dataset"; the released loader resizes the 8-bit PNGs with PIL). Decoding
and resizing the same PNGs again for every metric x attack x resolution of a study costs
more than the attack itself on a GPU, so ``dataset.cache=true`` (or ``python -m
attackpsm.data cache <dataset> resolution=64``) stores, per (dataset fingerprint,
resolution), exactly those 8-bit images as one ``uint8`` array ``(N, 3 images, 3, H, W)``
in a plain numpy memmap file (no extra dependency: the rows are fixed-size, so a raw file
plus a JSON index is all a memory-mapped reader needs), with the ids, labels and the error
rows of the triplets that could not be loaded.

Guarantees:

* **Verified before use.** A cache directory is used only if its completion marker (written
  last) names the current :func:`index_fingerprint` of the dataset, the image file has the
  exact expected size and the index file the recorded digest. A changed dataset (a file
  touched or rewritten, another filter, ...) or a partial cache (a killed build, a
  truncated file) fails that check and is rebuilt, never half-used.
* **Checked row by row.** Every cached triplet (a row of ``images.u8``) has an XXH3-64
  checksum in the index, computed from the decoded images when the cache is built and
  verified once the file is written; the rows a run reads are verified before it uses them
  (each row once per opened cache). A damaged cache (bytes changed in place, same size) is
  rebuilt, never read.
* **One builder.** The builder holds an ``O_EXCL`` lock file next to the cache (its host
  and pid; refreshed while it works). Others wait for the completed cache; a lock whose
  process is gone (same host) or that has not been refreshed for ``stale_after`` seconds is
  taken over.
* **Atomic.** The cache is written into a temporary directory and renamed into place
  complete; an old cache is renamed away first, so a reader sees the old complete cache,
  no cache (and waits on the lock), or the new complete one. Even two builders (a lock
  taken over from a live process) only each install a complete cache.
* **Same numbers.** :class:`CachedBatches` turns the ``uint8`` rows into the float images
  with the same expression as :func:`attackpsm.images.quantize`, on the device: the
  batches, and so every per-triplet result, are bit-identical to the PNG path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

import attackpsm
from attackpsm.data.base import Batch, TripletDataset, TripletRecord
from attackpsm.data.workers import die_with_parent
from attackpsm.images import to_uint8

log = logging.getLogger("attackpsm")

FORMAT = 2  # 2: a checksum per row and the data digest of each row
IMAGES, INDEX, COMPLETE = "images.u8", "index.json", "COMPLETE"


class CacheError(RuntimeError):
    """A cache directory is missing, partial, damaged or does not match the dataset."""


def row_checksum(row: np.ndarray) -> int:
    """XXH3-64 of one cached triplet's bytes (fast: about 10 GB/s on one core)."""
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(row))


# --- identity -----------------------------------------------------------------------------


def _options(dataset: TripletDataset) -> dict[str, Any]:
    """The dataset's settings: its class and every plain attribute (root, split, filter, ...)."""
    out: dict[str, Any] = {"class": f"{type(dataset).__module__}.{type(dataset).__qualname__}"}
    for key, value in sorted(vars(dataset).items()):
        if key == "records" or key.startswith("_"):
            continue
        if isinstance(value, os.PathLike):
            value = str(Path(value).resolve())
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue  # not a setting (a loaded object): left out
        out[key] = value
    return out


def index_fingerprint(dataset: TripletDataset) -> str:
    """Hash of what the cached images depend on.

    The dataset's own fingerprint (:meth:`TripletDataset.fingerprint`: records, labels, and
    the digest of every file's bytes) with the dataset's options, the
    resolution, the 8-bit rounding and the package version (which fixes the decoding and
    resizing code).
    """
    head = {
        "format": FORMAT,
        "version": attackpsm.__version__,
        "size": dataset.size,
        "quantize": dataset.quantize,
        "options": _options(dataset),
        "data": dataset.fingerprint(),
    }
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()


def cache_dir(dataset: TripletDataset, root: str | os.PathLike) -> Path:
    """``<root>/<name>-res<size>-<options hash>``: one directory per dataset setting and
    resolution, whose content is replaced when the data changes (same options, new files)."""
    opts = json.dumps(
        {"options": _options(dataset), "size": dataset.size, "quantize": dataset.quantize},
        sort_keys=True,
    )
    key = hashlib.sha256(opts.encode()).hexdigest()[:12]
    return Path(root) / f"{dataset.name}-res{dataset.size}-{key}"


def check_cacheable(dataset: TripletDataset) -> None:
    """Only fixed-size 8-bit triplets are cached (what the paper's protocol feeds the metric)."""
    if dataset.size is None:
        raise ValueError(
            "dataset.cache=true needs a fixed resolution (resolution=64, 256, ...), "
            "got resolution=native: native sizes differ between triplets"
        )
    if not dataset.quantize:
        raise ValueError(
            "dataset.cache=true stores 8-bit images and needs dataset.quantize=true, got false"
        )


# --- the cache on disk --------------------------------------------------------------------


@dataclass
class TripletCache:
    """An opened, verified cache: ``images[row]`` is ``(3 images, 3, H, W)`` ``uint8``."""

    path: Path
    fingerprint: str
    images: np.ndarray  # memmap, read-only
    row_of: dict[str, int]
    errors: dict[int, str]  # row -> reason, for the triplets that could not be loaded
    checksums: np.ndarray  # uint64 per row (row_checksum)
    data_digest: list[str | None]  # per row: the digest of the files it was decoded from
    verified: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.row_of)

    def verify(self, rows: np.ndarray | list[int] | None = None) -> None:
        """Check the checksums of ``rows`` (default: all); each row is checked once.

        Raises:
            CacheError: naming the damaged rows.
        """
        todo = range(len(self.checksums)) if rows is None else rows
        bad = []
        for row in todo:
            row = int(row)
            if row in self.verified:
                continue
            if row_checksum(self.images[row]) != int(self.checksums[row]):
                bad.append(row)
            else:
                self.verified.add(row)
        if bad:
            raise CacheError(
                f"{self.path}: {len(bad)} cached triplets do not match their checksums "
                f"(rows {bad[:5]}{', ...' if len(bad) > 5 else ''}): the image file is damaged"
            )

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: str) -> TripletCache:
        """Open ``path`` if it is a complete cache of ``fingerprint``; else :class:`CacheError`."""
        path = Path(path)
        try:
            marker = json.loads((path / COMPLETE).read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(f"{path}: no completion marker ({type(exc).__name__})") from exc
        if marker.get("fingerprint") != fingerprint:
            raise CacheError(f"{path}: built for other data (fingerprint differs)")
        index_bytes = (path / INDEX).read_bytes() if (path / INDEX).exists() else b""
        if hashlib.sha256(index_bytes).hexdigest() != marker.get("index_sha256"):
            raise CacheError(f"{path}: index file missing or changed")
        index = json.loads(index_bytes)
        shape = tuple(index["shape"])
        expected = math.prod(shape)
        actual = (path / IMAGES).stat().st_size if (path / IMAGES).exists() else -1
        if actual != expected or marker.get("images_bytes") != expected:
            raise CacheError(f"{path}: image file has {actual} bytes, expected {expected}")
        images = np.memmap(path / IMAGES, dtype=np.uint8, mode="r", shape=shape)
        row_of = {tid: i for i, tid in enumerate(index["ids"])}
        errors = {int(k): v for k, v in index["errors"].items()}
        checksums = np.array([int(c, 16) for c in index["checksums"]], dtype=np.uint64)
        digests = list(index["data_digest"])
        if len(checksums) != shape[0] or len(digests) != shape[0]:
            raise CacheError(f"{path}: index holds {len(checksums)} checksums for {shape[0]} rows")
        return cls(path, fingerprint, images, row_of, errors, checksums, digests)


def _fill(dataset: TripletDataset, path: str, shape: tuple[int, ...], start: int, stop: int):
    """Decode rows ``start:stop`` into the memmap at ``path``.

    Returns ``(start, stop, error rows, checksums, data digests)``; a triplet that cannot be
    loaded for a reason other than its data (:class:`~attackpsm.data.base.DataUnavailable`)
    fails the build, so it is never cached as a skip.
    """
    torch.set_num_threads(1)
    out = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    errors: dict[int, str] = {}
    zeros = np.zeros(shape[1:], dtype=np.uint8)
    checksums, digests = [], []
    for i in range(start, stop):
        item = dataset[i]
        row, digest = zeros, None
        if "error" in item:
            errors[i] = item["error"]
        else:
            images = torch.stack([item["ref"], item["p0"], item["p1"]])
            if tuple(images.shape) != shape[1:]:
                errors[i] = (
                    f"ValueError: image shape {tuple(images.shape)[1:]}, expected {shape[2:]}"
                )
            else:
                # already on the 8-bit grid (quantize): this recovers the levels exactly
                row, digest = to_uint8(images).numpy(), item.get("data_digest")
                out[i] = row
        checksums.append(f"{row_checksum(row):016x}")
        digests.append(digest)
    out.flush()
    del out
    return start, stop, errors, checksums, digests


def _build(
    dataset: TripletDataset,
    final: Path,
    fingerprint: str,
    workers: int,
    chunk: int,
    progress: bool,
    heartbeat,
) -> None:
    from tqdm.auto import tqdm

    tmp = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n, size = len(dataset), dataset.size
    shape = (n, 3, 3, size, size)
    images = tmp / IMAGES
    np.memmap(images, dtype=np.uint8, mode="w+", shape=shape).flush()
    spans = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    errors: dict[int, str] = {}
    checksums: list[str | None] = [None] * n
    digests: list[str | None] = [None] * n
    bar = tqdm(total=n, desc=f"cache {final.name}", unit="triplet", disable=not progress)
    workers = max(1, min(workers, len(spans)))
    if workers == 1:
        for s, e in spans:
            _, _, errs, sums, digs = _fill(dataset, str(images), shape, s, e)
            errors.update(errs)
            checksums[s:e], digests[s:e] = sums, digs
            bar.update(e - s)
            heartbeat()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("forkserver")
        # the workers exit as soon as this process dies (even by SIGKILL): no orphans
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = [pool.submit(_fill, dataset, str(images), shape, s, e) for s, e in spans]
            for fut in as_completed(futures):
                s, e, errs, sums, digs = fut.result()
                errors.update(errs)
                checksums[s:e], digests[s:e] = sums, digs
                bar.update(e - s)
                heartbeat()
    bar.close()
    index = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "shape": list(shape),
        "ids": [r.triplet_id for r in dataset.records],
        "errors": {str(k): v for k, v in sorted(errors.items())},
        "checksums": checksums,
        "data_digest": digests,
    }
    with open(images, "rb") as fh:
        os.fsync(fh.fileno())
    written = np.memmap(images, dtype=np.uint8, mode="r", shape=shape)
    bad = [i for i in range(n) if f"{row_checksum(written[i]):016x}" != checksums[i]]
    del written
    if bad:  # what was written is not what was decoded: never install it
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(f"cache {final}: rows {bad[:5]} read back differently than written")
    index_bytes = json.dumps(index).encode()
    (tmp / INDEX).write_bytes(index_bytes)
    marker = {
        "fingerprint": fingerprint,
        "images_bytes": math.prod(shape),
        "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "triplets": n,
        "errors": len(errors),
    }
    with open(tmp / COMPLETE, "w") as fh:  # written last: its presence means complete
        fh.write(json.dumps(marker))
        fh.flush()
        os.fsync(fh.fileno())
    old = final.parent / f".{final.name}.old-{socket.gethostname()}-{os.getpid()}"
    if final.exists():
        os.rename(final, old)  # readers keep their open memmap of the old files
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    log.info("cache %s: %d triplets (%d unusable) built", final, n, len(errors))


def _lock_is_stale(lock: Path, stale_after: float) -> bool:
    try:
        text = lock.read_text().split()
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False  # gone already: retry
    if len(text) == 2 and text[0] == socket.gethostname():
        try:
            os.kill(int(text[1]), 0)
        except ProcessLookupError:
            return True  # its builder died on this host
        except (PermissionError, ValueError):
            pass
    return age > stale_after


def _remove_dead_builds(final: Path, stale_after: float) -> None:
    """Delete the temporary directories of builders that died (same host) or went silent."""
    host = socket.gethostname()
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        owner = tmp.name.rsplit(".tmp-", 1)[1].rsplit("-", 1)
        dead = False
        if len(owner) == 2 and owner[0] == host and owner[1].isdigit():
            try:
                os.kill(int(owner[1]), 0)
            except ProcessLookupError:
                dead = True
            except PermissionError:
                pass
        try:
            silent = time.time() - tmp.stat().st_mtime > stale_after
        except OSError:
            continue
        if dead or silent:
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_cache(
    dataset: TripletDataset,
    root: str | os.PathLike,
    workers: int | None = None,
    chunk: int = 256,
    progress: bool = True,
    poll: float = 0.2,
    stale_after: float = 300.0,
    timeout: float = 24 * 3600.0,
    ids: list[str] | None = None,
) -> TripletCache:
    """The verified cache of ``dataset`` under ``root``, built first if needed.

    The checksums of the rows of ``ids`` (default: every row) are verified; a damaged cache
    is rebuilt.

    Args:
        dataset: the full (unsharded) dataset; its ``size`` is the cached resolution.
        root: folder holding the caches (``paths.cache_dir``).
        workers: processes that decode in parallel (default: the CPU count).
        chunk: triplets per task of the process pool.
        progress: show a progress bar while building.
        poll: seconds between checks while another process builds.
        stale_after: a lock not refreshed for this long is taken over.
        timeout: give up waiting for another builder after this long.
        ids: the triplets that will be read (a shard's), verified before use.
    """
    check_cacheable(dataset)
    fingerprint = index_fingerprint(dataset)
    final = cache_dir(dataset, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f"{final.name}.lock"
    waited_since = None

    def verified() -> TripletCache:
        cache = TripletCache.open(final, fingerprint)
        rows = None if ids is None else [cache.row_of[t] for t in ids if t in cache.row_of]
        try:
            cache.verify(rows)
        except CacheError as exc:  # the builder (holding the lock) replaces it
            log.warning("%s; rebuilding it", exc)
            raise
        return cache

    while True:
        try:
            return verified()
        except CacheError as exc:
            reason = str(exc)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _lock_is_stale(lock, stale_after):
                log.warning("cache %s: taking over the stale lock %s", final, lock)
                lock.unlink(missing_ok=True)
                continue
            if waited_since is None:
                log.info("cache %s: waiting for the build holding %s", final, lock)
                waited_since = time.monotonic()
            if time.monotonic() - waited_since > timeout:
                raise TimeoutError(
                    f"waited {timeout:.0f} s for the cache build holding {lock}; "
                    "remove the lock file if its process is gone"
                ) from None
            time.sleep(poll)
            continue
        try:
            os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
            os.close(fd)
            try:  # finished by another process between our check and the lock
                return verified()
            except CacheError:
                pass
            _remove_dead_builds(final, stale_after)
            log.info("cache %s: building (%s)", final, reason)
            _build(
                dataset,
                final,
                fingerprint,
                workers or os.cpu_count() or 1,
                chunk,
                progress,
                heartbeat=lambda: os.utime(lock),
            )
        finally:
            lock.unlink(missing_ok=True)


# --- batches ------------------------------------------------------------------------------


def levels_to_float(u8: torch.Tensor) -> torch.Tensor:
    """``uint8`` levels -> ``[-1, 1]`` floats, the expression of :func:`~attackpsm.images.quantize`."""
    return u8.float() / 127.5 - 1.0


_LEVELS = levels_to_float(torch.arange(256, dtype=torch.uint8))  # computed once, on the CPU


def _numpy_levels(u8: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`levels_to_float` in numpy (no thread pool: it runs beside the engine)."""
    x = np.divide(u8, np.float32(127.5), out=out, dtype=np.float32)  # cast and divide at once
    x -= np.float32(1.0)
    return x


# only 256 inputs exist: if numpy's float32 arithmetic matches torch's on all of them, it is
# bit-identical on every image; otherwise the table itself is used (equal by construction)
_NUMPY_EXACT = np.array_equal(_numpy_levels(np.arange(256, dtype=np.uint8)), _LEVELS.numpy())


_CHUNK_BYTES = 1 << 20  # floats converted per step: half a core's L2 cache here


def _to_float_cpu(u8: np.ndarray, out: np.ndarray | None = None) -> torch.Tensor:
    """``uint8`` images ``(N, C, H, W)`` (any strides, e.g. a view of the memmap) -> floats.

    Converted a few images at a time: the subtraction then reads what the division just
    wrote from the CPU cache instead of from memory: about 10% faster than two whole passes.
    """
    if out is None:
        out = np.empty(u8.shape, dtype=np.float32)
    if not _NUMPY_EXACT:
        return torch.from_numpy(np.take(_LEVELS.numpy(), u8, out=out))
    step = max(1, _CHUNK_BYTES // max(1, out[0].nbytes)) if len(out) else 1
    for a in range(0, len(out), step):
        _numpy_levels(u8[a : a + step], out[a : a + step])
    return torch.from_numpy(out)


READ_AHEAD = 2  # batches read (and on the CPU converted) ahead of the one in use


def _ascending(rows: np.ndarray) -> bool:
    return bool(np.all(rows[1:] > rows[:-1]))


class _BufferPool:
    """Float buffers for the converted images, reused once nothing refers to them any more.

    Writing a batch's floats into freshly allocated memory costs a page fault per 4 KiB
    (large arrays come straight from the kernel, zeroed), which halves the conversion's
    speed. A buffer is handed out again only when its reference count shows that no tensor
    or view of a previous batch still uses it, so a batch that is kept (a list of batches,
    an example image) never changes.
    """

    def __init__(self, keep: int = 3 * (READ_AHEAD + 2)):  # in use, read ahead, being converted
        self.keep, self.buffers, self.allocated = keep, [], 0

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        for buf in self.buffers:
            # free: referenced only by the list, this loop and getrefcount's argument
            if buf.shape == shape and sys.getrefcount(buf) == 3:
                return buf
        buf = np.empty(shape, dtype=np.float32)
        self.allocated += 1
        if len(self.buffers) < self.keep:
            self.buffers.append(buf)
        return buf


class CachedBatches:
    """Batches of ``records`` read from ``cache``: the rows of these records only.

    The same batches as ``DataLoader(dataset_view, batch_size, collate_fn=collate)``: the
    same records in the same order and batch boundaries, error rows apart, and bit-identical
    images. The rows travel as ``uint8`` (pinned memory, ``non_blocking`` on CUDA) and are
    converted on the device: elsewhere than the CPU through a 256-entry table computed by
    :func:`levels_to_float` on the CPU; on the CPU by the same arithmetic in numpy, checked
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
        self.table = _LEVELS.to(self.device) if self.device.type != "cpu" else None
        self.pool = _BufferPool()

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
