"""The one locking module: lock files held by live processes are respected, those of dead
processes are taken over by exactly one of several contenders, and an atomic write killed
at any moment leaves the old file or the new one. Real processes, real files, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attackpsm.locks import (
    create_exclusive,
    owner_gone,
    owner_record,
    pid_alive,
    read_lock,
    remove_abandoned,
    take_over,
    write_bytes_atomic,
)
from attackpsm.storage.lease import Lease, LeaseHeld

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

# takes the lock at argv[1], says so, and holds it (without releasing) until killed
HOLDER = """
import sys, time
from pathlib import Path
from attackpsm.locks import create_exclusive, owner_record
assert create_exclusive(Path(sys.argv[1]), owner_record())
print("HELD", flush=True)
time.sleep(600)
"""

# contends for the lock at argv[1] for argv[2] seconds: takes it over only from a dead owner
CONTENDER = """
import sys, time
from pathlib import Path
from attackpsm.locks import create_exclusive, owner_gone, owner_record, read_lock, take_over
lock, until = Path(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:
    if create_exclusive(lock, owner_record()):
        print("WON", flush=True)
        time.sleep(float(sys.argv[2]))  # alive, holding it, while the others still try
        break
    owner, _ = read_lock(lock)
    if owner is not None and owner_gone(owner):
        take_over(lock, owner)
print("DONE", flush=True)
"""

# rewrites argv[1] atomically, forever: version k is SIZE bytes, all equal to k % 251
WRITER = """
import sys
from attackpsm.locks import write_bytes_atomic
size, k = int(sys.argv[2]), 0
print("WRITING", flush=True)
while True:
    k += 1
    write_bytes_atomic(sys.argv[1], bytes([k % 251]) * size)
"""


def _start(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _wait_for(proc: subprocess.Popen, word: str) -> None:
    line = proc.stdout.readline()
    assert line.strip() == word, (line, proc.stderr.read() if proc.poll() is not None else "")


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_liveness_of_real_processes():
    proc = _start("import time; time.sleep(600)")
    try:
        assert pid_alive(proc.pid)
        assert not owner_gone({"host": os.uname().nodename, "pid": proc.pid})
    finally:
        _kill(proc)
    assert not pid_alive(proc.pid)
    assert owner_gone({"host": os.uname().nodename, "pid": proc.pid})
    # another host's process is never judged from here, nor this process itself
    assert not owner_gone({"host": "another-host.invalid", "pid": proc.pid})
    assert not owner_gone({"host": os.uname().nodename, "pid": os.getpid()})


def test_a_live_owners_lock_is_not_taken(tmp_path):
    lock = tmp_path / "x.lock"
    holder = _start(HOLDER, lock)
    try:
        _wait_for(holder, "HELD")
        owner, _ = read_lock(lock)
        assert owner["pid"] == holder.pid and not owner_gone(owner)
        assert not create_exclusive(lock, owner_record())
        # a lease on the same file refuses, naming the holder, and leaves its lock alone
        with pytest.raises(LeaseHeld, match=rf"pid {holder.pid}"):
            Lease(lock, stale_s=600, wait_s=0.3).acquire()
        assert read_lock(lock)[0] == owner
    finally:
        _kill(holder)


def test_a_dead_owners_lock_is_taken_over(tmp_path, caplog):
    lock = tmp_path / "x.lock"
    holder = _start(HOLDER, lock)
    _wait_for(holder, "HELD")
    _kill(holder)  # SIGKILL: the lock file stays behind
    owner, _ = read_lock(lock)
    assert owner["pid"] == holder.pid and owner_gone(owner)
    lease = Lease(lock, stale_s=600, wait_s=0)
    with caplog.at_level("WARNING", logger="attackpsm"):
        assert lease.acquire()
    try:
        assert f"process {holder.pid} on this host is gone" in caplog.text
        assert lease.holds() and read_lock(lock)[0]["pid"] == os.getpid()
    finally:
        lease.release()
    assert not lock.exists()


def test_one_of_many_contenders_takes_over_a_dead_lock(tmp_path):
    lock = tmp_path / "x.lock"
    holder = _start(HOLDER, lock)
    _wait_for(holder, "HELD")
    _kill(holder)
    contenders = [_start(CONTENDER, lock, 4) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in contenders]
    for p, (_, err) in zip(contenders, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert sum(out.count("WON") for out, _ in outs) == 1, outs


def test_a_fresh_lock_is_never_taken_over(tmp_path):
    """A contender that judged an old lock stale and finds another's fresh lock in its place
    puts that one back: only the lock judged is ever removed."""
    lock = tmp_path / "x.lock"
    holder = _start(HOLDER, lock)
    try:
        _wait_for(holder, "HELD")
        fresh = read_lock(lock)[0]
        stale_judged = {**fresh, "token": "an owner that was here before"}
        assert not take_over(lock, stale_judged)
        assert read_lock(lock)[0] == fresh
        assert not list(tmp_path.glob("*.stale-*"))
    finally:
        _kill(holder)


def test_atomic_write_killed_leaves_old_or_new_file(tmp_path):
    target, size = tmp_path / "data.bin", 4 << 20
    write_bytes_atomic(target, bytes([0]) * size)
    for delay in (0.05, 0.13, 0.21, 0.37, 0.5):
        writer = _start(WRITER, target, size)
        _wait_for(writer, "WRITING")
        time.sleep(delay)
        _kill(writer)
        data = target.read_bytes()
        assert len(data) == size and data == bytes([data[0]]) * size  # one whole version
    # the temporary files of killed writers are left next to it, and cleared when old
    left = list(tmp_path.glob(".data.bin.*.tmp"))
    assert left  # some kills did land in the middle of a write
    assert remove_abandoned(tmp_path, older_than_s=0) == len(left)
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_lock_file_holds_its_owner(tmp_path):
    lock = tmp_path / "x.lock"
    me = owner_record(slurm_job_id="42")
    assert create_exclusive(lock, me) and not create_exclusive(lock, owner_record())
    assert json.loads(lock.read_text()) == me == read_lock(lock)[0]
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file it was linked from is gone
    lock.write_bytes(b"")
    assert read_lock(lock)[0] == {}  # debris of a failed write: no owner known
    lock.unlink()
    assert read_lock(lock) == (None, None)
