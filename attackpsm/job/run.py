"""One job of a study: a dataset shard x metric x attack x resolution -> results on disk.

``run(cfg)`` is what ``python -m attackpsm`` executes for each (multi)run job. It is safe to
re-run: a finished shard is loaded instead of recomputed, an unfinished one resumes at its
first batch without a valid checkpoint, and one process at a time writes a shard (see
:mod:`attackpsm.storage`).

The job is a sequence of named steps: :func:`compose` -> :func:`index` -> :func:`reuse`
(finished work) -> :func:`open_job` and :func:`take_lease` -> :func:`load` ->
:func:`attack_shard` -> :func:`write` -> :func:`summarise`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from attackpsm.attacks.base import Attack
from attackpsm.attacks.target import build_attack
from attackpsm.config import ConfigError, build
from attackpsm.data.base import TripletDataset, TripletRecord, collate, shard_records
from attackpsm.data.workers import die_with_parent
from attackpsm.engine import FittingBatches
from attackpsm.job.loggers import NullLogger, flat_keys, run_keys, shard_run_id
from attackpsm.job.preflight import check_run
from attackpsm.job.progress import ShardProgress
from attackpsm.metrics.base import Metric
from attackpsm.storage import (
    ShardStore,
    build_dataset,
    finished_shard,
    merge_shards,
    run_dir_for,
    run_identity,
    write_identity,
)
from attackpsm.storage.craft import CraftWriter
from attackpsm.summary.accuracy import clean_accuracy, clean_accuracy_markdown
from attackpsm.summary.headline import headline
from attackpsm.summary.results import (
    eps_star_markdown,
    eps_star_summary,
    summarize,
    summary_markdown,
)

log = logging.getLogger("attackpsm")


class DeviceUnavailable(ConfigError, RuntimeError):
    """``device=cuda`` on a machine where PyTorch sees no CUDA device."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a job: what was saved before it, for the one-line resume message.

    Every finished batch is checkpointed on disk before the next starts
    (:class:`attackpsm.storage.ShardStore`), so the same command resumes after the last one.
    """

    def __init__(self, saved: int, total: int, run_dir: Path):
        super().__init__(f"{saved} of {total} triplets saved in {run_dir}")
        self.saved, self.total, self.run_dir = saved, total, Path(run_dir)


def resolve_device(name: str) -> torch.device:
    """The device ``device=`` names (``auto``: a GPU when PyTorch sees one, else the CPU).

    Raises:
        ConfigError: a name that is not a device.
        DeviceUnavailable: ``cuda`` on a machine without one.
    """
    valid = ("auto", "cpu", "cuda")
    if name not in valid and not str(name).startswith("cuda:"):
        raise ConfigError(f"device must be one of {list(valid)} (or cuda:N), got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device={name}: PyTorch sees no CUDA device on this machine; use device=cpu "
            "(or device=auto, which picks a GPU when there is one)"
        )
    return torch.device(name)


class MetricCalls:
    """Counts a metric's evaluations, shown in the progress bar while a batch is attacked.

    An attack evaluates the metric at least once per iteration (a PGD step, an L-BFGS
    step of stAdv, a generation of One-pixel), so the count moves while a slow batch runs
    where the batch bar alone would stay at 0 (the bar is refreshed at most once a second).
    """

    def __init__(self, metric: Any, bar: Any):
        self.bar, self.calls, self.last = bar, 0, 0.0
        self.postfix: dict[str, str] = {}
        score = metric.score

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            now = time.monotonic()
            if now - self.last >= 1.0:
                self.last = now
                self.bar.set_postfix(metric_calls=self.calls, **self.postfix)
            return score(*args, **kwargs)

        metric.score = counted  # this run's instance only


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def zero_usable(cfg: DictConfig, run_dir: Path, errors: pd.DataFrame) -> ValueError:
    """The error of a run whose every triplet was skipped (raised by every re-run too)."""
    reasons = errors["reason"].value_counts().head(3).to_dict() if len(errors) else {}
    return ValueError(
        f"dataset {cfg.dataset.name!r} yielded zero usable triplets: all {len(errors)} "
        f"were skipped (most common reasons: {reasons}; every one is listed in "
        f"{run_dir / 'errors.parquet'})"
    )


def check_row_digests(dataset: TripletDataset, results: pd.DataFrame, run_dir: Path) -> None:
    """Every row must carry the digest of the files the run's fingerprint covers.

    Raises:
        ValueError: naming the rows computed from other bytes (they are never merged).
    """
    if "data_digest" not in results:
        return
    expected = dataset.row_digests()
    bad = [
        t
        for t, d in zip(results["triplet_id"], results["data_digest"], strict=True)
        if t in expected and expected[t] != d
    ]
    if bad:
        raise ValueError(
            f"{run_dir}: {len(bad)} rows were computed from other bytes than this run's data "
            f"fingerprint covers (first: {bad[:5]}); move the shard's parts out and re-run it"
        )


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
    """Run one job; returns the headline numbers (also written to ``summary.csv``).

    The steps, in order: :func:`compose` -> :func:`index` -> :func:`reuse` -> :func:`open_job`
    -> :func:`take_lease` -> :func:`load` -> :func:`attack_shard` -> :func:`write` ->
    :func:`summarise`. A writer that waited for another one finds the shard finished:
    it reuses it, or starts over from :func:`compose` when it is not yet reusable.
    """
    while True:
        attack = compose(cfg)
        dataset, fingerprint = index(cfg)
        done = reuse(cfg, fingerprint)
        if done is not None:
            return done
        job = open_job(cfg, attack, dataset, fingerprint)
        lease = take_lease(job)
        if lease is not None:
            return work(job, lease)
        done = finished_shard(cfg, fingerprint)  # another writer finished it meanwhile
        if done is not None:
            return done


@dataclass(frozen=True)
class Job:
    """What the steps after :func:`open_job` share: one shard, ready to be attacked.

    Attributes:
        cfg: the job's composed config.
        attack: the attack (:func:`compose`).
        dataset: the whole dataset's index (:func:`index`); never changed by the job.
        fingerprint: the data fingerprint of ``dataset``.
        device: where the metric and the batches live.
        metric: the metric, on ``device``.
        identity: the run's identity (``identity.yaml``).
        run_dir: the run's directory.
        store: the shard's parts and checkpoints.
        sink: the craft stage's writer of adversarial images (``None``: not crafting).
    """

    cfg: DictConfig
    attack: Attack
    dataset: TripletDataset
    fingerprint: str
    device: torch.device
    metric: Metric
    identity: dict[str, Any]
    run_dir: Path
    store: ShardStore
    sink: CraftWriter | None


def compose(cfg: DictConfig) -> Attack:
    """Check the config and build the attack from its parameters, then seed the job.

    Bad values stop here, before any data is read (:func:`check_run`); ``attack.target``
    picks the perturbed image (:mod:`attackpsm.attacks.target`).
    """
    check_run(cfg)
    attack = build_attack(cfg.attack)
    seed_everything(cfg.seed)
    return attack


def index(cfg: DictConfig) -> tuple[TripletDataset, str]:
    """The dataset's index (pixels load lazily) and its data fingerprint.

    Says once what ``seed`` leaves unchanged (:func:`seed_note`). The fingerprint keys
    the results: results of other data never count as done.
    """
    dataset: TripletDataset = build_dataset(cfg)
    note = seed_note(cfg)
    if note:
        log.warning(note)
    return dataset, dataset.fingerprint()


def reuse(cfg: DictConfig, fingerprint: str) -> dict[str, Any] | None:
    """The numbers of a finished shard (no compute, no files, no W&B run); ``None``: work left.

    Raises:
        ValueError: the finished run has no usable triplet (never "finished" with nothing).
    """
    done = finished_shard(cfg, fingerprint)
    if done is None:
        return None
    merged = Path(done["run_dir"]) / "results.parquet"
    if done["samples"] == 0 and merged.exists():
        skipped = merged.with_name("errors.parquet")
        errors = pd.read_parquet(skipped) if skipped.exists() else pd.DataFrame()
        raise zero_usable(cfg, Path(done["run_dir"]), errors)
    return done


def open_job(cfg: DictConfig, attack: Attack, dataset: TripletDataset, fingerprint: str) -> Job:
    """Build the metric and the run's directory, so that bad parameters fail before any work.

    Raises:
        ConfigError: a white-box attack on a metric without gradients.
        ValueError: an empty dataset, or a craft stage that does not perturb the prey.
    """
    device = resolve_device(cfg.device)
    metric = build(cfg.metric).to(device)
    if attack.white_box and not metric.differentiable:
        raise ConfigError(
            f"attack {attack.name!r} needs gradients but metric {metric.name!r} is not "
            "differentiable: use a black-box attack (attack=square, attack=onepixel) or a "
            "differentiable metric"
        )
    if len(dataset) == 0:
        raise ValueError(f"dataset {cfg.dataset.name!r} has no usable triplets")
    identity = run_identity(cfg, fingerprint)
    sink = None
    if cfg.get("craft") and getattr(attack, "target", "prey") != "prey":
        raise ValueError("the transfer craft stage saves adversarial preys: use attack.target=prey")
    if cfg.get("craft"):  # transfer benchmark, craft stage: save adversarial PNGs + manifest
        sink = CraftWriter(cfg.craft, identity, reverse=attack.reverse)
    run_dir = run_dir_for(cfg, fingerprint)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info(  # the job's log (Hydra's <job dir>/app.log; submitit's _log.err) says what runs
        "%s · %s · %s · res %s, shard %d/%d on %s -> %s",
        cfg.dataset.name,
        cfg.metric.name,
        cfg.attack.name,
        cfg.resolution.size or "native",
        cfg.shard.index,
        cfg.shard.count,
        device,
        run_dir.resolve(),
    )
    write_identity(run_dir, identity)
    store = ShardStore(run_dir, cfg.shard.index, cfg.shard.count)
    return Job(cfg, attack, dataset, fingerprint, device, metric, identity, run_dir, store, sink)


def take_lease(job: Job) -> Any:
    """The shard's lease: one writer per shard (:meth:`attackpsm.storage.ShardStore.lease`).

    A second writer waits for the first (bounded); ``None`` when the shard was finished
    meanwhile, to be reused as a re-run would.
    """
    lease = job.store.lease(stale_s=job.cfg.lease.stale_s, wait_s=job.cfg.lease.wait_s)
    if not lease.acquire(done=lambda: job.store.finished) or job.store.finished:
        lease.release()
        return None
    return lease


def open_logger(job: Job) -> Any:
    """The shard's W&B run (or :class:`NullLogger`), resumed under the shard's own run id."""
    cfg = job.cfg
    if not (cfg.get("logger") and cfg.logger.get("_target_")):
        return NullLogger()
    group = str(job.run_dir.relative_to(Path(cfg.paths.results_dir)))
    return build(
        cfg.logger, _partial_=True
    )(  # the run's config is data, not something to instantiate
        group=group,
        name=f"{group}/shard{cfg.shard.index}of{cfg.shard.count}",
        # the flat keys aggregate runs carry too; partial until this shard finishes
        run_config={
            **OmegaConf.to_container(cfg, resolve=True),
            **run_keys(job.identity),
            "complete": False,
            "finished": False,
        },
        id=shard_run_id(job.run_dir, cfg.shard.index, cfg.shard.count),
    )


def work(job: Job, lease: Any) -> dict[str, Any]:
    """Load, attack and write the shard under ``lease``, then summarise the run."""
    logger = open_logger(job)
    progress = ShardProgress.of_store(logger, job.store, job.device)  # W&B history and images
    try:
        shard = job.store.load()  # finished meanwhile, or a damaged shard file rebuilt from parts
        if shard is not None:
            cfg = job.cfg
            log.info(
                "shard %d/%d already finished in %s", cfg.shard.index, cfg.shard.count, job.run_dir
            )
            results, errors, _ = shard
        else:
            records = shard_records(job.dataset.records, job.cfg.shard.index, job.cfg.shard.count)
            job.store.start([r.triplet_id for r in records], job.fingerprint)
            batches = job.store.pending(job.cfg.resolution.batch_size)  # gaps and damaged parts
            attack_shard(job, lease, progress, load(job, records, batches), records, batches)
            results, errors = write(job, lease)
        lease.release()  # merging is safe without it (every writer writes the same files)
        return summarise(job, results, errors, logger, progress)
    finally:
        lease.release()
        logger.finish()


def load(job: Job, records: list[TripletRecord], batches: list[tuple[int, int]]) -> Any:
    """The batches ``batches`` (spans of ``records``) of the shard, as an iterable of batches.

    From the decoded 8-bit cache (``dataset.cache``, converted on the device) or from the
    dataset itself through a :class:`~torch.utils.data.DataLoader` over the shard's records
    (a :class:`~torch.utils.data.Subset`: the dataset is not changed).
    """
    cfg, device = job.cfg, job.device
    if cfg.dataset.get("cache"):
        from attackpsm.data.cache import ensure_cache
        from attackpsm.data.cache_batches import CachedBatches

        cache = ensure_cache(
            job.dataset,
            cfg.paths.cache_dir,
            progress=cfg.progress,
            ids=[r.triplet_id for r in records],  # their checksums verified first
        )
        return CachedBatches(cache, records, cfg.resolution.batch_size, device, spans=batches)
    position = {id(r): i for i, r in enumerate(job.dataset.records)}
    return DataLoader(
        Subset(job.dataset, [position[id(r)] for r in records]),
        batch_sampler=[list(range(a, b)) for a, b in batches],
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
        # the workers exit as soon as this process dies, even by SIGKILL
        worker_init_fn=functools.partial(die_with_parent, os.getpid()),
    )


def attack_shard(
    job: Job,
    lease: Any,
    progress: ShardProgress,
    loader: Any,
    records: list[TripletRecord],
    batches: list[tuple[int, int]],
) -> None:
    """Attack every pending batch, checkpointing each before the next starts.

    Raises:
        RunInterrupted: on Ctrl-C, with the number of triplets saved so far.
        attackpsm.storage.LeaseLost: the shard was taken over after a stall.
    """
    cfg, metric = job.cfg, job.metric
    bar = tqdm(
        loader, desc=f"{metric.name} {job.attack.name}", unit="batch", disable=not cfg.progress
    )
    flips = flips_saved = total = 0
    fitting = FittingBatches()  # halves the batch if the device runs out of memory
    calls = MetricCalls(metric, bar) if cfg.progress else None
    saved = len(records) - sum(b - a for a, b in batches)  # by earlier runs
    try:
        for (start, stop), batch in zip(batches, bar, strict=True):
            rows, errs = fitting(
                metric, job.attack, batch.to(job.device), sink=progress.sink(job.sink)
            )
            lease.check()  # taken over after a stall: the new owner writes this batch
            job.store.checkpoint(start, stop, rows, errs)
            saved += stop - start
            progress.update(rows, errs)
            if len(rows):
                flips += int(rows["flipped"].sum())
                flips_saved += int(rows["flipped_saved"].sum())
                total += len(rows)
                postfix = {
                    "flip_rate": f"{flips / total:.1%}",
                    "after_saving": f"{flips_saved / total:.1%}",
                }
                bar.set_postfix(**postfix)
                if calls is not None:
                    calls.postfix = postfix
    except KeyboardInterrupt:
        bar.close()
        raise RunInterrupted(saved, len(records), job.run_dir.resolve()) from None


def write(job: Job, lease: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the shard's results and errors from its checkpoints; returns both tables.

    Raises:
        ValueError: rows computed from other bytes than the fingerprint covers.
    """
    lease.check()
    results, errors = job.store.finalize()
    check_row_digests(job.dataset, results, job.run_dir)
    return results, errors


def summarise(
    job: Job, results: pd.DataFrame, errors: pd.DataFrame, logger: Any, progress: ShardProgress
) -> dict[str, Any]:
    """Merge the shards when all are done; print, log and return the run's headline numbers.

    Raises:
        ValueError: every triplet of the merged run was skipped (:func:`zero_usable`).
    """
    cfg, run_dir = job.cfg, job.run_dir
    merged = merge_shards(run_dir, cfg.shard.count)
    if job.sink is not None and merged is not None:
        job.sink.finalize()
    scope = "all shards" if merged is not None else f"shard {cfg.shard.index}/{cfg.shard.count}"
    table, errs_all = merged if merged is not None else (results, errors)
    if merged is not None and len(table) == 0:
        raise zero_usable(cfg, run_dir, errs_all)
    summary = print_summary(job, table, errs_all, scope, logger, merged=merged is not None)
    # this shard's distributions, images and robustness curves
    progress.finish(results, keys=flat_keys(job.identity))
    if job.attack.name == "none":  # the clean metric: 2AFC score and accuracy (Table 1)
        table1 = clean_accuracy(table, job.metric.name)
        print(clean_accuracy_markdown(table1))
        logger.log_table("table1", table1)
    numbers = headline(table, len(errs_all))
    log.info(
        "%s: %s",
        scope,
        ", ".join(
            f"{k}={v:.4g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in numbers.items()
        ),
    )
    logger.log_summary(numbers)
    logger.log_table("summary", summary)
    logger.log_table("triplets", table)
    # complete: the run's numbers cover every triplet of its configuration (one shard);
    # a shard of several stays partial, the aggregate run of the merge is complete
    logger.set_config({"complete": cfg.shard.count == 1, "finished": True})
    return {**numbers, "run_dir": str(run_dir)}


def print_summary(
    job: Job, table: pd.DataFrame, errors: pd.DataFrame, scope: str, logger: Any, merged: bool
) -> pd.DataFrame:
    """Print the run's summary (Markdown once merged), ε* of minimum-norm attacks and the
    stalled count; returns the summary table."""
    cfg, run_dir = job.cfg, job.run_dir
    # the config names (pgd10, fgsm003, ...) tell variants of one attack class apart
    summary = summarize(table, cfg.metric.name, cfg.attack.name, skipped=len(errors))
    text = summary_markdown(summary) if merged else None
    print(
        f"\n{cfg.dataset.name} · {cfg.metric.name} · {cfg.attack.name} · res {cfg.resolution.size or 'native'} ({scope}) -> {run_dir.resolve()}"
    )
    print(text or summary.to_string(index=False))
    if "eps_star" in table.columns:  # minimum-norm attacks: the distribution of ε*
        eps_star = eps_star_summary(table, cfg.metric.name, cfg.attack.name)
        print(eps_star_markdown(eps_star))
        logger.log_table("eps_star", eps_star)
    stalled = int(table["stalled"].astype(bool).sum()) if "stalled" in table else 0
    if stalled:
        log.warning(
            "%d of %d triplets stalled: %s ended at the prey without a flip (column "
            "`stalled` of %s): counted as not flipped, they are no evidence of robustness",
            stalled,
            len(table),
            cfg.attack.name,
            run_dir / "results.parquet",
        )
    return summary
