"""Live history of one shard's W&B run: running counts, one record per batch.

``progress/*`` (docs/wandb.md, "What a run shows"): running flip rate (all, ✓, ✗), after
8-bit rounding, triplets/s, mean iterations or queries, skipped so far, device memory, at
step = triplets done. The shard's example images (:mod:`attackpsm.job.examples`) are kept
from the engine's ``sink`` here too; at the end of the shard :meth:`ShardProgress.finish`
logs them with the run's numbers (:func:`attackpsm.job.loggers.log_results`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from attackpsm.job.examples import Examples
from attackpsm.job.loggers import PROGRESS, NullLogger, log_results
from attackpsm.summary.headline import SPLIT_KEYS
from attackpsm.summary.statistics import flip_counts, label_rows, rate


class ShardProgress:
    """Live history of one shard: one W&B record per batch, step = triplets done.

    Triplets done count attacked and skipped triplets, with those of an earlier attempt of
    the shard (a resumed shard continues its run at the next step, never on one it logged).
    The counters are running totals over the shard (earlier attempts included); triplets/s
    is this attempt's. It also keeps a few flipped triplets (``logger.examples`` per ✓/✗
    row, :class:`attackpsm.job.examples.Examples`) from the engine's ``sink`` for the images.

    Every method is guarded: nothing here can fail or change a run.

    Args:
        logger: the shard's logger (a :class:`attackpsm.job.loggers.NullLogger` makes every
            call free).
        earlier: rows of earlier attempts (results and errors, as the shard store keeps them).
        device: the attack's device; on CUDA the peak memory is logged too.
    """

    def __init__(self, logger: NullLogger, earlier: pd.DataFrame | None, device: torch.device):
        self.logger = logger
        self.active = getattr(logger, "run", None) is not None
        self.device = torch.device(device)
        self.done = self.skipped = 0
        self.flips = {"all": 0, **dict.fromkeys(SPLIT_KEYS.values(), 0), "saved": 0}
        self.counts = {"all": 0, **dict.fromkeys(SPLIT_KEYS.values(), 0)}
        self.sums: dict[str, float] = {}
        self.examples = Examples(getattr(logger, "examples", 0))
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
        counts = flip_counts(rows)
        self.counts["all"] += counts["samples"]
        self.flips["all"] += counts["flipped"]
        self.flips["saved"] += counts["flipped_saved"]
        for label, name in SPLIT_KEYS.items():
            part = flip_counts(label_rows(rows, label))
            self.counts[name] += part["samples"]
            self.flips[name] += part["flipped"]
        for col in ("iterations", "queries"):
            if col in rows:
                values = pd.to_numeric(rows[col], errors="coerce")
                self.sums[col] = self.sums.get(col, 0.0) + float(values.sum())

    def values(self) -> dict[str, float]:
        """The live numbers now (``progress/<name>``)."""
        n = self.counts["all"]
        elapsed = time.perf_counter() - self.started
        out = {
            "triplets": self.done,
            "flip_rate": rate(self.flips["all"], n),
            **{f"flip_rate_{k}": rate(self.flips[k], self.counts[k]) for k in SPLIT_KEYS.values()},
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
            if not self.examples.full:
                self._guarded(self.examples.keep, batch, prey_is_p1, adv, rows)
            if inner is not None:
                inner(metric, batch, prey_is_p1, adv, rows)

        return keep

    def finish(self, table: pd.DataFrame, keys: dict[str, Any] | None = None) -> None:
        """End of the shard: one record after the last batch with the histograms, the
        example images, the robustness curves (given the run's
        :func:`attackpsm.job.loggers.flat_keys`) and the tables the runner logs next; the
        ✓/✗ and subset summary."""
        if self.active and hasattr(self.logger, "end_step"):
            self.logger.end_step = self.done + 1
        log_results(self.logger, table, keys)
        if self.active and any(self.examples.kept.values()):
            self.logger.log_media(self.examples.media())
