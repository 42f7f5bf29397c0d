"""Planted, changed and half-read records never pass as finished results: real processes,
real files.

* run records are data, never code (planted payloads, a YAML bomb);
* merged tables are reused only when they check out against the shards;
* a merge that meets a shard being repaired never reports it missing;
* a lease is taken over only when its owner is really gone;
* every bad value is refused before the run directory exists.

Each row of the "Guarantees" page names the test here that shows it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.test_faults_storage import (
    ENV,
    ROOT,
    TINY,
    app,
    app_cmd,
    assert_complete,
    copy_run,
    ok,
    the_run_dir,
    wait_for,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished run of ``TINY`` (one shard, four parts); tests work on copies of it."""
    tmp = tmp_path_factory.mktemp("finished")
    ok(app(TINY, tmp))
    return the_run_dir(tmp / "results")


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


MERGE = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
    "from attackpsm.commands.cluster import main; sys.exit(main(['merge', *sys.argv[1:]]))"
)


# --- run records are data, never code ------------------------------------------------------

BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
)


def _payloads(tmp: Path) -> dict[str, tuple[str, Path | None]]:
    """name -> (text planted under ``metric:`` of identity.yaml, what it would create)."""
    opened, made = tmp / "opened-by-payload", tmp / "made-by-payload"
    decode = "\"${{oc.decode:'{{_target_: {}, _args_: [{}]}}'}}\""
    return {
        "open": (f"  x: {decode.format('builtins.open', f'{opened}, w')}\n", opened),
        "mkdir": (f"  x: {decode.format('os.mkdir', made)}\n", made),
        "print": (f"  x: {decode.format('builtins.print', 'printed-by-payload')}\n", None),
        "python-tag": (f"  x: !!python/object/apply:os.mkdir [{made}]\n", made),
    }


def _plant(finished: Path, results: Path, name: str, text: str, replace: bool = True) -> Path:
    """A copy of the finished run under ``results`` (as run ``res64-<name>``) whose
    ``identity.yaml`` holds ``text``: under ``metric:`` or, with ``replace`` False, appended."""
    run_dir = results / Path(*finished.parts[-4:-1]) / f"res64-{name}"
    shutil.copytree(finished, run_dir)
    identity = run_dir / "identity.yaml"
    old = identity.read_text()
    identity.write_text(
        old.replace("metric:\n", f"metric:\n{text}", 1) if replace else old + text + "\n"
    )
    return identity


def test_planted_payloads_never_run(finished, tmp_path):
    """Each payload planted in the ``identity.yaml`` of a real run directory -- ``oc.decode``
    interpolations that resolve to ``builtins.open``, ``os.mkdir`` and ``print``, a Python
    tag, a 600-byte billion-laughs YAML bomb -- next to an intact run: ``python -m
    attackpsm.report`` and ``cluster merge`` run none of them, finish within seconds, exit 1
    and name each file; the intact run is reported and merged."""
    results = tmp_path / "results"
    planted = [
        _plant(finished, results, name, text) for name, (text, _) in _payloads(tmp_path).items()
    ]
    planted.append(_plant(finished, results, "bomb", BOMB, replace=False))
    assert len(BOMB) < 600  # expands to 9**9 (387 million) strings
    intact = copy_run(finished, tmp_path)

    started = time.monotonic()
    report = run_python(
        "import sys; from attackpsm.commands.report import main;"
        "sys.exit(main([sys.argv[1], '--wandb', 'none', '--examples', '1']))",
        str(results),
    )
    merge = run_python(MERGE, str(results), "--no-wandb")
    elapsed = time.monotonic() - started
    for proc in (report, merge):
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out[-3000:]
        for identity in planted:
            assert str(identity) in out, (identity, out[-3000:])
        assert "printed-by-payload" not in out.splitlines()  # print never ran
        assert "Traceback" not in out, out[-3000:]
    assert f"{len(planted)} record(s) refused" in report.stderr
    assert "1 runs -> " in report.stdout  # the intact run alone
    assert merge.stdout.count("not merged: ") == len(planted)
    assert f"{intact}: done: 16 triplets" in merge.stdout
    assert elapsed < 120, elapsed
    for _, made in _payloads(tmp_path).values():
        assert made is None or not made.exists()


@pytest.mark.parametrize(
    "text, why",
    [
        ('x: "${oc.env:HOME}"', "holds an interpolation"),
        (BOMB, r"more than 100,000 values \(aliases expanded\)"),
        ("\n".join(["a: &a 1"] + [f"k{i}: *a" for i in range(101)]), "more than 100 aliases"),
        ("x: !!python/name:os.system ''", "not a readable YAML record"),
        ("x: " + "[" * 200 + "]" * 200, "nested"),
        ("x: " + "y" * (1 << 20), "more than the 1,048,576 a record may have"),
    ],
)
def test_records_are_plain_data_within_limits(tmp_path, text, why):
    """What each limit refuses, with the file named (fast, in-process)."""
    from attackpsm.storage.records import RecordError, load_record

    path = tmp_path / "identity.yaml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(RecordError, match=why) as info:
        load_record(path)
    assert str(path) in str(info.value)
    assert time.monotonic() - started < 5


def test_planted_job_records_never_build_a_logger(finished, tmp_path):
    """A sweep's job records: one whose logger interpolation resolves to ``os.mkdir``, one
    naming ``os.mkdir`` outright. The merge refuses both, naming each file; nothing runs."""
    run_dir = copy_run(finished, tmp_path)
    made = tmp_path / "made-by-payload"
    records = tmp_path / "sweep" / ".runs"
    records.mkdir(parents=True)
    interpolated = f"${{oc.decode:'{{_target_: os.mkdir, _args_: [{made}]}}'}}"
    for name, logger in (
        ("000000", {"_target_": "os.mkdir", "path": str(made)}),
        ("000001", interpolated),
    ):
        record = {
            "run_dir": str(run_dir),
            "results_dir": str(tmp_path / "results"),
            "shard_index": 0,
            "shard_count": 1,
            "logger": logger,
        }
        (records / f"{name}.json").write_text(json.dumps(record))
    proc = run_python(MERGE, str(tmp_path / "sweep"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"{records / '000000.json'}: refusing to instantiate _target_ 'os.mkdir'" in out
    assert f"{records / '000001.json'}: logger holds an interpolation" in out
    assert not made.exists()


def test_planted_job_config_is_resolved_then_refused(cfg_factory, tmp_path):
    """A sweep directory read through its jobs' saved ``config.yaml`` (no job records): a
    dataset that *resolves* to ``os.mkdir`` is refused on its resolved value, naming the
    file; nothing is built."""
    from omegaconf import OmegaConf

    from attackpsm.report.load import RefusedRecord, discover

    made = tmp_path / "made-by-payload"
    cfg = OmegaConf.to_container(cfg_factory(TINY), resolve=False)
    cfg["dataset"] = f"${{oc.decode:'{{_target_: os.mkdir, _args_: [{made}]}}'}}"
    job = tmp_path / "sweep" / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    with pytest.warns(RefusedRecord, match="refusing to instantiate _target_ 'os.mkdir'") as got:
        assert discover(tmp_path / "sweep") == []
    assert str(job / "config.yaml") in str(got[0].message)
    assert not made.exists()


# --- verified reuse --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    """The same run on other data (``dataset.seed=1``): same ids, same row count."""
    tmp = tmp_path_factory.mktemp("foreign")
    ok(app([*TINY, "dataset.seed=1"], tmp))
    return the_run_dir(tmp / "results")


def _first_rows(path: Path, n: int = 10) -> None:
    """Overwrite a Parquet file with its first ``n`` rows, its schema metadata kept."""
    pq.write_table(pq.read_table(path).slice(0, n), path)


def test_tampered_results_are_merged_again(finished, foreign, tmp_path):
    """``results.parquet`` overwritten with its first 10 rows, or with the table of
    ``dataset.seed=1`` (same ids, same row count): ``cluster merge`` does not reuse it, says
    so, and merges the run again from its shards."""
    reference = pd.read_parquet(finished / "results.parquet")
    assert not reference.equals(pd.read_parquet(foreign / "results.parquet"))
    cut = copy_run(finished, tmp_path / "cut")
    _first_rows(cut / "results.parquet")
    other = copy_run(finished, tmp_path / "other")
    shutil.copy(foreign / "results.parquet", other / "results.parquet")
    shutil.copy(foreign / "errors.parquet", other / "errors.parquet")
    proc = run_python(MERGE, str(cut), str(other), "--no-wandb")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("is not the file written when it was finished") == 2, out[-3000:]
    assert out.count("merged again from the shards") == 2
    assert out.count("done: 16 triplets") == 2
    for run_dir in (cut, other):
        pd.testing.assert_frame_equal(assert_complete(run_dir), reference)
        assert (run_dir / "results.parquet.corrupt").exists()


def test_tables_copied_without_shards_are_checked_by_their_checksums(finished, tmp_path):
    """A run directory copied without its shard files (to report elsewhere): its tables are
    read when they match ``merged.json``; changed, they are refused, naming the file."""
    from attackpsm.storage import StorageError, load_results

    run_dir = copy_run(finished, tmp_path)
    for path in run_dir.glob("shard-*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    results, _ = load_results(run_dir)
    pd.testing.assert_frame_equal(results, pd.read_parquet(finished / "results.parquet"))
    _first_rows(run_dir / "results.parquet")
    with pytest.raises(StorageError, match="results.parquet is not the file written"):
        load_results(run_dir)


@pytest.mark.slow  # two runs of the app
def test_rerun_does_not_reuse_tampered_results(finished, foreign, tmp_path):
    """A re-run of the finished run does not take a tampered ``results.parquet`` as done:
    it merges again from the shards and prints the run's own 16 triplets."""
    reference = pd.read_parquet(finished / "results.parquet")
    for tamper in ("cut", "foreign"):
        tmp = tmp_path / tamper
        run_dir = copy_run(finished, tmp)
        if tamper == "cut":
            _first_rows(run_dir / "results.parquet")
        else:
            shutil.copy(foreign / "results.parquet", run_dir / "results.parquet")
        out = ok(app(TINY, tmp))
        assert "merged again from the shards" in out and "already done" in out, out[-3000:]
        pd.testing.assert_frame_equal(assert_complete(run_dir), reference)


def test_changed_shard_file_is_rebuilt_from_parts_or_recomputed(finished, tmp_path):
    """A finished shard file replaced by another readable table is not merged: it is rebuilt
    from its parts; with the parts gone the shard is unfinished and the merge says so."""
    reference = pd.read_parquet(finished / "results.parquet")
    shard = "shard-00000-of-00001"
    rebuilt = copy_run(finished, tmp_path / "rebuilt")
    (rebuilt / "results.parquet").unlink()
    _first_rows(rebuilt / f"{shard}.parquet")
    gone = copy_run(finished, tmp_path / "gone")
    (gone / "results.parquet").unlink()
    _first_rows(gone / f"{shard}.parquet")
    for part in (gone / f"{shard}.parts").glob("part-*.parquet"):
        part.unlink()
    proc = run_python(MERGE, str(rebuilt), "--no-wandb")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "rebuilt from the checkpoint parts" in proc.stdout
    pd.testing.assert_frame_equal(assert_complete(rebuilt), reference)
    proc = run_python(MERGE, str(gone), "--no-wandb")
    assert proc.returncode == 1
    assert "it is unfinished, a re-run recomputes it" in proc.stdout
    assert "missing [0]" in proc.stdout
    assert not (gone / "results.parquet").exists()


# --- merges meeting a shard being repaired ---------------------------------------------------


@pytest.mark.slow  # nine interpreters at once: ~40 s on two busy cores
def test_concurrent_merges_wait_for_a_shard_being_repaired(finished, tmp_path):
    """A truncated shard file; a re-run of the shard and eight ``cluster merge`` processes
    start at once, each repairing or meeting the repair: every one exits 0, none reports the
    shard missing, and the table is the original's."""
    run_dir = copy_run(finished, tmp_path)
    shard = run_dir / "shard-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    (run_dir / "results.parquet").unlink()
    go = tmp_path / "go"
    wait = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
    merge = wait + (
        "import sys\nfrom attackpsm.commands.cluster import main\n"
        "codes = [main(['merge', sys.argv[1], '--no-wandb']) for _ in range(3)]\n"
        "sys.exit(max(codes))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", merge, str(run_dir)],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(8)
    ]
    rerun = subprocess.Popen(
        app_cmd(TINY, tmp_path),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.0)
    go.touch()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    rerun_out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, rerun_out[-3000:]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(outs)[-4000:]
    assert not any("missing" in o for o in outs), "\n".join(outs)[-4000:]
    pd.testing.assert_frame_equal(
        assert_complete(run_dir), pd.read_parquet(finished / "results.parquet")
    )


# --- leases that know their owner ------------------------------------------------------------


def _unfinished(finished: Path, tmp: Path) -> Path:
    """A copy of the finished run whose shard has its parts but no shard file yet."""
    run_dir = copy_run(finished, tmp)
    for name in (
        "results.parquet",
        "errors.parquet",
        "merged.json",
        "shard-00000-of-00001.parquet",
        "shard-00000-of-00001.errors.parquet",
    ):
        (run_dir / name).unlink()
    return run_dir


@pytest.mark.slow  # two app runs, one of them frozen for a while: ~40 s on two busy cores
def test_two_live_runs_sharing_a_slurm_job_id(tmp_path):
    """Two live runs of one shard with the same ``SLURM_JOB_ID`` (a copied environment, two
    ``srun`` steps): the second is refused, naming the first, which finishes untouched."""
    env = {**ENV, "SLURM_JOB_ID": "4242"}

    def start(args: list[str], log: Path) -> subprocess.Popen:
        return subprocess.Popen(
            app_cmd(args, tmp_path),
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    logs = {name: tmp_path / f"{name}.log" for name in ("first", "second")}
    first = start(TINY, logs["first"])
    try:
        wait_for(lambda: next((tmp_path / "results").rglob("*.lease"), None), 120, "the lease")
        first.send_signal(signal.SIGSTOP)  # alive, holding the lease mid-run
        second = start([*TINY, "lease.wait_s=2"], logs["second"])
        assert second.wait(timeout=120) != 0
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=180) == 0, logs["first"].read_text()[-3000:]
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    refused = logs["second"].read_text()
    assert f"pid {first.pid}, SLURM job 4242" in refused and "held by a live writer" in refused
    assert "taken over" not in logs["first"].read_text()
    assert_complete(the_run_dir(tmp_path / "results"))


def test_empty_lease_file_is_stale_at_once(finished, tmp_path):
    """A 0-byte lease (a failed write on a full disk) blocks nothing: the re-run takes it over
    at once, with ``lease.stale_s`` at its default of 600 s, and finishes the shard."""
    run_dir = _unfinished(finished, tmp_path)
    lease = run_dir / "shard-00000-of-00001.lease"
    lease.write_bytes(b"")
    started = time.monotonic()
    out = ok(app([*TINY, "lease.wait_s=600"], tmp_path))
    assert time.monotonic() - started < 120
    assert "took over the stale lease" in out and "empty or unreadable" in out, out[-3000:]
    assert not lease.exists()
    pd.testing.assert_frame_equal(
        assert_complete(run_dir), pd.read_parquet(finished / "results.parquet")
    )


def test_requeue_needs_a_dead_owner_or_a_grown_restart_count(tmp_path, monkeypatch):
    """Same SLURM job id: a live owner on this host, or one on another host with the same
    restart count, keeps the lease; a dead owner or a grown ``SLURM_RESTART_COUNT`` loses it."""
    from attackpsm.storage import Lease, LeaseHeld

    path = tmp_path / "shard-00000-of-00001.lease"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = os.uname().nodename
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
        for owner in (
            f'{{"host": "{host}", "pid": {holder.pid}, "slurm_job_id": "77", "token": "a"}}',
            '{"host": "node-a", "pid": 1, "slurm_job_id": "77", "slurm_restart_count": "0", '
            '"token": "b"}',
        ):
            path.write_text(owner)
            with pytest.raises(LeaseHeld):
                Lease(path, stale_s=600, wait_s=0).acquire()
        holder.kill()
        holder.wait()
        path.write_text(
            f'{{"host": "{host}", "pid": {holder.pid}, "slurm_job_id": "77", "token": "c"}}'
        )
        lease = Lease(path, stale_s=600, wait_s=0)
        assert lease.acquire()
        lease.release()
        path.write_text('{"host": "node-a", "pid": 1, "slurm_job_id": "77", "token": "d"}')
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        lease = Lease(path, stale_s=600, wait_s=0)
        assert lease.acquire()
        lease.release()
    finally:
        holder.kill()


# --- every bad value refused before any file is written --------------------------------------


@pytest.mark.parametrize(
    "override, bound",
    [
        ("resolution.size=100000", r"resolution.size must be an integer in \[1, 4096\]"),
        ("resolution.size=0", r"resolution.size must be an integer in \[1, 4096\]"),
        ("lease.stale_s=0", "lease.stale_s must be a finite number of seconds >= 1"),
        ("lease.stale_s=nan", "lease.stale_s must be a finite number of seconds >= 1"),
        ("lease.stale_s=inf", "lease.stale_s must be a finite number of seconds >= 1"),
        ("lease.wait_s=nan", "lease.wait_s must be a number of seconds >= 0"),
        ("lease.wait_s=-1", "lease.wait_s must be a number of seconds >= 0"),
        ("seed=nan", r"seed must be an integer in \[0, 4294967295\]"),
        ("seed=-1", r"seed must be an integer in \[0, 4294967295\]"),
        ("seed=1.5", r"seed must be an integer in \[0, 4294967295\]"),
        ("seed=4294967296", r"seed must be an integer in \[0, 4294967295\]"),
        ("num_workers=-1", "num_workers must be an integer >= 0"),
        ("resolution.batch_size=0", "resolution.batch_size must be an integer >= 1"),
    ],
)
def test_bad_values_refused_before_the_run_directory_exists(cfg_factory, tmp_path, override, bound):
    from attackpsm.job.run import run

    cfg = cfg_factory([*TINY, override])
    with pytest.raises(ValueError, match=bound):
        run(cfg)
    assert not (tmp_path / "results").exists()


def test_bad_value_on_the_command_line_names_the_bound(tmp_path):
    """``seed=nan`` on the command line: one line with the bound (a configuration error,
    exit 2), not a bare ``TypeError``."""
    proc = app([*TINY, "seed=nan"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: seed must be an integer in [0, 4294967295] (2**32 - 1), got nan"
    ]
    assert "seed must be an integer in [0, 4294967295] (2**32 - 1), got nan" in proc.stderr
    assert "TypeError" not in proc.stderr
    assert not (tmp_path / "results").exists()
