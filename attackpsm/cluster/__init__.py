"""Cluster sweeps: shards as a sweep axis, end-of-sweep merge, one W&B aggregate per run.

A sweep (``-m``) runs through Hydra's basic sweeper and, with ``hydra/launcher=slurm`` or
``hydra/launcher=local``, through hydra-submitit-launcher (one SLURM job array). Three
pieces make it a study that can be killed and resumed at any point:

* ``conf/hydra/default.yaml`` sets ``hydra.sweeper.params`` to
  ``shard.index: range(0,${shard.count})``, so ``shard.count=N`` gives N jobs per
  configuration without the user writing the range (an explicit ``shard.index=...`` wins).
* Every job is :func:`attackpsm.job.run.run`, which keys its results by the run's identity,
  checkpoints each batch, resumes an unfinished shard and skips a finished one
  (:func:`attackpsm.storage.finished_shard`: no computation, no new W&B run). A task that SLURM preempts,
  times out (submitit requeues it) or kills loses at most the batch in flight.
* :class:`SweepCallback` (``hydra.callbacks.sweep``): before the sweep it refuses what cannot
  work; in each job it records the job's run directory under ``<sweep dir>/.runs/``; after
  the sweep it merges every run's shards, writes the per-run and sweep-wide summary tables
  and logs one W&B *aggregate* run per run identity (the shards' runs share its group).

The launchers (``hydra_plugins/attackpsm_launchers``) leave finished shards out of a re-run's
job array and record them here (:func:`write_record`) as their jobs would have done. After a
sweep that failed or was killed, the same end-of-sweep step is the command line of
:mod:`attackpsm.commands.cluster`::

    python -m attackpsm cluster merge logs/multiruns/<date>    # a sweep directory
    python -m attackpsm cluster merge results                   # every run under a results dir
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from attackpsm.locks import write_text_atomic
from attackpsm.storage import (
    RunStatus,
    ShardStore,
    StorageError,
    headline,
    load_results,
    merge_run,
    read_identity,
    run_dir_for,
    shard_counts,
)
from attackpsm.storage.records import RecordError, build_from_record, load_mapping
from attackpsm.summary.accuracy import clean_accuracy_markdown, sweep_clean_accuracy
from attackpsm.summary.results import SUMMARY_COLUMNS

log = logging.getLogger("attackpsm")

RECORDS = ".runs"  # per-job records inside a sweep directory
AGGREGATES = "wandb-aggregates.json"  # W&B aggregate runs already logged for a run directory


# --- W&B aggregate runs --------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


LOGGER_MODULES = ("attackpsm.job.loggers.",)  # what a job record's logger may name


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
    from attackpsm.job.loggers import NullLogger, aggregate_config, flat_keys, log_results

    run_dir = Path(run_dir)
    if not logger_spec or not logger_spec.get("_target_") or logger_spec.get("mode") == "disabled":
        return False
    merged = run_dir / "results.parquet"
    if not merged.exists():
        return False
    destination = json.dumps(
        {k: logger_spec.get(k) for k in ("_target_", "mode", "project", "entity", "dir")},
        sort_keys=True,
        default=str,
    )
    digest = _sha256(merged)
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


def sweep_tables(run_dirs: list[Path]) -> dict[str, pd.DataFrame]:
    """The tables of a sweep's W&B run: robustness curves of every merged run, one line per
    metric (per metric · attack when the sweep holds several attacks; against iterations
    and queries also per ε when it holds several), and the leaderboard
    (:func:`attackpsm.job.loggers.leaderboard`)."""
    from attackpsm.job.loggers import (
        CURVE,
        flat_keys,
        leaderboard,
        leaderboard_row,
        robustness_curves,
    )

    loaded = []
    for run_dir in run_dirs:
        results = load_results(run_dir)
        if results is not None:
            loaded.append((flat_keys(read_identity(run_dir)), results[0]))
    attacks = len({k["attack.name"] for k, _ in loaded}) > 1
    budgets = len({k["eps"] for k, _ in loaded}) > 1
    curves: dict[str, list[pd.DataFrame]] = {}
    for keys, table in loaded:
        label = f"{keys['metric.name']} · {keys['attack.name']}" if attacks else keys["metric.name"]
        for x, frame in robustness_curves(table, keys).items():
            effort = x != "eps" and budgets and keys["eps"] is not None
            frame[CURVE] = f"{label} · ε={keys['eps']:g}" if effort else label
            curves.setdefault(x, []).append(frame)
    out = {
        f"curves/{x}": pd.concat(frames, ignore_index=True).sort_values([CURVE, x], kind="stable")
        for x, frames in curves.items()
    }
    out["leaderboard"] = leaderboard([leaderboard_row(t, k) for k, t in loaded])
    return out


def log_sweep(
    sweep_dir: Path,
    finished: list[tuple[dict[str, Any], RunStatus]],
    logger_spec: dict[str, Any] | None = None,
) -> bool:
    """Log one W&B run (job type ``sweep``) that sums up a sweep: the robustness curves of
    its merged runs on one panel per x axis (``sweep/curves/<x>``) and the leaderboard
    table (``sweep/leaderboard``); the first section of ``python -m attackpsm dashboard
    --sweep`` plots them. Its W&B group is named by the sweep's runs
    (:func:`attackpsm.job.loggers.sweep_group`); it is logged once per content and W&B
    destination (``wandb-sweeps.json`` in the results directory): a re-run of a finished
    sweep logs nothing. Returns True when it logged.
    """
    from attackpsm.job.loggers import CURVE_TITLES, NullLogger, sweep_group

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
    tables = sweep_tables(run_dirs)
    destination = json.dumps(
        {k: logger_spec.get(k) for k in ("_target_", "mode", "project", "entity", "dir")},
        sort_keys=True,
        default=str,
    )
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


# --- a sweep's records and its summary -----------------------------------------------------


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


def finish_runs(
    records: list[dict[str, Any]], wandb: bool = True
) -> list[tuple[dict[str, Any], RunStatus]]:
    """Merge each distinct run of ``records`` and log its W&B aggregate once complete."""
    by_run: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in records:
        by_run.setdefault((rec["run_dir"], rec["shard_count"]), rec)
    out = []
    for (run_dir, count), rec in sorted(by_run.items()):
        try:
            status = merge_run(Path(run_dir), count)
        except StorageError as exc:  # shards of other data, or triplets missing or twice
            log.error("%s", exc)
            status = RunStatus(Path(run_dir), count, problem=str(exc))
        if status.merged and wandb:
            try:
                log_aggregate(
                    Path(run_dir),
                    rec.get("logger"),
                    Path(rec["results_dir"]),
                    rec.get("record", "the job record"),
                )
            except RecordError as exc:  # a planted logger: refused, named; never built
                log.error("%s", exc)
                status.problem = str(exc)
        out.append((rec, status))
    return out


def sweep_summary(finished: list[tuple[dict[str, Any], RunStatus]]) -> pd.DataFrame:
    """One table for the whole sweep: every merged run's Table-2 rows, with their axes."""
    frames = []
    for rec, status in finished:
        path = status.run_dir / "summary.csv"
        if status.merged and path.exists():
            frame = pd.read_csv(path)
            frame.insert(0, "dataset", rec.get("dataset"))
            frame.insert(3, "resolution", rec.get("resolution") or "native")
            frame["run_dir"] = str(status.run_dir)
            frames.append(frame)
    columns = ["dataset", *SUMMARY_COLUMNS[:2], "resolution", *SUMMARY_COLUMNS[2:], "run_dir"]
    return (
        pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    )


def status_lines(finished: list[tuple[dict[str, Any], RunStatus]]) -> list[str]:
    lines = []
    for _, s in finished:
        if s.merged:
            state = f"done: {s.samples} triplets, flip rate {s.flip_rate:.1%}"
            if s.problem:
                state += f"; but {s.problem}"
        elif s.problem:
            state = f"not merged: {s.problem}"
        else:
            partial = ", ".join(f"shard {i}: {n} done" for i, n in sorted(s.partial.items()))
            state = f"{len(s.finished)}/{s.count} shards finished; missing {s.missing}" + (
                f" ({partial})" if partial else ""
            )
        lines.append(f"{s.run_dir}: {state}")
    return lines


def write_sweep_summary(
    sweep_dir: Path, finished: list[tuple[dict[str, Any], RunStatus]]
) -> pd.DataFrame:
    table = sweep_summary(finished)
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(sweep_dir / "summary.csv", table.to_csv(index=False))
    status = "\n".join(f"- {line}" for line in status_lines(finished))
    write_text_atomic(sweep_dir / "status.md", f"# Runs of this sweep\n\n{status}\n")
    return table


def flip_rate_grid(table: pd.DataFrame) -> pd.DataFrame:
    """A sweep's flip rates (%, ✓ and ✗ together) as one grid: a row per dataset,
    resolution and metric, a column per attack -- a large sweep's results on one screen."""
    keys = ["dataset", "resolution", "metric", "attack"]
    sums = table.groupby(keys, dropna=False)[["flipped", "samples"]].sum()
    rate = (100.0 * sums["flipped"] / sums["samples"].where(sums["samples"] > 0)).round(1)
    return rate.unstack("attack")


SCREEN_RUNS = 8  # runs listed one per line, with their Table-2 rows, at the end of a sweep


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


def sweep_footer(sweep_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    """The last lines of a sweep: its jobs, and where its tables and logs are (absolute)."""
    sweep_dir = Path(sweep_dir).absolute()
    c = job_counts(sweep_dir, records)
    lines = [
        f"Jobs: {c['jobs']} -- {c['computed']} computed, {c['reused']} reused (finished "
        f"before), {c['unfinished']} failed or unfinished"
        + (" (run the same command again to finish them)" if c["unfinished"] else ""),
        f"Tables: {sweep_dir / 'summary.csv'} (every run's rows), {sweep_dir / 'status.md'} "
        "(every run directory; each holds its results.parquet)",
    ]
    submitit = sweep_dir / ".submitit"
    logs = f"{submitit}/<job id>/" if submitit.exists() else f"{sweep_dir}/<job number>/"
    lines.append(f"Logs: {logs}")
    return lines


# --- the Hydra callback --------------------------------------------------------------------


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
        print(f"\nSweep {sweep_dir.absolute()}: {len(finished)} runs")
        lines = status_lines(finished)
        # one screen: a large sweep lists only the runs that are not done (all: status.md)
        many = len(lines) > SCREEN_RUNS
        shown = [line for (_, s), line in zip(finished, lines, strict=True) if not s.merged]
        for line in shown if many else lines:
            print(f"  {line}")
        if many:
            done = sum(s.merged for _, s in finished)
            print(f"  ... {done} runs done (each listed in {sweep_dir.absolute() / 'status.md'})")
        if len(table) and many:
            print("\nFlip rate (%), all triplets:")
            print(flip_rate_grid(table).to_string())
        if len(table) and not many:
            cols = [
                "dataset",
                "metric",
                "attack",
                "resolution",
                "agrees",
                "samples",
                "flipped",
                "flipped_pct",
                "rmse_mean",
                "psnr_mean",
            ]
            print(table[cols].to_string(index=False))
        clean = sweep_clean_accuracy([status.run_dir for _, status in finished if status.merged])
        if len(clean):  # attack=none runs: one Table-1 line per metric
            print("\n" + clean_accuracy_markdown(clean))
        print("\n" + "\n".join(sweep_footer(sweep_dir, records)))
