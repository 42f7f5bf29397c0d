"""``python -m attackpsm bench modes MODES``: PGD's execution modes on the PGD workloads.

Fixed shapes, compaction, no host synchronisation, ``torch.compile`` (docs/performance.md,
"PGD execution modes"): one row per mode with its throughput and whether its per-triplet
table makes the same decisions as the default loop (``shrink``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from attackpsm.commands.bench.common import (
    build_attack,
    build_metric,
    head,
    sync,
    synthetic_batches,
    write_results,
)
from attackpsm.commands.bench.workloads import Workload, add_workload_arguments, select_workloads
from attackpsm.engine import attack_batch

HELP = "PGD execution modes (fixed shapes, compaction, torch.compile): speed, same decisions"

ENGINE_MODES = "shrink | masked | masked:K | compact:K"


def parse_engine_mode(mode: str) -> dict[str, int]:
    """``PGD`` keyword arguments of a ``bench modes`` MODE (docs/performance.md, "PGD execution modes").

    ``shrink``: the default loop (finished triplets leave the batch after every step);
    ``masked``: fixed shapes, finished triplets frozen by a mask, no host synchronisation;
    ``masked:K``: fixed shapes, the early-stop test every ``K`` steps;
    ``compact:K``: the batch compacted (and the early-stop test run) every ``K`` steps.
    """
    if mode == "shrink":
        return {"compact_every": 1, "check_every": 1}
    if mode == "masked":
        return {"compact_every": 0, "check_every": 0}
    name, _, k = mode.partition(":")
    if name in ("masked", "compact") and k.isdigit() and int(k) >= 1:
        return {"compact_every": int(k) if name == "compact" else 0, "check_every": int(k)}
    raise ValueError(f"unknown engine mode {mode!r}; valid: {ENGINE_MODES} (K >= 1)")


def _settings(modes: list[str], compiles: list[str]) -> list[tuple[str, bool | str]]:
    """``(mode, torch.compile mode or False)`` pairs, the default (``shrink``, eager) first."""
    return [("shrink", False)] + [
        (m, c) for c in [False, *compiles] for m in modes if (m, c) != ("shrink", False)
    ]


def _warmed_up(w: Workload, metric, batches: list, mode: str, compile_mode) -> dict[str, Any]:
    """The PGD of one setting, composed from ``conf/attack/pgd.yaml``, after its warm-up:
    two triplets, or (compiling) every batch shape the timed passes meet."""
    extra = {**parse_engine_mode(mode), "compile": compile_mode}
    attack = build_attack(w.attack, **w.params, **extra)
    label = mode + (f" +compile({compile_mode})" if compile_mode else "")
    print(f"[bench] {w.name} {label}: warm-up ...", flush=True)
    t0 = time.perf_counter()
    warm = (
        [head(batches[0], 2)] if not compile_mode else list({len(b): b for b in batches}.values())
    )
    for b in warm:
        attack_batch(metric, attack, b)
    sync(batches[0].ref.device)
    return {
        "label": label,
        "attack": attack,
        "warmup_s": time.perf_counter() - t0,
        "best": float("inf"),
    }


def _row(w: Workload, device: torch.device, run: dict, default, first_rate, passes: int) -> dict:
    """One mode's row: its speed, and its table against the default's."""
    table, best = run["table"], run["best"]
    same = (
        (table["flipped"].values == default["flipped"].values)
        & (table["iterations"].values == default["iterations"].values)
    ).sum()
    return {
        "workload": w.name,
        "mode": run["label"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "triplets": len(table),
        "passes": passes,
        "seconds": best,
        "triplets_per_s": len(table) / best,
        "vs_shrink": (len(table) / best) / first_rate if first_rate else 1.0,
        "warmup_s": run["warmup_s"],
        "same_decisions": int(same),
        "identical_table": bool(table.equals(default)),
        "columns_differing": [c for c in default.columns if not table[c].equals(default[c])],
        "max_abs_diff_s_adv": float((table["s_adv"] - default["s_adv"]).abs().max()),
        "flip_rate": float(table["flipped"].mean()),
        "compile_errors": run["attack"].compile_errors,
    }


def engine_modes(
    w: Workload,
    device: torch.device,
    modes: list[str],
    compiles: list[str],
    passes: int = 2,
) -> list[dict[str, Any]]:
    """One row per execution mode of PGD (and per ``torch.compile`` mode, if any) on the
    workload's triplets: throughput (the fastest of ``passes`` timed passes, which alternate
    between the modes, after a warm-up that also compiles) and whether its per-triplet table
    equals the default's (``shrink`` without compile): same flip and iteration for every
    triplet, and which columns differ at all.
    """
    import pandas as pd

    if w.attack != "pgd":
        raise ValueError(f"bench modes applies to PGD workloads, not {w.name!r}")
    for mode in modes:
        parse_engine_mode(mode)  # all bad names before any work
    metric = build_metric(w.metric, device)
    _, batches = synthetic_batches(w.size, w.triplets, w.batch_size, device)
    runs = [_warmed_up(w, metric, batches, m, c) for m, c in _settings(modes, compiles)]
    # the passes alternate between the modes, so that other jobs on the machine slow them alike
    for i in range(passes):
        for run in runs:
            print(f"[bench] {w.name} {run['label']}: pass {i + 1}/{passes} ...", flush=True)
            t0 = time.perf_counter()
            tables = [attack_batch(metric, run["attack"], b)[0] for b in batches]
            sync(device)
            run["best"] = min(run["best"], time.perf_counter() - t0)
            run["table"] = pd.concat(tables, ignore_index=True)
    default = runs[0]["table"]
    rows: list[dict[str, Any]] = []
    for run in runs:
        first = rows[0]["triplets_per_s"] if rows else None
        rows.append(_row(w, device, run, default, first, passes))
    return rows


def _differing(columns: list[str]) -> str:
    """``yes`` for an identical table, else the differing columns (the first two)."""
    if not columns:
        return "yes"
    more = f" +{len(columns) - 2} more" if len(columns) > 2 else ""
    return "no: " + ", ".join(columns[:2]) + more


def format_engine_modes(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| PGD execution mode | device | triplets | triplets/s | vs shrink | warm-up s "
        "| same decisions | identical table | max abs diff s_adv | flip rate |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        mode = r["mode"] + (" (compile failed: eager)" if r["compile_errors"] else "")
        lines.append(
            f"| {mode} | {r['device']} | {r['triplets']} | {r['triplets_per_s']:.2f} | "
            f"{r['vs_shrink']:.2f}x | {r['warmup_s']:.1f} | {r['same_decisions']}/{r['triplets']} | "
            f"{_differing(r['columns_differing'])} | "
            f"{r['max_abs_diff_s_adv']:.1e} | "
            f"{r['flip_rate']:.1%} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "modes",
        metavar="MODES",
        help=f"comma-separated PGD execution modes ({ENGINE_MODES}): one row each",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        metavar="MODES",
        help="also each mode under torch.compile, comma-separated torch.compile modes "
        "(default: 'default'; 'reduce-overhead': CUDA graphs)",
    )
    add_workload_arguments(parser)
    parser.add_argument(
        "--passes",
        type=int,
        default=2,
        help="timed passes of each mode (alternating; the fastest kept)",
    )


def run(args: argparse.Namespace, device: torch.device) -> int:
    """The execution-mode rows on the PGD workloads (default: the first)."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    compiles = [c.strip() for c in (args.compile or "").split(",") if c.strip()]
    try:
        for mode in modes:
            parse_engine_mode(mode)
        for c in compiles:
            build_attack("pgd", compile=c)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    workloads = select_workloads(device, args.quick, args.workloads)
    pgd = [w for w in workloads if w.attack == "pgd" and not w.options]
    if args.workloads == "all":
        pgd = pgd[:1]
    if not pgd:
        raise SystemExit("bench modes needs a PGD workload (e.g. --workloads pgd30_lpips_alex_64)")
    rows = [r for w in pgd for r in engine_modes(w, device, modes, compiles, args.passes)]
    write_results(args, device, {"engine_modes": rows}, format_engine_modes(rows))
    differ = [r["mode"] for r in rows if r["same_decisions"] != r["triplets"]]
    if differ:
        print(f"decisions differ from shrink in: {differ}")
    return 0
