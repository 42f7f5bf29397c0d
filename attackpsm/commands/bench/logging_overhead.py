"""``python -m attackpsm bench logging`` (``make bench-logging``): the W&B logging overhead.

Wall time of one whole job (:func:`attackpsm.job.run.run`) with ``logger=none`` and with
``logger=wandb`` offline (live history per batch, histograms, images, tables).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from attackpsm.commands.bench.common import write_results

HELP = "W&B logging overhead: one job with logger=none vs logger=wandb offline"

LOGGING_RUN = (
    "dataset=synthetic",
    "dataset.num_triplets=256",
    "metric=lpips_alex",
    "attack=pgd",
    "resolution=64",
    "resolution.batch_size=16",
)


def logging_overhead(overrides: list[str], device: str = "cpu", repeats: int = 3) -> dict[str, Any]:
    """Medians of the job's wall time under both loggers, and their ratio.

    Each repeat runs both, alternating, in fresh directories (never a resumed or finished
    shard), after one untimed run of each (weights loaded, the W&B service started: about
    a second once per process).
    """
    import statistics
    import tempfile

    from attackpsm.config import compose, normalise_argv
    from attackpsm.job.run import run

    overrides = normalise_argv(list(overrides))  # resolution=64 as on the command line
    times: dict[str, list[float]] = {"none": [], "wandb_offline": []}
    loggers = {"none": ["logger=none"], "wandb_offline": ["logger=wandb", "logger.mode=offline"]}
    for rep in range(repeats + 1):
        for mode, extra in loggers.items():
            with tempfile.TemporaryDirectory() as tmp:
                cfg = compose(
                    [
                        *overrides,
                        *extra,
                        f"device={device}",
                        "progress=false",
                        f"paths.results_dir={tmp}/results",
                        f"paths.log_dir={tmp}/logs",
                    ]
                )
                start = time.perf_counter()
                run(cfg)
                if rep > 0:  # the first round warms up
                    times[mode].append(time.perf_counter() - start)
    none, wandb = statistics.median(times["none"]), statistics.median(times["wandb_offline"])
    return {
        "overrides": list(overrides),
        "device": device,
        "repeats": repeats,
        "seconds": times,
        "median_none_s": none,
        "median_wandb_offline_s": wandb,
        "ratio": wandb / none,
    }


def format_overhead(result: dict[str, Any]) -> str:
    return (
        f"W&B logging overhead ({' '.join(result['overrides'])}, {result['device']}): "
        f"logger=none {result['median_none_s']:.2f} s, wandb offline "
        f"{result['median_wandb_offline_s']:.2f} s, ratio {result['ratio']:.3f} "
        f"(median of {result['repeats']})"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help=f"the job's overrides (default: {' '.join(LOGGING_RUN)})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side")


def run(args: argparse.Namespace, device: torch.device) -> int:
    overrides = list(args.overrides) or list(LOGGING_RUN)
    result = logging_overhead(overrides, device=str(device), repeats=args.repeats)
    write_results(args, device, result, format_overhead(result))
    return 0
