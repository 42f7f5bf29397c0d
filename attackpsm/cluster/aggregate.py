"""The W&B runs of a sweep's end: one *aggregate* run per merged run identity, one *sweep* run.

An aggregate run (job type ``aggregate``, :func:`log_aggregate`) joins the group of its
shards' runs with the merged results: the headline numbers, their ✓/✗ and per-subset
split, histograms, robustness curves, the report's figures and the tables. The sweep run
(job type ``sweep``, :func:`log_sweep`) puts every merged run's robustness curves on one
panel per x axis and ranks them in a leaderboard (:mod:`attackpsm.summary.sweep`). Each is
logged once per content and W&B destination: a re-run logs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from attackpsm.job.loggers import (
    CURVE_TITLES,
    NullLogger,
    aggregate_config,
    flat_keys,
    log_results,
    sweep_group,
)
from attackpsm.locks import sha256_file, write_text_atomic
from attackpsm.storage import (
    RunStatus,
    load_results,
    read_identity,
    shard_counts,
)
from attackpsm.storage.records import RecordError, build_from_record, load_mapping
from attackpsm.summary.headline import headline
from attackpsm.summary.sweep import sweep_tables

log = logging.getLogger("attackpsm")

AGGREGATES = "wandb-aggregates.json"  # W&B aggregate runs already logged for a run directory
LOGGER_MODULES = ("attackpsm.job.loggers.",)  # what a job record's logger may name


def _destination(logger_spec: dict[str, Any]) -> str:
    """The W&B destination of a logger config: where a run logged once is found again."""
    return json.dumps(
        {k: logger_spec.get(k) for k in ("_target_", "mode", "project", "entity", "dir")},
        sort_keys=True,
        default=str,
    )


def _sweep_runs(run_dirs: list[Path]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """The flat keys (:func:`attackpsm.job.loggers.flat_keys`) and results of every merged
    run of ``run_dirs``."""
    runs = []
    for run_dir in run_dirs:
        results = load_results(run_dir)
        if results is not None:
            runs.append((flat_keys(read_identity(run_dir)), results[0]))
    return runs


def log_aggregate(
    run_dir: Path,
    logger_spec: dict[str, Any] | None,
    results_dir: Path | None = None,
    source: str | Path = "the job record",
) -> bool:
    """Log one W&B run (job type ``aggregate``) with the merged results of a run identity.

    It joins the group of the shards' runs (the run directory relative to the results
    directory). Logged once per merged table and W&B destination: a re-run finds the
    record in ``wandb-aggregates.json`` and logs nothing. Returns True when it logged.
    ``logger_spec`` comes from a file (``source``): it is built only when, resolved, it
    names one of the package's loggers (:func:`attackpsm.storage.records.build_from_record`).
    """
    run_dir = Path(run_dir)
    if not logger_spec or not logger_spec.get("_target_") or logger_spec.get("mode") == "disabled":
        return False
    merged = run_dir / "results.parquet"
    if not merged.exists():
        return False
    destination = _destination(logger_spec)
    digest = sha256_file(merged)
    record_path = run_dir / AGGREGATES
    try:
        records = load_mapping(record_path)
    except FileNotFoundError:
        records = {}
    except RecordError as exc:
        log.warning("%s; logging the aggregate again", exc)
        records = {}
    if (records.get(destination) or {}).get("results_sha256") == digest:
        return False
    group = str(run_dir.relative_to(results_dir)) if results_dir else "/".join(run_dir.parts[-4:])
    loaded = load_results(run_dir)
    if loaded is None:
        return False
    table, errors = loaded
    summary_path = run_dir / "summary.csv"
    logger = build_from_record(
        logger_spec,
        source,
        LOGGER_MODULES,
        (NullLogger,),
        drop=(),
        group=group,
        name=f"{group}/all",
        job_type="aggregate",
    )
    try:
        if getattr(logger, "run", None) is None:
            return False
        identity = read_identity(run_dir)
        # the shards' config groups and flat keys (grouping, ε axis), complete: True
        logger.set_config(
            {**aggregate_config(identity), "identity": identity, "run_dir": str(run_dir)}
        )
        counts = shard_counts(run_dir)
        logger.log_summary({**headline(table, len(errors)), "shards": counts[0] if counts else 1})
        # ✓/✗ and subset summary, histograms, robustness curves
        log_results(logger, table, flat_keys(identity))
        _log_report_figures(logger, run_dir)
        if summary_path.exists():
            logger.log_table("summary", pd.read_csv(summary_path))
        logger.log_table("triplets", table)
        run_id = logger.run.id
    finally:
        logger.finish()
    records[destination] = {"results_sha256": digest, "run_id": run_id}
    write_text_atomic(record_path, json.dumps(records, indent=1, sort_keys=True))
    return True


SWEEP_RECORD = "wandb-sweeps.json"  # W&B sweep runs already logged, in the results directory


def log_sweep(
    sweep_dir: Path,
    finished: list[tuple[dict[str, Any], RunStatus]],
    logger_spec: dict[str, Any] | None = None,
) -> bool:
    """Log one W&B run (job type ``sweep``) that sums up a sweep: the robustness curves of
    its merged runs on one panel per x axis (``sweep/curves/<x>``) and the leaderboard
    table (``sweep/leaderboard``, :func:`attackpsm.summary.sweep.sweep_tables`); the first section of ``python -m attackpsm dashboard
    --sweep`` plots them. Its W&B group is named by the sweep's runs
    (:func:`attackpsm.job.loggers.sweep_group`); it is logged once per content and W&B
    destination (``wandb-sweeps.json`` in the results directory): a re-run of a finished
    sweep logs nothing. Returns True when it logged.
    """
    if logger_spec is None:
        logger_spec = next((rec["logger"] for rec, _ in finished if rec.get("logger")), None)
    if not logger_spec or not logger_spec.get("_target_") or logger_spec.get("mode") == "disabled":
        return False
    run_dirs = sorted({status.run_dir for _, status in finished if status.merged})
    if not run_dirs:
        return False
    sweep_dir = Path(sweep_dir)
    group = sweep_group(  # the runs the dashboard finds for this sweep (their identity.yaml)
        [
            "/".join(Path(rec["run_dir"]).parts[-4:])
            for rec, _ in finished
            if (Path(rec["run_dir"]) / "identity.yaml").exists()
        ]
    )
    tables = sweep_tables(_sweep_runs(run_dirs))
    destination = _destination(logger_spec)
    digest = hashlib.sha256(
        "".join(f"{k}\n{v.to_csv(index=False)}" for k, v in sorted(tables.items())).encode()
    ).hexdigest()
    results_dir = next((rec["results_dir"] for rec, _ in finished if rec.get("results_dir")), None)
    record_path = Path(results_dir or sweep_dir) / SWEEP_RECORD
    records = load_mapping(record_path) if record_path.exists() else {}
    if records.get(destination, {}).get(group, {}).get("tables_sha256") == digest:
        return False
    name = f"sweep {sweep_dir.resolve()}"
    logger = build_from_record(  # the logger named in the sweep's job records: data, checked
        logger_spec,
        sweep_dir,
        LOGGER_MODULES,
        (NullLogger,),
        drop=(),
        group=group,
        name=name,
        job_type="sweep",
    )
    try:
        if getattr(logger, "run", None) is None:
            return False
        board = tables.pop("leaderboard")
        logger.set_config(
            {
                "sweep_dir": str(sweep_dir.resolve()),
                "runs": len(run_dirs),
                "metrics": sorted({str(m) for m in board.get("metric", [])}),
                "complete": True,
                "finished": True,
            }
        )
        for key, frame in tables.items():
            x = key.split("/", 1)[1]
            logger.log_curve(f"sweep/{key}", frame, x, "flip_rate", CURVE_TITLES.get(x, x))
        logger.log_table("sweep/leaderboard", board)
        run_id = logger.run.id
    finally:
        logger.finish()
    records.setdefault(destination, {})[group] = {"tables_sha256": digest, "run_id": run_id}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record_path, json.dumps(records, indent=1, sort_keys=True))
    return True


def _log_report_figures(logger: Any, run_dir: Path) -> None:
    """The report's figures of one run (:mod:`attackpsm.report.figures`) as W&B images."""
    import tempfile

    def image(path):
        import wandb

        return lambda: wandb.Image(str(path))

    try:
        from attackpsm.report import figures
        from attackpsm.report.load import load_run

        run = load_run(run_dir)
        made = {**figures.perturbation_histograms([run]), **figures.flip_rate_vs_eps([run])}
        with tempfile.TemporaryDirectory() as tmp:
            pngs = {}
            for stem, fig in made.items():
                paths = figures.save_figure(fig, Path(tmp), stem)
                pngs[stem] = next(p for p in paths if p.suffix == ".png")
            logger.log_media({f"figures/{stem}": image(p) for stem, p in pngs.items()})
    except Exception as exc:  # a window, never a failure
        log.warning("no report figures for the W&B aggregate run of %s: %s", run_dir, exc)
