"""The transfer benchmark (Sec. 4.2, Table 5): craft on a source metric, evaluate on others.

**Craft.** A normal run with ``craft=<dir>`` (source metric and attack as usual) saves, for
every triplet, the reference, both distortions and the adversarial image as lossless 8-bit
PNGs under ``<dir>/images/<triplet_id>/`` and writes ``<dir>/manifest.parquet``: the source
metric, attack and its parameters (also in ``<dir>/source.yaml``), which side was the
prey, the float flip and the flip *re-checked on the saved 8-bit images*
(``flipped_saved``), and the RMSE of the saved image (``rmse_saved``, ``[0, 255]`` scale).

**Evaluate.** ``dataset=transfer`` reads a crafted directory back as a triplet dataset and
``attack=saved`` returns the saved adversarial image of each triplet, so any target
metric is evaluated by the usual engine (``-m metric=...`` sweeps targets). The triplets
are those the *selection* craft (stAdv in the paper) flipped on the source after saving,
with ``rmse_saved <= max_rmse`` (3 in the paper) and, by default, on which the source
metric agreed with humans; every column of Table 5 uses the same selection. A target's
"accurate samples" are the ✓ row of its summary; its flips there are Table 5's cells.

A missing craft is made on first use (a resumable run of its own under
``<store>/runs``, ``store`` defaulting to ``<results_dir>/crafted``), so one experiment
config runs the whole benchmark::

    python -m attackpsm experiment=table5 -m metric=l2,ssim,lpips_vgg \\
        dataset.column=pgd10,pgd20,stadv,stadv_pgd5,stadv_pgd10,stadv_pgd15,stadv_pgd20
    python -m attackpsm.transfer results      # Table 5 from the finished runs
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from attackpsm.attacks.base import Attack, AttackResult
from attackpsm.data.base import TripletDataset, TripletRecord
from attackpsm.data.files import outside_root
from attackpsm.images import from_uint8, to_uint8
from attackpsm.metrics.base import Metric
from attackpsm.stats import PAPER_COLUMNS, perturbation_stats
from attackpsm.storage import load_results, write_atomic
from attackpsm.twoafc import human_agrees, rank_flipped

MANIFEST = "manifest.parquet"
PARTS = "manifest.parts"
IMAGES = "images"
SIDES = ("ref", "p0", "p1", "adv")
# Table 5's column order (crafts not listed here follow in alphabetical order)
TABLE5_COLUMNS = (
    "pgd10",
    "pgd20",
    "stadv",
    "stadv_pgd5",
    "stadv_pgd10",
    "stadv_pgd15",
    "stadv_pgd20",
)


# --- craft -----------------------------------------------------------------------------


def _image_dir(root: Path, triplet_id: str) -> Path:
    """Where a triplet's PNGs live; ids are relative paths (``subset/name``) when safe."""
    parts = Path(triplet_id).parts
    if not parts or Path(triplet_id).is_absolute() or any(p in ("..", ".", "") for p in parts):
        parts = (hashlib.sha1(triplet_id.encode()).hexdigest(),)
    return root / IMAGES / Path(*parts)


def _save_png(array: np.ndarray, path: Path) -> None:
    write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def load_png(path: Path) -> torch.Tensor:
    """A saved PNG as a ``(3, H, W)`` tensor in ``[-1, 1]``."""
    with Image.open(path) as im:
        return from_uint8(np.asarray(im.convert("RGB")))


class CraftWriter:
    """Engine sink of the craft stage: saves PNGs and one manifest part per batch.

    Args:
        out_dir: the craft directory.
        source: what crafted it (the run identity: dataset, metric, attack, resolution, seed).
        reverse: the attack is a reverse attack (success is ``s_adv < s_other``).
    """

    def __init__(self, out_dir: str | Path, source: Mapping[str, Any], reverse: bool = False):
        self.out_dir = Path(out_dir)
        self.source = dict(source)
        self.reverse = bool(reverse)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / PARTS).mkdir(exist_ok=True)
        text = yaml.safe_dump(json.loads(json.dumps(self.source, default=str)), sort_keys=True)
        (self.out_dir / "source.yaml").write_text(text)

    def __call__(
        self,
        metric: Metric,
        batch: Any,
        prey_is_p1: torch.Tensor,
        adv: torch.Tensor,
        rows: pd.DataFrame,
    ) -> None:
        reverse = self.reverse
        keep = np.isfinite(rows["s_adv"].to_numpy(dtype=float))
        if not keep.any():
            return
        images = {
            "ref": to_uint8(batch.ref),
            "p0": to_uint8(batch.p0),
            "p1": to_uint8(batch.p1),
            "adv": to_uint8(adv),
        }
        # the flip as the evaluation stage will see it: every image read back from 8 bits
        saved = {k: v.float() / 127.5 - 1.0 for k, v in images.items()}
        with torch.no_grad():
            prepared = metric.prepare(saved["ref"])
            d0 = metric.score(prepared, saved["p0"])
            d1 = metric.score(prepared, saved["p1"])
            s_adv = metric.score(prepared, saved["adv"])
        prey_saved = torch.where(prey_is_p1[:, None, None, None], saved["p1"], saved["p0"])
        s_other = torch.where(prey_is_p1, d0, d1)
        s_prey = torch.where(prey_is_p1, d1, d0)
        flipped_saved = rank_flipped(s_adv, s_other, reverse) & ~rank_flipped(
            s_prey, s_other, reverse
        )
        stats = perturbation_stats(saved["adv"], prey_saved)

        records = []
        for i in np.flatnonzero(keep):
            tid = rows["triplet_id"].iloc[i]
            folder = _image_dir(self.out_dir, tid)
            folder.mkdir(parents=True, exist_ok=True)
            for side in SIDES:
                _save_png(images[side][i].permute(1, 2, 0).cpu().numpy(), folder / f"{side}.png")
            records.append(
                {
                    "triplet_id": tid,
                    "subset": rows["subset"].iloc[i],
                    "judge": float(rows["judge"].iloc[i]),
                    "prey": int(prey_is_p1[i]),
                    "source_metric": metric.name,
                    "attack": self.source.get("attack", {}).get("name", ""),
                    "params": json.dumps(
                        self.source.get("attack", {}), sort_keys=True, default=str
                    ),
                    "human_agrees": rows["human_agrees"].iloc[i],
                    "flipped": bool(rows["flipped"].iloc[i]),
                    "flipped_uint8": bool(rows["flipped_uint8"].iloc[i]),
                    "rmse": float(rows[PAPER_COLUMNS["rmse"]].iloc[i]),
                    "d0_saved": float(d0[i]),
                    "d1_saved": float(d1[i]),
                    "s_adv_saved": float(s_adv[i]),
                    "flipped_saved": bool(flipped_saved[i]),
                    "rmse_saved": float(stats[PAPER_COLUMNS["rmse"]][i]),
                    "linf_saved": float(stats["linf"][i]),
                    "dir": str(folder.relative_to(self.out_dir)),
                }
            )
        frame = pd.DataFrame(records)
        agrees = human_agrees(
            torch.tensor(frame["d0_saved"].to_numpy()),
            torch.tensor(frame["d1_saved"].to_numpy()),
            torch.tensor(frame["judge"].to_numpy()),
        )
        frame["human_agrees_saved"] = agrees.to_numpy()
        frame["human_agrees"] = frame["human_agrees"].astype("boolean")
        key = hashlib.sha1("\n".join(frame["triplet_id"]).encode()).hexdigest()[:16]
        part = self.out_dir / PARTS / f"part-{key}.parquet"
        write_atomic(part, lambda tmp: frame.to_parquet(tmp, index=False))

    def finalize(self) -> Path:
        """Merge the parts into ``manifest.parquet`` (idempotent; the parts are kept)."""
        return finalize_manifest(self.out_dir)


def finalize_manifest(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    parts = sorted((out_dir / PARTS).glob("part-*.parquet"))
    frame = (
        pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        if parts
        else pd.DataFrame()
    )
    if len(frame):
        frame = frame.drop_duplicates("triplet_id", keep="last").sort_values(
            "triplet_id", kind="stable"
        )
    path = out_dir / MANIFEST
    write_atomic(path, lambda tmp: frame.reset_index(drop=True).to_parquet(tmp, index=False))
    return path


def read_manifest(craft_dir: str | Path) -> pd.DataFrame:
    path = Path(craft_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"no transfer manifest at {path}; craft it first (a run with craft={craft_dir})"
        )
    return pd.read_parquet(path)


def selected_ids(
    manifest: pd.DataFrame, max_rmse: float | None = 3.0, accurate_only: bool = True
) -> set[str]:
    """Triplets kept for transfer: flipped on the source after saving, RMSE filter, accuracy."""
    keep = manifest["flipped_saved"].astype(bool)
    if max_rmse is not None:
        keep &= manifest["rmse_saved"] <= max_rmse
    if accurate_only:
        keep &= manifest["human_agrees_saved"].fillna(False).astype(bool)
    return set(manifest.loc[keep, "triplet_id"])


# --- where crafts live, and crafting on demand ------------------------------------------


def craft_location(
    store: str | Path,
    source: str,
    source_overrides: Sequence[str],
    source_metric: str,
    size: int | None,
    column: str,
    seed: int = 0,
) -> Path:
    """``<store>/<source>-<tag>/<source_metric>/res<size>/<column>``; the tag hashes the
    source dataset's overrides and the seed, so differently built crafts never mix."""
    tag = hashlib.sha1(json.dumps([list(source_overrides), int(seed)]).encode()).hexdigest()[:8]
    res = "native" if size is None else str(size)
    return Path(store) / f"{source}-{tag}" / source_metric / f"res{res}" / column


def craft(
    out_dir: Path,
    source: str,
    source_overrides: Sequence[str],
    source_metric: str,
    size: int | None,
    column: str,
    seed: int,
    device: str,
    batch_size: int,
    store: str | Path,
) -> Path:
    """Run the craft stage (a normal, resumable run with ``craft=out_dir``); returns out_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from attackpsm.app import CONFIG_DIR
    from attackpsm.run import run

    overrides = [
        f"dataset={source}",
        *source_overrides,
        f"metric={source_metric}",
        f"attack={column}",
        f"resolution.size={'null' if size is None else size}",
        f"resolution.batch_size={batch_size}",
        "logger=none",
        f"device={device}",
        f"seed={seed}",
        f"paths.results_dir={Path(store) / 'runs'}",
        f"++craft={out_dir}",
    ]
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config", overrides=overrides)
    else:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(config_name="config", overrides=overrides)
    run(cfg)
    if not (out_dir / MANIFEST).exists():  # the run was already finished before the manifest
        finalize_manifest(out_dir)
    return out_dir


def _spec(node: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    spec = (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    )
    return {k: v for k, v in spec.items() if not k.startswith("_") and k != "name"}


# --- evaluate ----------------------------------------------------------------------------


class TransferTriplets(TripletDataset):
    """``dataset=transfer``: the saved triplets of a craft, filtered for transfer.

    Args:
        size: the crafting resolution (images are read back at the size they were saved).
        manifest: a crafted directory to evaluate; ``None``: the craft of ``column`` below
            (made now if missing).
        select_manifest: the crafted directory whose flips choose the triplets; ``None``:
            ``manifest`` itself when given, else the craft of ``select``.
        source, source_overrides, source_metric, column, select, seed, device, batch_size,
            store: how a missing craft is made (``source`` is a ``dataset`` option,
            ``column``/``select`` are ``attack`` options).
        max_rmse: keep triplets whose saved selection image has RMSE ≤ this (3; ``None``: all).
        accurate_only: keep triplets on which the source metric agrees with humans (True).
    """

    name = "transfer"
    builds_on_demand = True  # a missing craft is made when the dataset is constructed

    def __init__(
        self,
        size: int | None = None,
        manifest: str | None = None,
        select_manifest: str | None = None,
        source: str = "synthetic",
        source_overrides: Sequence[str] = (),
        source_metric: str = "lpips_alex",
        column: str = "stadv",
        select: str = "stadv",
        max_rmse: float | None = 3.0,
        accurate_only: bool = True,
        store: str = "results/crafted",
        seed: int = 0,
        device: str = "auto",
        batch_size: int = 64,
        quantize: bool = True,
    ):
        super().__init__(size, quantize)
        common = dict(
            source=source,
            source_overrides=list(source_overrides),
            source_metric=source_metric,
            size=size,
            seed=seed,
            store=store,
        )
        if manifest:  # evaluate a given craft; it selects its own triplets unless told otherwise
            self.column_dir = Path(manifest)
            self.select_dir = Path(select_manifest) if select_manifest else self.column_dir
            for d in {self.column_dir, self.select_dir}:
                if not (d / MANIFEST).exists():
                    raise FileNotFoundError(f"no transfer manifest at {d / MANIFEST}")
        else:
            self.column_dir = craft_location(column=column, **common)
            self.select_dir = (
                Path(select_manifest)
                if select_manifest
                else craft_location(column=select, **common)
            )
            if not (self.select_dir / MANIFEST).exists():
                if select_manifest:
                    raise FileNotFoundError(f"no transfer manifest at {self.select_dir / MANIFEST}")
                craft(
                    self.select_dir, column=select, device=device, batch_size=batch_size, **common
                )
            if not (self.column_dir / MANIFEST).exists():
                craft(
                    self.column_dir, column=column, device=device, batch_size=batch_size, **common
                )
        chosen = selected_ids(read_manifest(self.select_dir), max_rmse, accurate_only)
        frame = read_manifest(self.column_dir)
        frame = frame[frame["triplet_id"].isin(chosen)]
        self._dirs = dict(zip(frame["triplet_id"], frame["dir"], strict=True))
        for r in frame.itertuples(index=False):
            judge = None if r.judge != r.judge else float(r.judge)  # NaN: no human label
            error = None
            if outside_root(str(r.dir)):  # a manifest row must not point outside its craft
                error = f"path outside the crafted directory {self.column_dir}: {r.dir}"
            self.records.append(TripletRecord(r.triplet_id, r.subset, judge, error=error))

    def load_images(self, record: TripletRecord) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if outside_root(str(self._dirs[record.triplet_id])):
            raise ValueError(f"path outside the crafted directory: {self._dirs[record.triplet_id]}")
        folder = self.column_dir / self._dirs[record.triplet_id]
        return tuple(load_png(folder / f"{side}.png") for side in ("ref", "p0", "p1"))


class SavedAdversarial(Attack):
    """``attack=saved``: the adversarial image saved by a craft, for a target metric.

    Black-box with respect to the target: it never queries the target to make the image.
    A triplet gets its saved image only if the target picks the same prey as the source
    did (always the case on samples where both agree with humans); otherwise the prey is
    returned unchanged and ``transferred`` is False.

    Args:
        craft_dir: the crafted directory; or
        source: the ``dataset=transfer`` node (``${dataset}``), whose ``column`` craft is read.
        size: the crafting resolution (``${resolution.size}``), with ``source``.
    """

    name = "saved"
    white_box = False
    columns = ("transferred",)

    def __init__(
        self,
        craft_dir: str | None = None,
        source: Mapping[str, Any] | None = None,
        size: int | None = None,
    ):
        if craft_dir is None:
            if source is None:
                raise ValueError(
                    "attack=saved needs craft_dir or source (the dataset=transfer node)"
                )
            spec = _spec(source)
            if spec.get("manifest"):
                craft_dir = spec["manifest"]
            else:
                craft_dir = str(
                    craft_location(
                        spec["store"],
                        spec["source"],
                        spec.get("source_overrides", []),
                        spec["source_metric"],
                        size,
                        spec["column"],
                        spec.get("seed", 0),
                    )
                )
        self.craft_dir = str(craft_dir)
        self._entries: dict[str, tuple[int, str]] | None = None
        self._ids: list[str] = []
        self._prey_is_p1 = torch.zeros(0, dtype=torch.bool)

    def _manifest(self) -> dict[str, tuple[int, str]]:
        if self._entries is None:
            frame = read_manifest(self.craft_dir)
            self._entries = {
                t: (int(p), d)
                for t, p, d in zip(frame["triplet_id"], frame["prey"], frame["dir"], strict=True)
                if not outside_root(str(d))  # never read outside the craft (a recorded skip)
            }
        return self._entries

    def on_batch(self, batch: Any, prey_is_p1: torch.Tensor) -> None:
        self._ids = list(batch.triplet_id)
        self._prey_is_p1 = prey_is_p1.detach().cpu()

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        if len(self._ids) != prey.shape[0]:
            raise RuntimeError(
                "attack=saved needs the triplet ids: run it through the engine (on_batch)"
            )
        entries = self._manifest()
        adv = prey.detach().clone()
        transferred = torch.zeros(prey.shape[0], dtype=torch.bool, device=prey.device)
        for i, tid in enumerate(self._ids):
            entry = entries.get(tid)
            if entry is not None and entry[0] == int(self._prey_is_p1[i]):
                image = load_png(Path(self.craft_dir) / entry[1] / "adv.png")
                if image.shape != adv.shape[1:]:
                    raise ValueError(
                        f"saved image of {tid} is {tuple(image.shape)} but the triplet is "
                        f"{tuple(adv.shape[1:])}: evaluate at the crafting resolution"
                    )
                adv[i] = image.to(adv)
                transferred[i] = True
        with torch.no_grad():
            s_adv = metric.score(prepared_ref, adv)
        flipped = rank_flipped(s_adv, s_other, self.reverse) & transferred
        return AttackResult(adv, s_adv, flipped, {"transferred": transferred})


# --- Table 5 -----------------------------------------------------------------------------


def table5(results_dir: str | Path) -> pd.DataFrame:
    """Table 5 from finished evaluation runs under ``<results_dir>/transfer/``.

    One row per target metric: its accurate samples among the transfer set (count and %),
    then, per crafted column, how many of those flipped (count and %).
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for ident in sorted(Path(results_dir, TransferTriplets.name).glob("*/*/*/identity.yaml")):
        loaded = load_results(ident.parent)
        if loaded is None:
            continue
        identity = yaml.safe_load(ident.read_text())
        ds = identity["dataset"]
        column = Path(ds["manifest"]).name if ds.get("manifest") else ds["column"]
        table = loaded[0]
        accurate = table["human_agrees"].fillna(False).astype(bool)
        metric = identity["metric"]["name"]
        selection = ds.get("select_manifest") or ds.get("manifest") or ds.get("select")
        key = (
            metric,
            f"{ds.get('source')}/{ds.get('source_metric')}/res{identity.get('resolution')}/{selection}",
        )
        row = rows.setdefault(key, {"metric": metric, "selection": key[1]})
        row["samples"] = len(table)
        row["accurate"] = int(accurate.sum())
        row[column] = int((table["flipped"].astype(bool) & accurate).sum())
    if not rows:
        return pd.DataFrame(columns=["metric", "selection", "samples", "accurate"])
    frame = pd.DataFrame(list(rows.values()))
    found = [c for c in frame.columns if c not in ("metric", "selection", "samples", "accurate")]
    ordered = [c for c in TABLE5_COLUMNS if c in found] + sorted(
        c for c in found if c not in TABLE5_COLUMNS
    )
    return frame[["metric", "selection", "samples", "accurate", *ordered]]


def table5_markdown(frame: pd.DataFrame) -> str:
    columns = [c for c in frame.columns if c not in ("metric", "selection", "samples", "accurate")]
    head = "| Network | #Accurate Samples | " + " | ".join(columns) + " |"
    lines = [head, "|" + "---|" * (2 + len(columns))]
    for r in frame.itertuples(index=False):
        r = r._asdict()
        acc = r["accurate"]
        cells = [f"{acc}/{100 * acc / r['samples']:.0f}%" if r["samples"] else "0"]
        for c in columns:
            v = r[c]
            cells.append(
                "–" if v != v else f"{int(v)}/{100 * v / acc:.0f}%" if acc else f"{int(v)}"
            )
        lines.append(f"| {r['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m attackpsm.transfer [results_dir]``: print Table 5 and save it."""
    args = list(sys.argv[1:] if argv is None else argv)
    results_dir = Path(args[0] if args else "results")
    frame = table5(results_dir)
    text = table5_markdown(frame)
    out = results_dir / TransferTriplets.name
    if len(frame):
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "table5.csv", index=False)
        (out / "table5.md").write_text(text)
    for selection in frame["selection"].unique() if len(frame) else []:
        print(f"transfer set: {selection}")
    print(text)


if __name__ == "__main__":
    main()
