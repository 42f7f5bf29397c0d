"""Shared fixtures: composed configs with CPU, tiny data, temporary outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def make_cfg(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose the app config with test-friendly settings (CPU, no logger, tmp dirs)."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(
            config_name="config",
            overrides=[
                "logger=none",
                "device=cpu",
                "progress=false",
                f"paths.results_dir={tmp_path / 'results'}",
                f"paths.log_dir={tmp_path / 'logs'}",
                *(overrides or []),
            ],
        )
    with open_dict(cfg):
        cfg.setdefault("num_workers", 0)
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda overrides=None: make_cfg(tmp_path, overrides)


@pytest.fixture(scope="session")
def lpips_alex():
    """LPIPS(Alex) with the real pretrained weights (cached by `make weights`)."""
    from attackpsm.metrics.lpips import LPIPS

    return LPIPS("alex")
