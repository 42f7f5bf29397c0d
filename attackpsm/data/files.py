"""Reading triplets from disk: strict RGB image decoding, dataset roots, layout errors.

Shared by the on-disk loaders (:mod:`~attackpsm.data.bapps`, :mod:`~attackpsm.data.pieapp`,
:mod:`~attackpsm.data.clic`, :mod:`~attackpsm.data.transfer`). Problems with one triplet's
data (a truncated, grey or RGBA image, too many pixels, a symlink loop, a path or link
leaving the root, a file already missing when the data was indexed) raise
:class:`ImageError`, which the dataset turns into an error row. A file that cannot be read
*now* (moved away during the run, unreadable, an I/O error) or whose bytes changed since the
run's fingerprint raises :class:`~attackpsm.data.base.DataUnavailable`: the batch fails and
a re-run retries it. Problems with the dataset as a whole (no root, wrong layout, nothing
usable) raise :class:`DatasetLayoutError`, which stops the run with the expected layout in
the message.

Every image is read into memory once, its bytes hashed (checked against the digest in the
run's fingerprint, :mod:`attackpsm.data.digests`) and decoded from those very bytes, so the
pixels a row was computed from are the bytes its fingerprint covers. The image size is read
from the header and refused above ``max_pixels`` before anything is decoded.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attackpsm.data.base import DataError, DataUnavailable, TripletDataset, TripletRecord
from attackpsm.data.digests import DigestMemo, combine, digest_bytes
from attackpsm.images import from_uint8

ROLES = ("ref", "p0", "p1")
# Larger than any image of the paper's datasets (CLIC's largest are about 2048 x 2048):
# 25 M pixels decode to 75 MB of 8-bit RGB, 300 MB as floats per image.
MAX_PIXELS = 25_000_000
# digest markers of files that are not read (the reason the triplet is skipped)
MISSING, LOOP, OUTSIDE, TOO_LARGE = "missing", "symlink-loop", "outside-root", "too-large"
MARKERS = (MISSING, LOOP, OUTSIDE, TOO_LARGE)


def is_digest(value: str | None) -> bool:
    """Whether a :func:`file_digests` value is a digest (not a marker of an unread file)."""
    return bool(value) and value.split(":", 1)[0] not in MARKERS


class DatasetLayoutError(FileNotFoundError):
    """The dataset root is missing, laid out differently, or yields no usable triplet."""


class ImageError(DataError):
    """One image of a triplet cannot be used (the triplet is skipped, not the run)."""


def outside_root(rel: str | os.PathLike) -> bool:
    """Whether a path named by an index file leaves the folder it is relative to.

    An absolute path, or one whose ``..`` components climb above the folder, is outside:
    index files (CSV rows, manifests) must not make a loader read anywhere else. Checked
    on the text of the path, before the file system is touched.
    """
    rel = os.fspath(rel)
    if os.path.isabs(rel) or os.path.splitdrive(rel)[0]:
        return True
    norm = os.path.normpath(rel)
    return norm == os.pardir or norm.startswith(os.pardir + os.sep)


def outside_root_reason(root: Path, files: tuple[str, ...] | list[str]) -> str | None:
    """The error row of a triplet whose files leave ``root`` (``None``: all inside)."""
    bad = [str(f) for f in files if outside_root(f)]
    if bad:
        return f"path outside the dataset root {root}: {', '.join(bad)}"
    return None


def decode_rgb(data: bytes, max_pixels: int | None = MAX_PIXELS) -> torch.Tensor:
    """Decode an 8-bit RGB image file's bytes to a ``(3, H, W)`` tensor in ``[-1, 1]``.

    Only true RGB is accepted: a grey, palette or RGBA file is refused rather than
    converted, since the datasets of the paper are RGB and a silent conversion would
    hide a broken file. The size is checked from the header, before any pixel is decoded:
    more than ``max_pixels`` is refused (``None``: no limit). Undecodable bytes (truncated,
    not an image) are an :class:`ImageError`; running out of memory is not.
    """
    buffer = io.BytesIO(data)
    try:
        with Image.open(buffer) as im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(
                    f"{width}x{height} = {width * height} pixels, above "
                    f"dataset.max_pixels={max_pixels} (refused before decoding)"
                )
            if im.mode != "RGB":
                raise ImageError(f"mode {im.mode}, expected RGB")
            im.load()
            array = np.asarray(im)
    except (ImageError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:  # above Pillow's own limit: too many pixels
        raise ImageError(f"too many pixels: {exc}") from exc
    except Exception as exc:  # the bytes are in memory: a decoding failure is the file's
        message = str(exc).replace(repr(buffer), "(its bytes)")  # no object address
        raise ImageError(f"{type(exc).__name__}: {message}") from exc
    return from_uint8(array)


def read_rgb(path: Path, max_pixels: int | None = MAX_PIXELS) -> torch.Tensor:
    """:func:`decode_rgb` of the file at ``path`` (an ``OSError`` if it cannot be read)."""
    return decode_rgb(Path(path).read_bytes(), max_pixels)


def too_large_reason(size: int | str, max_pixels: int | None) -> str:
    return f"file of {size} bytes, larger than any image within dataset.max_pixels={max_pixels}"


def max_file_bytes(max_pixels: int | None) -> int | None:
    """The largest file an image within ``max_pixels`` can be: 8 bytes a pixel (more than an
    uncompressed 8-bit RGBA PNG with its filter bytes) plus 1 MiB of metadata."""
    return None if max_pixels is None else 8 * max_pixels + (1 << 20)


class FileTriplets(TripletDataset):
    """A triplet set whose records carry ``files`` relative to ``self.root``, read with the
    checks of this module (set ``root``, ``max_pixels`` and ``follow_symlinks``)."""

    root: Path
    max_pixels: int | None = MAX_PIXELS
    follow_symlinks: bool = False

    def file_digests(self) -> dict[str, str]:
        digests = getattr(self, "_digests", None)
        if digests is None:
            self._resolver = Resolver(self.root, self.follow_symlinks)  # kept for the loads
            digests = file_digests(
                self.root, self.records, self.follow_symlinks, self._resolver, self.max_pixels
            )
            self._digests = digests
        return digests

    def row_digests(self) -> dict[str, str]:
        digests = self.file_digests()
        out = {}
        for r in self.records:
            parts = [digests.get(rel) for rel in r.files or ()]
            if r.error is None and parts and all(is_digest(p) for p in parts):
                out[r.triplet_id] = combine(parts)
        return out

    def load_triplet(
        self, record: TripletRecord
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], str]:
        reason = outside_root_reason(self.root, record.files)
        if reason is not None:  # the index should have caught it; never read it anyway
            raise ImageError(reason)
        self.fingerprint()  # the digests every file read is checked against
        images, digests = [], []
        for role, rel in zip(ROLES, record.files, strict=True):
            data, digest = self.read_file(rel, role)
            try:
                images.append(decode_rgb(data, self.max_pixels))
            except ImageError as exc:  # name the image so the errors table says which one
                raise ImageError(f"{role} {rel}: {exc}") from exc
            digests.append(digest)
        return tuple(images), combine(digests)

    def load_images(self, record: TripletRecord) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.load_triplet(record)[0]

    def read_file(self, rel: str, role: str) -> tuple[bytes, str]:
        """The bytes of ``root/rel`` and their digest, checked against the fingerprint's."""
        expected = self.file_digests().get(rel)
        if expected == MISSING:
            raise ImageError(f"{role} {rel}: FileNotFoundError: missing when the data was indexed")
        if expected == LOOP:
            raise ImageError(f"{role} {rel}: symlink loop")
        if expected == OUTSIDE:
            raise ImageError(f"{role} {rel}: {outside_link_reason(self.root)}")
        if expected is not None and expected.startswith(TOO_LARGE + ":"):
            size = expected.split(":", 1)[1]
            raise ImageError(f"{role} {rel}: {too_large_reason(size, self.max_pixels)}")
        limit = max_file_bytes(self.max_pixels)
        try:
            resolver = getattr(self, "_resolver", None)
            if resolver is None:
                resolver = self._resolver = Resolver(self.root, self.follow_symlinks)
            real, st = resolver.stat(rel)
            if limit is not None and st.st_size > limit:  # never read it into memory
                raise ImageError(too_large_reason(st.st_size, self.max_pixels))
            with open(real, "rb") as fh:
                data = fh.read()
        except ImageError as exc:
            raise ImageError(f"{role} {rel}: {exc}") from exc
        except OSError as exc:
            raise DataUnavailable(
                f"{role} {rel} under {self.root} could not be read "
                f"({type(exc).__name__}: {exc.strerror or exc}). Not recorded as a skip: the "
                "batch fails and a re-run retries it"
            ) from exc
        digest = digest_bytes(data)
        if expected is not None and digest != expected:
            raise DataUnavailable(
                f"{role} {rel} under {self.root} changed since this run's data fingerprint was "
                "taken: its rows would mix old and new data. Not recorded: re-run once the data "
                "is final (changed data gets a run directory of its own)"
            )
        return data, digest


class DiskTriplets(FileTriplets):
    """A triplet set whose records carry ``files`` relative to ``root``.

    Args:
        size: output side length (``None`` = native), see :class:`TripletDataset`.
        root: dataset folder; ``None`` is an error naming ``env`` and the expected layout.
        quantize: 8-bit images after resizing (the paper's protocol), see :class:`TripletDataset`.
        max_pixels: images with more pixels are recorded skips, refused before decoding.
        follow_symlinks: read files whose symbolic links lead outside ``root`` (False: such a
            file is a recorded skip; links that stay inside are always followed).
    """

    layout = ""  # the expected folder layout, quoted in every DatasetLayoutError
    env = ""  # environment variable that may hold the root (see conf/dataset/*.yaml)

    def __init__(
        self,
        size: int | None = None,
        root: str | os.PathLike | None = None,
        quantize: bool = True,
        max_pixels: int | None = MAX_PIXELS,
        follow_symlinks: bool = False,
    ):
        super().__init__(size, quantize)
        if root is None or str(root) == "":
            raise self.layout_error(f"no dataset.root given (set dataset.root=... or ${self.env})")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise self.layout_error(f"dataset root {self.root} does not exist")
        check_reading(max_pixels, follow_symlinks)
        self.max_pixels = max_pixels
        self.follow_symlinks = follow_symlinks

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


def check_reading(max_pixels: object, follow_symlinks: object) -> None:
    """Refuse a bad ``dataset.max_pixels`` or ``dataset.follow_symlinks``, naming the value."""
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
    ):
        raise ValueError(
            f"dataset.max_pixels must be a positive integer or null (no limit), got {max_pixels!r}"
        )
    if not isinstance(follow_symlinks, bool):
        raise ValueError(f"dataset.follow_symlinks must be true or false, got {follow_symlinks!r}")


def outside_link_reason(root: Path) -> str:
    return (
        f"a symbolic link leads outside the dataset root {root} "
        "(set dataset.follow_symlinks=true to read it)"
    )


class Resolver:
    """Resolves ``root/rel`` to the real file, refusing loops and (unless ``follow_symlinks``)
    links that leave ``root``.

    The real path of each folder is looked up once (a dataset has few folders and many
    files); the file itself is checked every time.
    """

    def __init__(self, root: Path, follow_symlinks: bool):
        self.root, self.follow = Path(root), follow_symlinks
        self.root_text = os.fspath(root)
        self.top = os.path.realpath(root)
        self.inside = os.path.join(self.top, "")  # with the separator: not a mere prefix
        self.folders: dict[str, str] = {}

    def __call__(self, rel: str) -> Path:
        """The real path of ``root/rel``.

        Raises:
            ImageError: a symlink loop, or a link leading outside ``root`` (not followed):
                properties of the data.
            OSError: the file is missing or cannot be reached.
        """
        return Path(self.stat(rel)[0])

    def stat(self, rel: str) -> tuple[str, os.stat_result]:
        """:meth:`__call__` as a string, with the file's ``stat`` (one system call when
        the file itself is no link)."""
        folder, name = os.path.split(os.path.join(self.root_text, rel))
        try:
            real_folder = self.folders.get(folder)
            if real_folder is None:
                real_folder = self.folders[folder] = os.path.realpath(folder, strict=True)
            real = os.path.join(real_folder, name)
            st = os.lstat(real)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(real, strict=True)
                st = os.stat(real)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageError("symlink loop") from exc
            raise
        if not self.follow and real != self.top and not real.startswith(self.inside):
            raise ImageError(outside_link_reason(self.root))
        return real, st


def resolve_inside(root: Path, rel: str, follow_symlinks: bool) -> Path:
    """``root/rel`` with its symbolic links resolved (see :class:`Resolver`)."""
    return Resolver(root, follow_symlinks)(rel)


def file_digests(
    root: Path,
    records: list[TripletRecord],
    follow_symlinks: bool = False,
    resolve: Resolver | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> dict[str, str]:
    """The digest of every file ``records`` name under ``root``, or why it is not read.

    A file missing, in a symlink loop, (unless ``follow_symlinks``) reached through a link
    leaving ``root``, or larger than any image within ``max_pixels`` gets a marker instead
    (:data:`MISSING`, :data:`LOOP`, :data:`OUTSIDE`, ``too-large:<bytes>``) and is not read;
    its triplet is then a recorded skip. Any other read error raises
    :class:`~attackpsm.data.base.DataUnavailable`.
    """
    memo = DigestMemo(root)
    resolve = resolve or Resolver(root, follow_symlinks)
    limit = max_file_bytes(max_pixels)
    out: dict[str, str] = {}
    for r in records:
        if r.error is not None:
            continue
        for rel in r.files or ():
            if rel in out or outside_root(rel):
                continue
            try:
                real, st = resolve.stat(rel)
                if limit is not None and st.st_size > limit:  # not read: a recorded skip
                    out[rel] = f"{TOO_LARGE}:{st.st_size}"
                    continue
                out[rel] = memo.digest(real, rel, st)
            except ImageError as exc:
                out[rel] = LOOP if "loop" in str(exc) else OUTSIDE
            except (FileNotFoundError, NotADirectoryError):
                out[rel] = MISSING  # the dataset as indexed lacks it: its triplet is skipped
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    out[rel] = LOOP
                    continue
                memo.save()
                raise DataUnavailable(
                    f"{rel} under {root} could not be read to fingerprint the data "
                    f"({type(exc).__name__}: {exc.strerror or exc}); fix its permissions or the "
                    "storage and re-run"
                ) from exc
    memo.save()
    return out
