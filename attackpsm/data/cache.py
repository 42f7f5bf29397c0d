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
* **One builder.** The builder holds a lock file next to the cache (created exclusively,
  holding its host and pid; refreshed while it works: :mod:`attackpsm.locks`). Others wait
  for the completed cache; a lock whose process is gone (same host) or that has not been
  refreshed for ``stale_after`` seconds is taken over.
* **Atomic.** The cache is written into a temporary directory and renamed into place
  complete; an old cache is renamed away first, so a reader sees the old complete cache,
  no cache (and waits on the lock), or the new complete one. Even two builders (a lock
  taken over from a live process) only each install a complete cache.
* **Same numbers.** :class:`~attackpsm.data.cache_batches.CachedBatches` turns the
  ``uint8`` rows into the float images with the same expression as
  :func:`attackpsm.images.quantize`, on the device: the batches, and so every per-triplet
  result, are bit-identical to the PNG path.

The files and their verified opening: :mod:`attackpsm.data.cache_format`; the build:
:mod:`attackpsm.data.cache_build`; the reader: :mod:`attackpsm.data.cache_batches`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from attackpsm.data import cache_build
from attackpsm.data.base import TripletDataset
from attackpsm.data.cache_format import (
    CacheError,
    TripletCache,
    cache_dir,
    check_cacheable,
    index_fingerprint,
)
from attackpsm.locks import create_exclusive, owner_gone, owner_record, read_lock, take_over

log = logging.getLogger("attackpsm")


def _stale(lock: Path, stale_after: float) -> dict | None:
    """The owner of ``lock`` when it may be taken over: its builder died on this host, or
    the lock was not refreshed for ``stale_after`` seconds. ``None`` while it is alive or
    once it is gone."""
    owner, beat = read_lock(lock)
    if owner is None:
        return None  # gone already: retry
    if owner_gone(owner) or time.time() - beat > stale_after:
        return owner
    return None


def _open_verified(final: Path, fingerprint: str, ids: list[str] | None) -> TripletCache:
    """The cache at ``final`` with the rows of ``ids`` (default: all) verified."""
    cache = TripletCache.open(final, fingerprint)
    rows = None if ids is None else [cache.row_of[t] for t in ids if t in cache.row_of]
    try:
        cache.verify(rows)
    except CacheError as exc:  # the builder (holding the lock) replaces it
        log.warning("%s; rebuilding it", exc)
        raise
    return cache


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
    while True:
        try:
            return _open_verified(final, fingerprint, ids)
        except CacheError as exc:
            reason = str(exc)
        if create_exclusive(lock, owner_record()):
            try:
                try:  # finished by another process between our check and the lock
                    return _open_verified(final, fingerprint, ids)
                except CacheError:
                    pass
                cache_build.remove_dead_builds(final, stale_after)
                log.info("cache %s: building (%s)", final, reason)
                cache_build.build(
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
            continue
        owner = _stale(lock, stale_after)
        if owner is not None:
            if take_over(lock, owner):
                log.warning("cache %s: taking over the stale lock %s", final, lock)
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
