"""The Hydra callback of every run: :class:`SweepCallback` (``hydra.callbacks.sweep``).

Before a sweep it refuses what cannot work (a swept ``shard.count``, no shard, no
``sbatch`` for ``hydra/launcher=slurm``); in each job it records the job's run directory
under ``<sweep dir>/.runs/`` (:mod:`attackpsm.cluster.records`); after the sweep it merges
every run's shards, writes the per-run and sweep-wide summary tables, logs one W&B
aggregate run per run identity and one sweep run (:mod:`attackpsm.cluster.merge`,
:mod:`attackpsm.cluster.aggregate`), and prints the sweep's screen.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from attackpsm.cluster.aggregate import log_sweep
from attackpsm.cluster.merge import finish_runs, print_sweep, write_sweep_summary
from attackpsm.cluster.records import job_record, sweep_records, write_record

log = logging.getLogger("attackpsm")


def _is_slurm(config: DictConfig) -> bool:
    return "SlurmLauncher" in str(OmegaConf.select(config, "hydra.launcher._target_", default=""))


class SweepCallback(Callback):
    """Hydra callback of every run (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exceptions into warnings: refusals exit instead
        from hydra.core.override_parser.overrides_parser import OverridesParser

        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        for o in overrides:
            if o.get_key_element() == "shard.count" and o.is_sweep_override():
                raise SystemExit(
                    "error: shard.count cannot be swept: the shard indices follow from one count. "
                    "Run one sweep per shard count (each is resumable)."
                )
        from attackpsm.job.preflight import check_shards

        try:  # shard.count=0 would launch no job and exit 0
            check_shards(config.shard.count)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
        if _is_slurm(config) and shutil.which("sbatch") is None:
            raise SystemExit(
                "error: hydra/launcher=slurm but `sbatch` is not on PATH: run on a SLURM login node, "
                "start a local cluster with launchers/start_slurm.sh (as root), or use "
                "hydra/launcher=local"
            )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and cpus.isdigit():  # one job per CPU allocation: no oversubscription
            import torch

            torch.set_num_threads(int(cpus))
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        try:
            record = job_record(config)
        except Exception as exc:  # the job itself reports bad configs, with context
            log.warning("cannot record this job for the end of the sweep: %s", exc)
            return
        write_record(Path(config.hydra.sweep.dir), f"{config.hydra.job.num:06d}", record)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = sweep_records(sweep_dir)
        finished = finish_runs(records)
        table = write_sweep_summary(sweep_dir, finished)
        try:  # a window, never a failure
            log_sweep(sweep_dir, finished)
        except Exception as exc:
            log.warning("no W&B sweep run for %s: %s", sweep_dir, exc)
        print_sweep(sweep_dir, records, finished, table)
