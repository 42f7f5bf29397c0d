"""Cluster sweeps: shards as a sweep axis, submitit launchers, kill/preempt/resume, W&B groups.

Fast tests use submitit's local executor (``hydra/launcher=local``) and plain processes.
Tests marked ``slurm`` submit job arrays to a real SLURM cluster through ``sbatch``
(``launchers/start_slurm.sh`` starts one on this machine; ``.ci/run`` does). They are skipped
when no cluster answers, unless ``ATTACKPSM_REQUIRE_SLURM=1`` makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from attackpsm.commands.cluster import main as cluster_main
from attackpsm.job.loggers import shard_run_id
from attackpsm.job.run import run
from attackpsm.metrics.weights.safeload import WeightsUnavailable
from tests import wandb_offline
from tests.conftest import make_cfg

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
ENV = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
for _var in ("ATTACKPSM_RESULTS", "ATTACKPSM_LOGS", "ATTACKPSM_ALLOW_FETCH"):
    ENV.pop(_var, None)


def app(args: list[str], tmp: Path, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """``python -m attackpsm <args>`` with outputs under ``tmp``; output captured."""
    cmd = [
        sys.executable,
        "-m",
        "attackpsm",
        *args,
        f"paths.results_dir={tmp / 'results'}",
        f"paths.log_dir={tmp / 'logs'}",
    ]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env=kwargs.pop("env", ENV),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def app_background(args: list[str], tmp: Path, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "attackpsm",
        *args,
        f"paths.results_dir={tmp / 'results'}",
        f"paths.log_dir={tmp / 'logs'}",
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
    )


@contextmanager
def running_until(
    args: list[str],
    tmp: Path,
    log: Path,
    checkpointed: Callable[[Path], object],
    what: str,
    timeout: float,
) -> Iterator[subprocess.Popen]:
    """``args`` started in the background, polled until ``checkpointed(tmp / "results")`` holds
    (failing at once if the process ends first); the process is killed at exit if still running."""
    proc = app_background(args, tmp, log)
    try:
        wait_for(lambda: checkpointed(tmp / "results"), timeout, what, proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def check(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def run_dirs(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.rglob("identity.yaml"))


def wait_for(predicate, timeout: float, what: str, every: float = 0.2, proc=None):
    """Poll ``predicate`` until it is truthy; fail at once if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc={proc.returncode}) before {what}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def part_files(results: Path) -> list[Path]:
    return sorted(results.rglob("shard-*.parts/part-*.parquet"))


def files_state(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()
    }


def offline_runs(log_dir: Path) -> list[dict]:
    return [
        wandb_offline.run_info(f) for f in sorted(log_dir.glob("wandb/offline-run-*/run-*.wandb"))
    ]


def assert_same_triplets(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Triplet by triplet: same ids, same decisions, same numbers (float tolerance)."""
    got = got.sort_values("triplet_id").reset_index(drop=True)
    want = want.sort_values("triplet_id").reset_index(drop=True)
    assert list(got["triplet_id"]) == list(want["triplet_id"])
    assert set(got.columns) == set(want.columns)
    for col in want.columns:
        a, b = got[col], want[col]
        if pd.api.types.is_float_dtype(b) and not pd.api.types.is_bool_dtype(b):
            np.testing.assert_allclose(
                a.to_numpy(float),
                b.to_numpy(float),
                rtol=1e-4,
                atol=1e-6,
                equal_nan=True,
                err_msg=col,
            )
        else:
            assert (
                a.astype(object).where(a.notna(), None).tolist()
                == b.astype(object).where(b.notna(), None).tolist()
            ), col


def reference_results(tmp: Path, overrides: list[str]) -> pd.DataFrame:
    """The same configuration in one process, unsharded (one thread, like a 1-CPU task)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run(make_cfg(tmp / "reference", ["device=cpu", *overrides]))
    finally:
        torch.set_num_threads(threads)
    return pd.read_parquet(Path(out["run_dir"]) / "results.parquet")


# --- configuration ------------------------------------------------------------------------


def test_shard_count_gives_n_jobs_per_configuration():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["shard.count=3"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params == {"shard.index": "range(0,3)"}

    parser = OverridesParser.create()
    swept = [f"{k}={v}" for k, v in params.items()]  # what the basic sweeper prepends
    jobs = BasicSweeper.split_arguments(
        parser.parse_overrides(swept + ["metric=ssim,l2", "shard.count=3"]), None
    )[0]
    pairs = sorted(
        (dict(o.split("=") for o in job)["metric"], dict(o.split("=") for o in job)["shard.index"])
        for job in jobs
    )
    assert pairs == [(m, str(i)) for m in ("l2", "ssim") for i in range(3)]

    # an explicit shard.index wins over the expansion
    jobs = BasicSweeper.split_arguments(
        parser.parse_overrides(swept + ["metric=ssim,l2", "shard.index=1"]), None
    )[0]
    assert sorted(dict(o.split("=") for o in job)["shard.index"] for job in jobs) == ["1", "1"]


def test_slurm_launcher_config_and_site_profile(tmp_path, monkeypatch):
    def launcher(conf_dir: Path):
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir)):
            return compose(
                "config", overrides=["hydra/launcher=slurm"], return_hydra_config=True
            ).hydra.launcher

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    for site in (conf / "local").glob("*.yaml"):  # this machine's own site files do not count
        site.unlink()
    plain = launcher(conf)
    assert plain._target_.endswith("SlurmLauncher")
    assert plain.additional_parameters["export"] == "ALL,ATTACKPSM_ALLOW_FETCH=false"
    assert plain.max_num_timeout > 0 and plain.partition is None and plain.gpus_per_node is None

    shutil.copy(ROOT / "launchers/profiles/gpu_cluster.yaml", conf / "local/slurm.yaml")
    site = launcher(conf)
    assert (site.partition, site.account, site.gpus_per_node, site.cpus_per_task, site.mem_gb) == (
        "gpu",
        "my-project",
        1,
        8,
        32,
    )
    # the site file adds to additional_parameters, it does not drop the no-download export
    assert site.additional_parameters == {
        "export": "ALL,ATTACKPSM_ALLOW_FETCH=false",
        "mail-type": "FAIL",
    }

    monkeypatch.setenv("ATTACKPSM_ALLOW_FETCH", "false")
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        assert compose("config").paths.allow_fetch is False


def test_compute_node_without_weights_fails_fast(tmp_path, monkeypatch):
    """What a SLURM task sees (ATTACKPSM_ALLOW_FETCH=false): an error naming the fix, no download."""
    monkeypatch.setenv("ATTACKPSM_ALLOW_FETCH", "false")
    empty = tmp_path / "no-weights"
    empty.mkdir()
    cfg = make_cfg(
        tmp_path, ["metric=lpips_alex", "dataset.num_triplets=2", f"paths.weights_dir={empty}"]
    )
    start = time.monotonic()
    with pytest.raises(Exception, match="make weights") as error:  # Hydra wraps it
        run(cfg)
    assert isinstance(error.value, WeightsUnavailable) or isinstance(
        error.value.__cause__, WeightsUnavailable
    )
    assert time.monotonic() - start < 30
    assert list(empty.iterdir()) == []


def test_sweeping_shard_count_is_refused(tmp_path):
    proc = app(
        ["-m", "logger=none", "dataset.num_triplets=2", "metric=l2", "shard.count=2,3"],
        tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "shard.count cannot be swept" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


# --- local executor: the submitit path without a cluster ----------------------------------


def small(triplets: int = 8, iterations: int = 5) -> list[str]:
    return [
        "dataset=synthetic",
        f"dataset.num_triplets={triplets}",
        "attack=pgd",
        f"attack.max_iterations={iterations}",
    ]


QUIET = ["device=cpu", "progress=false"]


def test_local_sweep_merges_groups_wandb_and_reruns_for_free(tmp_path):
    args = [
        "-m",
        "hydra/launcher=local",
        *small(),
        *QUIET,
        "metric=ssim,l2",
        "shard.count=2",
        "logger=wandb",
        "logger.mode=offline",
    ]
    out = check(app(args, tmp_path))
    results, logs = tmp_path / "results", tmp_path / "logs"

    dirs = run_dirs(results)
    assert [d.parts[-3] for d in dirs] == ["l2", "ssim"]
    for d in dirs:
        metric = d.parts[-3]
        table = pd.read_parquet(d / "results.parquet")
        assert Counter(table["triplet_id"]).most_common(1)[0][1] == 1 and len(table) == 8
        assert (d / "summary.md").exists()
        assert_same_triplets(table, reference_results(tmp_path, [*small(), f"metric={metric}"]))

    # one W&B run per shard plus one aggregate, grouped by run identity, and one sweep run
    runs = offline_runs(logs)
    groups = defaultdict(Counter)
    for r in runs:
        groups[r["group"]][r["job_type"]] += 1
    sweep_runs = {g: c for g, c in groups.items() if "sweep" in c}
    assert list(sweep_runs.values()) == [Counter(sweep=1)]
    for group in sweep_runs:
        del groups[group]
    assert groups == {str(d.relative_to(results)): Counter(shard=2, aggregate=1) for d in dirs}

    # the sweep's own summary: both configurations
    sweep_dir = next((logs / "multiruns").iterdir())
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert set(summary["metric"]) == {"ssim", "l2"}
    assert "done: 8 triplets" in out

    # the same command again: nothing submitted, no file touched, no new W&B run
    before = files_state(results)
    time.sleep(1)  # a new sweep directory (named by the second)
    again = check(app(args, tmp_path))
    assert files_state(results) == before
    assert len(offline_runs(logs)) == len(runs)
    assert "4 of 4 jobs already finished; submitting 0" in again
    second = sorted((logs / "multiruns").iterdir())[-1]
    assert not (second / ".submitit").exists() and not list(second.glob("*/app.log"))
    assert set(pd.read_csv(second / "summary.csv")["metric"]) == {"ssim", "l2"}

    # one shard lost: only that one is submitted
    lost = run_dirs(results)[1]  # ssim
    for f in (lost / "shard-00001-of-00002.parquet", lost / "results.parquet"):
        f.unlink()
    time.sleep(1)
    third = check(app(args, tmp_path))
    assert "3 of 4 jobs already finished; submitting 1" in third
    table = pd.read_parquet(lost / "results.parquet")
    assert len(table) == 8 and table["triplet_id"].is_unique


def _submitit_tasks(folder_part: str) -> list[int]:
    """Pids of running submitit task processes whose command line mentions ``folder_part``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmd and folder_part in cmd:
            pids.append(int(proc.name))
    return pids


# 8 batches of fixed-step PGD(30) on LPIPS at 256 px: about 2 s a batch on two CPU cores, so a
# signal sent after the first checkpoint lands mid-shard (a fast metric can finish in between).
LONG_SHARD = [
    "dataset=synthetic", "dataset.num_triplets=16", "resolution=256", "resolution.batch_size=2",
    "metric=lpips_alex", "attack=pgd", "attack.max_iterations=30", "attack.early_stop=false", *QUIET,
]  # fmt: skip


def test_preempted_local_task_requeues_and_loses_at_most_one_batch(tmp_path):
    """USR2 (SLURM's preemption / time-limit warning) -> submitit checkpoint -> requeue -> resume."""
    args = [
        "-m",
        "hydra/launcher=local",
        "logger=none",
        *LONG_SHARD,
    ]
    log = tmp_path / "sweep.log"
    with running_until(args, tmp_path, log, part_files, "a first checkpointed batch", 240) as proc:
        tasks = wait_for(lambda: _submitit_tasks(str(tmp_path)), 30, "the task process")
        os.kill(tasks[0], signal.SIGUSR2)
        assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    task_logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.*"))
    assert "this job is preempted" in task_logs and "Requeued job" in task_logs
    done = int(task_logs.split("resuming shard 0/1: ")[1].split(" done")[0])
    assert 0 < done < 16
    (run_dir,) = run_dirs(tmp_path / "results")
    table = pd.read_parquet(run_dir / "results.parquet")
    assert len(table) == 16 and table["triplet_id"].is_unique


def test_killed_run_resumes_exactly_once(tmp_path):
    """SIGKILL mid-shard: the checkpointed batches survive, the rest is computed once, and
    the resumed shard logs to the same W&B run (one run id: ``wandb sync`` merges them)."""
    args = ["logger=wandb", "logger.mode=offline", *LONG_SHARD]

    def two_parts(results: Path) -> bool:
        return len(part_files(results)) >= 2

    with running_until(
        args, tmp_path, tmp_path / "run.log", two_parts, "two checkpointed batches", 240
    ) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    kept = pd.concat([pd.read_parquet(p) for p in part_files(tmp_path / "results")])
    (run_dir,) = run_dirs(tmp_path / "results")
    assert not (run_dir / "results.parquet").exists()

    # the merge command reports the unfinished shard and fails
    assert cluster_main(["merge", str(tmp_path / "results"), "--no-wandb"]) == 1

    out = check(app(args, tmp_path))
    assert f"resuming shard 0/1: {len(kept)} done, {16 - len(kept)} to go" in out
    table = pd.read_parquet(run_dir / "results.parquet")
    assert len(table) == 16 and table["triplet_id"].is_unique
    common = [c for c in kept.columns if c in table.columns]
    assert_same_triplets(table[table["triplet_id"].isin(kept["triplet_id"])][common], kept[common])
    assert cluster_main(["merge", str(tmp_path / "results"), "--no-wandb"]) == 0

    # offline run folders are named offline-run-<time>-<run id>; the killed attempt's file may
    # hold no run record at all (killed before W&B flushed it), so read the id from the name
    shard_id = shard_run_id(run_dir, 0, 1)
    folders = sorted((tmp_path / "logs").glob(f"wandb/offline-run-*-{shard_id}"))
    assert len(folders) == 2  # the killed attempt and the resumed one, one run id
    resumed = wandb_offline.run_info(folders[-1] / f"run-{shard_id}.wandb")
    assert (resumed["id"], resumed["job_type"]) == (shard_id, "shard")


# --- a real SLURM cluster --------------------------------------------------------------------


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    try:
        ok = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
        return (
            ok
            and subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=20).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def slurm():
    if not _slurm_up():
        message = (
            "no SLURM cluster with accounting answers (start one: sudo launchers/start_slurm.sh)"
        )
        if os.environ.get("ATTACKPSM_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def array_ids(sweep_logs: Path) -> dict[str, list[str]]:
    """SLURM array job id -> its task ids, from submitit's folders (``<array>_<task>``)."""
    out: dict[str, list[str]] = defaultdict(list)
    for p in sorted((sweep_logs / "multiruns").glob("*/.submitit/*_*")):
        if re.fullmatch(r"\d+_\d+", p.name):
            array, task = p.name.split("_")
            out[array].append(task)
    return dict(out)


def sacct_states(job: str) -> dict[str, str]:
    text = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|", 1) for line in text.split())


SWEEP = [
    "-m", "hydra/launcher=slurm", "dataset=synthetic", "metric=ssim,lpips_alex", "attack=pgd", "resolution=64,256", "shard.count=2",
    # small enough for two CPU cores
    "dataset.num_triplets=8", "attack.max_iterations=10", "logger=wandb", "logger.mode=offline", "progress=false",
]  # fmt: skip


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_sweep_matches_single_process_and_reruns_for_free(slurm, tmp_path):
    start = time.monotonic()
    out = check(app(SWEEP, tmp_path))
    wall = time.monotonic() - start
    results, logs = tmp_path / "results", tmp_path / "logs"

    # one job array of 8 tasks, submitted through sbatch, all completed
    arrays = array_ids(logs)
    assert len(arrays) == 1, arrays
    ((array, tasks),) = arrays.items()
    assert sorted(map(int, tasks)) == list(range(8))
    states = sacct_states(array)
    assert states == {f"{array}_{i}": "COMPLETED" for i in range(8)}, states

    # merged tables equal a single-process run of each configuration, triplet by triplet
    dirs = run_dirs(results)
    assert len(dirs) == 4
    for d in dirs:
        metric, res = d.parts[-3], d.name.split("-")[0].removeprefix("res")
        table = pd.read_parquet(d / "results.parquet")
        assert len(table) == 8 and table["triplet_id"].is_unique
        want = reference_results(
            tmp_path, [*small(8, 10), f"metric={metric}", f"resolution='{res}'"]
        )
        assert_same_triplets(table, want)

    # W&B offline runs: per configuration, its 2 shards and 1 aggregate share one group
    groups = defaultdict(Counter)
    for r in offline_runs(logs):
        if r["job_type"] != "sweep":  # the sweep's own run: curves and leaderboard
            groups[r["group"]][r["job_type"]] += 1
    assert groups == {str(d.relative_to(results)): Counter(shard=2, aggregate=1) for d in dirs}
    print(f"\nSLURM sweep of 8 array tasks: {wall:.0f} s wall")

    # re-running the finished sweep: nothing is submitted, nothing is touched
    before, n_runs = files_state(results), len(offline_runs(logs))
    start = time.monotonic()
    again = check(app(SWEEP, tmp_path))
    rerun = time.monotonic() - start
    assert files_state(results) == before
    assert len(offline_runs(logs)) == n_runs
    assert "8 of 8 jobs already finished; submitting 0" in again
    assert list(array_ids(logs)) == [array]  # no second job array
    assert "done: 8 triplets" in again
    print(f"re-run of the finished sweep: {rerun:.0f} s wall")
    assert "done: 8 triplets" in out


# Long enough per shard (12 batches of fixed-step PGD(30) on LPIPS at 256 px, a few seconds
# each) that a cancel or a preemption signal lands while the shard is still running.
KILL = [
    "-m", "hydra/launcher=slurm", "logger=none", "dataset.num_triplets=48", "resolution=256", "resolution.batch_size=2",
    "metric=lpips_alex", "attack.max_iterations=30", "attack.early_stop=false", "shard.count=2", "progress=false",
]  # fmt: skip
KILL_TRIPLETS = 48


def _first_shard_parts(results: Path) -> list[Path]:
    return sorted(results.rglob("shard-00000-of-00002.parts/part-*.parquet"))


def _running_task(array_task_suffix: str = "_0") -> str | None:
    ids = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True
    ).stdout.split()
    return next((i for i in ids if i.endswith(array_task_suffix)), None)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_cancelled_shard_resubmitted_ends_exactly_once(slurm, tmp_path):
    log = tmp_path / "sweep.log"
    with running_until(
        KILL, tmp_path, log, _first_shard_parts, "a checkpointed batch of shard 0", 300
    ) as proc:
        task = wait_for(_running_task, 30, "the running task of shard 0")
        subprocess.run(["scancel", task], check=True)
        assert proc.wait(timeout=300) != 0  # the sweep reports the cancelled task
    assert "CANCELLED" in log.read_text()
    (run_dir,) = run_dirs(tmp_path / "results")
    assert not (run_dir / "results.parquet").exists()
    kept = len(_first_shard_parts(tmp_path / "results"))
    assert kept >= 1
    # the sweep stops at the cancelled task's error; the other task runs on to its end
    wait_for(lambda: (run_dir / "shard-00001-of-00002.parquet").exists(), 300, "shard 1 to finish")

    out = check(app(KILL, tmp_path))
    task_logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.*"))
    assert f"resuming shard 0/2: {2 * kept} done" in task_logs
    assert re.search(r"shard\.index=1 .* already finished, not submitted", out)
    assert "1 of 2 jobs already finished; submitting 1" in out
    table = pd.read_parquet(run_dir / "results.parquet")
    assert len(table) == KILL_TRIPLETS and table["triplet_id"].is_unique
    assert f"done: {KILL_TRIPLETS} triplets" in out


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_preempted_task_is_requeued_and_resumes(slurm, tmp_path):
    """USR2 is what SLURM sends before preemption or the time limit: submitit requeues the task."""
    log = tmp_path / "sweep.log"
    with running_until(
        KILL, tmp_path, log, _first_shard_parts, "a checkpointed batch of shard 0", 300
    ) as proc:
        task = wait_for(_running_task, 30, "the running task of shard 0")
        subprocess.run(["scancel", "--signal=USR2", task], check=True)
        # SLURM holds a requeued job back for a while (begin time); release it sooner, but not
        # within the second of the requeue: slurmd refuses a job whose credential dates from
        # the second its previous run's credential was revoked ("Job credential revoked")
        wait_for(
            lambda: subprocess.run(
                ["squeue", "-h", "-j", task, "-t", "PENDING", "-o", "%i"],
                capture_output=True,
                text=True,
            ).stdout.strip(),
            60,
            "the requeued task",
        )
        time.sleep(3)
        subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True)
        assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    task_logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.*"))
    assert "this job is preempted" in task_logs and "Requeued job" in task_logs
    done = int(task_logs.split("resuming shard 0/2: ")[1].split(" done")[0])
    assert 0 < done < KILL_TRIPLETS // 2
    (run_dir,) = run_dirs(tmp_path / "results")
    table = pd.read_parquet(run_dir / "results.parquet")
    assert len(table) == KILL_TRIPLETS and table["triplet_id"].is_unique


@pytest.mark.slurm
@pytest.mark.slow
def test_documented_command_submits_a_job_array(slurm, tmp_path):
    """``python -m attackpsm attack=stadv metric=lpips_alex -m resolution=64,256 hydra/launcher=slurm``."""
    attack = "stadv" if (CONF / "attack/stadv.yaml").exists() else "pgd"
    env = {
        **ENV,
        "ATTACKPSM_RESULTS": str(tmp_path / "results"),
        "ATTACKPSM_LOGS": str(tmp_path / "logs"),
    }
    cmd = [
        sys.executable,
        "-m",
        "attackpsm",
        f"attack={attack}",
        "metric=lpips_alex",
        "-m",
        "resolution=64,256",
        "hydra/launcher=slurm",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        arrays = wait_for(lambda: array_ids(tmp_path / "logs") or None, 120, "the job array")
        ((array, tasks),) = arrays.items()
        assert sorted(map(int, tasks)) == [0, 1]
        queued = subprocess.run(
            ["squeue", "-h", "-r", "-j", array, "-o", "%i %j"], capture_output=True, text=True
        ).stdout.split("\n")
        assert sorted(line for line in queued if line) == [
            f"{array}_0 attackpsm",
            f"{array}_1 attackpsm",
        ]
        (script,) = (tmp_path / "logs").glob(f"multiruns/*/.submitit/{array}/{array}_submission.sh")
        assert "#SBATCH --array=0-1" in script.read_text()
    finally:
        for a in array_ids(tmp_path / "logs"):
            subprocess.run(["scancel", a], check=False)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_task_never_downloads_and_names_the_fix(slurm, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    start = time.monotonic()
    proc = app(
        [
            "-m",
            "hydra/launcher=slurm",
            "logger=none",
            "metric=lpips_alex",
            "dataset.num_triplets=2",
            f"paths.weights_dir={empty}",
        ],
        tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "make weights" in proc.stdout + proc.stderr
    assert time.monotonic() - start < 120
    assert list(empty.iterdir()) == []
    # it failed inside a SLURM job (one job: no array), whose environment came from sbatch
    (job,) = [
        p.name for p in (tmp_path / "logs").glob("multiruns/*/.submitit/*") if p.name.isdigit()
    ]
    assert set(sacct_states(job)) == {job}
    assert "downloads are disabled here" in proc.stdout + proc.stderr
