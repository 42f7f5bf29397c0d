"""Worker processes that never outlive the process that started them.

A decoding worker (the cache build's process pool, a ``DataLoader`` worker) holds images in
memory; if its parent is killed (``SIGKILL``, a cluster's time limit, out of memory) it
must exit too, not keep running as an orphan. :func:`die_with_parent` runs in the worker:
it watches the parent through a Linux ``pidfd`` (readable as soon as the parent exits),
falling back to polling where there is none, and ends the worker at once.
"""

from __future__ import annotations

import os
import select
import threading
import time

from attackpsm.locks import pid_alive

POLL_S = 0.5


def _watch(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # returns when the parent has exited
        os._exit(1)
    while pid_alive(pid) and os.getppid() != 1:
        time.sleep(POLL_S)
    os._exit(1)


def die_with_parent(parent_pid: int, *_: object) -> None:
    """Exit this process as soon as ``parent_pid`` is gone (a daemon thread watches it).

    Usable as a ``ProcessPoolExecutor`` initializer (``initargs=(os.getpid(),)``) or, through
    :func:`functools.partial`, as a ``DataLoader`` ``worker_init_fn`` (which passes the worker
    id as a second argument).
    """
    if not pid_alive(parent_pid):
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), daemon=True, name="die-with-parent").start()
