"""Locks and atomic writes: the package's one home for both.

**Atomic writes.** A file is written under a uniquely named temporary name, then renamed
onto its target. ``os.replace`` is atomic on POSIX file systems, so a reader sees the old
file or the new one, never half of one, and a process killed while writing leaves at most
a stray ``.<name>.<pid>.<random>.tmp`` next to the target (:func:`remove_abandoned` clears
those of dead writers). The temporary name is unique per writer (process id and a random
token), so concurrent writers of the same file never write into, or rename away, each
other's temporary file: the last rename wins, and since every writer of a run file writes
the same content, which one wins does not matter. A directory is installed the same way
(:func:`replace_directory`), after its files were flushed to disk (:func:`fsync_file`).

**Lock files.** A lock is a small file holding its owner's record (host, process id, a
random token, when it was taken; :func:`owner_record`), created so that exactly one of
several concurrent creators succeeds and the file is never seen half written
(:func:`create_exclusive`: a complete temporary file hard-linked to the lock's name, or
``O_EXCL`` where the file system has no hard links). Its owner keeps it fresh by touching
it. Whoever finds a lock decides whether its owner is gone -- its process no longer runs on
this host (:func:`owner_gone`), its heartbeat is too old, or a reason of its own -- and
then takes it over (:func:`take_over`): of several processes doing so at once, exactly one
removes the stale lock, and never a fresh one.

**Checksums of written files.** :func:`sha256_file` is the one SHA-256 of a file's bytes
(finished-shard records, ``merged.json``, pinned downloads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("attackpsm")

TMP_SUFFIX = ".tmp"
# a temporary file this old belongs to a writer that died (a SIGKILL between write and rename)
ABANDONED_AFTER_S = 3600.0
# a lock file is a few hundred bytes; anything much larger is not one
MAX_LOCK_BYTES = 64 * 1024


# --- atomic writes ------------------------------------------------------------------------


def temporary_name(path: Path) -> Path:
    """A unique temporary sibling of ``path`` (same folder, so the rename stays atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a unique temporary name, then rename it onto ``path``.

    Args:
        path: the file to create or replace.
        write: writes the complete content to the path it is given.
    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def remove_abandoned(folder: str | os.PathLike, older_than_s: float = ABANDONED_AFTER_S) -> int:
    """Delete temporary files of :func:`write_atomic` in ``folder`` left by dead writers.

    Only files older than ``older_than_s`` go (no live writer takes that long between
    write and rename). Returns how many were deleted; says so in one line when any were.
    """
    folder = Path(folder)
    cutoff = time.time() - older_than_s
    removed = 0
    for tmp in folder.glob(f".*{TMP_SUFFIX}") if folder.is_dir() else ():
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.warning("%s: removed %d temporary files of interrupted writes", folder, removed)
    return removed


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's content to disk (e.g. one written through a memory map)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_synced(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk before returning."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def replace_directory(tmp: Path, final: Path) -> None:
    """Rename the complete directory ``tmp`` onto ``final``, replacing an old one.

    The old directory is renamed away first and deleted after, so a reader sees the old
    complete directory, none, or the new complete one; one that has the old files open (a
    memory map) keeps reading them.
    """
    old = final.parent / f".{final.name}.old-{socket.gethostname()}-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# --- liveness -----------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def owner_gone(owner: Mapping[str, Any]) -> bool:
    """Whether ``owner`` (``host``, ``pid``) ran on this host and its process is gone.

    Only this host's processes can be checked: an owner elsewhere is never judged gone
    here, nor is this process itself.
    """
    pid = owner.get("pid")
    return (
        owner.get("host") == socket.gethostname()
        and isinstance(pid, int)
        and pid != os.getpid()
        and not pid_alive(pid)
    )


# --- lock files ---------------------------------------------------------------------------


def owner_record(**extra: str) -> dict[str, Any]:
    """Who this process is: host, pid, ``extra`` fields, a unique token and the time."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **extra,
        "token": secrets.token_hex(8),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def create_exclusive(path: Path, owner: Mapping[str, Any]) -> bool:
    """Create the lock file ``path`` holding ``owner``; False if it exists already.

    The record is written and flushed to a temporary file first, then hard-linked to
    ``path``: exactly one of several concurrent creators succeeds and the lock appears
    complete. On a file system without hard links the lock is created with ``O_EXCL`` and
    written right after (empty for a few microseconds).
    """
    data = json.dumps(owner).encode()
    tmp = temporary_name(path)
    try:
        write_synced(tmp, data)
        try:
            os.link(tmp, path)  # atomic and exclusive: the lock appears complete
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    return True


def read_lock(path: Path) -> tuple[dict[str, Any] | None, float | None]:
    """The owner record and last heartbeat (mtime) of a lock file; ``None``s when it is gone.

    An empty, oversized or unreadable lock reads as ``{}`` (no owner known).
    """
    beat = time.time()
    try:
        info = path.stat()
        beat = info.st_mtime
        if info.st_size > MAX_LOCK_BYTES:
            return {}, beat
        owner = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, RecursionError):  # debris of a failed write
        return {}, beat
    return (owner if isinstance(owner, dict) else {}), beat


def take_over(path: Path, owner: Mapping[str, Any]) -> bool:
    """Remove the stale lock ``path`` of ``owner``; of several processes at once, one succeeds.

    The lock is renamed aside first. If the file moved aside is not the one judged stale
    (another process took the lock over in between and created a fresh one, with another
    token), it is linked back in place and False is returned.
    """
    aside = path.with_name(f"{path.name}.stale-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another process moved it first
    moved, _ = read_lock(aside)
    if moved and moved.get("token") != owner.get("token"):
        with contextlib.suppress(FileExistsError):  # fails if a newer one replaced it
            os.link(aside, path)  # a fresh lock: give it back
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True
