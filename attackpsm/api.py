"""The Python API: metrics, attacks and whole jobs by their config names, for notebooks.

One implementation underneath: every object is composed from the same ``conf/`` files as
``python -m attackpsm`` (Hydra's compose API), checked by the same code
(:func:`attackpsm.config.check_node`), and attacked by the same engine
(:func:`attackpsm.engine.attack_batch`: prey choice, attack, 8-bit re-check and perturbation
statistics of Sec. 3 and Algorithms 1-3). Images follow the package convention: ``float32``
``(N, 3, H, W)`` RGB tensors on the ``[-1, 1]`` scale on which the paper states every ε.

Example:
    >>> import torch, attackpsm
    >>> lpips = attackpsm.metric("lpips_alex")
    >>> pgd = attackpsm.attack("pgd", eps=0.01, max_iterations=5)
    >>> g = torch.Generator().manual_seed(0)
    >>> ref = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    >>> p0 = (ref + 0.05 * torch.randn(2, 3, 64, 64, generator=g)).clamp(-1, 1)
    >>> p1 = (ref + 0.20 * torch.randn(2, 3, 64, 64, generator=g)).clamp(-1, 1)
    >>> table, adv = attackpsm.evaluate(lpips, pgd, ref, p0, p1, judge=[0.0, 0.0], images=True)
    >>> len(table), tuple(adv.shape)
    (2, (2, 3, 64, 64))
    >>> bool((table["linf"] <= 0.01 + 1e-6).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from attackpsm.attacks.base import Attack
from attackpsm.config import ConfigError, build, compose_option
from attackpsm.data.base import Batch, TripletDataset, collate
from attackpsm.engine import FittingBatches
from attackpsm.job.run import run as run_job
from attackpsm.job.run import seed_everything
from attackpsm.metrics.base import Metric
from attackpsm.storage import read_run

__all__ = ["attack", "dataset", "evaluate", "metric", "run"]


def metric(name: str, **overrides: Any) -> Metric:
    """The metric ``conf/metric/<name>.yaml`` with ``overrides`` (its keys), ready to score.

    The same object as ``python -m attackpsm metric=<name> metric.<key>=<value>``: pretrained
    weights from the cache (``make weights``), in evaluation mode. ``m.score(m.prepare(ref), x)``
    gives the ``(N,)`` distances of ``x`` to ``ref``.

    Examples:
        >>> import torch, attackpsm
        >>> lpips = attackpsm.metric("lpips_alex")
        >>> x = torch.zeros(1, 3, 64, 64)
        >>> float(lpips.score(lpips.prepare(x), x))
        0.0
    """
    cfg = compose_option("metric", name, overrides)
    return build(cfg.metric)


def attack(name: str, **overrides: Any) -> Attack:
    """The attack ``conf/attack/<name>.yaml`` with ``overrides`` (``eps=0.01``, ...).

    Parameters are checked when it is built, as on the command line: an unknown key or a
    value of the wrong type raises :class:`~attackpsm.config.ConfigError` naming the key and
    the option's valid keys.

    Examples:
        >>> import attackpsm
        >>> attackpsm.attack("pgd", eps=0.01).eps
        0.01
    """
    from attackpsm.attacks.target import build_attack

    cfg = compose_option("attack", name, overrides)
    return build_attack(cfg.attack)  # `target=reference` / `both` as on the command line


def dataset(
    name: str = "synthetic", resolution: int | str = 64, **overrides: Any
) -> TripletDataset:
    """The dataset ``conf/dataset/<name>.yaml`` at ``resolution`` (a side in px or ``"native"``).

    Examples:
        >>> import attackpsm
        >>> len(attackpsm.dataset("synthetic", resolution=32, num_triplets=3))
        3
    """
    from attackpsm.config import register_sizes

    choice = f"resolution={resolution}"
    register_sizes([choice])
    cfg = compose_option("dataset", name, overrides, extra=[choice])
    return build(cfg.dataset, size=cfg.resolution.size)


def _as_images(name: str, x: Any) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1] != 3:
        raise ConfigError(f"{name}: expected RGB images (N, 3, H, W), got shape {tuple(t.shape)}")
    if t.numel() and (t.min() < -1 or t.max() > 1):
        raise ConfigError(
            f"{name}: values in [{float(t.min()):.3g}, {float(t.max()):.3g}]; images are on the "
            "[-1, 1] scale of the paper (from [0, 1] images: x * 2 - 1)"
        )
    return t


def _tensor_batches(ref: Any, p0: Any, p1: Any, judge: Any, batch_size: int) -> list[Batch]:
    ref, p0, p1 = (_as_images(n, x) for n, x in (("ref", ref), ("p0", p0), ("p1", p1)))
    if not ref.shape == p0.shape == p1.shape:
        raise ConfigError(
            f"ref, p0 and p1 must have one shape, got {tuple(ref.shape)}, {tuple(p0.shape)}, "
            f"{tuple(p1.shape)}"
        )
    n = len(ref)
    if judge is None:
        labels = torch.full((n,), float("nan"))
    else:
        labels = torch.as_tensor(judge, dtype=torch.float32).reshape(-1)
        if len(labels) != n:
            raise ConfigError(f"judge: {len(labels)} values for {n} triplets")
    ids = [str(i) for i in range(n)]
    return [
        Batch(ids[a : a + batch_size], ["tensors"] * len(ids[a : a + batch_size]),
              labels[a : a + batch_size], ref[a : a + batch_size], p0[a : a + batch_size],
              p1[a : a + batch_size], [])
        for a in range(0, n, batch_size)
    ]  # fmt: skip


def evaluate(
    metric: Metric | str,
    attack: Attack | str,
    ref: Any = None,
    p0: Any = None,
    p1: Any = None,
    judge: Any = None,
    *,
    dataset: TripletDataset | str | None = None,
    batch_size: int = 64,
    images: bool = False,
    seed: int = 0,
) -> pd.DataFrame | tuple[pd.DataFrame, torch.Tensor]:
    """Attack 2AFC triplets; the per-triplet table and, with ``images=True``, the images.

    Give either the tensors ``ref``, ``p0``, ``p1`` (``(N, 3, H, W)`` on ``[-1, 1]``) and
    optionally ``judge`` (the fraction of people who preferred ``p1``, ``(N,)``; ``None``: no
    human label), or a ``dataset`` (an object of :func:`dataset` or a config name). The
    table has the columns of a run's ``results.parquet`` (``flipped``, ``s_adv``, ``linf``,
    ``rmse_uint8``, ...), one row per triplet (``triplet_id`` is the position for tensors);
    triplets that cannot be scored are listed in ``table.attrs["errors"]``. The adversarial
    images are returned in the table's row order. Random attacks are seeded with ``seed``
    as a run is with ``seed``.
    """
    m = globals()["metric"](metric) if isinstance(metric, str) else metric
    a = globals()["attack"](attack) if isinstance(attack, str) else attack
    if a.white_box and not getattr(m, "differentiable", True):
        raise ConfigError(
            f"attack {a.name!r} needs gradients but metric {m.name!r} is not differentiable: "
            "use a black-box attack (square, onepixel) or a differentiable metric"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if dataset is not None:
        data = globals()["dataset"](dataset) if isinstance(dataset, str) else dataset
        batches: Any = torch.utils.data.DataLoader(
            data, batch_size=batch_size, collate_fn=collate, shuffle=False
        )
    elif ref is None or p0 is None or p1 is None:
        raise ConfigError("evaluate needs ref, p0 and p1 tensors, or dataset=...")
    else:
        batches = _tensor_batches(ref, p0, p1, judge, batch_size)
    device = next((p.device for p in m.parameters()), torch.device("cpu"))
    seed_everything(seed)
    adv_of: dict[str, torch.Tensor] = {}

    def keep(metric: Metric, batch: Batch, prey_is_p1: Any, adv: torch.Tensor, rows: Any) -> None:
        adv_of.update(zip(batch.triplet_id, adv.detach().cpu(), strict=True))

    fitting = FittingBatches()
    tables, errors = [], []
    for batch in batches:
        rows, errs = fitting(m, a, batch.to(device), sink=keep if images else None)
        tables.append(rows)
        errors.append(errs)
    nonempty = [t for t in tables if len(t)]
    table = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame()
    table.attrs["errors"] = pd.concat(errors, ignore_index=True) if errors else pd.DataFrame()
    table.attrs["metric"], table.attrs["attack"] = m.name, a.name
    if not images:
        return table
    ids = list(table["triplet_id"]) if len(table) else []
    adv = torch.stack([adv_of[i] for i in ids]) if ids else torch.empty(0, 3, 0, 0)
    return table, adv


def run(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Run one job from Python as ``python -m attackpsm <overrides>`` does; its triplet table.

    The same ``conf/`` files, checks and :func:`attackpsm.job.run.run` as the command line; a finished job is
    reused, an interrupted one resumes. The returned per-triplet table (the columns of
    ``results.parquet``) carries ``attrs["run_dir"]`` (absolute) and ``attrs["headline"]``
    (the numbers :func:`attackpsm.job.run.run` returns). With ``shard.count`` > 1 it holds the shards finished
    so far.

    Examples:
        >>> import attackpsm
        >>> table = attackpsm.run(["metric=l2", "attack=fgsm", "dataset.num_triplets=4",
        ...                        "logger=none", "progress=false"])  # doctest: +ELLIPSIS
        <BLANKLINE>
        synthetic · l2 · fgsm · res 64 (all shards) -> /.../results/synthetic/l2/fgsm/res64-...
        | Metric | Attack | Same rank by human & metric | Samples | #Flipped | ...
        >>> len(table), table.attrs["headline"]["samples"]
        (4, 4)
        >>> sorted(table["triplet_id"]) == sorted(set(table["triplet_id"]))
        True
    """
    from attackpsm.config import MULTIRUN_FLAGS, check_overrides, compose

    args = [str(a) for a in overrides]
    if any(a in MULTIRUN_FLAGS for a in args):
        raise ConfigError(
            "attackpsm.run runs one job; run a sweep (-m) with python -m attackpsm "
            + " ".join(args)
            + ", or call attackpsm.run once per combination"
        )
    check_overrides(args)
    numbers = run_job(compose(args))
    run_dir = Path(numbers["run_dir"]).resolve()
    got = read_run(run_dir)
    table = got[0] if got is not None else pd.DataFrame()
    table.attrs["run_dir"] = str(run_dir)
    table.attrs["headline"] = {k: v for k, v in numbers.items() if k != "run_dir"}
    return table
