"""Experiment loggers: Weights & Biases (offline by default) or none.

W&B is a window on the results, never a dependency of them: every call is guarded, and a
W&B failure (no network, no login, a broken install) becomes a warning. ``mode=online``
falls back to offline when the service cannot be reached; offline runs are synced later
with ``wandb sync <dir>/wandb/offline-run-*``.

What a shard's run shows (docs/wandb.md, "What a run shows"):

* ``progress/*`` -- live history, one record per batch at step = triplets done
  (:class:`ShardProgress`): running flip rate (all, ✓, ✗), after 8-bit rounding,
  triplets/s, mean iterations or queries, skipped so far, device memory.
* ``dist/*`` -- histograms at the end of the shard (:func:`distributions`): RMSE, ℓ∞, the
  margin ``s_adv - s_other``, iterations, queries and, for ``min_eps``, the minimal ε.
* ``examples/agree``, ``examples/disagree`` -- a few flipped triplets (✓ / ✗, Table 2's
  rows) as images: reference, other, prey, adversarial image, amplified perturbation.
* summary -- the headline numbers, their ✓/✗ split and one value per subset
  (:func:`split_headline`): ``flip_rate/agree``, ``flip_rate/cnn``, ``accuracy/cnn``, ...
* ``curves/eps``, ``curves/iterations``, ``curves/queries`` -- robustness curves, tables
  with W&B's line-plot preset (:func:`robustness_curves`).
* config -- the Hydra config and the flat keys every run carries (:data:`RUN_KEYS`):
  ``eps``, ``threat_model``, ``version``, ``complete`` (the run's numbers cover its whole
  configuration) and ``finished`` (its shard finished).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from attackpsm.images import to_uint8
from attackpsm.protocol.stats import PAPER_COLUMNS
from attackpsm.storage import headline
from attackpsm.summary.statistics import flip_stats

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


# --- numbers of a results table --------------------------------------------------------------


def _agree(table: pd.DataFrame) -> pd.Series:
    """Table 2's rows: "agree" (✓, the metric ranks like the humans), "disagree" (✗), or NA."""
    labels = table["human_agrees"].astype("boolean")
    return labels.map({True: "agree", False: "disagree"}).astype(object)


def _numbers(table: pd.DataFrame) -> dict[str, float]:
    numbers = headline(table, skipped=0)
    numbers.pop("skipped")  # skipped triplets have no row, so no split
    return numbers


def split_headline(table: pd.DataFrame) -> dict[str, float]:
    """The headline numbers per ✓/✗ row (Table 2) and per subset: ``flip_rate/agree``,
    ``flip_rate/disagree``, ``flip_rate/<subset>``, ``accuracy/<subset>``, ...

    Accuracy has no ✓/✗ split (it is 1 and 0 there by definition).
    """
    out: dict[str, float] = {}
    if not len(table):
        return out
    labels = _agree(table)
    for label in ("agree", "disagree"):
        for key, value in _numbers(table[labels == label]).items():
            if key != "accuracy":
                out[f"{key}/{label}"] = value
    for subset, part in table.groupby(table["subset"].astype(str), sort=True):
        for key, value in _numbers(part).items():
            out[f"{key}/{subset}"] = value
    return out


# the columns whose distributions a run shows (dist/<name>); min_eps only for that attack
DISTRIBUTIONS = ("rmse", "linf", "margin", "iterations", "queries", "min_eps")


def distributions(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Finite values per distribution: RMSE ([0, 255]), ℓ∞ ([-1, 1]), the margin
    ``s_adv - s_other`` (distances: positive once the prey is the farther image, i.e. the
    rank flipped, Sec. 3; the opposite sign for the reverse attack of Appendix F),
    iterations, queries, and the minimal ε of ``attack=min_eps`` (flipped triplets only)."""
    cols = {
        "rmse": table.get(PAPER_COLUMNS["rmse"]),
        "linf": table.get("linf"),
        "margin": table["s_adv"] - table["s_other"] if len(table) else None,
        "iterations": table.get("iterations"),
        "queries": table.get("queries"),
        "min_eps": table.get("min_eps"),
    }
    out = {}
    for name, col in cols.items():
        if col is None:
            continue
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            out[name] = values
    return out


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
        curves = robustness_curves(table, keys) if keys is not None else {}
    except Exception as exc:  # a window, never a failure
        warnings.warn(f"W&B summary of the results failed: {exc}", stacklevel=2)
        return
    logger.log_summary(split)

    def histogram(values):
        import wandb

        return lambda: wandb.Histogram(values, num_bins=min(64, max(8, len(values))))

    logger.log_media({f"dist/{k}": histogram(v) for k, v in dists.items()})
    if "min_eps" in table:  # triplets min_eps never flipped (ε = inf) are not in the histogram
        never = int(np.isinf(pd.to_numeric(table["min_eps"], errors="coerce")).sum())
        logger.log_summary({"min_eps_unflipped": never})
    log_curves(logger, curves)


# --- live history of one shard ---------------------------------------------------------------


class ShardProgress:
    """Live history of one shard: one W&B record per batch, step = triplets done.

    Triplets done count attacked and skipped triplets, with those of an earlier attempt of
    the shard (a resumed shard continues its run at the next step, never on one it logged).
    The counters are running totals over the shard (earlier attempts included); triplets/s
    is this attempt's. It also keeps a few flipped triplets (``logger.examples`` per ✓/✗
    row, 8-bit, on the CPU: bounded memory) from the engine's ``sink`` for the images.

    Every method is guarded: nothing here can fail or change a run.

    Args:
        logger: the shard's logger (a :class:`NullLogger` makes every call free).
        earlier: rows of earlier attempts (results and errors, as the shard store keeps them).
        device: the attack's device; on CUDA the peak memory is logged too.
    """

    def __init__(self, logger: NullLogger, earlier: pd.DataFrame | None, device: torch.device):
        self.logger = logger
        self.active = getattr(logger, "run", None) is not None
        self.device = torch.device(device)
        self.done = self.skipped = 0
        self.flips = {"all": 0, "agree": 0, "disagree": 0, "saved": 0}
        self.counts = {"all": 0, "agree": 0, "disagree": 0}
        self.sums: dict[str, float] = {}
        self.kept: dict[str, list[dict[str, Any]]] = {"agree": [], "disagree": []}
        self.started = time.perf_counter()
        self.this_attempt = 0
        if self.active and earlier is not None and len(earlier):
            self._guarded(self._count, earlier, False)

    @classmethod
    def of_store(cls, logger: NullLogger, store: Any, device: torch.device) -> ShardProgress:
        """Progress of the shard kept by ``store`` (a :class:`attackpsm.storage.ShardStore`),
        counting what its earlier attempts checkpointed or finished."""
        earlier = None
        if getattr(logger, "run", None) is not None:
            try:
                earlier = store.checkpointed()
            except Exception as exc:
                warnings.warn(f"W&B progress could not read earlier attempts: {exc}", stacklevel=2)
        return cls(logger, earlier, device)

    def _guarded(self, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            warnings.warn(f"W&B progress failed: {exc}", stacklevel=3)
            self.active = False

    def _count(self, frame: pd.DataFrame, now: bool) -> None:
        is_error = frame["error"].notna() if "error" in frame else pd.Series(False, frame.index)
        rows = frame[~is_error]
        self.skipped += int(is_error.sum())
        self.done += len(frame)
        if now:
            self.this_attempt += len(frame)
        if not len(rows):
            return
        flipped = rows["flipped"].astype(bool)
        labels = _agree(rows)
        self.counts["all"] += len(rows)
        self.flips["all"] += int(flipped.sum())
        self.flips["saved"] += int(rows["flipped_saved"].astype(bool).sum())
        for label in ("agree", "disagree"):
            mask = (labels == label).to_numpy()
            self.counts[label] += int(mask.sum())
            self.flips[label] += int(flipped[mask].sum())
        for col in ("iterations", "queries"):
            if col in rows:
                values = pd.to_numeric(rows[col], errors="coerce")
                self.sums[col] = self.sums.get(col, 0.0) + float(values.sum())

    def values(self) -> dict[str, float]:
        """The live numbers now (``progress/<name>``)."""

        def rate(flips: int, n: int) -> float:
            return flips / n if n else float("nan")

        n = self.counts["all"]
        elapsed = time.perf_counter() - self.started
        out = {
            "triplets": self.done,
            "flip_rate": rate(self.flips["all"], n),
            "flip_rate_agree": rate(self.flips["agree"], self.counts["agree"]),
            "flip_rate_disagree": rate(self.flips["disagree"], self.counts["disagree"]),
            "flip_rate_saved": rate(self.flips["saved"], n),
            "triplets_per_s": self.this_attempt / elapsed if elapsed > 0 else float("nan"),
            "skipped": self.skipped,
            **{f"{k}_mean": v / n if n else float("nan") for k, v in self.sums.items()},
        }
        if self.device.type == "cuda" and torch.cuda.is_available():
            out["gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return {f"{PROGRESS}/{k}": v for k, v in out.items()}

    def update(self, rows: pd.DataFrame, errors: pd.DataFrame) -> None:
        """After a batch is checkpointed: count it and log one history record."""
        if not self.active:
            return

        def _do():
            frame = pd.concat(
                [
                    rows.assign(error=None) if len(rows) else rows,
                    errors.assign(error=errors["reason"]) if len(errors) else None,
                ],
                ignore_index=True,
            )
            self._count(frame, True)
            self.logger.log_progress(self.values(), step=self.done)

        self._guarded(_do)

    def sink(self, inner: Callable[..., None] | None = None) -> Callable[..., None] | None:
        """The engine's ``sink`` that keeps example images, then calls ``inner``."""
        if not self.active or self.logger.examples <= 0:
            return inner

        def keep(metric, batch, prey_is_p1, adv, rows):
            if any(len(v) < self.logger.examples for v in self.kept.values()):
                self._guarded(self._keep, batch, prey_is_p1, adv, rows)
            if inner is not None:
                inner(metric, batch, prey_is_p1, adv, rows)

        return keep

    def _keep(self, batch, prey_is_p1, adv, rows: pd.DataFrame) -> None:
        flipped = rows["flipped"].astype(bool).to_numpy()
        finite = np.isfinite(rows["s_adv"].to_numpy(dtype=float))
        labels = _agree(rows).to_numpy()
        for i in np.flatnonzero(flipped & finite):
            label = labels[i]
            if label not in self.kept or len(self.kept[label]) >= self.logger.examples:
                continue
            p1 = bool(prey_is_p1[i])
            prey = batch.p1[i] if p1 else batch.p0[i]
            other = batch.p0[i] if p1 else batch.p1[i]
            images = torch.stack([batch.ref[i], other, prey, adv[i]]).detach().float().cpu()
            self.kept[label].append(
                {
                    "images": to_uint8(images),  # 8 bit on the CPU: bounded memory
                    "delta": (adv[i] - prey).detach().float().cpu(),
                    "row": rows.iloc[i].to_dict(),
                }
            )

    def finish(self, table: pd.DataFrame, keys: dict[str, Any] | None = None) -> None:
        """End of the shard: one record after the last batch with the histograms, the
        example images, the robustness curves (given the run's :func:`flat_keys`) and the
        tables the runner logs next; the ✓/✗ and subset summary."""
        if self.active and hasattr(self.logger, "end_step"):
            self.logger.end_step = self.done + 1
        log_results(self.logger, table, keys)
        if self.active and any(self.kept.values()):
            self.logger.log_media(
                {
                    f"examples/{label}": (lambda k=kept: [example_image(e) for e in k])
                    for label, kept in self.kept.items()
                    if kept
                }
            )


def example_strip(images: torch.Tensor, delta: torch.Tensor) -> tuple[np.ndarray, float]:
    """One row of panels, ``H x 5W x 3`` uint8: reference, other, prey, adversarial image and
    the perturbation ``adv - prey`` amplified to fill ``[0, 255]`` around mid-grey.

    Returns the strip and the amplification factor.
    """
    peak = float(delta.abs().max())
    gain = 1.0 / peak if peak > 0 else 1.0
    amplified = to_uint8((delta * gain).clamp(-1, 1)[None])  # [-1, 1] -> [0, 255], 0 = grey
    panels = torch.cat([images, amplified])  # (5, 3, H, W)
    strip = panels.permute(2, 0, 3, 1).reshape(panels.shape[2], -1, 3)
    return strip.numpy(), gain


def example_image(example: dict[str, Any]):
    """A kept example as a ``wandb.Image`` with the scores in the caption."""
    import wandb

    strip, gain = example_strip(example["images"], example["delta"])
    r = example["row"]

    def f(v) -> str:
        return f"{float(v):.4g}" if v is not None and math.isfinite(float(v)) else "n/a"

    caption = (
        f"{r['triplet_id']} ({r['subset']}) · ref | other | prey | adv | δ×{gain:.0f} · "
        f"s_other {f(r['s_other'])} · s_prey {f(r['s_prey'])} · s_adv {f(r['s_adv'])} · "
        f"s_adv 8-bit {f(r['s_adv_saved'])} · RMSE {f(r[PAPER_COLUMNS['rmse']])} · ℓ∞ {f(r['linf'])}"
    )
    return wandb.Image(strip, caption=caption)


# --- keys that group runs, robustness curves, the leaderboard --------------------------------

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
CURVE = "curve"  # column naming the line a curve point belongs to (the metric, in a sweep)
# Per-triplet minimal budget, first found wins: a minimum-norm attack's ``eps_star``, the
# bisection of ``attack=min_eps``, FGSM's scan (Alg. 3, ``eps_found``). NaN or inf: no flip.
MINIMAL_EPS = ("eps_star", "min_eps", "eps_found")
MAX_POINTS = 256  # points of one curve; a longer one keeps evenly spaced ones (and both ends)
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


def minimal_eps_column(table: pd.DataFrame) -> str | None:
    """The per-triplet minimal-ε column of a results table (:data:`MINIMAL_EPS`), if any."""
    return next((c for c in MINIMAL_EPS if c in table.columns), None)


def _agree_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The ✓ rows: the metric ranks like the humans (Table 2's "agree" row)."""
    if not len(table):
        return table
    return table[table["human_agrees"].astype("boolean").fillna(False).astype(bool).to_numpy()]


def _grid(values: np.ndarray, start: float, stop: float | None = None) -> np.ndarray:
    xs = np.unique(np.concatenate([[start], values, [] if stop is None else [stop]]))
    if len(xs) > MAX_POINTS:
        xs = xs[np.unique(np.linspace(0, len(xs) - 1, MAX_POINTS).round().astype(int))]
    return xs


def _curve(label: dict[str, Any], x: str, xs: np.ndarray, flips: np.ndarray, n: int, source: str):
    return pd.DataFrame(
        {
            **{k: [v] * len(xs) for k, v in label.items()},
            x: xs.astype(float),
            "flip_rate": flips / n if n else np.full(len(xs), np.nan),
            "flipped": flips.astype(int),
            "samples": n,
            "source": source,
        }
    )


def robustness_curves(table: pd.DataFrame, keys: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The fraction of ✓ triplets flipped against the budget and the attack's effort.

    * ``eps``: from a per-triplet minimal ε (:func:`minimal_eps_column`), the fraction with
      a minimal ε at most ε, at every distinct minimal ε (0 and the attack's largest ε
      added); otherwise one point, the flip rate at the run's ε (``keys["eps"]``).
    * ``iterations`` / ``queries`` (attacks without a minimal ε): the fraction flipped
      within ``k`` iterations (PGD's check index of the flip, Alg. 1) or metric queries.

    Args:
        table: a results table (one row per attacked triplet).
        keys: the run's keys: ``metric.name``, ``attack.name``, ``eps`` (:data:`RUN_KEYS`).
            The ``curve`` column names the line a point belongs to: ``metric · attack`` for
            ε, ``metric · attack · ε=…`` for iterations and queries (runs of one metric at
            several ε draw one line against ε, and one line each against the effort).

    Returns:
        ``{x: frame}`` with columns ``curve``, ``metric``, ``attack``, ``<x>``, ``flip_rate``,
        ``flipped``, ``samples`` (the ✓ triplets) and ``source`` (the column behind ``x``).
    """
    rows = _agree_rows(table)
    n = len(rows)
    eps = keys.get("eps")
    name = f"{keys.get('metric.name')} · {keys.get('attack.name')}"
    label = {CURVE: name, "metric": keys.get("metric.name"), "attack": keys.get("attack.name")}
    flipped = rows["flipped"].astype(bool).to_numpy() if n else np.zeros(0, bool)
    out: dict[str, pd.DataFrame] = {}
    col = minimal_eps_column(table)
    if col is not None:
        found = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        reached = np.isfinite(found)
        xs = _grid(found[reached], 0.0, eps)
        flips = np.array([(reached & (found <= x)).sum() for x in xs])
        out["eps"] = _curve(label, "eps", xs, flips, n, col)
        return out
    if eps is not None:
        out["eps"] = _curve(label, "eps", np.array([eps]), np.array([flipped.sum()]), n, "flipped")
    if eps is not None:
        label = {**label, CURVE: f"{name} · ε={eps:g}"}
    for x in ("iterations", "queries"):
        if x not in rows or not n:
            continue
        effort = pd.to_numeric(rows[x], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(effort).any() or np.nanmax(effort) <= 0:
            continue  # no effort counted: not an iterative or black-box attack
        xs = _grid(effort[flipped & np.isfinite(effort)], 0.0, float(np.nanmax(effort)))
        flips = np.array([(flipped & (effort <= k)).sum() for k in xs])
        out[x] = _curve(label, x, xs, flips, n, x)
    return out


def log_curves(logger: NullLogger, curves: dict[str, pd.DataFrame], prefix: str = "curves") -> None:
    """Log each curve as a table with W&B's line-plot preset: ``<prefix>/<x>``."""
    for x, frame in curves.items():
        logger.log_curve(f"{prefix}/{x}", frame, x, "flip_rate", CURVE_TITLES.get(x, x))


def leaderboard_row(table: pd.DataFrame, keys: dict[str, Any]) -> dict[str, Any]:
    """One row of the leaderboard: a run's ✓ triplets (metric × attack × ε).

    The flip rate with its 95% Wilson interval, the flip rate after saving as 8-bit images,
    the mean RMSE of the flips between the 8-bit images (the paper's RMSE, [0, 255]), the
    median minimal ε where the attack measures it (``inf``: most never flipped) and the
    median certified ℓ2 radius of ``attack=certify`` (column ``radius``).
    """
    rows = _agree_rows(table)
    stats = flip_stats(rows) if len(rows) else {}
    n = len(rows)
    out = {
        "dataset": keys.get("dataset.name"),
        "resolution": keys.get("resolution.size"),
        "metric": keys.get("metric.name"),
        "attack": keys.get("attack.name"),
        "threat_model": keys.get("threat_model"),
        "eps": keys.get("eps"),
        "samples": n,
        "flipped": int(stats.get("flipped", 0)),
        "flip_rate": stats["flipped"] / n if n else float("nan"),
        "flip_rate_ci_low": stats["ci_low_pct"] / 100 if n else float("nan"),
        "flip_rate_ci_high": stats["ci_high_pct"] / 100 if n else float("nan"),
        "flip_rate_saved": stats["flipped_saved"] / n if n else float("nan"),
        "rmse_flipped_mean": float(stats["rmse_mean"]) if n else float("nan"),
    }
    col = minimal_eps_column(table)
    if col is not None:
        found = pd.to_numeric(rows[col], errors="coerce").fillna(np.inf).to_numpy(dtype=float)
        out["median_min_eps"] = float(np.median(found)) if n else float("nan")
    if "radius" in table:
        radius = pd.to_numeric(rows["radius"], errors="coerce")
        out["certified_radius_median"] = float(radius.median()) if n else float("nan")
    return out


def leaderboard(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Leaderboard rows ranked per dataset × resolution × attack × ε: ``rank`` 1 is the
    metric with the lowest flip rate (the most robust)."""
    frame = pd.DataFrame(rows)
    if not len(frame):
        return frame
    by = ["dataset", "resolution", "attack", "eps"]
    keyed = frame[by].map(str)  # None and NaN are keys too
    frame.insert(0, "rank", frame.groupby([keyed[c] for c in by])["flip_rate"].rank(method="min"))
    frame["rank"] = frame["rank"].astype("Int64")
    order = {f"_{c}": keyed[c] for c in ("dataset", "resolution", "attack")}
    return (
        frame.assign(**order)
        .sort_values([*order, "eps", "rank", "metric"], na_position="last")
        .drop(columns=list(order))
        .reset_index(drop=True)
    )
