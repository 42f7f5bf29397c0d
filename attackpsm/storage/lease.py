"""One writer per shard: a lease file created atomically, kept alive by a heartbeat.

A writer writes who it is -- host, process id, SLURM job, array task and restart count when
set, and a random token -- to a temporary file and hard-links it to
``shard-<i>-of-<n>.lease`` (exactly one of several concurrent creators succeeds, and the
lease is never seen half written: a lock file of :mod:`attackpsm.locks`). A background
thread touches the file every ``heartbeat_s`` seconds while the shard runs. Another writer
of the same shard waits (up to ``wait_s`` seconds) for the lease to go away, then exits with
an error naming the owner.

A lease is taken over only when its owner is really gone:

* its heartbeat is older than ``stale_s`` seconds (a dead host, a stopped process);
* its owner ran on this host and that process no longer exists (a SIGKILLed run);
* its owner is an earlier attempt of this SLURM job: same job (and array task) id and a
  smaller ``SLURM_RESTART_COUNT`` (SLURM raises it on every requeue). A matching job id
  alone proves nothing: two live processes can share one (``srun`` steps, a copied
  environment);
* the file is empty or unreadable (for over a second): creation never leaves one (the
  content is complete before the link), so it is the debris of a failed write (a full disk).

A writer that finds its lease taken over stops before writing anything more
(:meth:`Lease.check`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attackpsm.locks import create_exclusive, owner_gone, owner_record, read_lock, take_over

log = logging.getLogger("attackpsm")

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
# a lease appears complete (hard link); only on a file system without hard links is it
# created empty and written microseconds later: an empty lease older than this is debris
EMPTY_GRACE_S = 1.0


class LeaseHeld(RuntimeError):
    """Another live writer holds the shard."""


class LeaseLost(RuntimeError):
    """This writer's lease was taken over (its heartbeat stopped for too long)."""


def lease_owner() -> dict[str, Any]:
    """Who this process is: host, pid, SLURM ids when set, and a unique token."""
    return owner_record(**{k.lower(): os.environ[k] for k in SLURM_VARS if os.environ.get(k)})


def describe(owner: dict[str, Any]) -> str:
    """``host h, pid 12, SLURM job 34_5, since ...``: an owner as a message names it."""
    parts = [f"host {owner.get('host', '?')}", f"pid {owner.get('pid', '?')}"]
    job = owner.get("slurm_array_job_id") or owner.get("slurm_job_id")
    if job:
        task = owner.get("slurm_array_task_id")
        parts.append(f"SLURM job {job}" + (f"_{task}" if task else ""))
    if owner.get("since"):
        parts.append(f"since {owner['since']}")
    return ", ".join(parts)


def _restart_count(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def requeued(owner: dict[str, Any], env: dict[str, str] | None = None) -> str | None:
    """Why ``owner`` is an earlier attempt of this process's SLURM job, or ``None``.

    Same job id (and array task id) and a smaller restart count than this process's
    ``SLURM_RESTART_COUNT``: SLURM runs one attempt of a job at a time and counts requeues.
    """
    env = dict(os.environ) if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job or str(owner.get("slurm_job_id")) != job:
        return None
    if str(owner.get("slurm_array_task_id", "")) != env.get("SLURM_ARRAY_TASK_ID", ""):
        return None
    mine = _restart_count(env.get("SLURM_RESTART_COUNT", 0))
    theirs = _restart_count(owner.get("slurm_restart_count", 0))
    if mine is None or theirs is None or mine <= theirs:
        return None
    return f"SLURM job {job} was requeued (restart count {theirs} -> {mine})"


class Lease:
    """The exclusive right to write one shard (see the module docstring).

    Args:
        path: the lease file.
        stale_s: a heartbeat older than this many seconds marks the owner dead.
        wait_s: how long :meth:`acquire` waits for a live owner before giving up.
        heartbeat_s: how often the owner touches the file (default ``stale_s / 4``, at most 30).
    """

    def __init__(
        self,
        path: Path,
        stale_s: float = 600.0,
        wait_s: float = 60.0,
        heartbeat_s: float | None = None,
    ):
        if not stale_s > 0 or not wait_s >= 0:  # NaN fails both comparisons
            raise ValueError(
                f"lease.stale_s must be > 0 and lease.wait_s >= 0, got {stale_s} and {wait_s}"
            )
        self.path = Path(path)
        self.stale_s, self.wait_s = float(stale_s), float(wait_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else min(30.0, stale_s / 4)
        self.owner: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # --- taking it ------------------------------------------------------------------------

    def _create(self) -> bool:
        owner = lease_owner()
        if not create_exclusive(self.path, owner):
            return False
        self.owner = owner
        return True

    def stale_reason(self, owner: dict[str, Any], beat: float) -> str | None:
        """Why a lease may be taken over, or ``None`` while its owner is alive."""
        age = time.time() - beat
        if not owner and age > EMPTY_GRACE_S:
            return "the lease file is empty or unreadable (the debris of a failed write)"
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f}s (lease.stale_s={self.stale_s:g})"
        if owner_gone(owner):
            return f"process {owner['pid']} on this host is gone"
        return requeued(owner)

    def _take_over(self, owner: dict[str, Any], reason: str) -> None:
        """Remove a stale lease (:func:`attackpsm.locks.take_over`: never a fresh one)."""
        if take_over(self.path, owner):
            log.warning(
                "%s: took over the stale lease of %s (%s)", self.path, describe(owner), reason
            )

    def acquire(self, done: Callable[[], bool] | None = None) -> bool:
        """Take the lease, waiting up to ``wait_s`` for a live owner to finish.

        Args:
            done: polled while waiting; when it turns true (the owner finished the shard)
                the wait ends without taking the lease.
        Returns:
            True when this process holds the lease, False when ``done()`` turned true.
        Raises:
            LeaseHeld: a live owner still holds it after ``wait_s`` seconds.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        announced = False
        while True:
            if self._create():
                self._start_heartbeat()
                return True
            owner, beat = read_lock(self.path)
            if owner is None:
                continue  # released between our attempt and the read: try again
            reason = self.stale_reason(owner, beat)
            if reason is not None:
                self._take_over(owner, reason)
                continue
            if done is not None and done():
                return False
            if time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"{self.path.parent.name}/{self.path.name} is held by a live writer "
                    f"({describe(owner)}); waited {self.wait_s:g}s (lease.wait_s). Two runs of "
                    "the same shard must not write at once: wait for it to finish and re-run "
                    "(a finished shard is reused), or, if that writer is truly gone, remove "
                    f"{self.path}"
                )
            if not announced:
                log.warning(
                    "%s is held by %s: waiting up to %gs",
                    self.path,
                    describe(owner),
                    self.wait_s,
                )
                announced = True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())) or 0.05)

    # --- holding it -----------------------------------------------------------------------

    def holds(self) -> bool:
        owner, _ = read_lock(self.path)
        return bool(owner and self.owner and owner.get("token") == self.owner["token"])

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this process still holds the lease."""
        if self.owner is None:
            raise LeaseLost(f"{self.path}: this process never held the lease")
        if self.lost or not self.holds():
            self.lost = True
            owner, _ = read_lock(self.path)
            now = describe(owner) if owner else "nobody"
            raise LeaseLost(
                f"{self.path}: the lease was taken over (held now by {now}) after this "
                f"writer's heartbeat stopped for over {self.stale_s:g}s; stopping without "
                "writing more (the new owner finishes the shard)"
            )

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="attackpsm-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.holds():
                self.lost = True
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.lost = True
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.owner is not None and self.holds():
            self.path.unlink(missing_ok=True)
        self.owner = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
