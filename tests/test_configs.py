"""Every option of every config group composes, and builds or fails with a clear message.

One parametrised test per group option: a renamed class, a misspelt key or an option that no
longer matches its code fails here, before a sweep reaches a cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import OmegaConf, open_dict

from attackpsm.data.files import DatasetLayoutError
from attackpsm.data.transfer import CraftMissing
from attackpsm.job.run import build
from attackpsm.metrics.weights.safeload import WeightsUnavailable

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("dataset", "metric", "attack", "resolution", "logger", "experiment")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
# Options that read a crafted transfer set: a fresh machine has none, and must be told how to
# craft it; attack=saved reads the craft dataset=transfer names, and says so with another dataset.
CRAFTS = {("dataset", "transfer"), ("attack", "saved")}
# Datasets whose files a fresh machine lacks; building them must name the root and the fix.
NEEDS_FILES = {("dataset", "bapps"), ("dataset", "pieapp"), ("dataset", "clic")}


def _compose(tmp_path: Path, group: str, option: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(
            config_name="config",
            overrides=[
                f"{group}={option}" if group != "resolution" else f"resolution='{option}'",
                "device=cpu",
                "progress=false",
                f"paths.results_dir={tmp_path / 'results'}",
                f"paths.log_dir={tmp_path / 'logs'}",
            ],
        )


def test_every_group_has_options():
    for group in GROUPS:
        assert any(g == group for g, _ in OPTIONS), f"conf/{group}/ has no options"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_builds(tmp_path, group, option):
    cfg = _compose(tmp_path, group, option)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group in ("experiment", "resolution"):
        # an experiment only overrides other groups; a resolution is plain values
        assert cfg.resolution.batch_size >= 1
        return
    node = cfg[group]
    if group == "logger" and option == "none":
        assert not node.get("_target_"), "logger=none must build no logger"
        return
    # metric=smoothed names itself after its base and sigma (smoothed_lpips_alex_s0.12)
    assert group == "logger" or node.name == option or node.name.startswith(f"{option}_"), (
        f"conf/{group}/{option}.yaml names itself {node.name!r}"
    )
    if group == "logger":
        with open_dict(node):
            node.mode = "disabled"
        logger = build(node, _partial_=True)(
            group="test", name="test", run_config={}, id="test-configs"
        )
        logger.log_summary({"flip_rate": 0.5})
        logger.finish()
        return
    if group == "metric":
        try:
            metric = build(node)
        except InstantiationException as e:  # online-only weights: the message names the fix
            assert isinstance(e.__cause__, WeightsUnavailable), f"metric={option}: {e}"
            assert "make weights" in str(e), str(e)
            return
        assert callable(getattr(metric, "score", None))
        return
    if group == "dataset":
        try:
            dataset = build(node, size=cfg.resolution.size)
        except InstantiationException as e:
            if (group, option) in CRAFTS:
                assert isinstance(e.__cause__, CraftMissing), f"dataset={option}: {e}"
                assert "python -m attackpsm craft stadv" in str(e), str(e)
                return
            assert (group, option) in NEEDS_FILES, f"{group}={option} failed to build: {e}"
            assert isinstance(e.__cause__, DatasetLayoutError), f"dataset={option}: {e}"
            assert "does not exist" in str(e) and "Expected layout" in str(e), str(e)
            return
        assert len(dataset) > 0
        return
    from attackpsm.attacks.base import Attack

    if (group, option) in CRAFTS:
        with pytest.raises(InstantiationException, match="use it with dataset=transfer"):
            build(node)
        return
    attack = build(node)
    assert isinstance(attack, Attack), f"attack={option} builds a {type(attack).__name__}"
