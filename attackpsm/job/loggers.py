"""Experiment loggers: Weights & Biases (offline by default) or none.

W&B is a window on the results, never a dependency of them: every call is guarded, and a
W&B failure (no network, no login, a broken install) becomes a warning. ``mode=online``
falls back to offline when the service cannot be reached; offline runs are synced later
with ``wandb sync <dir>/wandb/offline-run-*``.

What a shard's run shows (docs/wandb.md, "What a run shows"):

* ``progress/*`` -- live history, one record per batch at step = triplets done
  (:class:`attackpsm.job.progress.ShardProgress`): running flip rate (all, ✓, ✗), after
  8-bit rounding, triplets/s, mean iterations or queries, skipped so far, device memory.
* ``dist/*`` -- histograms at the end of the shard
  (:func:`attackpsm.summary.headline.distributions`): RMSE, ℓ∞, the margin
  ``s_adv - s_other``, iterations, queries and, for ``min_eps``, the minimal ε.
* ``examples/agree``, ``examples/disagree`` -- a few flipped triplets (✓ / ✗, Table 2's
  rows) as images: reference, other, prey, adversarial image, amplified perturbation
  (:mod:`attackpsm.job.examples`).
* summary -- the headline numbers, their ✓/✗ split and one value per subset
  (:func:`attackpsm.summary.headline.split_headline`): ``flip_rate/agree``,
  ``flip_rate/cnn``, ``accuracy/cnn``, ...
* ``curves/eps``, ``curves/iterations``, ``curves/queries`` -- robustness curves, tables
  with W&B's line-plot preset (:func:`attackpsm.summary.curves.robustness_curves`).
* config -- the Hydra config and the flat keys every run carries (:data:`RUN_KEYS`):
  ``eps``, ``threat_model``, ``version``, ``complete`` (the run's numbers cover its whole
  configuration) and ``finished`` (its shard finished).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from attackpsm.summary.curves import CURVE, robustness_curves
from attackpsm.summary.headline import distributions, split_headline, unflipped_min_eps

PROGRESS = "progress"  # prefix of the live history keys


def shard_run_id(run_dir: str | Path, shard_index: int, shard_count: int) -> str:
    """A W&B run id fixed by a shard of a run directory (letters and digits, 20 characters)."""
    key = f"{Path(run_dir).absolute()}|{shard_index}|{shard_count}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


class NullLogger:
    """``logger=none``: logs nothing."""

    run = None
    examples = 0  # flipped triplets per ✓/✗ row that a shard keeps as images

    def log_summary(self, values: dict[str, Any]) -> None:
        pass

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        pass

    def log_files(self, paths: list[Path]) -> None:
        pass

    def log_progress(self, values: dict[str, float], step: int) -> None:
        pass

    def log_media(self, values: dict[str, Callable[[], Any]]) -> None:
        pass

    def log_curve(self, name: str, frame: pd.DataFrame, x: str, y: str, title: str) -> None:
        pass

    def set_config(self, values: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    """One W&B run per shard, grouped by run identity.

    Args:
        mode: ``offline`` (default), ``online`` or ``disabled``.
        project: the W&B project.
        entity: the W&B entity (user or team).
        tags: W&B tags.
        dir: where ``wandb/`` run folders are written.
        group: the W&B group (the run identity; filled in by the runner).
        name: the W&B run name (filled in by the runner).
        job_type: the W&B job type (filled in by the runner).
        run_config: the config logged with the run (filled in by the runner).
        id: a stable W&B run id (the runner derives one per shard from its run directory,
            :func:`shard_run_id`): a resumed shard continues its run (``resume="allow"``;
            offline, ``wandb sync`` merges the folders of the same id into one run).
        examples: flipped triplets kept per ✓/✗ row of a shard and logged as images (0: none).
    """

    MODES = ("offline", "online", "disabled")

    def __init__(
        self,
        mode: str = "offline",
        project: str = "attackpsm",
        entity: str | None = None,
        dir: str = ".",
        tags: list[str] | None = None,
        group: str | None = None,
        name: str | None = None,
        job_type: str = "shard",
        run_config: dict[str, Any] | None = None,
        init_timeout: float = 60.0,
        id: str | None = None,
        examples: int = 2,
    ):
        if mode not in self.MODES:
            raise ValueError(f"logger.mode must be one of {list(self.MODES)}, got {mode!r}")
        if int(examples) < 0:
            raise ValueError(f"logger.examples must be >= 0, got {examples!r}")
        self.run = None
        self.examples = int(examples)
        # the step of the end-of-shard record: set once live history was logged, so the
        # tables and histograms land after the last batch and never on an earlier step
        self.end_step: int | None = None
        self._warned: set[str] = set()
        Path(dir).mkdir(parents=True, exist_ok=True)
        kwargs = dict(
            project=project,
            entity=entity,
            dir=str(dir),
            tags=list(tags or []),
            group=group,
            name=name,
            job_type=job_type,
            config=run_config,
            reinit="finish_previous",
            **({"id": id, "resume": "allow"} if id else {}),
        )
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            settings = wandb.Settings(init_timeout=init_timeout, silent=True)
            try:
                self.run = wandb.init(mode=mode, settings=settings, **kwargs)
            except Exception as exc:
                if mode != "online":
                    raise
                warnings.warn(
                    f"W&B online init failed ({exc}); logging offline instead", stacklevel=2
                )
                self.run = wandb.init(mode="offline", settings=settings, **kwargs)
        except Exception as exc:
            warnings.warn(f"W&B disabled for this run: {type(exc).__name__}: {exc}", stacklevel=2)
            self.run = None
        self._guard("define_metric", self._define_metrics)

    def _define_metrics(self) -> None:
        # x axis of the live curves: triplets done; the summary of each curve: its last value
        self.run.define_metric(f"{PROGRESS}/triplets", summary="last")
        self.run.define_metric(f"{PROGRESS}/*", step_metric=f"{PROGRESS}/triplets", summary="last")

    def _guard(self, what: str, fn, *args) -> None:
        if self.run is None:
            return
        try:
            fn(*args)
        except Exception as exc:
            if what not in self._warned:  # once per kind of call: a broken W&B is one warning
                self._warned.add(what)
                warnings.warn(f"W&B {what} failed: {exc}", stacklevel=3)

    def _log(self, values: dict[str, Any]) -> None:
        if self.end_step is None:
            self.run.log(values)
        else:  # one record after the last batch, however many calls fill it
            self.run.log(values, step=self.end_step, commit=False)

    def log_summary(self, values: dict[str, Any]) -> None:
        def _do(v):
            for key, value in v.items():
                self.run.summary[key] = value
            self._log(v)

        self._guard("summary", _do, values)

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        def _do(f):
            import wandb

            clean = f.copy()
            for col in clean.columns:  # W&B tables want plain Python/NumPy scalars
                if str(clean[col].dtype) == "boolean":
                    clean[col] = clean[col].astype(object).where(clean[col].notna(), None)
            self._log({name: wandb.Table(dataframe=clean)})

        self._guard(f"table {name}", _do, frame)

    def log_progress(self, values: dict[str, float], step: int) -> None:
        self._guard("progress", lambda: self.run.log(values, step=step))

    def log_curve(self, name: str, frame: pd.DataFrame, x: str, y: str, title: str) -> None:
        """A table with W&B's line-plot preset (``wandb/line/v0``), one line per ``curve``
        value: the table lands at ``<name>_table``, the chart at ``<name>``."""

        def _do(f):
            import wandb

            table = wandb.Table(dataframe=f)
            self._log({name: wandb.plot.line(table, x, y, stroke=CURVE, title=title)})

        self._guard(f"curve {name}", _do, frame)

    def set_config(self, values: dict[str, Any]) -> None:
        """Set (or change) config keys of the run, e.g. ``complete`` once a shard finishes."""
        self._guard("config", lambda: self.run.config.update(values, allow_val_change=True))

    def log_media(self, values: dict[str, Callable[[], Any]]) -> None:
        """Log media built lazily: ``{key: callable returning a wandb object}``, each guarded."""
        if self.run is None:
            return
        built = {}
        for key, make in values.items():
            try:
                built[key] = make()
            except Exception as exc:
                if key not in self._warned:
                    self._warned.add(key)
                    warnings.warn(f"W&B {key} failed: {exc}", stacklevel=2)
        if built:
            self._guard("media", self._log, built)

    def log_files(self, paths: list[Path]) -> None:
        def _do(ps):
            for p in ps:
                self.run.save(str(p), base_path=str(Path(p).parent), policy="now")

        self._guard("files", _do, paths)

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None


# --- a run's numbers in W&B (computed in attackpsm.summary) ----------------------------------


def log_results(
    logger: NullLogger, table: pd.DataFrame, keys: dict[str, Any] | None = None
) -> None:
    """End of a shard, or an aggregate run: the ✓/✗ and per-subset summary, the histograms
    and, given the run's keys (:func:`run_keys`), its robustness curves (:func:`log_curves`)."""
    if getattr(logger, "run", None) is None:
        return
    try:
        split = split_headline(table)
        dists = distributions(table)
        never = unflipped_min_eps(table)
        curves = robustness_curves(table, keys) if keys is not None else {}
    except Exception as exc:  # a window, never a failure
        warnings.warn(f"W&B summary of the results failed: {exc}", stacklevel=2)
        return
    logger.log_summary(split)

    def histogram(values):
        import wandb

        return lambda: wandb.Histogram(values, num_bins=min(64, max(8, len(values))))

    logger.log_media({f"dist/{k}": histogram(v) for k, v in dists.items()})
    if never is not None:  # triplets min_eps never flipped (ε = inf) are not in the histogram
        logger.log_summary({"min_eps_unflipped": never})
    log_curves(logger, curves)


# --- keys that group runs, robustness curves ------------------------------------------------

# Config keys every run carries, shard and aggregate alike, so that runs group and filter
# the same way; the first four are the run's config groups (W&B shows nested keys dotted).
RUN_KEYS = (
    "dataset.name",
    "metric.name",
    "attack.name",
    "resolution.size",
    "eps",
    "threat_model",
    "version",
    "complete",
)
CURVE_TITLES = {
    "eps": "fraction of ✓ triplets flipped vs ε",
    "iterations": "fraction of ✓ triplets flipped vs iterations",
    "queries": "fraction of ✓ triplets flipped vs queries",
}


def threat_model(attack: dict[str, Any]) -> str:
    """The perturbation set and access of an attack config (:attr:`Threat.label
    <attackpsm.attacks.base.Threat.label>`): ``linf``, ``l2`` (white-box), ``linf-blackbox``,
    ``l2-blackbox`` (metric outputs only), ``flow`` (stAdv), ``l0-blackbox`` (One-pixel),
    ``transfer``, ``certified-l2``, ``none``."""
    from attackpsm.attacks.base import threat_of

    return threat_of(attack).label


def budget(attack: dict[str, Any]) -> float | None:
    """The largest ε an attack config may use ([-1, 1] scale), as its class declares it
    (:attr:`Threat.budget <attackpsm.attacks.base.Threat.budget>`): ``eps``, FGSM's
    ``max_eps``, ``min_eps``'s ``eps_max``; ``None`` for attacks without one (stAdv,
    One-pixel, none)."""
    from attackpsm.attacks.base import threat_of

    return threat_of(attack).eps


def run_keys(identity: dict[str, Any]) -> dict[str, Any]:
    """The flat keys of a run identity (``identity.yaml``) that no config group holds:
    the budget ``eps``, the ``threat_model`` and the package ``version``."""
    attack = identity.get("attack", {})
    return {
        "eps": budget(attack),
        "threat_model": threat_model(attack),
        "version": identity.get("version"),
    }


def flat_keys(identity: dict[str, Any]) -> dict[str, Any]:
    """:data:`RUN_KEYS` of a run identity, ``complete`` aside, as dotted keys."""
    return {
        "dataset.name": identity.get("dataset", {}).get("name"),
        "metric.name": identity.get("metric", {}).get("name"),
        "attack.name": identity.get("attack", {}).get("name"),
        "resolution.size": identity.get("resolution"),
        **run_keys(identity),
    }


def aggregate_config(identity: dict[str, Any]) -> dict[str, Any]:
    """Config of a run written from a run identity (the aggregate of its shards): the same
    config groups and flat keys as its shards' runs (:data:`RUN_KEYS`), ``complete`` set."""
    return {
        "dataset": identity.get("dataset", {}),
        "metric": identity.get("metric", {}),
        "attack": identity.get("attack", {}),
        "resolution": {"size": identity.get("resolution")},
        "seed": identity.get("seed"),
        **run_keys(identity),
        "complete": True,
        "finished": True,
    }


def sweep_group(run_groups: list[str]) -> str:
    """W&B group of the run that sums up a sweep, named by the W&B groups of its runs (their
    run directories): a re-run of the same sweep, or a merge of the same runs, finds it."""
    key = "\n".join(sorted(set(run_groups)))
    return "sweep-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def log_curves(logger: NullLogger, curves: dict[str, pd.DataFrame], prefix: str = "curves") -> None:
    """Log each curve as a table with W&B's line-plot preset: ``<prefix>/<x>``."""
    for x, frame in curves.items():
        logger.log_curve(f"{prefix}/{x}", frame, x, "flip_rate", CURVE_TITLES.get(x, x))
