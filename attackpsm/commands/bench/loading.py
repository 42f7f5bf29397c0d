"""``python -m attackpsm bench loading``: what the attack rows cannot see.

Loading alone -- 256x256 BAPPS PNGs decoded and resized to 64x64 against the
decoded-triplet cache (:mod:`attackpsm.data.cache`) -- and whole PGD(30) LPIPS(Alex) runs
(:func:`attackpsm.job.run.run`, from the cache and from PNGs) next to the engine alone.
``python -m attackpsm bench`` adds these rows after its workloads.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attackpsm.commands.bench.common import (
    build_attack,
    build_metric,
    head,
    rate,
    sync,
    write_results,
)
from attackpsm.data.base import collate
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.engine import attack_batch

HELP = "loading (BAPPS PNGs vs the cache) and end-to-end runs next to the engine alone"


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
        sync(device)

    t0 = time.perf_counter()
    cache = ensure_cache(data, cache_root, progress=False)
    build_s = time.perf_counter() - t0
    batches = CachedBatches(cache, data.records, batch_size, device)

    def cached():
        for _ in batches:
            pass
        sync(device)

    rows_only = CachedBatches(cache, data.records, batch_size, device, convert=False)

    def read():
        for _ in rows_only:
            pass

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one decoding process, as a DataLoader worker runs
    try:
        png_rate = rate(n, png, min_s=0.0, passes=2)  # one pass is already seconds
        cache_rate = rate(n, cached)
        read_rate = rate(n, read)
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
    from attackpsm.config import compose
    from attackpsm.data.bapps import BAPPS
    from attackpsm.data.cache import ensure_cache
    from attackpsm.data.cache_batches import CachedBatches
    from attackpsm.job.run import run

    data = BAPPS(size=size, root=root, filter="all")
    n = len(data)
    cache = ensure_cache(data, work / "cache", progress=False)
    batches = list(CachedBatches(cache, data.records, batch_size, device))
    metric, attack = build_metric("lpips_alex", device), build_attack("pgd")
    attack_batch(metric, attack, head(batches[0], 2))  # warm-up

    def engine_alone() -> None:
        for b in batches:
            attack_batch(metric, attack, b)
        sync(device)

    def whole_run(cached: str, results: Path) -> Callable[[], None]:
        cfg = compose(
            [
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
            ]
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
            best[label] = max(best.get(label, 0.0), rate(n, fn, min_s=0.0))
    best["end-to-end, PNG"] = rate(n, whole_run("false", work / "png"), min_s=0.0)
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


def measure(device: torch.device, counts: str | None = None) -> dict[str, Any]:
    """:func:`pipeline` with ``counts`` = ``"LOADING,RUN"`` triplets (default: 512,256 on a
    CPU; 4096,12227 on a GPU, in batches of 4096 there, 64 on a CPU)."""
    gpu = device.type == "cuda"
    counts = counts or ("4096,12227" if gpu else "512,256")
    try:
        n_load, n_run = (int(x) for x in counts.split(","))
    except ValueError:
        raise SystemExit(f"triplets must be LOADING,RUN (two integers), got {counts!r}") from None
    print(f"[bench] loading ({n_load} triplets) and end-to-end runs ({n_run}) ...", flush=True)
    return pipeline(device, n_load, n_run, 4096 if gpu else 64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--triplets",
        default=None,
        metavar="LOADING,RUN",
        help="triplets of the loading and of the end-to-end rows "
        "(default: 512,256 on CPU, 4096,12227 on GPU)",
    )


def run(args: argparse.Namespace, device: torch.device) -> int:
    result = measure(device, args.triplets)
    write_results(args, device, {"pipeline": result}, format_pipeline(result))
    return 0
