"""``make bench`` / ``python -m attackpsm bench``: the engine against a per-triplet loop.

For each workload both sides get the same triplets and the same attack parameters:

* **reference** -- one triplet at a time, written the way the paper's algorithms read:
  PGD and FGSM literally as Algorithms 1 and 3 (batch 1, ``f(I_ref, I_adv)`` evaluated from
  scratch at every check, a Python-level early stop / ε scan); stAdv and One-pixel as the
  framework's own attack called on one triplet at a time.
* **engine** -- :func:`attackpsm.engine.attack_batch` on large batches (prepared
  reference features, active-set early stopping, the batched ε scan, the batched
  L-BFGS, the population scored as one batch). It also does the 8-bit re-check and the
  perturbation statistics, which the reference skips: the comparison is conservative.

It prints throughput (triplets/s) of each side, the ratio, peak memory, and whether both
reach the same flip decision for every triplet (a disagreement counts as within float
tolerance only when one side's final margin ``|s_adv - s_other|`` is below ``--tol``).
Results go to a table on stdout and a JSON file.

Weights are real (LPIPS from :mod:`attackpsm.metrics.weights`). Nothing here changes what
is computed: both sides run the same attack with the same iterations and loss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from attackpsm.attacks.base import Attack
from attackpsm.data.base import Batch, collate
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.engine import attack_batch
from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import Metric
from attackpsm.protocol.twoafc import choose_prey, rank_flipped, rank_loss

# --- per-triplet reference loops ----------------------------------------------------------


def _select_prey(metric: Metric, ref, p0, p1):
    """Algorithm 1, lines 1-4, for one triplet: ``(prey image, s_other as a float)``."""
    with torch.no_grad():
        chosen = choose_prey(metric(ref, p0), metric(ref, p1))
    return chosen.images(p0, p1), chosen.s_other.item()


def reference_pgd(metric: Metric, ref, p0, p1, eps=0.03, alpha=0.001, checks=30):
    """Algorithm 1 for one triplet with ``checks`` flip checks (the released loop's 30;
    Algorithm 1 as printed: 31); returns (flipped, s_adv, s_other)."""
    prey, s_other = _select_prey(metric, ref, p0, p1)
    delta = torch.zeros_like(prey)
    k = 0
    s_adv = float("nan")
    last = checks - 1
    while k <= last:
        adv = (prey + delta).clamp(LOW, HIGH).detach().requires_grad_(True)
        s = metric(ref, adv)
        s_adv = s.item()
        if rank_flipped(s_adv, s_other):
            return True, s_adv, s_other
        if k == last:  # the gradient of the last check is never used
            break
        loss = rank_loss(torch.tensor(s_other), s).sum()
        (grad,) = torch.autograd.grad(loss, adv)
        stepped = adv.detach() + alpha * grad.sign()
        delta = (stepped - prey).clamp(-eps, eps)
        k += 1
    return False, s_adv, s_other


def reference_fgsm(metric: Metric, ref, p0, p1, max_eps=0.05, eps_step=0.0001):
    """Algorithm 3 verbatim for one triplet: one gradient, then a linear ε scan."""
    prey, s_other = _select_prey(metric, ref, p0, p1)
    x = prey.detach().clone().requires_grad_(True)
    loss = rank_loss(torch.tensor(s_other), metric(ref, x)).sum()
    (grad,) = torch.autograd.grad(loss, x)
    sign = grad.sign()
    s_adv = float("nan")
    eps = eps_step
    while eps <= max_eps:  # Alg. 3, lines 8-15: ε grows by repeated addition
        with torch.no_grad():
            adv = (prey + eps * sign).clamp(LOW, HIGH)
            s_adv = metric(ref, adv).item()
        if rank_flipped(s_adv, s_other):
            return True, s_adv, s_other
        eps += eps_step
    return False, s_adv, s_other


def reference_with(attack: Attack) -> Callable:
    """The framework's attack applied to one triplet at a time (stAdv, One-pixel)."""

    def one(metric: Metric, ref, p0, p1):
        prey, s_other = _select_prey(metric, ref, p0, p1)
        so = torch.tensor([s_other])
        out = attack.run(metric, metric.prepare(ref), prey, so)
        return bool(out.flipped[0]), float(out.s_adv[0]), s_other

    return one


# --- workloads ----------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    metric: str
    size: int
    attack: str
    params: dict[str, Any]
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


def build_metric(name: str, device: torch.device) -> Metric:
    from attackpsm.metrics.lpips import LPIPS

    nets = {"lpips_alex": "alex", "lpips_vgg": "vgg"}
    return LPIPS(nets[name]).to(device)


def build_attack(name: str, params: dict[str, Any]) -> Attack:
    from attackpsm.attacks.fgsm import FGSM
    from attackpsm.attacks.onepixel import OnePixel
    from attackpsm.attacks.pgd import PGD
    from attackpsm.attacks.stadv import StAdv

    return {"pgd": PGD, "fgsm": FGSM, "stadv": StAdv, "onepixel": OnePixel}[name](**params)


def reference_for(w: Workload, attack: Attack) -> Callable:
    if w.attack == "pgd":
        return lambda m, r, a, b: reference_pgd(
            m, r, a, b, attack.eps, attack.alpha, attack.n_checks
        )
    if w.attack == "fgsm":
        return lambda m, r, a, b: reference_fgsm(m, r, a, b, attack.max_eps, attack.eps_step)
    return reference_with(attack)


# --- measurement --------------------------------------------------------------------------


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):  # reset the process's peak resident set size (Linux)
            Path("/proc/self/clear_refs").write_text("5")


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


SLOWER = "engine slower than its per-triplet loop"


@dataclass
class Row:
    workload: str
    device: str
    triplets: int
    reference_triplets: int
    reference_per_s: float
    engine_per_s: float
    ratio: float
    reference_peak_mib: float
    engine_peak_mib: float
    agree: int
    disagree_within_tol: int
    disagree: int
    engine_flip_rate: float
    notes: list[str] = field(default_factory=list)


def _channels_last(batch: Batch) -> Batch:
    return batch.map_images(lambda t: t.contiguous(memory_format=torch.channels_last))


def measure(
    w: Workload,
    device: torch.device,
    reference_limit: int,
    tol: float,
    passes: int = 1,
    profile: int = 0,
) -> Row:
    """One workload's row: each side timed ``passes`` times, alternately; the fastest counts.

    ``profile > 0``: afterwards one more pass of each side under :mod:`cProfile`, and the
    ``profile`` functions with the most time of their own printed for each side.
    """
    unknown = sorted(set(w.options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown bench options {unknown}; valid: {list(OPTIONS)}")
    metric = build_metric(w.metric, device)
    attack = build_attack(w.attack, w.params)
    # the easy variant: the throughput figures in docs/performance.md were measured on it
    data = SyntheticTriplets(size=w.size, num_triplets=w.triplets, seed=1234, variant="easy")
    items = [data[i] for i in range(len(data))]
    batches = [
        collate(items[i : i + w.batch_size]).to(device) for i in range(0, len(items), w.batch_size)
    ]
    engine_metric = metric
    if "channels_last" in w.options:
        engine_metric = build_metric(w.metric, device).to(memory_format=torch.channels_last)
        batches = [_channels_last(b) for b in batches]

    ref_fn = reference_for(w, attack)
    n_ref = min(reference_limit, len(items))
    singles = collate(items[:n_ref]).to(device)

    def engine_pass() -> list:
        with engine_options(w.options):
            return [attack_batch(engine_metric, attack, b)[0] for b in batches]

    def reference_pass() -> list:  # the first `reference_limit` triplets, default settings
        return [
            ref_fn(metric, singles.ref[i : i + 1], singles.p0[i : i + 1], singles.p1[i : i + 1])
            for i in range(n_ref)
        ]

    with engine_options(w.options):  # warm-up on the first batch's first triplets
        attack_batch(engine_metric, attack, _head(batches[0], 2))
    # the passes alternate between the sides, so that other jobs on the machine slow both
    # alike; each side's fastest pass counts, and the first pass's decisions are compared
    engine_s = reference_s = float("inf")
    engine_peak = reference_peak = 0.0
    engine_rows = decisions = None
    for _ in range(max(1, passes)):
        _sync(device)
        _reset_peak(device)
        t0 = time.perf_counter()
        rows_now = engine_pass()
        _sync(device)
        engine_s = min(engine_s, time.perf_counter() - t0)
        engine_peak = max(engine_peak, _peak_mib(device))
        _reset_peak(device)
        t0 = time.perf_counter()
        decisions_now = reference_pass()
        _sync(device)
        reference_s = min(reference_s, time.perf_counter() - t0)
        reference_peak = max(reference_peak, _peak_mib(device))
        if engine_rows is None:
            engine_rows, decisions = rows_now, decisions_now
    if profile > 0:
        for side, fn in (("engine", engine_pass), ("loop", reference_pass)):
            print(f"[bench] {w.label}: profile of the {side}", flush=True)
            _profile(fn, profile)
    import pandas as pd

    engine = pd.concat(engine_rows, ignore_index=True)

    agree = within = disagree = 0
    for i, (flip, s_adv, s_other) in enumerate(decisions):
        e = engine.iloc[i]
        assert e["triplet_id"] == singles.triplet_id[i]
        if bool(e["flipped"]) == flip:
            agree += 1
        elif min(abs(s_adv - s_other), abs(float(e["s_adv"]) - float(e["s_other"]))) <= tol * max(
            abs(s_other), 1e-12
        ):
            within += 1
        else:
            disagree += 1
    ref_rate = n_ref / reference_s
    eng_rate = len(items) / engine_s
    notes = [SLOWER] if eng_rate < ref_rate else []
    return Row(
        w.label,
        str(device),
        len(items),
        n_ref,
        ref_rate,
        eng_rate,
        eng_rate / ref_rate,
        reference_peak,
        engine_peak,
        agree,
        within,
        disagree,
        float(engine["flipped"].mean()),
        notes,
    )


def _profile(fn: Callable[[], Any], top: int) -> None:
    """Run ``fn`` under cProfile; print the ``top`` functions by their own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(fn)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def _head(batch: Batch, n: int) -> Batch:
    return batch.take(slice(0, n))


def format_table(rows: list[Row]) -> str:
    head = "| workload | device | triplets (engine / ref) | reference/s | engine/s | ratio | peak MiB (ref / engine) | same decision | within tol | differ | flip rate |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.device} | {r.triplets} / {r.reference_triplets} | {r.reference_per_s:.2f} | "
            f"{r.engine_per_s:.2f} | {r.ratio:.1f}x | {r.reference_peak_mib:.0f} / {r.engine_peak_mib:.0f} | "
            f"{r.agree}/{r.reference_triplets} | {r.disagree_within_tol} | {r.disagree} | {r.engine_flip_rate:.1%} |"
        )
    for r in rows:
        if r.engine_per_s < r.reference_per_s:
            lines.append(f"| WARNING {r.workload}: {SLOWER} ({r.ratio:.2f}x) |" + " |" * 10)
    return "\n".join(lines)


# --- loading and end-to-end runs ------------------------------------------------------------


def make_bapps_layout(root: Path, triplets: int, unique: int = 128, seed: int = 1234) -> Path:
    """A BAPPS val tree (``2afc/val/cnn/{ref,p0,p1,judge}``) of 256x256 PNGs made from the
    synthetic photos (:class:`SyntheticTriplets` at native size, saved as 8-bit PNGs).

    ``unique`` triplets are generated and hard-linked (copied where links fail) to reach
    ``triplets`` files: every file is still opened and decoded on its own.
    """
    import numpy as np
    from PIL import Image

    from attackpsm.images import to_uint8

    data = SyntheticTriplets(size=None, num_triplets=min(unique, triplets), seed=seed)
    folder = root / "2afc" / "val" / "cnn"
    for d in ("ref", "p0", "p1", "judge"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    for i in range(triplets):
        stem = f"{i:06d}"
        if i < len(data):
            item = data[i]
            for d in ("ref", "p0", "p1"):
                array = to_uint8(item[d]).permute(1, 2, 0).numpy()
                Image.fromarray(array).save(folder / d / f"{stem}.png")
            np.save(folder / "judge" / f"{stem}.npy", np.array([item["judge"]], dtype=np.float32))
            continue
        src = f"{i % len(data):06d}"
        for d, ext in (("ref", "png"), ("p0", "png"), ("p1", "png"), ("judge", "npy")):
            try:
                (folder / d / f"{stem}.{ext}").hardlink_to(folder / d / f"{src}.{ext}")
            except OSError:
                import shutil

                shutil.copyfile(folder / d / f"{src}.{ext}", folder / d / f"{stem}.{ext}")
    return root


def _rate(n: int, fn: Callable[[], Any], min_s: float = 1.0, passes: int = 1) -> float:
    """Triplets per second of ``fn`` (one pass over ``n`` triplets): its fastest pass, of
    at least ``passes`` passes and ``min_s`` seconds (the least disturbed by other jobs)."""
    times, start = [], time.perf_counter()
    while len(times) < passes or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / min(times)


def loading(root: Path, cache_root: Path, size: int, batch_size: int, device: torch.device):
    """Loading alone: the PNG path (``BAPPS.__getitem__`` + ``collate`` in one process, as
    ``num_workers=0``) against :class:`~attackpsm.data.cache_batches.CachedBatches`, both ending
    with the float batch on ``device``, each in one thread (as in a DataLoader worker); and
    the cache's reader alone (``convert=False``: the ``uint8`` rows, before any copy to the
    device or conversion), the part that stays on the host when the device converts.
    Returns ``(rows, cache build seconds)``."""
    from torch.utils.data import DataLoader

    from attackpsm.data.bapps import BAPPS
    from attackpsm.data.cache import ensure_cache
    from attackpsm.data.cache_batches import CachedBatches

    data = BAPPS(size=size, root=root, filter="all")
    n = len(data)
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate)

    def png():
        for b in loader:
            b.to(device)
        _sync(device)

    t0 = time.perf_counter()
    cache = ensure_cache(data, cache_root, progress=False)
    build_s = time.perf_counter() - t0
    batches = CachedBatches(cache, data.records, batch_size, device)

    def cached():
        for _ in batches:
            pass
        _sync(device)

    rows_only = CachedBatches(cache, data.records, batch_size, device, convert=False)

    def read():
        for _ in rows_only:
            pass

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one decoding process, as a DataLoader worker runs
    try:
        png_rate = _rate(n, png, min_s=0.0, passes=2)  # one pass is already seconds
        cache_rate = _rate(n, cached)
        read_rate = _rate(n, read)
    finally:
        torch.set_num_threads(threads)
    return [
        {"path": "png", "triplets": n, "triplets_per_s": png_rate},
        {"path": "cache", "triplets": n, "triplets_per_s": cache_rate},
        {"path": "cache, uint8 rows only", "triplets": n, "triplets_per_s": read_rate},
    ], build_s


def end_to_end(
    root: Path, work: Path, size: int, batch_size: int, device: torch.device, repeats: int = 2
) -> list[dict[str, Any]]:
    """PGD(30) on LPIPS(Alex): the engine alone (:func:`attack_batch` on batches already on
    the device) next to whole runs (:func:`attackpsm.job.run.run`: build, load, attack, 8-bit
    re-check, statistics, checkpoints and summary written) from the cache and from PNGs.
    Each rate is that of the fastest of ``repeats`` passes."""
    from hydra import compose, initialize_config_dir

    from attackpsm.data.bapps import BAPPS
    from attackpsm.data.cache import ensure_cache
    from attackpsm.data.cache_batches import CachedBatches
    from attackpsm.job.run import run

    data = BAPPS(size=size, root=root, filter="all")
    n = len(data)
    cache = ensure_cache(data, work / "cache", progress=False)
    batches = list(CachedBatches(cache, data.records, batch_size, device))
    metric, attack = build_metric("lpips_alex", device), build_attack("pgd", {})
    attack_batch(metric, attack, _head(batches[0], 2))  # warm-up
    conf = str(Path(__file__).resolve().parent.parent / "conf")

    def engine_alone() -> None:
        for b in batches:
            attack_batch(metric, attack, b)
        _sync(device)

    def whole_run(cached: str, results: Path) -> Callable[[], None]:
        with initialize_config_dir(version_base="1.3", config_dir=conf):
            cfg = compose(
                "config",
                overrides=[
                    "dataset=bapps",
                    f"dataset.root={root}",
                    "dataset.filter=all",
                    f"dataset.cache={cached}",
                    f"paths.cache_dir={work / 'cache'}",
                    f"paths.results_dir={results}",  # fresh: never a finished shard
                    f"paths.log_dir={work / 'logs'}",
                    "metric=lpips_alex",
                    "attack=pgd",
                    "resolution='64'",
                    f"resolution.size={size}",
                    f"resolution.batch_size={batch_size}",
                    "logger=none",
                    "progress=false",
                    f"device={device}",
                ],
            )

        def go() -> None:
            with contextlib.redirect_stdout(None):
                run(cfg)

        return go

    # engine alone and whole runs from the cache alternate, best of `repeats` each, so that
    # other jobs on the machine weigh on both alike; the PNG run once (it is far slower)
    best: dict[str, float] = {}
    for rep in range(repeats):
        for label, fn in (
            ("engine alone", engine_alone),
            ("end-to-end, cache", whole_run("true", work / f"cache{rep}")),
        ):
            best[label] = max(best.get(label, 0.0), _rate(n, fn, min_s=0.0))
    best["end-to-end, PNG"] = _rate(n, whole_run("false", work / "png"), min_s=0.0)
    engine = best["engine alone"]
    return [
        {"run": label, "triplets": n, "triplets_per_s": rate}
        | ({} if label == "engine alone" else {"vs_engine": rate / engine})
        for label, rate in best.items()
    ]


def pipeline(device: torch.device, loading_triplets: int, run_triplets: int, batch_size: int):
    """The loading and end-to-end rows of ``make bench`` (64x64 from 256x256 BAPPS PNGs)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_bapps_layout(tmp / "bapps", loading_triplets)
        load_rows, build_s = loading(root, tmp / "cache", 64, batch_size, device)
        run_root = make_bapps_layout(tmp / "bapps_run", run_triplets)
        run_rows = end_to_end(run_root, tmp / "run", 64, batch_size, device)
    return {"device": str(device), "loading": load_rows, "cache_build_s": build_s, "runs": run_rows}


def format_pipeline(result: dict[str, Any]) -> str:
    lines = [
        f"| loading, 256x256 BAPPS PNGs -> 64x64 ({result['device']}) | triplets | triplets/s | vs PNG |",
        "|---|---:|---:|---:|",
    ]
    png = result["loading"][0]["triplets_per_s"]
    for r in result["loading"]:
        ratio = f"{r['triplets_per_s'] / png:.0f}x" if r["path"] != "png" else ""
        lines.append(f"| {r['path']} | {r['triplets']} | {r['triplets_per_s']:.0f} | {ratio} |")
    lines += [
        f"\n(cache built once in {result['cache_build_s']:.1f} s)\n",
        f"| PGD(30), LPIPS(Alex), 64x64 ({result['device']}) | triplets | triplets/s | vs engine alone |",
        "|---|---:|---:|---:|",
    ]
    for r in result["runs"]:
        ratio = f"{r['vs_engine']:.2f}" if "vs_engine" in r else ""
        lines.append(f"| {r['run']} | {r['triplets']} | {r['triplets_per_s']:.1f} | {ratio} |")
    return "\n".join(lines)


# --- PGD execution modes (fixed shapes, compaction, no host sync, torch.compile) ------------

ENGINE_MODES = "shrink | masked | masked:K | compact:K"


def parse_engine_mode(mode: str) -> dict[str, int]:
    """``PGD`` keyword arguments of a bench ``--engine-mode`` (docs/performance.md, "PGD execution modes").

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

    from attackpsm.attacks.pgd import PGD

    if w.attack != "pgd":
        raise ValueError(f"--engine-mode applies to PGD workloads, not {w.name!r}")
    for mode in modes:
        parse_engine_mode(mode)  # all bad names before any work
    metric = build_metric(w.metric, device)
    data = SyntheticTriplets(size=w.size, num_triplets=w.triplets, seed=1234, variant="easy")
    items = [data[i] for i in range(len(data))]
    batches = [
        collate(items[i : i + w.batch_size]).to(device) for i in range(0, len(items), w.batch_size)
    ]
    settings = [("shrink", False)] + [
        (m, c) for c in [False, *compiles] for m in modes if (m, c) != ("shrink", False)
    ]
    runs = []
    for mode, compile_mode in settings:
        attack = PGD(**w.params, **parse_engine_mode(mode), compile=compile_mode)
        label = mode + (f" +compile({compile_mode})" if compile_mode else "")
        print(f"[bench] {w.name} {label}: warm-up ...", flush=True)
        t0 = time.perf_counter()
        # two triplets, or (compiling) every batch shape the timed passes meet
        warm = (
            [_head(batches[0], 2)]
            if not compile_mode
            else list({len(b): b for b in batches}.values())
        )
        for b in warm:
            attack_batch(metric, attack, b)
        _sync(device)
        runs.append(
            {
                "label": label,
                "attack": attack,
                "warmup_s": time.perf_counter() - t0,
                "best": float("inf"),
            }
        )
    # the passes alternate between the modes, so that other jobs on the machine slow them alike
    for i in range(passes):
        for run in runs:
            print(f"[bench] {w.name} {run['label']}: pass {i + 1}/{passes} ...", flush=True)
            t0 = time.perf_counter()
            tables = [attack_batch(metric, run["attack"], b)[0] for b in batches]
            _sync(device)
            run["best"] = min(run["best"], time.perf_counter() - t0)
            run["table"] = pd.concat(tables, ignore_index=True)
    default = runs[0]["table"]
    rows: list[dict[str, Any]] = []
    for run in runs:
        table, best = run["table"], run["best"]
        same = (
            (table["flipped"].values == default["flipped"].values)
            & (table["iterations"].values == default["iterations"].values)
        ).sum()
        rows.append(
            {
                "workload": w.name,
                "mode": run["label"],
                "device": str(device),
                "threads": torch.get_num_threads(),
                "triplets": len(table),
                "passes": passes,
                "seconds": best,
                "triplets_per_s": len(table) / best,
                "vs_shrink": (len(table) / best) / rows[0]["triplets_per_s"] if rows else 1.0,
                "warmup_s": run["warmup_s"],
                "same_decisions": int(same),
                "identical_table": bool(table.equals(default)),
                "columns_differing": [
                    c for c in default.columns if not table[c].equals(default[c])
                ],
                "max_abs_diff_s_adv": float((table["s_adv"] - default["s_adv"]).abs().max()),
                "flip_rate": float(table["flipped"].mean()),
                "compile_errors": run["attack"].compile_errors,
            }
        )
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


# --- W&B logging overhead -------------------------------------------------------------------

LOGGING_RUN = (
    "dataset=synthetic",
    "dataset.num_triplets=256",
    "metric=lpips_alex",
    "attack=pgd",
    "resolution=64",
    "resolution.batch_size=16",
)


def logging_overhead(overrides: list[str], device: str = "cpu", repeats: int = 3) -> dict[str, Any]:
    """Wall time of one whole job (:func:`attackpsm.job.run.run`) with ``logger=none`` and with
    ``logger=wandb`` offline (live history per batch, histograms, images, tables).

    Each repeat runs both, alternating, in fresh directories (never a resumed or finished
    shard), after one untimed run of each (weights loaded, the W&B service started: about
    a second once per process); the medians and their ratio are returned.
    """
    import statistics
    import tempfile

    from hydra import compose, initialize_config_dir

    from attackpsm.config import normalise_argv
    from attackpsm.job.run import run

    overrides = normalise_argv(list(overrides))  # resolution=64 as on the command line
    conf = str(Path(__file__).resolve().parent.parent / "conf")
    times: dict[str, list[float]] = {"none": [], "wandb_offline": []}
    loggers = {"none": ["logger=none"], "wandb_offline": ["logger=wandb", "logger.mode=offline"]}
    for rep in range(repeats + 1):
        for mode, extra in loggers.items():
            with tempfile.TemporaryDirectory() as tmp:
                with initialize_config_dir(version_base="1.3", config_dir=conf):
                    cfg = compose(
                        "config",
                        overrides=[
                            *overrides,
                            *extra,
                            f"device={device}",
                            "progress=false",
                            f"paths.results_dir={tmp}/results",
                            f"paths.log_dir={tmp}/logs",
                        ],
                    )
                start = time.perf_counter()
                run(cfg)
                if rep > 0:  # the first round warms up
                    times[mode].append(time.perf_counter() - start)
    none, wandb = statistics.median(times["none"]), statistics.median(times["wandb_offline"])
    return {
        "overrides": list(overrides),
        "device": device,
        "seconds": times,
        "median_none_s": none,
        "median_wandb_offline_s": wandb,
        "ratio": wandb / none,
    }


def certify_throughput(
    metric: str = "lpips_alex",
    triplets: int = 8,
    samples: int = 200,
    max_batch: int = 256,
    sigma: float = 0.12,
    device: str = "cpu",
) -> dict[str, Any]:
    """Noisy samples per second of ``attack=certify`` (:mod:`attackpsm.attacks.certify`).

    ``triplets`` synthetic triplets at 64x64, ``samples`` estimation samples each (plus 10%
    for selection), ``max_batch`` noisy images per metric call; one untimed warm-up call.
    """
    from attackpsm.attacks.certify import Certify
    from attackpsm.metrics.smoothed import Smoothed

    dev = torch.device(device)
    smoothed = Smoothed(metric, sigma=sigma).to(dev)
    data = SyntheticTriplets(num_triplets=triplets, size=64)
    batch = collate([data[i] for i in range(len(data))]).to(dev)
    prepared = smoothed.prepare(batch.ref)
    with torch.no_grad():
        chosen = choose_prey(smoothed.score(prepared, batch.p0), smoothed.score(prepared, batch.p1))
    prey = chosen.images(batch.p0, batch.p1)
    n0 = max(1, samples // 10)
    certify = Certify(n0=n0, n=samples, chunk=min(100, samples), max_batch=max_batch)
    certify.certify(smoothed, prepared, prey[:1], chosen.s_other[:1], batch.triplet_id[:1])
    _sync(dev)
    start = time.perf_counter()
    cols = certify.certify(smoothed, prepared, prey, chosen.s_other, batch.triplet_id)
    _sync(dev)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workloads", default="all", help="comma-separated names, or 'all'")
    p.add_argument("--quick", action="store_true", help="smaller workloads (smoke test)")
    p.add_argument(
        "--reference-limit", type=int, default=None, help="triplets run by the per-triplet loop"
    )
    p.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="relative margin under which a differing decision is float noise",
    )
    p.add_argument("--out", default="bench.json", help="JSON output path")
    p.add_argument(
        "--options",
        default=None,
        help=f"engine-side settings added to every workload, comma-separated: {', '.join(OPTIONS)}",
    )
    p.add_argument("--markdown", default=None, help="also write the table to this path")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--logging",
        nargs="*",
        metavar="OVERRIDE",
        default=None,
        help="measure the W&B logging overhead instead: one job with logger=none vs "
        f"logger=wandb offline (default job: {' '.join(LOGGING_RUN)}; overrides replace it)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after each workload, profile one more pass of each side (cProfile) and print "
        "the N functions with the most time of their own",
    )
    p.add_argument("--repeats", type=int, default=3, help="--logging: runs of each side")
    p.add_argument(
        "--certify",
        default=None,
        metavar="METRIC",
        help="measure certification throughput (noisy samples/s of attack=certify) instead",
    )
    p.add_argument(
        "--pipeline",
        default="auto",
        choices=["auto", "only", "skip"],
        help="loading (PNG vs cache) and end-to-end rows: with the workloads (auto), alone, or not",
    )
    p.add_argument(
        "--pipeline-triplets",
        default=None,
        help="LOADING,RUN triplets of the pipeline rows (default: 512,256 on CPU, 4096,12227 on GPU)",
    )
    p.add_argument(
        "--engine-mode",
        default=None,
        metavar="MODES",
        help=f"PGD execution modes instead, comma-separated ({ENGINE_MODES}): one row each "
        "(throughput, same decisions as shrink) on the PGD workloads",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        metavar="MODES",
        help="with --engine-mode: also each mode under torch.compile, comma-separated "
        "torch.compile modes (default: 'default'; 'reduce-overhead': CUDA graphs)",
    )
    p.add_argument(
        "--passes",
        type=int,
        default=2,
        help="timed passes of each side (alternating; the fastest kept), also for --engine-mode",
    )
    args = p.parse_args(argv)

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.certify is not None:
        result = certify_throughput(args.certify, device=str(device))
        print(
            f"\ncertification throughput ({result['metric']}, {result['device']}, "
            f"{result['threads']} threads, 64x64, batch {result['max_batch']}): "
            f"{result['samples_per_s']:.0f} noisy samples/s"
        )
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"written: {args.out}")
        return 0
    if args.logging is not None:
        result = logging_overhead(
            list(args.logging) or list(LOGGING_RUN), device=str(device), repeats=args.repeats
        )
        print(
            f"\nW&B logging overhead ({' '.join(result['overrides'])}, {result['device']}): "
            f"logger=none {result['median_none_s']:.2f} s, wandb offline "
            f"{result['median_wandb_offline_s']:.2f} s, ratio {result['ratio']:.3f} "
            f"(median of {args.repeats})"
        )
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"written: {args.out}")
        return 0
    workloads = gpu_workloads(args.quick) if device.type == "cuda" else cpu_workloads(args.quick)
    if args.workloads != "all":
        wanted = args.workloads.split(",")
        valid = {w.name for w in workloads} | {w.label for w in workloads}
        unknown = sorted(set(wanted) - valid)
        if unknown:
            raise SystemExit(f"unknown workloads {unknown}; valid: {sorted(valid)}")
        workloads = [w for w in workloads if w.name in wanted or w.label in wanted]
    if args.options:
        extra = tuple(args.options.split(","))
        unknown = sorted(set(extra) - set(OPTIONS))
        if unknown:
            raise SystemExit(f"unknown options {unknown}; valid: {list(OPTIONS)}")
        workloads = [replace(w, options=w.options + extra) for w in workloads]
    if args.engine_mode is not None:
        return _run_engine_modes(args, device, workloads)
    limit = args.reference_limit or (64 if device.type == "cuda" else 16)
    if args.pipeline == "only":
        workloads = []

    rows = []
    for w in workloads:
        print(f"[bench] {w.label}: {w.triplets} triplets, batch {w.batch_size} ...", flush=True)
        rows.append(measure(w, device, limit, args.tol, args.passes, args.profile))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    table = format_table(rows) if rows else ""
    extra = None
    if args.pipeline != "skip" and (args.workloads == "all" or args.pipeline == "only"):
        gpu = device.type == "cuda"
        counts = args.pipeline_triplets or ("4096,12227" if gpu else "512,256")
        n_load, n_run = (int(x) for x in counts.split(","))
        print(f"[bench] loading ({n_load} triplets) and end-to-end runs ({n_run}) ...", flush=True)
        extra = pipeline(device, n_load, n_run, 4096 if gpu else 64)
        table = "\n\n".join(t for t in (table, format_pipeline(extra)) if t)
    print()
    print(table)
    meta = bench_meta(device)
    Path(args.out).write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "pipeline": extra}, indent=2)
    )
    if args.markdown:
        Path(args.markdown).write_text(
            "; ".join(f"{k}: {v}" for k, v in meta.items()) + f"\n\n{table}\n"
        )
    print(f"\nwritten: {args.out}")
    bad = [r.workload for r in rows if r.disagree]
    if bad:
        print(f"decisions differ beyond float tolerance in: {bad}")
        return 1
    return 0


def _run_engine_modes(
    args: argparse.Namespace, device: torch.device, workloads: list[Workload]
) -> int:
    """``--engine-mode``: the execution-mode rows on the PGD workloads (default: the first)."""
    modes = [m.strip() for m in args.engine_mode.split(",") if m.strip()]
    compiles = [c.strip() for c in (args.compile or "").split(",") if c.strip()]
    try:
        for mode in modes:
            parse_engine_mode(mode)
        from attackpsm.attacks.pgd import PGD

        for c in compiles:
            PGD(compile=c)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    pgd = [w for w in workloads if w.attack == "pgd" and not w.options]
    if args.workloads == "all":
        pgd = pgd[:1]
    if not pgd:
        raise SystemExit(
            "--engine-mode needs a PGD workload (e.g. --workloads pgd30_lpips_alex_64)"
        )
    rows = [r for w in pgd for r in engine_modes(w, device, modes, compiles, args.passes)]
    table = format_engine_modes(rows)
    print()
    print(table)
    meta = bench_meta(device)
    Path(args.out).write_text(json.dumps({"meta": meta, "engine_modes": rows}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(
            "; ".join(f"{k}: {v}" for k, v in meta.items()) + f"\n\n{table}\n"
        )
    print(f"\nwritten: {args.out}")
    differ = [r["mode"] for r in rows if r["same_decisions"] != r["triplets"]]
    if differ:
        print(f"decisions differ from shrink in: {differ}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
