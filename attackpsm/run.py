"""One job of a study: a dataset shard x metric x attack x resolution -> results on disk.

``run(cfg)`` is what ``python -m attackpsm`` executes for each (multi)run job. It is safe to
re-run: a finished shard is loaded instead of recomputed, an unfinished one resumes
after its last checkpointed batch (see :mod:`attackpsm.results`).
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import attackpsm
from attackpsm.accuracy import clean_accuracy, clean_accuracy_markdown, write_clean_accuracy
from attackpsm.cluster import finished_shard
from attackpsm.data.base import TripletDataset, collate, shard_records
from attackpsm.engine import FittingBatches
from attackpsm.loggers import NullLogger, ShardProgress, shard_run_id
from attackpsm.results import ShardStore, identity_hash, merge_shards, summarize, write_summary
from attackpsm.stats import PAPER_COLUMNS
from attackpsm.twoafc import accuracy

log = logging.getLogger("attackpsm")


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config-group node; its ``name`` key names the option, not an argument."""
    spec = OmegaConf.to_container(node, resolve=True)
    spec.pop("name", None)
    spec.pop("cache", None)  # dataset.cache: how the images are read, not a dataset argument
    return instantiate(spec, **kwargs)


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


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What determines a run's results (and so its directory): never the timestamp."""
    return {
        "dataset": {  # dataset.cache gives bit-identical images: not part of the identity
            k: v
            for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
            if k != "cache"
        },
        "metric": {
            k: v
            for k, v in OmegaConf.to_container(cfg.metric, resolve=True).items()
            if k not in ("weights_dir", "weights_mirror", "allow_fetch")
        },
        "attack": OmegaConf.to_container(cfg.attack, resolve=True),
        "resolution": cfg.resolution.size,
        "seed": cfg.seed,
        "version": attackpsm.__version__,
        # a craft run (transfer benchmark) also saves its images: never mistake it for a plain run
        **({"craft": str(cfg.craft)} if cfg.get("craft") else {}),
    }


def run_dir_for(cfg: DictConfig) -> Path:
    identity = run_identity(cfg)
    res = "native" if cfg.resolution.size is None else cfg.resolution.size
    key = (
        f"{cfg.dataset.name}/{cfg.metric.name}/{cfg.attack.name}/res{res}-{identity_hash(identity)}"
    )
    return Path(cfg.paths.results_dir) / key


def _pending(dataset: TripletDataset, store: ShardStore, cfg: DictConfig) -> TripletDataset:
    records = shard_records(dataset.records, cfg.shard.index, cfg.shard.count)
    done = store.done_ids()
    view = copy.copy(dataset)
    view.records = [r for r in records if r.triplet_id not in done]
    if done:
        log.info(
            "resuming shard %d/%d: %d done, %d to go",
            cfg.shard.index,
            cfg.shard.count,
            len(done),
            len(view.records),
        )
    return view


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job; returns the headline numbers (also written to ``summary.csv``)."""
    done = finished_shard(cfg)  # a re-run of finished work: no compute, no files, no W&B run
    if done is not None:
        return done
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    # build everything before any work, so bad parameters fail fast
    dataset: TripletDataset = build(cfg.dataset, size=cfg.resolution.size)
    metric = build(cfg.metric).to(device)
    attack = build(cfg.attack)
    if attack.white_box and not metric.differentiable:
        raise ValueError(
            f"attack {attack.name!r} needs gradients but metric {metric.name!r} is not differentiable"
        )
    if len(dataset) == 0:
        raise ValueError(f"dataset {cfg.dataset.name!r} has no usable triplets")
    sink = None
    if cfg.get("craft"):  # transfer benchmark, craft stage: save adversarial PNGs + manifest
        from attackpsm.transfer import CraftWriter

        sink = CraftWriter(cfg.craft, run_identity(cfg), reverse=attack.reverse)

    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity_file = run_dir / "identity.yaml"
    if not identity_file.exists():
        identity_file.write_text(OmegaConf.to_yaml(OmegaConf.create(run_identity(cfg))))
    store = ShardStore(run_dir, cfg.shard.index, cfg.shard.count)
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
        if store.finished:
            log.info(
                "shard %d/%d already finished in %s", cfg.shard.index, cfg.shard.count, run_dir
            )
            results, errors = store.load()
        else:
            pending = _pending(dataset, store, cfg)
            if cfg.dataset.get("cache"):  # decoded 8-bit triplets, converted on the device
                from attackpsm.data.cache import CachedBatches, ensure_cache

                cache = ensure_cache(dataset, cfg.paths.cache_dir, progress=cfg.progress)
                loader = CachedBatches(cache, pending.records, cfg.resolution.batch_size, device)
            else:
                loader = DataLoader(
                    pending,
                    batch_size=cfg.resolution.batch_size,
                    shuffle=False,
                    collate_fn=collate,
                    num_workers=cfg.num_workers,
                    pin_memory=device.type == "cuda",
                    persistent_workers=False,
                    prefetch_factor=4 if cfg.num_workers > 0 else None,
                )
            bar = tqdm(
                loader, desc=f"{metric.name} {attack.name}", unit="batch", disable=not cfg.progress
            )
            flips = total = 0
            fitting = FittingBatches()  # halves the batch if the device runs out of memory
            for batch in bar:
                rows, errs = fitting(metric, attack, batch.to(device), sink=progress.sink(sink))
                store.checkpoint(rows, errs)
                progress.update(rows, errs)
                if len(rows):
                    flips += int(rows["flipped"].sum())
                    total += len(rows)
                    bar.set_postfix(flip_rate=f"{flips / total:.1%}")
            results, errors = store.finalize()
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
        text = write_summary(run_dir, summary) if merged is not None else None
        print(
            f"\n{cfg.dataset.name} · {cfg.metric.name} · {cfg.attack.name} · res {cfg.resolution.size or 'native'} ({scope}) -> {run_dir}"
        )
        print(text or summary.to_string(index=False))
        progress.finish(results)  # this shard's distributions and images
        if attack.name == "none":  # the clean metric: 2AFC score and accuracy (Table 1)
            table1 = clean_accuracy(table, metric.name)
            print(
                write_clean_accuracy(run_dir, table1)
                if merged is not None
                else clean_accuracy_markdown(table1)
            )
            logger.log_table("table1", table1)
        headline = _headline(table, len(errs_all))
        logger.log_summary(headline)
        logger.log_table("summary", summary)
        logger.log_table("triplets", table)
        return {**headline, "run_dir": str(run_dir)}
    finally:
        logger.finish()


def _headline(table: pd.DataFrame, skipped: int) -> dict[str, float]:
    n = len(table)
    flipped = table["flipped"].astype(bool) if n else pd.Series(dtype=bool)
    return {
        "samples": n,
        "skipped": skipped,
        "flip_rate": float(flipped.mean()) if n else float("nan"),
        "flip_rate_uint8": float(table["flipped_uint8"].astype(bool).mean()) if n else float("nan"),
        "accuracy": accuracy(table["d0"], table["d1"], table["judge"])[0] if n else float("nan"),
        "rmse_flipped_mean": float(table.loc[flipped, PAPER_COLUMNS["rmse"]].mean())
        if n
        else float("nan"),
    }
