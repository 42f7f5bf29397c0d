"""Checks of a composed run config that need no data: bad values stop before any work.

:func:`check_run` runs first in :func:`attackpsm.job.run.run`; the sweep callback calls
:func:`check_shards` before launching anything. Each error names the bad value and the
valid ones. The attacks check their own parameters when they are built (ε, α and FGSM's
``max_eps`` within the width 2 of the ``[-1, 1]`` scale, Sec. 3), also before data is read.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from attackpsm.config import ConfigError, check_node

# The largest image side a run resizes to. The paper evaluates 64 to 768 px (CLIC's native
# size, Table 6); a side of 100,000 px would need ~120 GB per image batch before any check.
MAX_RESOLUTION = 4096
# Seeds go to Python, NumPy and torch; NumPy's legacy generator takes [0, 2**32 - 1].
MAX_SEED = 2**32 - 1
# A heartbeat every stale_s / 4 seconds: below one second a busy machine's scheduling
# pauses would look like dead writers.
MIN_STALE_S = 1.0


def check_shards(count: Any, index: Any = 0) -> None:
    """``shard.count`` is a whole number >= 1 and ``0 <= shard.index < shard.count``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(
            f"shard.count must be an integer >= 1 (the number of jobs per run), got {count!r}"
        )
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ConfigError(
            f"shard.index must be an integer in [0, {count - 1}] for shard.count={count}, "
            f"got {index!r}"
        )


def metric_minimum_size(metric: DictConfig) -> int:
    """The smallest image side the configured metric accepts (its class's ``minimum_size``)."""
    from hydra.utils import get_class

    if not metric.get("_target_"):
        return 1
    params = {
        k: v
        for k, v in OmegaConf.to_container(metric, resolve=True).items()
        if not k.startswith("_") and k != "name"
    }
    return int(get_class(metric._target_).minimum_size(**params))


def check_resolution(cfg: DictConfig) -> None:
    """``resolution.batch_size`` >= 1; ``resolution.size`` native (null) or >= the metric's minimum."""
    batch = cfg.resolution.get("batch_size")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"resolution.batch_size must be an integer >= 1, got {batch!r}")
    size = cfg.resolution.size
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_RESOLUTION:
        raise ConfigError(
            f"resolution.size must be an integer in [1, {MAX_RESOLUTION}] (pixels per side) "
            f"or null (native), got {size!r}"
        )
    minimum = metric_minimum_size(cfg.metric)
    if size < minimum:
        raise ConfigError(
            f"resolution.size={size} is below the smallest image metric {cfg.metric.name!r} "
            f"accepts ({minimum} px): use resolution=256 (or any resolution=N with N >= "
            f"{minimum}), or a metric made for small images"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_seed(seed: Any) -> None:
    """``seed`` is a whole number in ``[0, MAX_SEED]``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {seed!r}")


def check_lease(lease: Any) -> None:
    """``lease.stale_s`` finite and >= :data:`MIN_STALE_S`; ``lease.wait_s`` >= 0 (may be inf)."""
    stale = lease.get("stale_s") if lease is not None else None
    wait = lease.get("wait_s") if lease is not None else None
    if not _is_number(stale) or not math.isfinite(stale) or stale < MIN_STALE_S:
        raise ConfigError(
            f"lease.stale_s must be a finite number of seconds >= {MIN_STALE_S:g} (a lease "
            f"whose heartbeat is older is taken over), got {stale!r}"
        )
    if not _is_number(wait) or math.isnan(wait) or wait < 0:
        raise ConfigError(
            f"lease.wait_s must be a number of seconds >= 0 (inf: wait for the writer as long "
            f"as it lives), got {wait!r}"
        )


def check_workers(workers: Any) -> None:
    """``num_workers`` is a whole number >= 0."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(
            f"num_workers must be an integer >= 0 (0: load in-process), got {workers!r}"
        )


def check_flip_on(cfg: DictConfig) -> None:
    """``attack.flip_on=saved`` compares the saved image with the dataset's 8-bit images.

    Raises:
        ConfigError: with ``dataset.quantize=false`` (float inputs), naming both fixes.
    """
    flip_on = OmegaConf.select(cfg, "attack.flip_on", default="float")
    if flip_on == "saved" and OmegaConf.select(cfg, "dataset.quantize", default=True) is False:
        raise ConfigError(
            "attack.flip_on=saved judges the saved adversarial image against the dataset's "
            "8-bit images, but dataset.quantize=false keeps float images: set "
            "dataset.quantize=true (the paper's loader) or attack.flip_on=float"
        )


def check_run(cfg: DictConfig) -> None:
    """Every check that needs no data, in the order a user would fix them.

    It runs before the run directory exists: a refused value leaves no file behind.
    """
    check_shards(cfg.shard.count, cfg.shard.index)
    for group in ("dataset", "metric", "attack"):
        check_node(cfg[group], group)
    check_resolution(cfg)
    check_seed(cfg.get("seed"))
    check_lease(cfg.get("lease"))
    check_workers(cfg.get("num_workers", 0))
    check_flip_on(cfg)
