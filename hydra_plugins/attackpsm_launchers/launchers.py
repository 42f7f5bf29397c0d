"""Hydra launchers of attackpsm: submitit's, where a re-run of a sweep submits only the shards
with work left (``hydra/launcher=slurm`` and ``hydra/launcher=local``; docs/cluster.md,
"Resume")."""

from __future__ import annotations

import logging
import pickle
import sys
import threading
from pathlib import Path

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from attackpsm.cluster.records import job_record, write_record
from attackpsm.storage import RunDirs, ShardStore

log = logging.getLogger("attackpsm")


class SubmitsPendingShards:
    """Mixin of the submitit launchers: finished shards are not submitted again.

    Before submitting, each job's config is composed and its shard looked up in the results
    directory (:class:`~attackpsm.storage.ShardStore`; each distinct dataset's index is
    built once for its data fingerprint); a finished shard is recorded for the end-of-sweep
    merge (as its job would have done) and left out of the job array, so re-running a sweep
    to finish its stragglers submits only them. A shard that finishes between this check and
    its task start still finds its work done (:func:`attackpsm.storage.finished_shard`).
    """

    def launch(self, job_overrides, initial_job_idx):  # noqa: ANN001 - Hydra's signature
        from hydra.core.utils import JobReturn, JobStatus
        from omegaconf import open_dict

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        run_dirs = RunDirs()  # one index build per distinct dataset
        pending, done = [], []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                with open_dict(cfg):
                    cfg.hydra.job.num = idx
                run_dir = run_dirs(cfg)
                finished = ShardStore(run_dir, cfg.shard.index, cfg.shard.count).finished
            except Exception as exc:  # the job itself reports a bad config, with context
                log.warning("job #%d: cannot look up its shard (%s); submitting it", idx, exc)
                finished = False
            if not finished:
                pending.append(overrides)
                continue
            write_record(sweep_dir, f"finished-{idx:06d}", job_record(cfg, run_dir))
            log.info("\t#%d : %s -- already finished, not submitted", idx, " ".join(overrides))
            ret = JobReturn(overrides=list(overrides), cfg=cfg, status=JobStatus.COMPLETED)
            ret.task_name = "attackpsm"
            done.append(ret)
        if done:
            log.info(
                "%d of %d jobs already finished; submitting %d",
                len(done),
                len(job_overrides),
                len(pending),
            )
        if not pending:
            return done
        with JobWatch(Path(str(self.params["submitit_folder"])).parent, len(pending)):
            returns = list(super().launch(pending, initial_job_idx))
        return returns + done


class JobWatch:
    """Shows a sweep's submitted jobs while they run: a progress line of jobs finished.

    submitit writes ``<job id>_<task>_result.pkl`` into each job's folder
    (``<sweep dir>/.submitit/<job id>/``, next to its ``_log.out`` and ``_log.err``) when the
    task ends; a thread counts them every few seconds, and the failed ones. Reading those
    files is all it does: the launcher's own wait and results are unchanged.
    """

    def __init__(self, folder: Path, total: int, every_s: float | None = None):
        if every_s is None:  # a terminal redraws the line; a log file gets one line each time
            every_s = 2.0 if sys.stderr.isatty() else 30.0
        self.folder, self.total, self.every_s = Path(folder).absolute(), total, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._seen: dict[Path, bool] = {}

    def _count(self) -> tuple[int, int]:
        for path in self.folder.glob("*/*_result.pkl"):
            if path not in self._seen:
                try:
                    with path.open("rb") as f:
                        self._seen[path] = pickle.load(f)[0] != "success"
                except Exception:  # noqa: BLE001 - still being written: counted next time
                    continue
        failed = sum(self._seen.values())
        return len(self._seen) - failed, failed

    def _watch(self) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total, desc="jobs", unit="job", mininterval=0)
        try:
            while not self._stop.wait(self.every_s):
                ok, failed = self._count()
                bar.n = ok + failed
                bar.set_postfix(failed=failed, refresh=True)
            ok, failed = self._count()
            bar.n = ok + failed
            bar.set_postfix(failed=failed, refresh=True)
        finally:
            bar.close()

    def __enter__(self) -> JobWatch:
        log.info("%d jobs submitted; their logs: %s/<job id>/", self.total, self.folder)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class SlurmLauncher(SubmitsPendingShards, submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: one job array of the shards with work left."""


class LocalLauncher(SubmitsPendingShards, submitit_launcher.LocalLauncher):
    """``hydra/launcher=local``: one local process per shard with work left."""
