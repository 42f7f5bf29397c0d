"""``python -m attackpsm bench certify`` (``make bench-certify``): certification throughput.

Noisy samples per second of ``attack=certify`` (:mod:`attackpsm.attacks.certify`) on
``metric=smoothed`` over a base metric, both composed from ``conf/`` as a run composes them.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from attackpsm.commands.bench.common import build_attack, build_metric, sync, write_results
from attackpsm.data.base import collate
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.protocol.twoafc import choose_prey

HELP = "certification throughput: noisy samples/s of attack=certify"


def certify_throughput(
    metric: str = "lpips_alex",
    triplets: int = 8,
    samples: int = 200,
    max_batch: int = 256,
    sigma: float = 0.12,
    device: str = "cpu",
) -> dict[str, Any]:
    """Noisy samples per second of ``attack=certify`` on ``metric=smoothed metric.base=<metric>``.

    ``triplets`` synthetic triplets at 64x64, ``samples`` estimation samples each (plus 10%
    for selection), ``max_batch`` noisy images per metric call; one untimed warm-up call.
    """
    dev = torch.device(device)
    smoothed = build_metric("smoothed", dev, base=metric, sigma=sigma)
    data = SyntheticTriplets(num_triplets=triplets, size=64)
    batch = collate([data[i] for i in range(len(data))]).to(dev)
    prepared = smoothed.prepare(batch.ref)
    with torch.no_grad():
        chosen = choose_prey(smoothed.score(prepared, batch.p0), smoothed.score(prepared, batch.p1))
    prey = chosen.images(batch.p0, batch.p1)
    n0 = max(1, samples // 10)
    certify = build_attack(
        "certify", n0=n0, n=samples, chunk=min(100, samples), max_batch=max_batch
    )
    certify.certify(smoothed, prepared, prey[:1], chosen.s_other[:1], batch.triplet_id[:1])
    sync(dev)
    start = time.perf_counter()
    cols = certify.certify(smoothed, prepared, prey, chosen.s_other, batch.triplet_id)
    sync(dev)
    seconds = time.perf_counter() - start
    total = triplets * (n0 + samples)
    return {
        "metric": metric,
        "device": device,
        "threads": torch.get_num_threads(),
        "triplets": triplets,
        "samples_per_triplet": n0 + samples,
        "max_batch": max_batch,
        "seconds": seconds,
        "samples_per_s": total / seconds,
        "abstain_rate": float(cols["abstained"].float().mean()),
    }


def format_certify(result: dict[str, Any]) -> str:
    return (
        f"certification throughput ({result['metric']}, {result['device']}, "
        f"{result['threads']} threads, 64x64, batch {result['max_batch']}): "
        f"{result['samples_per_s']:.0f} noisy samples/s"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metric",
        default="lpips_alex",
        help="the base metric of metric=smoothed (a conf/metric option; default lpips_alex)",
    )


def run(args: argparse.Namespace, device: torch.device) -> int:
    result = certify_throughput(args.metric, device=str(device))
    write_results(args, device, result, format_certify(result))
    return 0
