"""stAdv at every resolution, and attacks that stall at their start recorded as such."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from attackpsm.attacks.none import NoAttack
from attackpsm.attacks.pgd import PGD
from attackpsm.attacks.stadv import StAdv
from attackpsm.data.base import collate
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.engine import attack_batch
from attackpsm.job.run import run
from attackpsm.metrics.base import Metric
from attackpsm.summary.results import summarize, summary_markdown
from tests.conftest import synthetic_batch

# Calibrated synthetic triplets (seed 0) on which stAdv flips quickly at 64 and 256 px
# (contrast, saturation, shift, contrast, lightness, colour), and three on which the
# paper's loss taken in pixels stops at a zero flow at 256 px (blur, colour, colour).
FLIP = [3, 5, 7, 12, 13, 15]
STALL_AT_256 = [1, 6, 15]


def calibrated(size: int, indices: list[int]):
    data = SyntheticTriplets(size=size, num_triplets=max(indices) + 1, seed=0)
    return collate([data[i] for i in indices])


@pytest.mark.slow
def test_stadv_moves_and_flips_at_64_and_256_px(lpips_alex):
    """The same triplets flip at 64 and 256 px with real LPIPS(Alex) weights; at 64 px the
    result is bit for bit the paper's Eq. 4 in pixels (``reference_size=None``)."""
    small = calibrated(64, FLIP)
    rows, _ = attack_batch(lpips_alex, StAdv(), small)
    paper, _ = attack_batch(lpips_alex, StAdv(reference_size=None), small)
    pd.testing.assert_frame_equal(rows, paper)
    assert rows["flipped"].all()

    rows, _ = attack_batch(lpips_alex, StAdv(), calibrated(256, FLIP))
    assert (rows["flow_max"] > 0.1).all()  # moved by more than a tenth of a pixel
    assert rows["flipped"].all()
    assert not rows["stalled"].any()

    # the loss in pixels at 256 px: stops at its start, recorded as stalled, not as robust
    big = calibrated(256, STALL_AT_256)
    before, _ = attack_batch(lpips_alex, StAdv(reference_size=None), big)
    assert (before["flow_max"] < 1e-6).all()
    assert before["stalled"].all() and not before["flipped"].any()
    after, _ = attack_batch(lpips_alex, StAdv(), big)
    assert after["flipped"].all()


class Rounded(Metric):
    """L2 between the 8-bit roundings of the images: piecewise constant, gradient zero."""

    name = "rounded_l2"

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = torch.round((x + 1) * 127.5)
        return (q - torch.round((prepared + 1) * 127.5)).pow(2).flatten(1).mean(1)


@pytest.mark.parametrize(
    "attack", [lambda: StAdv(max_iterations=5), lambda: PGD(max_iterations=5)], ids=["stadv", "pgd"]
)
def test_attack_without_gradient_is_recorded_as_stalled(attack):
    """A metric whose gradient is zero: the attack cannot move; every triplet is stalled,
    counted in the summary and its markdown, never a flip."""
    batch = synthetic_batch(6, seed=3)
    rows, _ = attack_batch(Rounded(), attack(), batch)
    assert not rows["flipped"].any()
    assert (rows["linf"] == 0).all()
    assert rows["stalled"].all()
    summary = summarize(rows, "rounded_l2", "x")
    assert summary["stalled"].sum() == len(rows)
    assert summary["samples"].sum() == len(rows)
    assert "Stalled triplets" in summary_markdown(summary)


def test_attacks_that_return_the_prey_on_purpose_never_stall():
    batch = synthetic_batch(4, seed=3)
    rows, _ = attack_batch(Rounded(), NoAttack(), batch)
    assert not rows["stalled"].any()


def test_moving_attack_is_not_stalled(lpips_rand):
    """PGD moves every triplet it does not flip by its whole budget (10 steps of 0.001,
    beyond half an 8-bit level): none stalls."""
    rows, _ = attack_batch(lpips_rand, PGD(max_iterations=10), synthetic_batch(6, seed=3))
    assert (rows["stalled"] == (~rows["flipped"] & (rows["linf"] < 1 / 255))).all()
    assert (rows.loc[~rows["flipped"], "linf"] > 1 / 255).all()
    assert not rows["stalled"].any()


def test_run_warns_and_counts_stalled_triplets(cfg_factory, caplog):
    """A run whose attack cannot move (stAdv with a vanishing rank weight: the gradient is
    under scipy's tolerance at the zero start) says so on the console and in summary.md."""
    cfg = cfg_factory(
        [
            "metric=lpips_alex",
            "attack=stadv",
            "attack.alpha=1e-12",
            "dataset.num_triplets=4",
            "resolution='64'",
        ]
    )
    with caplog.at_level(logging.WARNING, logger="attackpsm"):
        out = run(cfg)
    table = pd.read_parquet(Path(out["run_dir"]) / "results.parquet")
    assert table["stalled"].all() and (table["iterations"] == 0).all()
    assert out["stalled"] == 4
    assert any("4 of 4 triplets stalled" in r.getMessage() for r in caplog.records)
    text = (Path(out["run_dir"]) / "summary.md").read_text()
    assert "Stalled triplets" in text


@pytest.mark.parametrize("max_iterations", [1, 4, 30])
def test_stepwise_lbfgs_follows_the_threaded_scipy_runs(lpips_rand, max_iterations, monkeypatch):
    """The batched L-BFGS without threads (scipy's ``setulb`` stepped in one loop) gives the
    iterates, evaluation counts, statuses and traces of one ``scipy.optimize.minimize`` per
    problem (the threaded driver), on stAdv's own objective."""
    from attackpsm.attacks import lbfgs

    if lbfgs._setulb() is None:
        pytest.skip("this scipy has no step-wise L-BFGS-B")
    calls = {}
    original = lbfgs.minimize

    def capture(fg, x0, max_iterations, **kwargs):  # stAdv's objective, kept for the drivers
        calls["args"] = (fg, x0, max_iterations, kwargs["history"], kwargs["max_line_search"])
        return original(fg, x0, max_iterations, **kwargs)

    monkeypatch.setattr(lbfgs, "minimize", capture)
    batch = synthetic_batch(6, seed=5)
    prepared = lpips_rand.prepare(batch.ref)
    with torch.no_grad():
        d0, d1 = lpips_rand.score(prepared, batch.p0), lpips_rand.score(prepared, batch.p1)
    prey = torch.where((d1 < d0)[:, None, None, None], batch.p1, batch.p0)
    StAdv(max_iterations=max_iterations).optimize_flow(
        lpips_rand, prepared, prey, torch.maximum(d0, d1)
    )
    monkeypatch.undo()
    fg, x0, its, history, ls = calls["args"]
    direct = lbfgs.minimize(fg, x0, its, history, ls, threads=False)
    threaded = lbfgs.minimize(fg, x0, its, history, ls, threads=True)
    assert torch.equal(direct.x, threaded.x)
    for name in ("loss", "iterations", "evaluations", "status"):
        assert torch.equal(getattr(direct, name), getattr(threaded, name)), name
    assert direct.trace == threaded.trace
    assert (direct.x != 0).any()  # the problems moved
