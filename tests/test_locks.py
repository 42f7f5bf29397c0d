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

# contends for the lock at argv[1] once the file argv[2] exists, for argv[3] seconds, taking it
# over only from a dead owner; a winner holds it (alive) until the file argv[4] exists
CONTENDER = """
import sys, time
from pathlib import Path
from attackpsm.locks import create_exclusive, owner_gone, owner_record, read_lock, take_over
lock, go, window, stop = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
print("READY", flush=True)
while not go.exists():
    time.sleep(0.01)
until, won = time.monotonic() + window, False
while not won and time.monotonic() < until:
    won = create_exclusive(lock, owner_record())
    owner, _ = read_lock(lock)
    if not won and owner is not None and owner_gone(owner):
        take_over(lock, owner)
print("WON" if won else "LOST", flush=True)
while won and not stop.exists():
    time.sleep(0.01)
"""

# rewrites argv[1] atomically, forever: argv[2] bytes, all 1, then all 2, then all 1, ...
WRITER = """
import sys
from attackpsm.locks import write_bytes_atomic
versions = [bytes([1]) * int(sys.argv[2]), bytes([2]) * int(sys.argv[2])]
print("WRITING", flush=True)
k = 0
while True:
    k += 1
    write_bytes_atomic(sys.argv[1], versions[k % 2])
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
    go, stop = tmp_path / "go", tmp_path / "stop"
    contenders = [_start(CONTENDER, lock, go, 3, stop) for _ in range(4)]
    for p in contenders:
        _wait_for(p, "READY")
    go.touch()  # all at once
    try:
        said = [p.stdout.readline().strip() for p in contenders]  # each once it has decided
    finally:
        stop.touch()
    for p in contenders:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
    assert sorted(said) == ["LOST", "LOST", "LOST", "WON"], said


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
    kills, seen = 0, set()
    # until a kill lands in the middle of a write (it leaves a temporary file), and at least 5
    while kills < 5 or not list(tmp_path.glob(".data.bin.*.tmp")):
        assert kills < 40, "no kill landed in the middle of a write"
        writer = _start(WRITER, target, size)
        _wait_for(writer, "WRITING")
        time.sleep(0.05 + 0.07 * (kills % 7))
        _kill(writer)
        kills += 1
        data = target.read_bytes()
        assert len(data) == size and data == bytes([data[0]]) * size  # one whole version
        seen.add(data[0])
    assert seen - {0}  # the writers did replace the file
    # the temporary files of killed writers are left next to it, and cleared when old
    left = list(tmp_path.glob(".data.bin.*.tmp"))
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
