"""Find and load the runs below a results directory or a Hydra sweep directory.

A *run* is one ``<results_dir>/<dataset>/<metric>/<attack>/res<size>-<hash>/`` folder
(see :mod:`attackpsm.storage`): its ``identity.yaml`` says what was run, its
``results.parquet`` holds one row per triplet. A run whose shards are not all finished
is loaded from the finished shards and marked incomplete.

A Hydra sweep directory (``logs/multiruns/<date>/``) holds one ``<job>/.hydra/config.yaml``
per job; each job's run folder is found from that config (the same identity, the same
hash), so ``python -m attackpsm report logs/multiruns/<date>`` reports exactly that sweep.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from attackpsm.attacks.base import attack_class
from attackpsm.storage import RunDirs, StorageError, read_identity, read_run
from attackpsm.storage.records import RecordError, check_targets, load_mapping, resolved_spec

# Attack parameters that do not define a variant (bookkeeping, not behaviour).
_NOT_PARAMS = {"_target_", "name", "max_batch"}
# Dataset parameters that do not change which triplets are used.
_NOT_DATASET_PARAMS = {"_target_", "name", "root", "device", "batch_size", "store"}
# Attack class -> family: what the tables group by (``fgsm003`` is an FGSM, ``pgd10`` a PGD).
ATTACK_TITLES = {  # attack config name -> how tables and figures print it
    "fgsm": "FGSM",
    "fgsm003": "FGSM (ε ≤ 0.03)",
    "pgd": "PGD",
    "pgd10": "PGD(10)",
    "pgd20": "PGD(20)",
    "onepixel": "One-pixel",
    "stadv": "stAdv",
    "stadv_pgd": "stAdv+PGD",
    **{f"stadv_pgd{k}": f"stAdv+PGD({k})" for k in (5, 10, 15, 20)},
    "pgd_reverse": "Reverse PGD",
    "saved": "transfer",
    "none": "none",
}


def attack_title(name: str, variant: str = "") -> str:
    """``PGD``, ``PGD (alpha=0.00375)``, ``stAdv+PGD(10)``: an attack run's printed name."""
    return ATTACK_TITLES.get(name, name) + (f" ({variant})" if variant else "")


# Transfer evaluations: dataset parameters that name the crafted images (one Table-5 column).
_TRANSFER_COLUMN_KEYS = ("column", "manifest")


@dataclass
class Run:
    """One run folder, loaded.

    Attributes:
        run_dir: the folder.
        identity: its ``identity.yaml`` as a dict.
        results: the per-triplet table (``results.parquet`` or the finished shards).
        skipped: number of triplets in the errors tables.
        complete: every shard finished (``results.parquet`` exists).
        variant: attack parameters that tell this run apart from other runs of the same
            attack in the same report (e.g. ``alpha=0.00375``); empty when there is one.
        dataset_variant: the same for dataset parameters (e.g. ``num_triplets=16``).
    """

    run_dir: Path
    identity: dict[str, Any]
    results: pd.DataFrame
    skipped: int = 0
    complete: bool = True
    variant: str = ""
    dataset_variant: str = ""

    @property
    def dataset(self) -> str:
        return str(self.identity["dataset"]["name"])

    @property
    def metric(self) -> str:
        return str(self.identity["metric"]["name"])

    @property
    def attack(self) -> str:
        return str(self.identity["attack"]["name"])

    @property
    def family(self) -> str:
        """Attack family, as the attack's class declares it (:attr:`Attack.family
        <attackpsm.attacks.base.Attack.family>`: ``fgsm``, ``pgd``, ``transfer``, ...); the
        attack's config name where it declares none or is not a class of this version."""
        try:
            family = attack_class(self.identity["attack"]).family
        except ValueError:
            family = None
        return family or self.attack

    @property
    def is_transfer(self) -> bool:
        """An evaluation of transferred images (Table 5), not an attack on this metric."""
        return self.family == "transfer" or self.dataset == "transfer"

    @property
    def resolution(self) -> int | None:
        res = self.identity.get("resolution")
        return None if res is None else int(res)

    @property
    def attack_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.identity["attack"].items() if k not in _NOT_PARAMS}

    @property
    def dataset_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.identity["dataset"].items() if k not in _NOT_DATASET_PARAMS}

    @property
    def label(self) -> str:
        """``attack`` or ``attack (variant)``: how tables name this run's attack."""
        return f"{self.attack} ({self.variant})" if self.variant else self.attack

    @property
    def title(self) -> str:
        """How tables and figures print this run's attack: ``PGD (alpha=0.00375)``."""
        return attack_title(self.attack, self.variant)

    @property
    def resolution_label(self) -> str:
        return "native" if self.resolution is None else f"{self.resolution}x{self.resolution}"


class RefusedRecord(UserWarning):
    """A run left out of a report because a record of it is not plain data (its message
    names the file); ``python -m attackpsm report`` exits 1 after reporting the others."""


def load_run(run_dir: str | Path) -> Run | None:
    """Load one run folder; ``None`` when it has no finished shard yet."""
    run_dir = Path(run_dir)
    try:
        identity = read_identity(run_dir)
        loaded = read_run(run_dir)
    except RecordError as exc:  # edited or planted: never read as code, never reported
        warnings.warn(f"{run_dir}: not reported: {exc}", RefusedRecord, stacklevel=2)
        return None
    except StorageError as exc:  # damaged beyond repair: report the other runs
        warnings.warn(f"{run_dir}: not reported: {exc}", stacklevel=2)
        return None
    if loaded is None:
        return None
    results, skipped, complete = loaded
    if not complete:
        warnings.warn(
            f"{run_dir}: not all shards finished; reporting the finished ones", stacklevel=2
        )
    return Run(
        run_dir=run_dir, identity=identity, results=results, skipped=skipped, complete=complete
    )


def _sweep_run_dirs(root: Path) -> list[Path]:
    """Run folders of the jobs of a sweep directory.

    Each job of a sweep records its run folder in ``<sweep>/.runs/*.json`` (see
    :mod:`attackpsm.cluster`); a sweep without those records is read from each job's
    ``.hydra/config.yaml`` (the same identity gives the same folder; the identity includes
    the data fingerprint, so each distinct dataset's index is built once to find it).
    """
    found = []
    for record in sorted(root.rglob(".runs/*.json")):
        try:
            run_dir = Path(str(load_mapping(record)["run_dir"]))
        except (RecordError, KeyError) as exc:
            warnings.warn(f"{record}: unreadable job record ({exc})", RefusedRecord, stacklevel=2)
            continue
        if (run_dir / "identity.yaml").exists():
            found.append(run_dir.resolve())
    if found:  # the jobs' own records: no dataset index to build
        return found
    run_dir_for = RunDirs()  # the run directory names the data: one index build per dataset
    for cfg_file in sorted(root.rglob(".hydra/config.yaml")):
        try:
            # a job's saved config holds interpolations (paths from the environment):
            # resolved as plain data, then only a package dataset may be built from it
            spec = resolved_spec(load_mapping(cfg_file, interpolations=True), cfg_file)
            check_targets(spec.get("dataset"), cfg_file)
            relative = run_dir_for(OmegaConf.create(spec))
        except RecordError as exc:  # edited or planted: refused, named
            warnings.warn(f"{cfg_file}: {exc}", RefusedRecord, stacklevel=2)
            continue
        except Exception as exc:  # a job config this version cannot read: say so, go on
            warnings.warn(
                f"{cfg_file}: cannot locate its results ({type(exc).__name__}: {exc})",
                stacklevel=2,
            )
            continue
        candidates = (
            [relative]
            if relative.is_absolute()
            else [Path.cwd() / relative] + [p / relative for p in cfg_file.parents]
        )
        hit = next((c for c in candidates if (c / "identity.yaml").exists()), None)
        if hit is None:
            warnings.warn(
                f"{cfg_file}: no results at {relative} (job unfinished or moved?)", stacklevel=2
            )
        else:
            found.append(hit.resolve())
    return found


def discover(path: str | Path) -> list[Path]:
    """Run folders below ``path`` (a results directory, one run, or a sweep directory)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such results or sweep directory: {root}")
    dirs = {p.parent.resolve() for p in root.rglob("identity.yaml")}
    dirs.update(_sweep_run_dirs(root))
    return sorted(dirs)


def _varying(dicts: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({repr(d.get(k)) for d in dicts}) > 1]


def _fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def transfer_column(run: Run) -> str:
    """Which crafted images a transfer evaluation scored (a Table-5 column, e.g. ``stadv``):
    the dataset's ``column``, or the name of its ``manifest`` folder."""
    p = run.dataset_params
    if p.get("manifest"):
        return Path(str(p["manifest"])).name
    for params in (p, run.attack_params):
        for key in ("column", "source_attack", "craft_attack"):
            if params.get(key):
                return str(params[key])
    return run.attack


def label_variants(runs: list[Run]) -> None:
    """Fill ``variant`` / ``dataset_variant`` with the parameters that differ between runs."""
    by_attack: dict[str, list[Run]] = {}
    for r in runs:
        if r.is_transfer:
            r.variant = transfer_column(r)
        else:
            by_attack.setdefault(r.attack, []).append(r)
    for group in by_attack.values():
        keys = _varying([r.attack_params for r in group])
        for r in group:
            r.variant = ", ".join(f"{k}={_fmt_param(r.attack_params.get(k))}" for k in keys)
    by_dataset: dict[str, list[Run]] = {}
    for r in runs:
        by_dataset.setdefault(r.dataset, []).append(r)
    for name, group in by_dataset.items():
        transfer = name == "transfer"
        skip = (*_TRANSFER_COLUMN_KEYS, "source", "source_metric") if transfer else ()
        keys = [k for k in _varying([r.dataset_params for r in group]) if k not in skip]
        for r in group:
            p = r.dataset_params
            parts = [f"{k}={_fmt_param(p.get(k))}" for k in keys]
            if transfer:  # every column of one Table 5 shares its source
                parts.insert(0, f"crafted on {p.get('source_metric')} / {p.get('source')}")
            r.dataset_variant = ", ".join(parts)
    # runs that still collide (different seed or package version): name them by folder
    seen: dict[tuple, list[Run]] = {}
    for r in runs:
        seen.setdefault((r.dataset, r.dataset_variant, r.resolution, r.metric, r.label), []).append(
            r
        )
    for group in seen.values():
        if len(group) > 1:
            for r in group:
                r.variant = ", ".join(x for x in (r.variant, r.run_dir.name) if x)


def load_runs(path: str | Path, progress: bool = False) -> list[Run]:
    """Every run below ``path`` with at least one finished shard, variants labelled.

    ``progress``: a progress bar over the run directories on stderr (reports and the
    leaderboard read every run's per-triplet table).
    """
    from tqdm.auto import tqdm

    dirs = list(discover(path))
    bar = tqdm(dirs, desc="loading runs", unit="run", leave=False, disable=not progress)
    runs = [r for r in (load_run(d) for d in bar) if r is not None]
    label_variants(runs)
    runs.sort(
        key=lambda r: (
            r.dataset,
            r.dataset_variant,
            r.resolution or 0,
            r.metric,
            r.attack,
            r.variant,
        )
    )
    return runs


def runs_overview(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what it is, how many triplets, where it lives."""
    return pd.DataFrame(
        [
            {
                "dataset": r.dataset,
                "dataset_variant": r.dataset_variant,
                "resolution": r.resolution_label,
                "metric": r.metric,
                "attack": r.attack,
                "variant": r.variant,
                "triplets": len(r.results),
                "skipped": r.skipped,
                "complete": r.complete,
                "run_dir": str(r.run_dir),
            }
            for r in runs
        ],
        columns=[
            "dataset",
            "dataset_variant",
            "resolution",
            "metric",
            "attack",
            "variant",
            "triplets",
            "skipped",
            "complete",
            "run_dir",
        ],
    )
