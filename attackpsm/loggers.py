"""Experiment loggers: Weights & Biases (offline by default) or none.

W&B is a window on the results, never a dependency of them: every call is guarded, and a
W&B failure (no network, no login, a broken install) becomes a warning. ``mode=online``
falls back to offline when the service cannot be reached; offline runs are synced later
with ``wandb sync <dir>/wandb/offline-run-*``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd


def shard_run_id(run_dir: str | Path, shard_index: int, shard_count: int) -> str:
    """A W&B run id fixed by a shard of a run directory (letters and digits, 20 characters)."""
    key = f"{Path(run_dir).absolute()}|{shard_index}|{shard_count}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


class NullLogger:
    """``logger=none``: logs nothing."""

    run = None

    def log_summary(self, values: dict[str, Any]) -> None:
        pass

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        pass

    def log_files(self, paths: list[Path]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    """One W&B run per shard, grouped by run identity.

    Args:
        mode: ``offline`` (default), ``online`` or ``disabled``.
        project, entity, tags: W&B fields.
        dir: where ``wandb/`` run folders are written.
        group, name, job_type, run_config: filled in by the runner.
        id: a stable W&B run id (the runner derives one per shard from its run directory,
            :func:`shard_run_id`): a resumed shard continues its run (``resume="allow"``;
            offline, ``wandb sync`` merges the folders of the same id into one run).
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
    ):
        if mode not in self.MODES:
            raise ValueError(f"logger.mode must be one of {list(self.MODES)}, got {mode!r}")
        self.run = None
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

    def _guard(self, what: str, fn, *args) -> None:
        if self.run is None:
            return
        try:
            fn(*args)
        except Exception as exc:
            warnings.warn(f"W&B {what} failed: {exc}", stacklevel=3)

    def log_summary(self, values: dict[str, Any]) -> None:
        def _do(v):
            for key, value in v.items():
                self.run.summary[key] = value
            self.run.log(v)

        self._guard("summary", _do, values)

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        import wandb

        def _do(f):
            clean = f.copy()
            for col in clean.columns:  # W&B tables want plain Python/NumPy scalars
                if str(clean[col].dtype) == "boolean":
                    clean[col] = clean[col].astype(object).where(clean[col].notna(), None)
            self.run.log({name: wandb.Table(dataframe=clean)})

        self._guard(f"table {name}", _do, frame)

    def log_files(self, paths: list[Path]) -> None:
        def _do(ps):
            for p in ps:
                self.run.save(str(p), base_path=str(Path(p).parent), policy="now")

        self._guard("files", _do, paths)

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None
