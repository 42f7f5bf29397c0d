"""Per-triplet results tables, resumable shard storage, and the Table-2 summary.

Layout of a results directory (keyed by the run's identity, not by a timestamp)::

    <results_dir>/<dataset>/<metric>/<attack>/res<size>-<hash>/
        identity.yaml                       what the hash covers
        shard-00000-of-00002.parts/         checkpoints of an unfinished shard (one per batch)
        shard-00000-of-00002.parquet        a finished shard's per-triplet rows
        shard-00000-of-00002.errors.parquet triplets skipped (id, reason)
        results.parquet, errors.parquet     all shards merged (once every shard is done)
        summary.csv, summary.md             the paper's Table-2 layout

A finished shard is never recomputed; an unfinished one resumes after its last
checkpointed batch. Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attackpsm.stats import PAPER_COLUMNS, PAPER_DEFINITIONS, STAT_COLUMNS, THRESHOLDS, pct_column
from attackpsm.twoafc import NO_CHOICE, SPLIT_ORDER, split_labels

# The per-triplet columns every attack writes (attacks may add their own after these).
BASE_COLUMNS = [
    "triplet_id",
    "subset",
    "judge",
    "d0",
    "d1",
    "human_agrees",
    "prey",
    "s_other",
    "s_prey",
    "s_adv",
    "flipped",
    "s_adv_uint8",
    "flipped_uint8",
    "iterations",
    *STAT_COLUMNS,
]
ERROR_COLUMNS = ["triplet_id", "subset", "reason"]


def identity_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class ShardStore:
    """Checkpointed storage of one shard of one run (see the module docstring)."""

    def __init__(self, run_dir: Path, index: int, count: int):
        self.run_dir = Path(run_dir)
        self.index, self.count = index, count
        stem = f"shard-{index:05d}-of-{count:05d}"
        self.final = self.run_dir / f"{stem}.parquet"
        self.errors_final = self.run_dir / f"{stem}.errors.parquet"
        self.parts = self.run_dir / f"{stem}.parts"

    @property
    def finished(self) -> bool:
        return self.final.exists()

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else []

    def done_ids(self) -> set[str]:
        """Ids already checkpointed (results and recorded errors) by an earlier attempt."""
        done: set[str] = set()
        for f in self._part_files():
            done.update(pd.read_parquet(f, columns=["triplet_id"])["triplet_id"])
        return done

    def checkpoint(self, rows: pd.DataFrame, errors: pd.DataFrame) -> None:
        """Persist one batch: results rows and error rows, in one atomic part file."""
        self.parts.mkdir(parents=True, exist_ok=True)
        seq = len(self._part_files())
        frame = (
            pd.concat(
                [
                    rows.assign(error=None),
                    errors.assign(error=errors["reason"]).drop(columns="reason"),
                ],
                ignore_index=True,
            )
            if len(errors)
            else rows.assign(error=None)
        )
        _atomic_parquet(frame, self.parts / f"part-{seq:07d}.parquet")

    def finalize(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Merge the parts into the shard's final files and drop the parts."""
        frames = [pd.read_parquet(f) for f in self._part_files()]
        frame = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=[*BASE_COLUMNS, "error"])
        )
        frame = frame.drop_duplicates("triplet_id", keep="first")
        is_err = frame["error"].notna()
        errors = frame.loc[is_err, ["triplet_id", "subset", "error"]].rename(
            columns={"error": "reason"}
        )
        # all-empty columns stay (e.g. FGSM's eps_found when nothing flipped, judge without labels)
        results = frame.loc[~is_err].drop(columns="error")
        results = results.sort_values("triplet_id", kind="stable").reset_index(drop=True)
        _atomic_parquet(errors.reset_index(drop=True), self.errors_final)
        _atomic_parquet(results, self.final)
        for f in self._part_files():
            f.unlink()
        if self.parts.exists():
            self.parts.rmdir()
        return results, errors

    def load(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        errors = (
            pd.read_parquet(self.errors_final)
            if self.errors_final.exists()
            else pd.DataFrame(columns=ERROR_COLUMNS)
        )
        return pd.read_parquet(self.final), errors


def merge_shards(run_dir: Path, count: int) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Merge all ``count`` finished shards of a run; ``None`` while any is unfinished."""
    stores = [ShardStore(run_dir, i, count) for i in range(count)]
    if not all(s.finished for s in stores):
        return None
    loaded = [s.load() for s in stores]
    results = pd.concat([r for r, _ in loaded], ignore_index=True).sort_values(
        "triplet_id", kind="stable"
    )
    errors = pd.concat([e for _, e in loaded], ignore_index=True)
    results = results.reset_index(drop=True)
    _atomic_parquet(results, Path(run_dir) / "results.parquet")
    _atomic_parquet(errors.reset_index(drop=True), Path(run_dir) / "errors.parquet")
    return results, errors


# --- Table 2 ------------------------------------------------------------------------------

SUMMARY_COLUMNS = [
    "metric",
    "attack",
    "agrees",
    "samples",
    "flipped",
    "flipped_pct",
    "flipped_uint8",
    "rmse_mean",
    "rmse_std",
    "psnr_mean",
    "psnr_std",
    *[f"pct_px_gt_{t:g}" for t in THRESHOLDS],
    "mean_eps",
    "rmse_float_mean",
    "rmse_float_std",
    "psnr_float_mean",
    "psnr_float_std",
    *[pct_column(t, "uint8") for t in THRESHOLDS],
    "skipped",
]


def summarize(results: pd.DataFrame, metric: str, attack: str, skipped: int = 0) -> pd.DataFrame:
    """The paper's Table-2 layout: rows ✓/✗ (metric agrees with humans), per-flip stats.

    Perturbation statistics are over the *flipped* samples, as in the paper. ``rmse_*``,
    ``psnr_*`` and ``pct_px_gt_<t>`` follow the paper's definitions
    (:data:`attackpsm.stats.PAPER_COLUMNS`: RMSE/PSNR between the 8-bit images, % pixels on
    the float δ); ``rmse_float_*``, ``psnr_float_*`` and ``pct_px_gt_<t>_uint8`` are the
    other way round. ``mean_eps`` is the mean ε at the first flip for attacks that search
    ε (FGSM; column ``eps_found``), empty otherwise.
    """
    rows = []
    labels = split_labels(results["human_agrees"]) if len(results) else pd.Series(dtype=str)
    for label in SPLIT_ORDER:
        part = results[labels == label]
        if label == NO_CHOICE and part.empty:
            continue
        flipped = part[part["flipped"].astype(bool)]
        # PSNR of an unchanged image is infinite: left out of the means
        psnr = flipped[PAPER_COLUMNS["psnr"]].replace([np.inf, -np.inf], np.nan)
        psnr_float = flipped["psnr_float"].replace([np.inf, -np.inf], np.nan)
        row = {
            "metric": metric,
            "attack": attack,
            "agrees": label,
            "samples": len(part),
            "flipped": len(flipped),
            "flipped_pct": 100.0 * len(flipped) / len(part) if len(part) else float("nan"),
            "flipped_uint8": int(part["flipped_uint8"].astype(bool).sum()) if len(part) else 0,
            "rmse_mean": flipped[PAPER_COLUMNS["rmse"]].mean(),
            "rmse_std": flipped[PAPER_COLUMNS["rmse"]].std(),
            "psnr_mean": psnr.mean(),
            "psnr_std": psnr.std(),
            "mean_eps": flipped["eps_found"].mean() if "eps_found" in flipped else float("nan"),
            "rmse_float_mean": flipped["rmse_float"].mean(),
            "rmse_float_std": flipped["rmse_float"].std(),
            "psnr_float_mean": psnr_float.mean(),
            "psnr_float_std": psnr_float.std(),
            "skipped": skipped,
        }
        for t in THRESHOLDS:
            row[f"pct_px_gt_{t:g}"] = flipped[PAPER_COLUMNS[f"pct_px_gt_{t:g}"]].mean()
            row[pct_column(t, "uint8")] = flipped[pct_column(t, "uint8")].mean()
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _fmt(v: Any, digits: int = 1) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def summary_markdown(summary: pd.DataFrame) -> str:
    """Render :func:`summarize` output as a markdown table in the paper's Table-2 style."""
    head = (
        "| Metric | Attack | Same rank by human & metric | Samples | #Flipped | Flipped (uint8) "
        "| RMSE μ (8-bit) | RMSE σ (8-bit) | PSNR μ (8-bit) | PSNR σ (8-bit) "
        "| %px ε>0.001 (float δ) | %px ε>0.01 (float δ) | %px ε>0.03 (float δ) | mean ε |"
    )
    lines = [head, "|" + "---|" * 14]
    px = [f"pct_px_gt_{t:g}" for t in THRESHOLDS]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r.metric} | {r.attack} | {r.agrees} | {r.samples} | {r.flipped}/{_fmt(r.flipped_pct, 0)}% "
            f"| {r.flipped_uint8} | {_fmt(r.rmse_mean)} | {_fmt(r.rmse_std)} | {_fmt(r.psnr_mean, 2)} "
            f"| {_fmt(r.psnr_std, 2)} | "
            + " | ".join(_fmt(r[c]) for c in px)
            + f" | {_fmt(r.mean_eps, 4)} |"
        )
    skipped = int(summary["skipped"].max()) if len(summary) else 0
    lines.append("")
    lines.append(f"Perturbation sizes as in the paper: {PAPER_DEFINITIONS}.")
    lines.append(f"Skipped triplets (unreadable or invalid, see errors.parquet): {skipped}")
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, summary: pd.DataFrame) -> str:
    text = summary_markdown(summary)
    _atomic_text(summary.to_csv(index=False), Path(run_dir) / "summary.csv")
    _atomic_text(text, Path(run_dir) / "summary.md")
    return text
