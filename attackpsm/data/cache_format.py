"""The decoded-triplet cache on disk: its identity, its files and their verified opening.

A cache directory (:mod:`attackpsm.data.cache`) holds ``images.u8`` (the ``uint8`` rows
``(N, 3 images, 3, H, W)``, a raw memory-mappable file), ``index.json`` (ids, error rows,
one XXH3-64 checksum and one data digest per row) and ``COMPLETE`` (written last: the
fingerprint, the image file's size and the index file's digest).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

import attackpsm
from attackpsm.data.base import TripletDataset

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
