"""Checks of a composed run config that need no data: bad values stop before any work.

:func:`check_run` runs first in :func:`attackpsm.run.run`; the sweep callback calls
:func:`check_shards` before launching anything. Each error names the bad value and the
valid ones. The attacks check their own parameters when they are built (ε, α and FGSM's
``max_eps`` within the width 2 of the ``[-1, 1]`` scale, Sec. 3), also before data is read.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def check_shards(count: Any, index: Any = 0) -> None:
    """``shard.count`` is a whole number >= 1 and ``0 <= shard.index < shard.count``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(
            f"shard.count must be an integer >= 1 (the number of jobs per run), got {count!r}"
        )
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(
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
        raise ValueError(f"resolution.batch_size must be an integer >= 1, got {batch!r}")
    size = cfg.resolution.size
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"resolution.size must be a positive integer or null (native), got {size!r}"
        )
    minimum = metric_minimum_size(cfg.metric)
    if size < minimum:
        raise ValueError(
            f"resolution.size={size} is below the smallest image metric {cfg.metric.name!r} "
            f"accepts ({minimum} px): use resolution.size >= {minimum}"
        )


def check_flip_on(cfg: DictConfig) -> None:
    """``attack.flip_on=saved`` compares the saved image with the dataset's 8-bit images.

    Raises:
        ValueError: with ``dataset.quantize=false`` (float inputs), naming both fixes.
    """
    flip_on = OmegaConf.select(cfg, "attack.flip_on", default="float")
    if flip_on == "saved" and OmegaConf.select(cfg, "dataset.quantize", default=True) is False:
        raise ValueError(
            "attack.flip_on=saved judges the saved adversarial image against the dataset's "
            "8-bit images, but dataset.quantize=false keeps float images: set "
            "dataset.quantize=true (the paper's loader) or attack.flip_on=float"
        )


def check_run(cfg: DictConfig) -> None:
    """Every check that needs no data, in the order a user would fix them."""
    check_shards(cfg.shard.count, cfg.shard.index)
    check_resolution(cfg)
    check_flip_on(cfg)
