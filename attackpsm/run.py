"""One job of a study: a dataset shard x metric x attack x resolution -> results on disk.

``run(cfg)`` is what ``python -m attackpsm`` executes for each (multi)run job. It is safe to
re-run: a finished shard is loaded instead of recomputed, an unfinished one resumes at its
first batch without a valid checkpoint, and one process at a time writes a shard (see
:mod:`attackpsm.storage`).
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attackpsm.accuracy import clean_accuracy, clean_accuracy_markdown
from attackpsm.config import build
from attackpsm.data.base import TripletDataset, collate, shard_records
from attackpsm.engine import FittingBatches
from attackpsm.loggers import NullLogger, ShardProgress, shard_run_id
from attackpsm.preflight import check_run
from attackpsm.results import summarize, summary_markdown
from attackpsm.storage import (
    ShardStore,
    build_dataset,
    finished_shard,
    headline,
    merge_shards,
    run_dir_for,
    run_identity,
    write_identity,
)
from attackpsm.storage.craft import CraftWriter

log = logging.getLogger("attackpsm")


def resolve_device(name: str) -> torch.device:
    valid = ("auto", "cpu", "cuda")
    if name not in valid and not str(name).startswith("cuda:"):
        raise ValueError(f"device must be one of {list(valid)} (or cuda:N), got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={name} requested but no CUDA device is available; use device=cpu"
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_note(cfg: DictConfig) -> str | None:
    """What a top-level ``seed`` leaves unchanged: a dataset with its own ``dataset.seed``.

    ``seed`` seeds the attacks' and metrics' randomness; a generated dataset (``synthetic``)
    draws its triplets from ``dataset.seed``, so two runs with different ``seed`` and the
    same ``dataset.seed`` attack identical triplets. Said once per run, so that a seed sweep
    is not mistaken for new data. ``None`` when the two agree or the data have no seed.
    """
    data_seed = cfg.dataset.get("seed") if "dataset" in cfg else None
    if data_seed is None or int(data_seed) == int(cfg.seed):
        return None
    return (
        f"seed={cfg.seed} seeds the attack and metric randomness; the {cfg.dataset.name} "
        f"triplets follow dataset.seed={data_seed}, so they are the same as in every run with "
        f"dataset.seed={data_seed} (add dataset.seed={cfg.seed} for other triplets)"
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job; returns the headline numbers (also written to ``summary.csv``)."""
    check_run(cfg)  # bad values stop here, before any data is read
    attack = build(cfg.attack)  # parameters only: its bad values stop before the data index
    seed_everything(cfg.seed)
    dataset: TripletDataset = build_dataset(cfg)  # the index only: pixels load lazily
    note = seed_note(cfg)
    if note:
        log.warning(note)
    fingerprint = dataset.fingerprint()  # results of other data never count as done
    done = finished_shard(cfg, fingerprint)  # finished work: no compute, no files, no W&B run
    if done is not None:
        return done
    device = resolve_device(cfg.device)
    # build everything before any work, so bad parameters fail fast
    metric = build(cfg.metric).to(device)
    if attack.white_box and not metric.differentiable:
        raise ValueError(
            f"attack {attack.name!r} needs gradients but metric {metric.name!r} is not differentiable"
        )
    if len(dataset) == 0:
        raise ValueError(f"dataset {cfg.dataset.name!r} has no usable triplets")
    identity = run_identity(cfg, fingerprint)
    sink = None
    if cfg.get("craft"):  # transfer benchmark, craft stage: save adversarial PNGs + manifest
        sink = CraftWriter(cfg.craft, identity, reverse=attack.reverse)

    run_dir = run_dir_for(cfg, fingerprint)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_identity(run_dir, identity)
    store = ShardStore(run_dir, cfg.shard.index, cfg.shard.count)
    # one writer per shard: a second one waits for it (bounded), then reuses or refuses
    lease = store.lease(stale_s=cfg.lease.stale_s, wait_s=cfg.lease.wait_s)
    if not lease.acquire(done=lambda: store.finished) or store.finished:
        lease.release()  # another writer finished it meanwhile: reuse, as a re-run would
        return finished_shard(cfg, fingerprint) or run(cfg)
    group = str(run_dir.relative_to(Path(cfg.paths.results_dir)))
    logger = (
        build(cfg.logger, _partial_=True)(  # the run's config is data, not something to instantiate
            group=group,
            name=f"{group}/shard{cfg.shard.index}of{cfg.shard.count}",
            run_config=OmegaConf.to_container(cfg, resolve=True),
            id=shard_run_id(run_dir, cfg.shard.index, cfg.shard.count),
        )
        if cfg.get("logger") and cfg.logger.get("_target_")
        else NullLogger()
    )
    progress = ShardProgress.of_store(logger, store, device)  # W&B live history and images
    try:
        shard = store.load()  # finished meanwhile, or a damaged shard file rebuilt from parts
        if shard is not None:
            log.info(
                "shard %d/%d already finished in %s", cfg.shard.index, cfg.shard.count, run_dir
            )
            results, errors, _ = shard
        else:
            records = shard_records(dataset.records, cfg.shard.index, cfg.shard.count)
            store.start([r.triplet_id for r in records], fingerprint)
            batches = store.pending(cfg.resolution.batch_size)  # gaps and damaged parts too
            if cfg.dataset.get("cache"):  # decoded 8-bit triplets, converted on the device
                from attackpsm.data.cache import CachedBatches, ensure_cache

                cache = ensure_cache(dataset, cfg.paths.cache_dir, progress=cfg.progress)
                loader = CachedBatches(
                    cache, records, cfg.resolution.batch_size, device, spans=batches
                )
            else:
                view = copy.copy(dataset)
                view.records = records
                loader = DataLoader(
                    view,
                    batch_sampler=[list(range(a, b)) for a, b in batches],
                    collate_fn=collate,
                    num_workers=cfg.num_workers,
                    pin_memory=device.type == "cuda",
                    persistent_workers=False,
                    prefetch_factor=4 if cfg.num_workers > 0 else None,
                )
            bar = tqdm(
                loader, desc=f"{metric.name} {attack.name}", unit="batch", disable=not cfg.progress
            )
            flips = flips_saved = total = 0
            fitting = FittingBatches()  # halves the batch if the device runs out of memory
            for (start, stop), batch in zip(batches, bar, strict=True):
                rows, errs = fitting(metric, attack, batch.to(device), sink=progress.sink(sink))
                lease.check()  # taken over after a stall: the new owner writes this batch
                store.checkpoint(start, stop, rows, errs)
                progress.update(rows, errs)
                if len(rows):
                    flips += int(rows["flipped"].sum())
                    flips_saved += int(rows["flipped_saved"].sum())
                    total += len(rows)
                    bar.set_postfix(
                        flip_rate=f"{flips / total:.1%}", after_saving=f"{flips_saved / total:.1%}"
                    )
            lease.check()
            results, errors = store.finalize()
        lease.release()  # merging is safe without it (every writer writes the same files)
        merged = merge_shards(run_dir, cfg.shard.count)
        if sink is not None and merged is not None:
            sink.finalize()
        scope = "all shards" if merged is not None else f"shard {cfg.shard.index}/{cfg.shard.count}"
        table, errs_all = merged if merged is not None else (results, errors)
        if merged is not None and len(table) == 0:
            reasons = errs_all["reason"].value_counts().head(3).to_dict() if len(errs_all) else {}
            raise ValueError(
                f"dataset {cfg.dataset.name!r} yielded zero usable triplets: all {len(errs_all)} "
                f"were skipped (most common reasons: {reasons}; every one is listed in "
                f"{run_dir / 'errors.parquet'})"
            )
        # the config names (pgd10, fgsm003, ...) tell variants of one attack class apart
        summary = summarize(table, cfg.metric.name, cfg.attack.name, skipped=len(errs_all))
        text = summary_markdown(summary) if merged is not None else None
        print(
            f"\n{cfg.dataset.name} · {cfg.metric.name} · {cfg.attack.name} · res {cfg.resolution.size or 'native'} ({scope}) -> {run_dir}"
        )
        print(text or summary.to_string(index=False))
        progress.finish(results)  # this shard's distributions and images
        if attack.name == "none":  # the clean metric: 2AFC score and accuracy (Table 1)
            table1 = clean_accuracy(table, metric.name)
            print(clean_accuracy_markdown(table1))
            logger.log_table("table1", table1)
        numbers = headline(table, len(errs_all))
        logger.log_summary(numbers)
        logger.log_table("summary", summary)
        logger.log_table("triplets", table)
        return {**numbers, "run_dir": str(run_dir)}
    finally:
        lease.release()
        logger.finish()
