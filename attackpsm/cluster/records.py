"""A sweep's job records: ``<sweep dir>/.runs/<job>.json``, one per job.

Each job of a sweep records its run directory, shard and logger here
(:meth:`attackpsm.cluster.callback.SweepCallback.on_job_start`); the launchers
(``hydra_plugins/attackpsm_launchers``) record the finished shards they leave out of a
re-run's job array the same way. The end of a sweep (:mod:`attackpsm.cluster.merge`) reads
them back as plain data (:func:`attackpsm.storage.records.load_mapping`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from attackpsm.locks import write_text_atomic
from attackpsm.storage import ShardStore, run_dir_for
from attackpsm.storage.records import RecordError, load_mapping

log = logging.getLogger("attackpsm")

RECORDS = ".runs"  # per-job records inside a sweep directory


def job_record(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """What the end of a sweep needs to know about one job (JSON-able).

    Args:
        cfg: the job's config.
        run_dir: its run directory when known (else found from the config and its data).
    """
    results_dir = Path(cfg.paths.results_dir).absolute()
    run_dir = Path(run_dir if run_dir is not None else run_dir_for(cfg)).absolute()
    logger = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else None
    if logger and logger.get("dir"):
        logger["dir"] = str(Path(logger["dir"]).absolute())
    return {
        "run_dir": str(run_dir),
        "results_dir": str(results_dir),
        "shard_index": int(cfg.shard.index),
        "shard_count": int(cfg.shard.count),
        "dataset": cfg.dataset.name,
        "metric": cfg.metric.name,
        "attack": cfg.attack.name,
        "resolution": cfg.resolution.size,
        "logger": logger,
    }


def write_record(sweep_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Record one job for the end-of-sweep merge: ``<sweep dir>/.runs/<name>.json``.

    Args:
        sweep_dir: the sweep directory (``hydra.sweep.dir``).
        name: the record's file name without ``.json`` (unique per job of the sweep).
        record: what :func:`job_record` returns for the job.
    """
    folder = sweep_dir / RECORDS
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{name}.json", json.dumps(record, indent=1, default=str))


REQUIRED = ("run_dir", "results_dir", "shard_count")  # what a job record must hold


def sweep_records(sweep_dir: Path, refused: list[str] | None = None) -> list[dict[str, Any]]:
    """The job records of a sweep, read as plain data; a record that is not one is left
    out with a line naming it (appended to ``refused`` too) -- its job's run is still found
    by a merge of the results directory. Each record keeps its file's path under ``record``."""
    folder = Path(sweep_dir) / RECORDS
    out = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else ():
        try:
            rec = load_mapping(path)
            missing = [k for k in REQUIRED if k not in rec]
            if missing:
                raise RecordError(f"{path}: not a job record (no {', '.join(missing)})")
            if isinstance(rec["shard_count"], bool) or not isinstance(rec["shard_count"], int):
                raise RecordError(f"{path}: shard_count {rec['shard_count']!r} is not an integer")
        except (RecordError, FileNotFoundError) as exc:
            log.error("%s", exc)
            if refused is not None:
                refused.append(str(exc))
            continue
        rec["record"] = str(path)
        out.append(rec)
    return out


def job_counts(sweep_dir: Path, records: list[dict[str, Any]]) -> dict[str, int]:
    """Jobs of a sweep: ``computed`` here, ``reused`` (finished before the sweep started),
    ``unfinished`` (failed, interrupted or still running); from the job records and the
    shard files. The sweep starts when Hydra writes ``multirun.yaml`` into its directory."""
    start_file = Path(sweep_dir) / "multirun.yaml"
    start = start_file.stat().st_mtime if start_file.exists() else 0.0
    counts = {"jobs": 0, "computed": 0, "reused": 0, "unfinished": 0}
    seen = set()
    for rec in records:
        key = (rec["run_dir"], rec["shard_index"], rec["shard_count"])
        if key in seen:
            continue
        seen.add(key)
        counts["jobs"] += 1
        final = ShardStore(Path(rec["run_dir"]), rec["shard_index"], rec["shard_count"]).final
        if not final.exists():
            counts["unfinished"] += 1
        elif final.stat().st_mtime < start:
            counts["reused"] += 1
        else:
            counts["computed"] += 1
    return counts
