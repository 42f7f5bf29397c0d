"""Example grids: reference, other, prey, adversarial image and amplified perturbation.

The per-triplet tables store no pixels, so examples are *regenerated*: the run's
``identity.yaml`` names the dataset, metric, attack and all their parameters, so
:func:`regenerate` rebuilds them, loads the chosen triplets and passes them through the
same attack step as the run (:func:`attackpsm.engine.attack_batch`), keeping the images it
produces. This keeps results folders small (no image dumps for 12,227 triplets per run)
and lets any triplet be shown later.

Deterministic attacks (FGSM, PGD, stAdv) reproduce the stored scores up to float
rounding; a randomised attack (One-pixel) gives a fresh draw with the same parameters, so
the grid prints the scores of the images it shows, and :attr:`Example.stored_s_adv`
keeps the table's value for comparison.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from attackpsm.images import to_uint8
from attackpsm.protocol.stats import PAPER_COLUMNS
from attackpsm.report import paper
from attackpsm.report.load import Run, load_run
from attackpsm.storage import records
from attackpsm.storage.records import RUN_MODULES
from attackpsm.summary.statistics import agree_labels


@dataclass
class Example:
    """One regenerated adversarial example (images ``(3, H, W)`` in ``[-1, 1]``)."""

    triplet_id: str
    agrees: str
    ref: torch.Tensor
    other: torch.Tensor
    prey: torch.Tensor
    adv: torch.Tensor
    s_other: float
    s_prey: float
    s_adv: float
    flipped: bool
    rmse: float
    stored_s_adv: float
    stored_flipped: bool


class _Recorder:
    """Stands in for an attack: delegates everything and keeps each batch's prey and result."""

    def __init__(self, attack: Any):
        self._attack = attack
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attack, name)

    def run(self, metric, prepared_ref, prey, s_other, **triplets):
        # ``triplets``: the ids the engine passes to attacks that need them (needs_triplets)
        result = self._attack.run(metric, prepared_ref, prey, s_other, **triplets)
        self.calls.append((prey.detach().cpu(), result.adv.detach().cpu()))
        return result


def choose_examples(results: pd.DataFrame, n: int = 4) -> list[str]:
    """Triplet ids worth showing: flipped ones, half ✓ and half ✗ where both exist, spread
    over the range of RMSE (smallest to largest perturbation); unflipped ones if none flipped."""
    if results.empty or n <= 0:
        return []
    frame = results.assign(_label=agree_labels(results))
    flipped = frame[frame["flipped"].astype(bool)]
    pool = flipped if len(flipped) else frame
    groups = [
        pool[pool["_label"] == label]
        .sort_values([PAPER_COLUMNS["rmse"], "triplet_id"])["triplet_id"]
        .tolist()
        for label in ("✓", "✗", "n/a")
    ]
    groups = [g for g in groups if g]
    quotas = [0] * len(groups)
    while sum(quotas) < min(n, len(pool)):  # deal the n slots round-robin over the groups
        for i, g in enumerate(groups):
            if quotas[i] < len(g) and sum(quotas) < n:
                quotas[i] += 1
    ids: list[str] = []
    for q, g in zip(quotas, groups, strict=True):
        if q:
            ids.extend(g[int(k)] for k in np.linspace(0, len(g) - 1, q).round())
    return ids


# ``identity.yaml`` is a file on disk: what it names is instantiated only when it is one of
# the package's own datasets, metrics or attacks (never, say, ``os.system``), checked on the
# value that is instantiated (:mod:`attackpsm.storage.records`)
ALLOWED_MODULES = RUN_MODULES


def check_targets(node: Any, source: str) -> None:
    """Refuse any ``_target_`` in ``node`` that is not one of the package's datasets, metrics
    or attacks (:func:`attackpsm.storage.records.check_targets`).

    Raises:
        ValueError: naming the target, the file it came from and what is allowed.
    """
    records.check_targets(node, source)


def regenerate(
    run: Run | str | Path,
    triplet_ids: list[str] | None = None,
    n: int = 4,
    device: str = "cpu",
    dataset_overrides: dict[str, Any] | None = None,
) -> list[Example]:
    """Re-run a run's attack on a few of its triplets and return the images.

    Args:
        run: a loaded :class:`~attackpsm.report.load.Run` or its folder.
        triplet_ids: which triplets; ``None`` picks ``n`` with :func:`choose_examples`.
        device: ``cpu``, ``cuda`` or ``auto``.
        dataset_overrides: dataset parameters to replace, e.g. ``{"root": "/data/bapps"}``
            when the data lives elsewhere on this machine.

    Raises:
        FileNotFoundError / ValueError: the dataset, a weight file or a triplet is missing.
    """
    from attackpsm.engine import attack_batch

    run = run if isinstance(run, Run) else load_run(run)
    if run is None:
        raise ValueError("the run has no finished results to take examples from")
    ids = list(triplet_ids) if triplet_ids is not None else choose_examples(run.results, n)
    if not ids:
        return []
    dataset, metric, attack, dev = _build_from_identity(run, dataset_overrides, device)
    batch = _load_triplets(dataset, ids).to(dev)
    rows, _ = attack_batch(metric, attack, batch)
    if not attack.calls:
        raise RuntimeError("the attack step produced no images")
    prey = torch.cat([p for p, _ in attack.calls])
    adv = torch.cat([a for _, a in attack.calls])
    if len(prey) != len(batch):
        raise ValueError("some triplets have non-finite clean scores; choose others")
    examples = _examples(run, rows, batch, prey, adv)
    order = {t: k for k, t in enumerate(ids)}
    return sorted(examples, key=lambda e: order[e.triplet_id])


def _build_from_identity(
    run: Run, dataset_overrides: dict[str, Any] | None, device: str
) -> tuple[Any, Any, _Recorder, torch.device]:
    """The run's dataset, metric (on the device) and attack (recording its images), built
    from its ``identity.yaml`` after every part is resolved and its targets checked, with
    the run's seed."""
    from attackpsm.job.run import resolve_device, seed_everything

    identity = run.identity
    source = str(Path(run.run_dir) / "identity.yaml")
    specs = {}
    for part in ("dataset", "metric", "attack"):  # resolved and checked before anything is built
        node = identity[part]
        if part == "dataset":
            node = {**(OmegaConf.to_container(node) if OmegaConf.is_config(node) else node)}
            node.update(dataset_overrides or {})
        specs[part] = records.resolved_spec(node, source)
        records.check_targets(specs[part], source)
    seed_everything(int(identity.get("seed", 0)))
    dev = resolve_device(device)
    dataset = records.build_from_record(specs["dataset"], source, size=identity.get("resolution"))
    metric = records.build_from_record(specs["metric"], source).to(dev)
    attack = _Recorder(records.build_from_record(specs["attack"], source))
    return dataset, metric, attack, dev


def _load_triplets(dataset: Any, ids: list[str]) -> Any:
    """The batch of the triplets ``ids`` of ``dataset`` (a view: the dataset is unchanged)."""
    from attackpsm.data.base import collate

    wanted = set(ids)
    view = copy.copy(dataset)
    view.records = [r for r in dataset.records if r.triplet_id in wanted]
    missing = wanted - {r.triplet_id for r in view.records}
    if missing:
        raise ValueError(f"triplets not in the dataset as configured: {sorted(missing)[:5]}")
    batch = collate([view[i] for i in range(len(view))])
    if batch.errors:
        raise ValueError(f"triplets could not be loaded: {batch.errors}")
    return batch


def _examples(
    run: Run, rows: pd.DataFrame, batch: Any, prey: torch.Tensor, adv: torch.Tensor
) -> list[Example]:
    """One :class:`Example` per attacked triplet, next to the run's stored result."""
    stored = run.results.set_index("triplet_id")
    position = {t: i for i, t in enumerate(batch.triplet_id)}
    labels = agree_labels(rows).to_numpy()
    examples = []
    for j, row in rows.reset_index(drop=True).iterrows():
        i = position[row["triplet_id"]]
        other = batch.p0[i] if int(row["prey"]) == 1 else batch.p1[i]
        old = stored.loc[row["triplet_id"]] if row["triplet_id"] in stored.index else None
        examples.append(
            Example(
                triplet_id=row["triplet_id"],
                agrees=labels[j],
                ref=batch.ref[i].cpu(),
                other=other.cpu(),
                prey=prey[i],
                adv=adv[i],
                s_other=float(row["s_other"]),
                s_prey=float(row["s_prey"]),
                s_adv=float(row["s_adv"]),
                flipped=bool(row["flipped"]),
                rmse=float(row[PAPER_COLUMNS["rmse"]]),
                stored_s_adv=float(old["s_adv"]) if old is not None else float("nan"),
                stored_flipped=bool(old["flipped"]) if old is not None else False,
            )
        )
    return examples


def _show(ax, image: torch.Tensor) -> None:
    ax.imshow(to_uint8(image).permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def example_grid(examples: list[Example], title: str = ""):
    """Figure: one row per example -- I_ref, I_other, I_prey, I_adv, amplified δ.

    Scores are the metric's distances to I_ref (lower = more similar); the I_adv title is
    red when the rank flipped (``s_adv > s_other``), as in the paper's figures.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 2.5 * len(examples) + 0.6))
    axes = fig.subplots(len(examples), 5, squeeze=False)
    for row, ex in zip(axes, examples, strict=True):
        delta = (ex.adv - ex.prey) / 2.0  # on the [0, 1] scale
        peak = float(delta.abs().max())
        gain = 0.5 / peak if peak > 0 else 1.0
        _show(row[0], ex.ref)
        row[0].set_title("I_ref", fontsize=9)
        _show(row[1], ex.other)
        row[1].set_title(f"I_other  s={ex.s_other:.4f}", fontsize=9)
        _show(row[2], ex.prey)
        row[2].set_title(f"I_prey  s={ex.s_prey:.4f}", fontsize=9)
        _show(row[3], ex.adv)
        verdict = "rank flipped" if ex.flipped else "not flipped"
        row[3].set_title(
            f"I_adv  s={ex.s_adv:.4f}\n{verdict}",
            fontsize=9,
            color="red" if ex.flipped else "black",
        )
        amplified = (0.5 + delta * gain).clamp(0, 1) * 2.0 - 1.0
        _show(row[4], amplified)
        row[4].set_title(f"δ × {gain:.0f} (grey = 0)", fontsize=9)
        row[0].set_ylabel(f"{ex.triplet_id}\n{ex.agrees} · RMSE {ex.rmse:.2f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def grid_title(run: Run) -> str:
    return f"{run.title} on {paper.display_name(run.metric)} · {run.dataset} · {run.resolution_label}  (regenerated from identity.yaml)"
