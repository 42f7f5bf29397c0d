"""``python -m attackpsm cluster merge``: the end-of-sweep step, run by hand.

After a sweep that failed or was killed, this does what
:class:`attackpsm.cluster.callback.SweepCallback` does at the end of a sweep: merge every run's
shards, write the per-run and sweep-wide summary tables, log one W&B aggregate run per
finished run identity and one W&B sweep run per path (robustness curves and leaderboard,
:func:`attackpsm.cluster.aggregate.log_sweep`; docs/cluster.md)::

    python -m attackpsm cluster merge logs/multiruns/<date>    # a sweep directory
    python -m attackpsm cluster merge results                   # every run under a results dir

It exits 1 when a run is incomplete (the re-run of the same sweep command finishes it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from attackpsm.cluster.aggregate import log_sweep
from attackpsm.cluster.merge import finish_runs, status_lines, write_sweep_summary
from attackpsm.cluster.records import RECORDS, sweep_records
from attackpsm.storage import read_identity, shard_counts
from attackpsm.storage.records import RecordError


def _records_for(path: Path, refused: list[str] | None = None) -> list[dict[str, Any]]:
    """Records for a sweep directory, a run directory or a results directory."""
    path = Path(path).absolute()
    if (path / RECORDS).exists():
        return sweep_records(path, refused)
    run_dirs = (
        [path]
        if (path / "identity.yaml").exists()
        else sorted(p.parent for p in path.rglob("identity.yaml"))
    )
    out = []
    for run_dir in run_dirs:
        try:
            identity = read_identity(run_dir)
        except RecordError:  # refused again, with the file named, when the run is merged
            identity = {}
        for count in shard_counts(run_dir) or [1]:
            rel = run_dir.relative_to(path) if run_dir != path else Path(*run_dir.parts[-4:])
            out.append(
                {
                    "run_dir": str(run_dir),
                    "results_dir": str(run_dir.parents[3]) if len(rel.parts) == 4 else str(path),
                    "shard_count": count,
                    "dataset": identity.get("dataset", {}).get("name"),
                    "metric": identity.get("metric", {}).get("name"),
                    "attack": identity.get("attack", {}).get("name"),
                    "resolution": identity.get("resolution"),
                    "logger": None,
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 when every run found is merged, 1 when some are incomplete
        or a record was refused.
    """
    parser = argparse.ArgumentParser(
        prog="python -m attackpsm cluster",
        description="Merge the shards of finished runs and write their summaries.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merge shards, write summaries, log W&B aggregates")
    merge.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="sweep directories, run directories or results directories (default: $ATTACKPSM_RESULTS or results)",
    )
    merge.add_argument("--no-wandb", action="store_true", help="do not log W&B aggregate runs")
    merge.add_argument(
        "--wandb-dir",
        type=Path,
        default=None,
        help="log aggregates of runs found outside a sweep directory here (offline)",
    )
    merge.add_argument(
        "--summary",
        type=Path,
        default=None,
        help="also write the combined summary.csv/status.md into this folder",
    )
    args = parser.parse_args(argv)

    paths = args.paths or [Path(os.environ.get("ATTACKPSM_RESULTS", "results"))]
    records: list[dict[str, Any]] = []
    refused: list[str] = []
    found_in: dict[Path, set[str]] = {}
    for path in paths:
        if not path.exists():
            parser.error(f"{path} does not exist")
        found = _records_for(path, refused)
        if args.wandb_dir:
            spec = {
                "_target_": "attackpsm.job.loggers.WandbLogger",
                "mode": "offline",
                "dir": str(args.wandb_dir.absolute()),
            }
            for rec in found:
                rec["logger"] = rec.get("logger") or spec
        records += found
        found_in[path] = {rec["run_dir"] for rec in found}
    finished = finish_runs(records, wandb=not args.no_wandb)
    for line in status_lines(finished):
        print(line)
    if not args.no_wandb:  # one W&B sweep run per path: its curves and leaderboard
        for path, run_dirs in found_in.items():
            mine = [(rec, s) for rec, s in finished if rec["run_dir"] in run_dirs]
            try:
                log_sweep(path, mine)
            except Exception as exc:  # a window, never a failure
                print(f"no W&B sweep run for {path}: {exc}", file=sys.stderr)
    if args.summary:
        write_sweep_summary(args.summary, finished)
    incomplete = [s for _, s in finished if not s.merged or s.problem]
    if incomplete:
        print(
            f"{len(incomplete)} of {len(finished)} runs are incomplete: re-run the same sweep command to finish them",
            file=sys.stderr,
        )
    for message in refused:
        print(f"refused job record: {message}", file=sys.stderr)
    return 1 if incomplete or refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
