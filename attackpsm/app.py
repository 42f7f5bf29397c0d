"""Hydra application: composes ``dataset``, ``metric``, ``attack``, ``resolution`` (+ ``logger``,
``paths``, ``hydra``, ``experiment``) and runs :func:`attackpsm.run.run` once per job."""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig

from attackpsm.config import CONFIG_DIR

log = logging.getLogger("attackpsm")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from attackpsm.run import run

    os.environ.setdefault("TQDM_MININTERVAL", "1")
    out = run(cfg)
    return out.get("flip_rate")
