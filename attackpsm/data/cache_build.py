"""Building a decoded-triplet cache: decode every triplet once, verify, install complete.

Called by :func:`attackpsm.data.cache.ensure_cache` while it holds the builder's lock. The
rows are decoded into a memory-mapped file in a temporary directory (in parallel by a
process pool whose workers die with this process), read back and checked against the
checksums of what was decoded, flushed to disk, and the directory is renamed into place
(:func:`attackpsm.locks.replace_directory`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attackpsm.data.base import TripletDataset
from attackpsm.data.cache_format import COMPLETE, FORMAT, IMAGES, INDEX, CacheError, row_checksum
from attackpsm.data.workers import die_with_parent
from attackpsm.images import to_uint8
from attackpsm.locks import fsync_file, owner_gone, replace_directory, write_synced

log = logging.getLogger("attackpsm")

TMP_MARK = ".tmp-"  # .<cache name>.tmp-<host>-<pid>: the directory a builder writes into


def fill(dataset: TripletDataset, path: str, shape: tuple[int, ...], start: int, stop: int):
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


def _decode_all(
    dataset: TripletDataset,
    images: Path,
    shape: tuple[int, ...],
    workers: int,
    chunk: int,
    on_chunk: Callable[[int], None],
) -> tuple[dict[int, str], list[str | None], list[str | None]]:
    """Fill every row of ``images`` (:func:`fill`, in ``workers`` processes); ``on_chunk(n)``
    after each chunk of ``n`` rows. Returns the error rows, checksums and data digests."""
    n = shape[0]
    spans = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    errors: dict[int, str] = {}
    checksums: list[str | None] = [None] * n
    digests: list[str | None] = [None] * n

    def done(s: int, e: int, errs: dict[int, str], sums: list, digs: list) -> None:
        errors.update(errs)
        checksums[s:e], digests[s:e] = sums, digs
        on_chunk(e - s)

    workers = max(1, min(workers, len(spans)))
    if workers == 1:
        for s, e in spans:
            done(*fill(dataset, str(images), shape, s, e))
        return errors, checksums, digests
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("forkserver")
    # the workers exit as soon as this process dies (even by SIGKILL): no orphans
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        futures = [pool.submit(fill, dataset, str(images), shape, s, e) for s, e in spans]
        for fut in as_completed(futures):
            done(*fut.result())
    return errors, checksums, digests


def _check_written(images: Path, shape: tuple[int, ...], checksums: list) -> list[int]:
    """The rows of the flushed image file whose bytes differ from what was decoded."""
    fsync_file(images)
    written = np.memmap(images, dtype=np.uint8, mode="r", shape=shape)
    bad = [i for i in range(shape[0]) if f"{row_checksum(written[i]):016x}" != checksums[i]]
    del written
    return bad


def build(
    dataset: TripletDataset,
    final: Path,
    fingerprint: str,
    workers: int,
    chunk: int,
    progress: bool,
    heartbeat: Callable[[], None],
) -> None:
    """Build the cache of ``dataset`` and install it at ``final`` (replacing an old one).

    Args:
        heartbeat: called after each decoded chunk (the caller refreshes its lock).
    Raises:
        CacheError: the file read back differs from what was decoded (nothing installed).
    """
    from tqdm.auto import tqdm

    tmp = final.parent / f".{final.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n, size = len(dataset), dataset.size
    shape = (n, 3, 3, size, size)
    images = tmp / IMAGES
    np.memmap(images, dtype=np.uint8, mode="w+", shape=shape).flush()
    bar = tqdm(total=n, desc=f"cache {final.name}", unit="triplet", disable=not progress)

    def on_chunk(rows: int) -> None:
        bar.update(rows)
        heartbeat()

    errors, checksums, digests = _decode_all(dataset, images, shape, workers, chunk, on_chunk)
    bar.close()
    bad = _check_written(images, shape, checksums)
    if bad:  # what was written is not what was decoded: never install it
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(f"cache {final}: rows {bad[:5]} read back differently than written")
    index: dict[str, Any] = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "shape": list(shape),
        "ids": [r.triplet_id for r in dataset.records],
        "errors": {str(k): v for k, v in sorted(errors.items())},
        "checksums": checksums,
        "data_digest": digests,
    }
    index_bytes = json.dumps(index).encode()
    (tmp / INDEX).write_bytes(index_bytes)
    marker = {
        "fingerprint": fingerprint,
        "images_bytes": math.prod(shape),
        "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "triplets": n,
        "errors": len(errors),
    }
    write_synced(tmp / COMPLETE, json.dumps(marker).encode())  # last: it means complete
    replace_directory(tmp, final)  # readers keep their open memmap of the old files
    log.info("cache %s: %d triplets (%d unusable) built", final, n, len(errors))


def remove_dead_builds(final: Path, stale_after: float) -> None:
    """Delete the temporary directories of builders that died (same host) or went silent."""
    for tmp in final.parent.glob(f".{final.name}{TMP_MARK}*"):
        owner = tmp.name.rsplit(TMP_MARK, 1)[1].rsplit("-", 1)
        dead = (
            len(owner) == 2
            and owner[1].isdigit()
            and owner_gone({"host": owner[0], "pid": int(owner[1])})
        )
        try:
            silent = time.time() - tmp.stat().st_mtime > stale_after
        except OSError:
            continue
        if dead or silent:
            shutil.rmtree(tmp, ignore_errors=True)
