"""Craft stage of the transfer benchmark (Sec. 4.2, Table 5): write the transfer set.

``python -m attackpsm craft [COLUMN ...] [OVERRIDE ...]`` composes the config as
``python -m attackpsm`` does (with ``dataset=transfer``: the ``dataset.*`` keys say which
source dataset, source metric, store and selection), then crafts the *selection* column
(``dataset.select``, stAdv in the paper) and every requested column, each a normal,
resumable run on the source with ``craft=<dir>`` (its results under ``<store>/runs``).
A craft already written is left as it is. The columns are the positional arguments, else a
``dataset.column`` sweep among the overrides, else the experiment's sweep of
``dataset.column``, else ``dataset.column``; a ``metric`` sweep (the targets) is ignored,
so the evaluation's command line crafts what it needs::

    python -m attackpsm craft experiment=table5 dataset.source=bapps      # 1. craft
    python -m attackpsm -m experiment=table5 dataset.source=bapps         # 2. evaluate
    python -m attackpsm transfer results                                  # 3. Table 5

Crafting runs in this process, one column after another; evaluation jobs only read the
crafts (:class:`~attackpsm.data.transfer.TransferTriplets`), so a parallel sweep never
crafts the same images twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from attackpsm.commands.app import CONFIG_DIR
from attackpsm.data.transfer import MANIFEST, craft_location, read_manifest, selected_ids
from attackpsm.job.run import run
from attackpsm.storage.craft import finalize_manifest

# a sweep of the target metrics does not change what is crafted
TARGET_SWEEPS = ("metric",)


def compose_config(overrides: Sequence[str], hydra_node: bool = False) -> DictConfig:
    """The app's config for ``overrides`` (with ``hydra_node``: also its ``hydra`` node)."""
    if GlobalHydra.instance().is_initialized():
        return compose(
            config_name="config", overrides=list(overrides), return_hydra_config=hydra_node
        )
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(
            config_name="config", overrides=list(overrides), return_hydra_config=hydra_node
        )


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """``(columns, overrides, swept columns)`` of a command line.

    Arguments with ``=`` are Hydra overrides, the others columns. A ``dataset.column``
    sweep gives swept columns; a ``metric`` sweep is dropped; any other sweep is an error
    (one craft setting per command).
    """
    columns = [a for a in argv if "=" not in a]
    plain = [a for a in argv if "=" in a]
    overrides, swept = [], []
    for o in OverridesParser.create().parse_overrides(plain):
        if not o.is_sweep_override():
            overrides.append(o.input_line)
        elif o.key_or_group == "dataset.column":
            swept.extend(o.sweep_string_iterator())
        elif o.key_or_group not in TARGET_SWEEPS:
            raise ValueError(
                f"the craft command crafts one setting: sweep {o.input_line!r} is not allowed "
                f"(sweep only dataset.column or the columns given as arguments; "
                f"{', '.join(TARGET_SWEEPS)} sweeps are ignored)"
            )
    return columns, overrides, swept


def _attack_options() -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "attack").glob("*.yaml"))


def plan(argv: Sequence[str]) -> tuple[DictConfig, list[tuple[str, Path]]]:
    """The composed config and the ``(column, directory)`` crafts it asks for, selection first.

    Raises:
        ValueError: a bad column, a sweep other than the columns, or ``dataset.manifest`` set.
    """
    columns, overrides, swept = split_arguments(argv)
    if any(o.split("=", 1)[0].lstrip("+~") == "dataset" for o in overrides):
        raise ValueError(
            "the craft command reads the dataset=transfer options: name the source dataset "
            "with dataset.source=<dataset> instead of dataset=<dataset>"
        )
    cfg = compose_config(["dataset=transfer", *overrides], hydra_node=True)
    ds = cfg.dataset
    if ds.get("manifest"):
        raise ValueError(
            f"dataset.manifest={ds.manifest} names a crafted directory: nothing to craft "
            "(evaluate it with python -m attackpsm dataset=transfer attack=saved ...)"
        )
    given = any(o.split("=", 1)[0] == "dataset.column" for o in overrides)
    if not columns:
        columns = swept
    if not columns and not given:
        sweep = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
        columns = [c.strip() for c in str(sweep.get("dataset.column", "")).split(",") if c.strip()]
    if not columns:
        columns = [str(ds.column)]
    if not ds.get("select_manifest"):
        columns = [str(ds.select), *columns]
    options = _attack_options()
    bad = [c for c in columns if c not in options]
    if bad:
        raise ValueError(f"unknown column(s) {bad}: a column is an attack option, one of {options}")
    where = dict(
        store=ds.store,
        source=ds.source,
        source_overrides=list(ds.source_overrides),
        source_metric=ds.source_metric,
        size=cfg.resolution.size,
        seed=ds.seed,
    )
    crafts = {c: craft_location(column=c, **where) for c in dict.fromkeys(columns)}
    return cfg, list(crafts.items())


def craft_config(cfg: DictConfig, column: str, out_dir: Path) -> DictConfig:
    """The config of the run that crafts ``column`` into ``out_dir`` (a normal run on the source)."""
    ds, size = cfg.dataset, cfg.resolution.size
    return compose_config(
        [
            f"dataset={ds.source}",
            *ds.source_overrides,
            f"metric={ds.source_metric}",
            f"attack={column}",
            f"resolution.size={'null' if size is None else size}",
            f"resolution.batch_size={cfg.resolution.batch_size}",
            "logger=none",
            f"device={cfg.device}",
            f"seed={ds.seed}",
            f"num_workers={cfg.num_workers}",
            f"progress={cfg.progress}",
            f"paths.results_dir={Path(ds.store) / 'runs'}",
            f"++craft={out_dir}",
        ]
    )


def craft(argv: Sequence[str]) -> list[Path]:
    """Craft what ``argv`` asks for (see the module docstring); returns the crafted directories.

    Every craft run's config is composed before the first one starts, so a bad source
    option fails before any work.
    """
    cfg, crafts = plan(argv)
    todo = [
        (column, out_dir, craft_config(cfg, column, out_dir))
        for column, out_dir in crafts
        if not (out_dir / MANIFEST).exists()
    ]
    for column, out_dir in crafts:
        if not any(c == column for c, _, _ in todo):
            print(f"{column}: already crafted at {out_dir.absolute()}")
    for k, (column, out_dir, job) in enumerate(todo, 1):
        print(
            f"[{k}/{len(todo)}] {column}: crafting on {cfg.dataset.source_metric} into "
            f"{out_dir.absolute()}"
        )
        run(job)
        if not (out_dir / MANIFEST).exists():  # the run had finished before its manifest
            finalize_manifest(out_dir)
    ds = cfg.dataset
    if not ds.get("select_manifest"):
        chosen = selected_ids(read_manifest(crafts[0][1]), ds.max_rmse, ds.accurate_only)
        print(f"transfer set ({crafts[0][0]} selection): {len(chosen)} triplets")
    return [out_dir for _, out_dir in crafts]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    craft(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
