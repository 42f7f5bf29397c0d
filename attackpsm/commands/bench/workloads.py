"""The bench's workloads: a metric and an attack (``conf/`` option names with parameter
overrides) on synthetic triplets of one size, in batches of one size; the CPU and GPU sets,
and the engine-side settings a workload can be measured with."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass
class Workload:
    name: str
    metric: str  # a conf/metric option
    size: int
    attack: str  # a conf/attack option
    params: dict[str, Any]  # overrides of the attack's keys
    triplets: int
    batch_size: int
    # engine-side settings measured against the default (GPU): "channels_last" keeps the
    # metric's weights and images in NHWC; "strict_fp32" turns TF32 off in cuDNN and matmul
    options: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return "+".join((self.name, *self.options))


OPTIONS = ("channels_last", "strict_fp32")


@contextlib.contextmanager
def engine_options(options: tuple[str, ...]):
    """TF32 switched off for the duration (``strict_fp32``); restored afterwards."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if "strict_fp32" in options:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cpu_workloads(quick: bool) -> list[Workload]:
    n = 16 if quick else 64
    return [
        Workload("pgd30_lpips_alex_64", "lpips_alex", 64, "pgd", {}, n, 64),
        Workload(
            "fgsm_lpips_alex_64", "lpips_alex", 64, "fgsm", {"max_eps": 0.03}, max(8, n // 4), 64
        ),
        Workload(
            "stadv_lpips_alex_64",
            "lpips_alex",
            64,
            "stadv",
            {"max_iterations": 50},
            8 if quick else 16,
            16,
        ),
        Workload(
            "onepixel_lpips_alex_64",
            "lpips_alex",
            64,
            "onepixel",
            {"population": 100, "generations": 10},
            4 if quick else 8,
            8,
        ),
        Workload("pgd30_lpips_vgg_256", "lpips_vgg", 256, "pgd", {}, 2 if quick else 4, 4),
    ]


def gpu_workloads(quick: bool) -> list[Workload]:
    big = 2048 if quick else 12227
    return [
        Workload("pgd30_lpips_alex_64", "lpips_alex", 64, "pgd", {}, big, 4096),
        *(
            Workload("pgd30_lpips_alex_64", "lpips_alex", 64, "pgd", {}, big, 4096, (o,))
            for o in OPTIONS
        ),
        Workload("pgd30_lpips_vgg_64", "lpips_vgg", 64, "pgd", {}, 2048, 2048),
        Workload("fgsm_lpips_alex_64", "lpips_alex", 64, "fgsm", {}, 1024, 1024),
        Workload("stadv_lpips_alex_64", "lpips_alex", 64, "stadv", {}, 512, 512),
        Workload("onepixel_lpips_alex_64", "lpips_alex", 64, "onepixel", {}, 64, 16),
        Workload("pgd30_lpips_vgg_256", "lpips_vgg", 256, "pgd", {}, 256, 128),
    ]


def add_workload_arguments(parser: Any) -> None:
    parser.add_argument("--workloads", default="all", help="comma-separated names, or 'all'")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (smoke test)")


def select_workloads(
    device: torch.device, quick: bool, names: str, options: str | None = None
) -> list[Workload]:
    """The device's workloads (``names``: comma-separated names or labels, or ``all``), with
    the engine-side ``options`` (comma-separated) added to each; unknown names stop with the
    valid ones."""
    workloads = gpu_workloads(quick) if device.type == "cuda" else cpu_workloads(quick)
    if names != "all":
        wanted = names.split(",")
        valid = {w.name for w in workloads} | {w.label for w in workloads}
        unknown = sorted(set(wanted) - valid)
        if unknown:
            raise SystemExit(f"unknown workloads {unknown}; valid: {sorted(valid)}")
        workloads = [w for w in workloads if w.name in wanted or w.label in wanted]
    if options:
        extra = tuple(options.split(","))
        unknown = sorted(set(extra) - set(OPTIONS))
        if unknown:
            raise SystemExit(f"unknown options {unknown}; valid: {list(OPTIONS)}")
        workloads = [replace(w, options=w.options + extra) for w in workloads]
    return workloads
