"""The end of a sweep: merge each run's shards, write the sweep's tables, print its screen.

The same step runs after every sweep
(:meth:`attackpsm.cluster.callback.SweepCallback.on_multirun_end`) and from the command line
after one that failed or was killed (:mod:`attackpsm.commands.cluster`). It writes ``<sweep dir>/summary.csv`` (every merged
run's Table-2 rows, :func:`attackpsm.summary.sweep.sweep_table`) and ``status.md`` (every
run directory and its state), and logs each merged run's W&B aggregate once
(:func:`attackpsm.cluster.aggregate.log_aggregate`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from attackpsm.cluster.aggregate import log_aggregate
from attackpsm.cluster.records import job_counts
from attackpsm.locks import write_text_atomic
from attackpsm.storage import RunStatus, StorageError, merge_run
from attackpsm.storage.records import RecordError
from attackpsm.summary.accuracy import clean_accuracy_markdown, sweep_clean_accuracy
from attackpsm.summary.sweep import flip_rate_grid, sweep_table

log = logging.getLogger("attackpsm")

SCREEN_RUNS = 8  # runs listed one per line, with their Table-2 rows, at the end of a sweep
# the columns of a sweep's Table-2 rows on its screen
SCREEN_COLUMNS = [
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
            frames.append(
                pd.read_csv(path).assign(
                    dataset=rec.get("dataset"),
                    resolution=rec.get("resolution") or "native",
                    run_dir=str(status.run_dir),
                )
            )
    return sweep_table(frames)


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


def print_sweep(
    sweep_dir: Path,
    records: list[dict[str, Any]],
    finished: list[tuple[dict[str, Any], RunStatus]],
    table: pd.DataFrame,
) -> None:
    """The screen at the end of a sweep: each run's state, its Table-2 rows (a large sweep:
    the runs not done and a flip-rate grid), Table 1 of its clean runs, then the footer."""
    sweep_dir = Path(sweep_dir)
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
        print(table[SCREEN_COLUMNS].to_string(index=False))
    clean = sweep_clean_accuracy([status.run_dir for _, status in finished if status.merged])
    if len(clean):  # attack=none runs: one Table-1 line per metric
        print("\n" + clean_accuracy_markdown(clean))
    print("\n" + "\n".join(sweep_footer(sweep_dir, records)))
