"""Content digests of dataset files, memoised on each file's identity on disk.

The data fingerprint of a run (:meth:`TripletDataset.fingerprint
<attackpsm.data.base.TripletDataset.fingerprint>`) covers the *bytes* of every file the run
reads, so results are only ever reused or merged for the very data they were computed from.
Reading a whole dataset for every run would cost minutes on BAPPS, so each file's digest is
memoised on ``(device, inode, size, mtime_ns, ctime_ns)``: an unchanged file is not read
again. Any write to a file changes its ctime (restoring the mtime with ``touch`` or
``os.utime`` changes the ctime too), and replacing it changes the inode, so a memoised
digest is never used for edited bytes.

A file whose ctime is within :data:`RACY_S` seconds of the moment it was hashed is not
memoised: a write in the same timestamp tick could otherwise leave the stat unchanged (the
"racy" case of ``git``'s index). Such a file is simply hashed again next time.

The memo of a dataset root is one JSON file (plain data, size-limited) under
``$ATTACKPSM_DIGESTS`` (default ``~/.cache/attackpsm/digests``), written atomically; a
missing, unreadable or foreign memo is ignored and rebuilt. BLAKE2b (``hashlib``) is the
hash: cryptographic, so a file cannot be crafted to keep another's digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from attackpsm.locks import write_text_atomic

log = logging.getLogger("attackpsm")

ENV = "ATTACKPSM_DIGESTS"
RACY_S = 2.0  # coarse file-system timestamps (FAT: 2 s) stay out of the memo
MEMO_FORMAT = 1
MAX_MEMO_BYTES = 256 << 20  # a memo larger than this is not read (about 2 M files)
_READ = 1 << 20


def digest_bytes(data: bytes | memoryview) -> str:
    """The content digest of one file's bytes (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def combine(parts: list[str]) -> str:
    """One digest for several (the files of one triplet, in order)."""
    return digest_bytes("\n".join(parts).encode())


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def memo_dir() -> Path:
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "attackpsm" / "digests")


class DigestMemo:
    """Digests of the files under one root, read only when a file's identity changed.

    Args:
        root: the dataset root (its resolved path names the memo file).
        store: folder of the memo files (default: :func:`memo_dir`); ``None`` entries are
            kept in memory only when the folder cannot be written.
    """

    def __init__(self, root: str | os.PathLike, store: str | os.PathLike | None = None):
        real = os.path.realpath(root)
        self.root = real
        name = hashlib.sha256(real.encode()).hexdigest()[:16]
        self.path = Path(store or memo_dir()) / f"{name}.json"
        self.entries: dict[str, list] = {}
        self.changed = False
        self.read = 0  # files actually read (not answered by the memo)
        self._load()

    def _load(self) -> None:
        try:
            if self.path.stat().st_size > MAX_MEMO_BYTES:
                return
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if (
            isinstance(data, dict)
            and data.get("format") == MEMO_FORMAT
            and data.get("root") == self.root
            and isinstance(data.get("files"), dict)
        ):
            self.entries = {
                k: v
                for k, v in data["files"].items()
                if isinstance(v, list) and len(v) == 6 and isinstance(v[5], str)
            }

    def digest(self, path: str | os.PathLike, key: str, st: os.stat_result | None = None) -> str:
        """The digest of the file at ``path`` (memoised under ``key``, its path in the root).

        ``st``: the file's ``stat`` when the caller has it (saves a system call).

        Raises:
            OSError: the file cannot be opened or read (missing, unreadable, I/O error).
        """
        entry = self.entries.get(key)
        if entry is not None and entry[:5] == _stat_key(st or os.stat(path)):
            return entry[5]  # unchanged since it was hashed: not read again
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())  # of the very file read
            stat = _stat_key(st)
            started = time.time_ns()
            h = hashlib.blake2b(digest_size=16)
            while chunk := fh.read(_READ):
                h.update(chunk)
            self.read += 1
        digest = h.hexdigest()
        if started - max(st.st_ctime_ns, st.st_mtime_ns) > RACY_S * 1e9:
            self.entries[key] = [*stat, digest]
            self.changed = True
        elif key in self.entries:
            del self.entries[key]
            self.changed = True
        return digest

    def save(self) -> None:
        """Write the memo (atomically) if it changed; a read-only store is not an error."""
        if not self.changed:
            return
        blob = json.dumps({"format": MEMO_FORMAT, "root": self.root, "files": self.entries})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, blob)
        except OSError as exc:
            log.warning("file digests not memoised in %s: %s", self.path, exc)
            return
        self.changed = False
