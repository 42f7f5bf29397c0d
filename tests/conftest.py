"""Shared fixtures: composed configs with CPU, tiny data, temporary outputs, attack inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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


@pytest.fixture(autouse=True, scope="session")
def _file_digest_memo(tmp_path_factory):
    """The memo of dataset file digests (attackpsm.data.digests) in a temporary folder,
    for this process and the processes the tests start."""
    import os

    os.environ["ATTACKPSM_DIGESTS"] = str(tmp_path_factory.mktemp("digests"))


def write_finished_run(run_dir: Path, rows, errors=None) -> None:
    """A hand-written per-triplet table as a finished one-shard run leaves it: the shard's
    files (with the ids it expects), then the merge (merged tables, checksums, summaries)."""
    import pandas as pd

    from attackpsm.storage import merge_shards
    from attackpsm.storage.shards import write_parquet

    if errors is None:
        errors = pd.DataFrame(columns=["triplet_id", "subset", "reason"])
    ids = sorted({*rows["triplet_id"], *errors["triplet_id"]})
    meta = {"fingerprint": "hand-written", "index": 0, "count": 1, "ids": ids}
    write_parquet(errors, run_dir / "shard-00000-of-00001.errors.parquet", meta)
    write_parquet(rows, run_dir / "shard-00000-of-00001.parquet", meta)
    merge_shards(run_dir, 1)


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda overrides=None: make_cfg(tmp_path, overrides)


@pytest.fixture(scope="session")
def lpips_alex():
    """LPIPS(Alex) with the real pretrained weights (cached by `make weights`)."""
    from attackpsm.metrics.lpips import LPIPS

    return LPIPS("alex")


@pytest.fixture(scope="module")
def lpips_rand():
    """LPIPS(Alex) with a seeded random backbone: fast attack mechanics, one per module."""
    from attackpsm.metrics.lpips import LPIPS

    torch.manual_seed(0)
    return LPIPS("alex", random_backbone=True)


def synthetic_batch(num_triplets: int, seed: int, size: int = 32, variant: str = "easy"):
    """A collated batch of synthetic triplets.

    Attack mechanics tests use the ``easy`` variant by default: every metric ranks it like
    its labels and attacks flip most of it, which their assertions were written against.
    """
    from attackpsm.data.base import collate
    from attackpsm.data.synthetic import SyntheticTriplets

    data = SyntheticTriplets(size=size, num_triplets=num_triplets, seed=seed, variant=variant)
    return collate([data[i] for i in range(len(data))])


def select_prey(metric, batch, reverse=False):
    """The engine's prey selection (:func:`attackpsm.protocol.twoafc.choose_prey`) on a batch.

    Returns the prepared references, the image to attack and the score of the other one.
    """
    from attackpsm.protocol.twoafc import choose_prey

    prepared = metric.prepare(batch.ref)
    with torch.no_grad():
        d0, d1 = metric.score(prepared, batch.p0), metric.score(prepared, batch.p1)
    chosen = choose_prey(d0, d1, reverse)
    return prepared, chosen.images(batch.p0, batch.p1), chosen.s_other


def assert_config_runs(cfg_factory, name: str, overrides: list[str]) -> None:
    """``attack=<name>`` runs end to end on 3 L2 triplets at 16 px and adds its columns."""
    import pandas as pd

    from attackpsm.job.run import build, run

    cfg = cfg_factory(
        [f"attack={name}", "metric=l2", "dataset.num_triplets=3", "resolution.size=16", *overrides]
    )
    out = run(cfg)
    assert out["samples"] == 3
    results = pd.read_parquet(Path(out["run_dir"]) / "results.parquet")
    for column in build(cfg.attack).columns:
        assert column in results.columns
