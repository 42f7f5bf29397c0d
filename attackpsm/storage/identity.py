"""A run's identity and its directory: what determines the results, never the timestamp.

The identity is the dataset, metric and attack configurations, the resolution, the seed,
the package version and the *data fingerprint* (:meth:`TripletDataset.fingerprint
<attackpsm.data.base.TripletDataset.fingerprint>`: ids, labels and the digest of every
file's bytes). Its hash names the run directory, so a run on changed data gets a directory of its
own and never reuses, or merges with, results of the old data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

import attackpsm
from attackpsm.config import build
from attackpsm.data.base import TripletDataset
from attackpsm.data.transfer import CraftMissing
from attackpsm.locks import write_text_atomic
from attackpsm.storage.records import load_mapping

IDENTITY_FILE = "identity.yaml"


def identity_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def build_dataset(cfg: DictConfig) -> TripletDataset:
    """The dataset of a run's config (the index only: pixels are loaded lazily)."""
    try:
        return build(cfg.dataset, size=cfg.resolution.size)
    except InstantiationException as error:
        if isinstance(error.__cause__, CraftMissing):  # its message is the fix: show it as is
            raise error.__cause__ from None
        raise


def data_fingerprint(cfg: DictConfig) -> str:
    """The fingerprint of the data a config names (builds the dataset's index)."""
    return build_dataset(cfg).fingerprint()


def run_identity(cfg: DictConfig, fingerprint: str) -> dict[str, Any]:
    """What determines a run's results (and so its directory).

    Args:
        cfg: the run's composed config.
        fingerprint: the data fingerprint of its dataset (:func:`data_fingerprint`).
    """
    return {
        "dataset": {  # dataset.cache gives bit-identical images: not part of the identity
            k: v
            for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
            if k != "cache"
        },
        "data_fingerprint": fingerprint,
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


def run_dir_for(cfg: DictConfig, fingerprint: str | None = None) -> Path:
    """``<results_dir>/<dataset>/<metric>/<attack>/res<size>-<identity hash>``.

    Args:
        cfg: the run's composed config.
        fingerprint: its data fingerprint; ``None`` builds the dataset's index to compute it.
    """
    if fingerprint is None:
        fingerprint = data_fingerprint(cfg)
    identity = run_identity(cfg, fingerprint)
    res = "native" if cfg.resolution.size is None else cfg.resolution.size
    key = (
        f"{cfg.dataset.name}/{cfg.metric.name}/{cfg.attack.name}/res{res}-{identity_hash(identity)}"
    )
    return Path(cfg.paths.results_dir) / key


class RunDirs:
    """Run directories of many job configs, each distinct dataset's index built once.

    For look-ups over a sweep (the launcher, the report). Building an index only reads
    files (``dataset=transfer`` reads crafted manifests; it never crafts).
    """

    def __init__(self) -> None:
        self._fingerprints: dict[str, str] = {}

    def __call__(self, cfg: DictConfig) -> Path:
        spec = OmegaConf.to_container(cfg.dataset, resolve=True)
        key = json.dumps([spec, cfg.resolution.size], sort_keys=True, default=str)
        if key not in self._fingerprints:
            self._fingerprints[key] = data_fingerprint(cfg)
        return run_dir_for(cfg, self._fingerprints[key])


def write_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    path = Path(run_dir) / IDENTITY_FILE
    if not path.exists():
        write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(identity)))


def read_identity(run_dir: Path) -> dict[str, Any]:
    """A run directory's ``identity.yaml`` as plain data (``{}`` when it has none).

    Raises:
        RecordError: the file is not plain data within the limits of
            :mod:`attackpsm.storage.records` (an interpolation, an alias, too large); the
            message names it.
    """
    path = Path(run_dir) / IDENTITY_FILE
    try:
        return load_mapping(path)
    except FileNotFoundError:
        return {}
