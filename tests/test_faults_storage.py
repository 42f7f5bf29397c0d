"""Faults of storage, injected with real processes and real files: every run ends with each
triplet exactly once, or stops with a message naming what is wrong.

Each row of the table in docs/guarantees.md names the test here that shows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attackpsm.commands.cluster import main as cluster_main
from attackpsm.storage import Lease, LeaseHeld, LeaseLost, StorageError, merge_shards, read_identity
from attackpsm.storage.shards import read_meta, write_parquet
from tests.dataset_fixtures import bapps_path, make_bapps, save_png, smooth_image

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("ATTACKPSM_", "SLURM_"))},
    "PYTHONUNBUFFERED": "1",
    "HYDRA_FULL_ERROR": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(ROOT),
}
TINY = [
    "dataset=synthetic",
    "dataset.num_triplets=16",
    "resolution.batch_size=4",
    "metric=l2",
    "attack=pgd",
    "logger=none",
    "progress=false",
    "device=cpu",
]


def app_cmd(args: list[str], tmp: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "attackpsm",
        *args,
        f"paths.results_dir={tmp / 'results'}",
        f"paths.log_dir={tmp / 'logs'}",
    ]


def app(args: list[str], tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        app_cmd(args, tmp), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def the_run_dir(results: Path) -> Path:
    (identity,) = results.rglob("identity.yaml")
    return identity.parent


def assert_complete(run_dir: Path, n: int = 16) -> pd.DataFrame:
    """``results.parquet`` holds each of the ``n`` triplets exactly once (with the errors)."""
    table = pd.read_parquet(run_dir / "results.parquet")
    errors = pd.read_parquet(run_dir / "errors.parquet")
    ids = [*table["triplet_id"], *errors["triplet_id"]]
    assert len(ids) == n and len(set(ids)) == n, (len(ids), len(set(ids)))
    assert (run_dir / "summary.md").exists()
    return table


def dead_pid() -> int:
    """The pid of a process that has ended (as a SIGKILLed writer's would be)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished run of ``TINY`` (one shard, four parts); tests work on copies of it."""
    tmp = tmp_path_factory.mktemp("finished")
    ok(app(TINY, tmp))
    return the_run_dir(tmp / "results")


def copy_run(finished: Path, tmp: Path) -> Path:
    """A copy of the finished run at the same place below ``tmp/results``."""
    rel = finished.relative_to(finished.parents[3])
    dest = tmp / "results" / rel
    shutil.copytree(finished, dest)
    return dest


# --- two writers on one shard -----------------------------------------------------------------


def test_second_writer_refuses_or_waits_and_never_writes(tmp_path):
    """A writer holds the shard (frozen with SIGSTOP mid-run): a second writer with a short
    wait exits 1 naming the owner; a third, started at the same time with a longer wait,
    waits for it and then reuses its result; each triplet is computed once."""

    def start(args: list[str], log: Path) -> subprocess.Popen:
        return subprocess.Popen(
            app_cmd(args, tmp_path),
            cwd=ROOT,
            env=ENV,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    logs = {name: tmp_path / f"{name}.log" for name in ("first", "refused", "waiter")}
    first = start(TINY, logs["first"])
    procs = [first]
    try:
        lease = wait_for(
            lambda: next((tmp_path / "results").rglob("*.lease"), None), 120, "the lease"
        )
        first.send_signal(signal.SIGSTOP)  # holds the lease, its heartbeat frozen too
        refused = start([*TINY, "lease.wait_s=1"], logs["refused"])
        waiter = start([*TINY, "lease.wait_s=120"], logs["waiter"])
        procs += [refused, waiter]
        assert refused.wait(timeout=120) != 0
        out = logs["refused"].read_text()
        assert f"pid {first.pid}" in out and "held by a live writer" in out, out[-3000:]
        assert "Traceback" not in out and "\nError: " in f"\n{out}", out[-3000:]  # one line
        wait_for(lambda: "waiting up to" in logs["waiter"].read_text(), 120, "the waiter")
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=180) == 0, logs["first"].read_text()[-3000:]
        assert waiter.wait(timeout=180) == 0, logs["waiter"].read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    waited = logs["waiter"].read_text()
    assert f"pid {first.pid}" in waited and "already done" in waited, waited[-3000:]
    assert not lease.exists()
    assert_complete(run_dir := the_run_dir(tmp_path / "results"))
    parts = sorted(p.name for p in run_dir.glob("*.parts/part-*.parquet"))
    assert parts == [f"part-{a:07d}-{a + 4:07d}.parquet" for a in (0, 4, 8, 12)]


# --- damaged checkpoints, shards, results ----------------------------------------------------


def test_lost_and_truncated_parts_are_recomputed_and_stale_lease_taken_over(finished, tmp_path):
    """A deleted part, a truncated part and the lease of a SIGKILLed writer: the re-run takes
    the lease over, recomputes exactly those two batches and ends complete."""
    run_dir = copy_run(finished, tmp_path)
    for name in ("results.parquet", "errors.parquet"):
        (run_dir / name).unlink()
    shard = "shard-00000-of-00001"
    for suffix in (".parquet", ".errors.parquet"):
        (run_dir / f"{shard}{suffix}").unlink()
    parts = run_dir / f"{shard}.parts"
    (parts / "part-0000004-0000008.parquet").unlink()
    damaged = parts / "part-0000008-0000012.parquet"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    intact = [parts / "part-0000000-0000004.parquet", parts / "part-0000012-0000016.parquet"]
    kept = {p: p.stat().st_mtime_ns for p in intact}
    lease = run_dir / f"{shard}.lease"
    lease.write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead_pid()}, "token": "x"}}')

    out = ok(app(TINY, tmp_path))
    assert "took over the stale lease" in out and "is gone" in out
    assert "part-0000008-0000012.parquet: unreadable" in out and "set aside" in out
    assert "positions 4-8, 8-12 had no valid checkpoint" in out
    assert "resuming shard 0/1: 8 done, 8 to go" in out
    assert (parts / "part-0000008-0000012.parquet.corrupt").exists()
    assert {p: p.stat().st_mtime_ns for p in intact} == kept  # not recomputed
    table = assert_complete(run_dir)
    reference = pd.read_parquet(finished / "results.parquet")
    pd.testing.assert_frame_equal(
        table[["triplet_id", "d0", "d1", "flipped"]],
        reference[["triplet_id", "d0", "d1", "flipped"]],
    )


def test_truncated_shard_and_results_files_are_rebuilt(finished, tmp_path):
    """A truncated shard file is rebuilt from its parts; a truncated results file is merged
    again from the shards; each repair says so in one line."""
    bad_shard = copy_run(finished, tmp_path / "a")
    bad_results = copy_run(finished, tmp_path / "b")
    shard = bad_shard / "shard-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    (bad_shard / "results.parquet").unlink()
    results = bad_results / "results.parquet"
    results.write_bytes(results.read_bytes()[:100])

    proc = python(
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from attackpsm.commands.cluster import main; sys.exit(main(['merge', *sys.argv[1:], '--no-wandb']))",
        str(bad_shard),
        str(bad_results),
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "shard-00000-of-00001.parquet: unreadable" in out
    assert "rebuilt from the checkpoint parts" in out
    assert "results.parquet: unreadable" in out and "merged again from the shards" in out
    reference = pd.read_parquet(finished / "results.parquet")
    for run_dir in (bad_shard, bad_results):
        pd.testing.assert_frame_equal(assert_complete(run_dir), reference)
    assert (bad_shard / "shard-00000-of-00001.parquet.corrupt").exists()
    assert (bad_results / "results.parquet.corrupt").exists()


def test_sigkill_during_merge_then_rerun(finished, tmp_path):
    """A merge killed between writing ``results.parquet``'s temporary file and renaming it:
    the run does not count as merged, the next merge completes it, and a merge removes the
    killed writer's temporary file once it is an hour old."""
    run_dir = copy_run(finished, tmp_path)
    for name in ("results.parquet", "errors.parquet", "summary.md", "summary.csv"):
        (run_dir / name).unlink()
    marker = tmp_path / "renaming"
    proc = python(
        "import os, sys, time; real = os.replace\n"
        "def held(src, dst):\n"
        "    if str(dst).endswith('results.parquet'):\n"
        "        open(sys.argv[2], 'w').close(); time.sleep(300)\n"
        "    return real(src, dst)\n"
        "os.replace = held\n"
        "from attackpsm.commands.cluster import main; main(['merge', sys.argv[1], '--no-wandb'])",
        str(run_dir),
        str(marker),
    )
    try:
        wait_for(marker.exists, 120, "the merge to reach its last rename")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run_dir / "results.parquet").exists()
    (stray,) = run_dir.glob(".results.parquet.*.tmp")  # the killed writer's temporary file
    assert cluster_main(["merge", str(run_dir), "--no-wandb"]) == 0
    assert stray.exists()  # too recent to be judged abandoned: a live writer may own it
    hour_ago = time.time() - 3700
    os.utime(stray, (hour_ago, hour_ago))
    (run_dir / "results.parquet").unlink()
    assert cluster_main(["merge", str(run_dir), "--no-wandb"]) == 0
    assert not stray.exists()
    pd.testing.assert_frame_equal(
        assert_complete(run_dir), pd.read_parquet(finished / "results.parquet")
    )


@pytest.mark.slow  # eight interpreters starting at once: ~30 s on two busy cores
def test_concurrent_merges_all_succeed(finished, tmp_path):
    """Eight processes merge the same run at once, three times each: all succeed, one table."""
    run_dir = copy_run(finished, tmp_path)
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from attackpsm.storage import merge_shards\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.01)\n"
        "for _ in range(3):\n"
        "    results, errors = merge_shards(sys.argv[1], 1)\n"
        "    assert len(results) + len(errors) == 16\n"
    )
    procs = [python(code, str(run_dir), str(go)) for _ in range(8)]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(outs)[-4000:]
    pd.testing.assert_frame_equal(
        assert_complete(run_dir), pd.read_parquet(finished / "results.parquet")
    )
    assert not list(run_dir.glob(".*.tmp"))


# --- changed data --------------------------------------------------------------------------


@pytest.mark.slow  # three runs in a row
def test_changed_data_is_never_mixed(tmp_path):
    """Files change between shard 0/2 and 1/2: shard 1 goes to a run directory of its own
    (the fingerprint differs), the old run is not reused, and shards of the two data put
    in one folder are refused by the merge, naming both fingerprints."""
    root = make_bapps(tmp_path / "bapps", {"traditional": [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]})
    args = [
        "dataset=bapps",
        f"dataset.root={root}",
        "metric=l2",
        "attack=pgd",
        "resolution.size=32",
        "resolution.batch_size=4",
        "logger=none",
        "progress=false",
        "device=cpu",
        "shard.count=2",
    ]
    ok(app([*args, "shard.index=0"], tmp_path))
    old = the_run_dir(tmp_path / "results")
    time.sleep(0.01)
    image = bapps_path(root, "traditional", "p0", 1)  # a triplet of shard 1
    save_png(image, smooth_image(np.random.default_rng(7), 32))

    out = ok(app([*args, "shard.index=1"], tmp_path))
    new = next(p.parent for p in (tmp_path / "results").rglob("identity.yaml") if p.parent != old)
    assert "(shard 1/2) ->" in out  # not merged with the old data's shard 0
    assert not (old / "results.parquet").exists() and not (new / "results.parquet").exists()
    assert not (old / "shard-00001-of-00002.parquet").exists()
    fp_old = read_identity(old)["data_fingerprint"]
    fp_new = read_identity(new)["data_fingerprint"]
    assert fp_old != fp_new

    # results copied together from two machines whose data differ: the merge refuses
    for name in ("shard-00001-of-00002.parquet", "shard-00001-of-00002.errors.parquet"):
        shutil.copy(new / name, old / name)
    proc = python(
        "import sys; from attackpsm.commands.cluster import main;"
        "sys.exit(main(['merge', sys.argv[1], '--no-wandb']))",
        str(old),
    )
    merged_out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, merged_out[-3000:]
    assert "refusing to merge shards of different data" in merged_out
    assert fp_old in merged_out and fp_new in merged_out
    assert not (old / "results.parquet").exists()


def test_lease_taken_over_only_when_stale(tmp_path, monkeypatch):
    """A live lease refuses a second writer, naming the owner; a silent heartbeat or an earlier
    attempt of the same SLURM job makes it stale; the writer that lost it stops writing."""
    path = tmp_path / "shard-00000-of-00001.lease"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    first = Lease(path, stale_s=0.6, wait_s=0, heartbeat_s=0.1)
    assert first.acquire()
    with pytest.raises(LeaseHeld, match=rf"pid {os.getpid()}, SLURM job 4242"):
        Lease(path, stale_s=60, wait_s=0.3).acquire()
    monkeypatch.delenv("SLURM_JOB_ID")
    time.sleep(1.0)  # heartbeats keep it fresh
    with pytest.raises(LeaseHeld):
        Lease(path, stale_s=0.6, wait_s=0).acquire()
    first._stop.set()  # the owner stalls (its heartbeat thread stops)
    time.sleep(1.0)
    second = Lease(path, stale_s=0.6, wait_s=0)
    assert second.acquire()
    with pytest.raises(LeaseLost, match="taken over"):
        first.check()
    first.release()
    assert path.exists() and second.holds()  # releasing a lost lease leaves the new owner's
    second.release()
    assert not path.exists()

    # a requeued SLURM task (same job id, restart count grown, on any host) takes its
    # previous attempt's lease at once
    path.write_text('{"host": "node-a", "pid": 1, "slurm_job_id": "77", "token": "t"}')
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    third = Lease(path, stale_s=600, wait_s=0)
    assert third.acquire()
    third.release()


def test_merge_stops_naming_missing_or_repeated_triplets(finished, tmp_path):
    """A shard file that lost a row, or holds one twice, is not merged: the merge names it."""
    run_dir = copy_run(finished, tmp_path)
    (run_dir / "results.parquet").unlink()
    shard = run_dir / "shard-00000-of-00001.parquet"
    rows, meta = pd.read_parquet(shard), read_meta(shard)
    lost = rows["triplet_id"].iloc[5]
    # shard files without a checksum record (finished by an older version): the ids decide
    (run_dir / "shard-00000-of-00001.parts" / "finished.json").unlink()
    write_parquet(rows.drop(index=5), shard, meta)
    with pytest.raises(StorageError, match=rf"missing {lost}"):
        merge_shards(run_dir, 1)
    write_parquet(pd.concat([rows, rows.iloc[[5]]]), shard, meta)
    with pytest.raises(StorageError, match=rf"1 triplets appear more than once .*{lost}"):
        merge_shards(run_dir, 1)
    assert not (run_dir / "results.parquet").exists()
