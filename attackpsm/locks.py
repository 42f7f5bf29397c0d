"""The one way a file of a run is written: a uniquely named temporary file, then a rename.

``os.replace`` is atomic on POSIX file systems, so a reader sees the old file or the new
one, never half of one, and a process killed while writing leaves at most a stray
``.<name>.<pid>.<random>.tmp`` next to the target. The temporary name is unique per
writer (process id and a random token), so concurrent writers of the same file never
write into, or rename away, each other's temporary file: the last rename wins, and since
every writer of a run file writes the same content, which one wins does not matter.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("attackpsm")

TMP_SUFFIX = ".tmp"
# a temporary file this old belongs to a writer that died (a SIGKILL between write and rename)
ABANDONED_AFTER_S = 3600.0


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
