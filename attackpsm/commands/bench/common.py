"""What every bench mode shares: the device, its options, metrics and attacks composed from
``conf/`` as a run composes them, synthetic batches, timers, and the one writer of results
(the table on stdout, ``--out`` as JSON, ``--markdown``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attackpsm.attacks.base import Attack
from attackpsm.config import build, compose_option
from attackpsm.data.base import Batch, collate
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.metrics.base import Metric


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every mode: where it runs and where its results go."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--out", default="bench.json", help="JSON output path")
    parser.add_argument("--markdown", default=None, help="also write the table to this path")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --- metrics and attacks from conf/ ------------------------------------------------------------


def build_metric(name: str, device: torch.device | str = "cpu", **overrides: Any) -> Metric:
    """The metric ``conf/metric/<name>.yaml`` (with ``overrides`` on its keys) on ``device``,
    as ``python -m attackpsm metric=<name>`` builds it."""
    cfg = compose_option("metric", name, overrides)
    return build(cfg.metric).to(torch.device(device))


def build_attack(name: str, **overrides: Any) -> Attack:
    """The attack ``conf/attack/<name>.yaml`` with ``overrides`` (``max_iterations=50``; keys
    the option file leaves out, such as PGD's ``compact_every``, as ``+attack.<key>``)."""
    from attackpsm.attacks.target import build_attack as from_node

    cfg = compose_option("attack", name, overrides)
    return from_node(cfg.attack)


# --- data -------------------------------------------------------------------------------------


def synthetic_batches(
    size: int, triplets: int, batch_size: int, device: torch.device
) -> tuple[list[dict], list[Batch]]:
    """``triplets`` easy synthetic triplets (seed 1234; the throughput figures in
    docs/performance.md were measured on them): the items and their batches on ``device``."""
    data = SyntheticTriplets(size=size, num_triplets=triplets, seed=1234, variant="easy")
    items = [data[i] for i in range(len(data))]
    batches = [
        collate(items[i : i + batch_size]).to(device) for i in range(0, len(items), batch_size)
    ]
    return items, batches


def head(batch: Batch, n: int) -> Batch:
    """The first ``n`` triplets of ``batch`` (warm-up calls)."""
    return batch.take(slice(0, n))


# --- timing and memory ------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):  # reset the process's peak resident set size (Linux)
            Path("/proc/self/clear_refs").write_text("5")


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rate(n: int, fn: Callable[[], Any], min_s: float = 1.0, passes: int = 1) -> float:
    """Triplets per second of ``fn`` (one pass over ``n`` triplets): its fastest pass, of
    at least ``passes`` passes and ``min_s`` seconds (the least disturbed by other jobs)."""
    times, start = [], time.perf_counter()
    while len(times) < passes or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / min(times)


# --- results ----------------------------------------------------------------------------------


def bench_meta(device: torch.device) -> dict[str, Any]:
    """What a bench table was measured on: the device, torch, threads and TF32 settings."""
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def write_results(
    args: argparse.Namespace, device: torch.device, results: dict[str, Any], table: str
) -> None:
    """The writer of every mode: ``table`` on stdout; ``--out``: the JSON of ``results``
    under the ``meta`` of :func:`bench_meta`; ``--markdown``: that meta line and the table."""
    meta = bench_meta(device)
    print()
    print(table)
    Path(args.out).write_text(json.dumps({"meta": meta, **results}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(
            "; ".join(f"{k}: {v}" for k, v in meta.items()) + f"\n\n{table}\n"
        )
    print(f"\nwritten: {args.out}")
