"""Stronger evaluation: APGD, EoT, Square, minimal ε by bisection, the cascade, the leaderboard.

Also the integer checks the attacks share (``check_int``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attackpsm.attacks.apgd import APGD, checkpoints
from attackpsm.attacks.base import check_int
from attackpsm.attacks.cascade import Cascade
from attackpsm.attacks.eot import EoT, ExpectedScore
from attackpsm.attacks.fgsm import FGSM
from attackpsm.attacks.min_eps import MinEps, median_radius, robustness_curve
from attackpsm.attacks.onepixel import OnePixel
from attackpsm.attacks.pgd import PGD
from attackpsm.attacks.square import Square, centred_bump, meta_square, square_fraction
from attackpsm.attacks.stadv import StAdv, StAdvPGD
from attackpsm.job.run import run
from attackpsm.metrics.base import Metric
from attackpsm.metrics.classic import L2, SSIM
from attackpsm.protocol.twoafc import flip_margin
from tests.conftest import assert_config_runs, synthetic_batch
from tests.conftest import select_prey as _prey


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(num_triplets=12, seed=5)


@pytest.fixture(scope="module")
def metrics(lpips_rand):
    return {"l2": L2(), "ssim": SSIM(), "lpips_rand": lpips_rand}


class Spy(Metric):
    """Wraps a metric; records every score call (batch size, whether autograd was on)."""

    def __init__(self, metric: Metric):
        super().__init__()
        self.metric = metric
        self.calls: list[tuple[int, bool]] = []

    def prepare(self, ref):
        return self.metric.prepare(ref)

    def score(self, prepared, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled() or x.requires_grad))
        return self.metric.score(prepared, x)


class NoisyL2(Metric):
    """L2 of a randomly jittered input: a stochastic metric with a noisy gradient."""

    stochastic = True

    def score(self, prepared, x):
        noise = torch.randn_like(x) * 0.5
        return ((x * (1 + noise) - prepared) ** 2).flatten(1).mean(1)


# --- APGD ---------------------------------------------------------------------------------


def test_checkpoints_follow_the_paper():
    marks = checkpoints(100)
    assert marks[:3] == [22, 41, 57]  # p = 0.22, 0.41, 0.57
    assert marks == sorted(marks) and all(0 < w < 100 for w in marks)


@pytest.mark.parametrize("metric_name", ["l2", "ssim", "lpips_rand"])
@pytest.mark.parametrize("eps", [0.03, 0.005])
def test_apgd_flips_at_least_as_many_as_pgd(metric_name, eps, metrics, batch):
    metric = metrics[metric_name]
    prepared, prey, s_other = _prey(metric, batch)
    pgd = PGD(eps=eps, alpha=0.001, max_iterations=30).run(metric, prepared, prey, s_other)
    apgd = APGD(eps=eps, max_iterations=30).run(metric, prepared, prey, s_other)
    assert int(apgd.flipped.sum()) >= int(pgd.flipped.sum())
    # the same budget: ε-ball, valid image, at most 31 metric calls per triplet
    assert (apgd.adv - prey).abs().max() <= eps + 1e-6
    assert apgd.adv.min() >= -1 and apgd.adv.max() <= 1
    assert int(apgd.columns["queries"].max()) <= 31
    # the reported score and flip are those of the returned image
    with torch.no_grad():
        s = metric.score(prepared, apgd.adv)
    assert torch.allclose(s, apgd.s_adv, atol=1e-5)
    assert torch.equal(apgd.flipped, s > s_other)


def test_apgd_l2_respects_its_ball(metrics, batch):
    metric = metrics["lpips_rand"]
    prepared, prey, s_other = _prey(metric, batch)
    out = APGD(eps=0.5, norm="l2", max_iterations=10).run(metric, prepared, prey, s_other)
    assert (out.adv - prey).flatten(1).norm(dim=1).max() <= 0.5 + 1e-4
    assert out.flipped.any()


def test_apgd_restarts_never_lose_flips(metrics, batch):
    metric = metrics["lpips_rand"]
    prepared, prey, s_other = _prey(metric, batch)
    plain = APGD(eps=0.002, max_iterations=5).run(metric, prepared, prey, s_other)
    again = APGD(eps=0.002, max_iterations=5, restarts=2).run(metric, prepared, prey, s_other)
    assert (again.flipped | ~plain.flipped).all()
    assert (again.adv - prey).abs().max() <= 0.002 + 1e-6


def test_apgd_random_start_is_in_the_ball_and_drawn_per_triplet(metrics, batch):
    """With no step, the result is the random start itself: inside the ball, not the prey,
    and the same for a triplet whether it is attacked in the batch or alone."""
    metric = metrics["l2"]
    prepared, prey, s_other = _prey(metric, batch)
    attack = APGD(eps=0.03, max_iterations=0, random_start=True)
    out = attack.run(metric, prepared, prey, s_other)
    delta = (out.adv - prey).abs()
    assert delta.max() <= 0.03 + 1e-6
    assert (delta.flatten(1).mean(dim=1) > 0.005).all()  # uniform in [-ε, ε]: mean |δ| ≈ ε/2
    alone = attack.run(metric, prepared[3:4], prey[3:4], s_other[3:4])
    assert torch.equal(alone.adv[0], out.adv[3])
    l2 = APGD(eps=0.5, norm="l2", max_iterations=0, random_start=True)
    start = l2.run(metric, prepared, prey, s_other).adv - prey
    assert start.flatten(1).norm(dim=1).max() <= 0.5 + 1e-4


def test_apgd_random_restarts_never_flip_fewer_than_one_random_start(metrics, batch):
    """The reference APGD's setting (random start, restarts) on a budget where one start
    flips only part of a fixed set: more starts keep every flip of the first."""
    metric = metrics["lpips_rand"]
    prepared, prey, s_other = _prey(metric, batch)
    one = APGD(eps=0.002, max_iterations=5, random_start=True)
    more = APGD(eps=0.002, max_iterations=5, random_start=True, restarts=2)
    first, again = (a.run(metric, prepared, prey, s_other) for a in (one, more))
    assert 0 < int(first.flipped.sum()) < len(prey)  # the set leaves room to gain and lose
    assert (again.flipped | ~first.flipped).all()
    assert int(again.flipped.sum()) >= int(first.flipped.sum())
    assert (again.adv - prey).abs().max() <= 0.002 + 1e-6


def test_apgd_rejects_bad_parameters():
    with pytest.raises(ValueError, match="norm"):
        APGD(norm="l1")
    with pytest.raises(ValueError, match="eot_samples"):
        APGD(eot_samples=0)
    with pytest.raises(ValueError, match="random_start must be true or false, got 'yes'"):
        APGD(random_start="yes")


# --- EoT ----------------------------------------------------------------------------------


def _gradient_variance(metric, x, ref, draws, repeats=24):
    grads = []
    for _ in range(repeats):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(metric.expected_score(ref, xi, draws).sum(), xi)
        grads.append(g)
    return torch.stack(grads).var(0).mean().item()


def test_eot_gradient_variance_shrinks_with_samples(batch):
    torch.manual_seed(0)
    metric = NoisyL2()
    x, ref = batch.p0[:4], batch.ref[:4]
    v1 = _gradient_variance(metric, x, ref, draws=1)
    v8 = _gradient_variance(metric, x, ref, draws=8)
    assert v8 < 0.35 * v1  # the mean of 8 independent draws: 1/8 of the variance
    # a deterministic metric is scored once whatever the number of draws
    spy = Spy(L2())
    spy.expected_score(ref, x, 8)
    assert len(spy.calls) == 1


@pytest.mark.slow
def test_eot_on_elpips_averages_draws(batch):
    from attackpsm.metrics.elpips import ELPIPS

    torch.manual_seed(0)
    metric = ELPIPS(ensemble=1, scale_levels=1)
    x, ref = batch.p0[:2], metric.prepare(batch.ref[:2])
    v1 = _gradient_variance(metric, x, ref, draws=1, repeats=6)
    v4 = _gradient_variance(metric, x, ref, draws=4, repeats=6)
    assert v4 < v1


def test_eot_attack_averages_gradient_draws_and_judges_each_check_once(batch):
    """Every gradient averages ``eot_samples`` fresh draws; every check is one decision
    score (no gradient: a randomised metric's common draws), never the gradient's draws."""
    torch.manual_seed(0)
    metric = NoisyL2()
    spy = Spy(metric)
    spy.stochastic = True
    prepared, prey, s_other = _prey(ExpectedScore(metric, 16), batch)
    out = EoT(PGD(eps=0.03, max_iterations=4), eot_samples=4).run(spy, prepared, prey, s_other)
    n = prey.shape[0]
    gradient = [c for c in spy.calls if c[1]]
    decisions = [c for c in spy.calls if not c[1]]
    assert len(gradient) % 4 == 0 and gradient[0][0] == n
    # one decision per check; a gradient step (4 draws) between two checks
    assert len(decisions) == len(gradient) // 4 + 1 and decisions[0][0] == n
    assert out.flipped.any()
    # APGD's own eot_samples draws the same way
    spy.calls.clear()
    APGD(eps=0.03, max_iterations=3, eot_samples=4).run(spy, prepared, prey, s_other)
    assert len([c for c in spy.calls if c[1]]) % 4 == 0


# --- Square -------------------------------------------------------------------------------


def test_square_schedule_halves():
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 9000, 10000) == 0.8 / 2**9
    assert square_fraction(0.8, 100, 1000) == square_fraction(0.8, 1000, 10000)


def _size(delta, norm):
    """Per-triplet size of a perturbation in the attack's norm (over C x H x W)."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@pytest.mark.parametrize("norm, eps", [("linf", 0.03), ("l2", 1.0)])
@pytest.mark.parametrize("metric_name", ["l2", "lpips_rand"])
def test_square_is_black_box_and_respects_its_budget(
    metric_name, norm, eps, metrics, batch, monkeypatch
):
    metric = metrics[metric_name]
    prepared, prey, s_other = _prey(metric, batch)
    spy = Spy(metric)

    def forbidden(*args, **kwargs):
        raise AssertionError("the Square attack called backward")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    attack = Square(eps=eps, max_queries=60, seed=1, norm=norm)
    out = attack.run(spy, prepared, prey, s_other)
    assert not attack.white_box
    assert spy.calls and not any(grad for _, grad in spy.calls)
    queries = out.columns["queries"]
    assert int(queries.max()) <= 60 and int(queries.min()) >= 1
    # the recorded queries are exactly the images each triplet sent to the metric
    assert int(queries.sum()) == sum(size for size, _ in spy.calls)
    assert (queries[~out.flipped] == 60).all()
    assert (_size(out.adv - prey, norm) <= eps + 1e-5).all()
    assert out.adv.min() >= -1 and out.adv.max() <= 1
    monkeypatch.undo()
    with torch.no_grad():
        s = metric.score(prepared, out.adv)
    assert torch.allclose(s, out.s_adv, atol=1e-5)
    assert torch.equal(out.flipped, s > s_other)
    assert out.flipped.any()


def test_square_l2_meta_square_is_two_opposite_centred_bumps():
    bump = centred_bump(5, 7)
    assert bump.norm() == pytest.approx(1.0)
    assert bump.argmax() == 2 * 7 + 3  # the peak sits at the centre (rows // 2, cols // 2)
    # constant on each ring of Chebyshev distance d from the centre, decreasing with d
    i, j = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    ring = torch.maximum((i - 2).abs(), (j - 3).abs())
    levels = [bump[ring == d] for d in range(4)]
    assert all(torch.allclose(v, v[0].expand_as(v)) for v in levels)
    assert all(levels[d][0] > levels[d + 1][0] > 0 for d in range(3))
    for side in (1, 3, 6, 9):
        meta = meta_square(side)
        assert meta.shape == (side, side) and meta.norm() == pytest.approx(1.0)
        assert (meta[: side // 2] >= 0).all() and (meta[side // 2 :] < 0).all()
        assert torch.allclose(
            meta[side // 2 :], -centred_bump(side - side // 2, side) * (meta[side // 2 :].norm())
        )


def test_square_l2_keeps_the_norm_at_exactly_eps_without_clipping(metrics):
    # a mid-grey prey and a small ε: no pixel reaches ±1, so every kept image has ||δ|| = ε
    metric = metrics["l2"]
    ref = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prey = torch.zeros_like(ref)
    prepared = metric.prepare(ref)
    with torch.no_grad():
        s_other = metric.score(prepared, prey) + 10.0  # out of reach: every query runs
    eps = torch.tensor([0.05, 0.1, 0.2, 0.4])
    out = Square(norm="l2", max_queries=30, seed=3).attack(metric, prepared, prey, s_other, eps)
    assert (out.columns["queries"] == 30).all()
    assert (out.adv.abs() < 1).all()
    torch.testing.assert_close(_size(out.adv - prey, "l2"), eps, atol=1e-5, rtol=1e-5)
    # ε = 0 leaves the prey as it is
    none = Square(eps=0.0, norm="l2", max_queries=5).run(metric, prepared, prey, s_other)
    assert torch.equal(none.adv, prey)


@pytest.mark.parametrize("metric_name, eps", [("l2", 1.0), ("ssim", 0.5)])
def test_square_l2_search_flips_weak_metrics(metric_name, eps, metrics, batch):
    metric = metrics[metric_name]
    prepared, prey, s_other = _prey(metric, batch)
    start = Square(eps=eps, norm="l2", max_queries=1, seed=0).run(metric, prepared, prey, s_other)
    out = Square(eps=eps, norm="l2", max_queries=100, seed=0).run(metric, prepared, prey, s_other)
    flips = int(out.flipped.sum())
    with torch.no_grad():
        s = metric.score(prepared, out.adv)
    assert flips == int((s > s_other).sum())  # counted on the returned images
    assert 0 < flips >= int(start.flipped.sum())
    # random search keeps a candidate only if it helps: never worse than its start
    # (the same seed draws the same start), and strictly better on the unflipped ones
    gained = flip_margin(s_other, out.s_adv) - flip_margin(s_other, start.s_adv)
    assert (gained >= 0).all()
    assert gained[~start.flipped].sum() > 0
    assert (_size(out.adv - prey, "l2") <= eps + 1e-5).all()
    assert int(out.columns["queries"].max()) <= 100


def test_square_rejects_bad_parameters():
    with pytest.raises(ValueError, match=r"norm must be one of \('linf', 'l2'\), got 'l1'"):
        Square(norm="l1")
    with pytest.raises(ValueError, match="max_queries must be an integer >= 1, got 0"):
        Square(max_queries=0)
    with pytest.raises(ValueError, match="p_init must be <= 1, got 2"):
        Square(p_init=2, norm="l2")


def test_square_sweep_prints_one_row_per_setting(capsys):
    """The sweep behind Square's defaults (docs/research.md, "Square attack p_init") runs end to end."""
    from attackpsm.commands.square_sweep import main

    main(["--sizes", "32", "--queries", "4", "--p-init", "0.3", "0.8", "--num-triplets", "2"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| l")]
    assert [r.split("|")[1].strip() for r in rows] == ["linf", "linf", "l2", "l2"]
    assert all(0 <= int(r.split("|")[6]) <= 2 for r in rows)


def test_square_sweep_composes_each_norm_from_conf():
    """The sweep's attacks are ``attack=square`` / ``square_l2`` with its three keys set."""
    from attackpsm.commands.square_sweep import square

    linf, l2 = square("linf", 0.01, 50, 0.3), square("l2", 0.5, 60, 0.05)
    assert (linf.norm, linf.eps, linf.max_queries, linf.p_init) == ("linf", 0.01, 50, 0.3)
    assert (l2.norm, l2.eps, l2.max_queries, l2.p_init) == ("l2", 0.5, 60, 0.05)
    assert linf.seed == l2.seed == 0  # the run's `seed` (conf/config.yaml)


# --- integer parameters -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, name, bad, valid",
    [
        (lambda: Square(max_queries=0), "max_queries", "0", ">= 1"),
        (lambda: Square(max_queries=2.5), "max_queries", "2.5", ">= 1"),
        (lambda: APGD(max_iterations=-1), "max_iterations", "-1", ">= 0"),
        (lambda: APGD(restarts=0.5), "restarts", "0.5", ">= 0"),
        (lambda: APGD(eot_samples=0), "eot_samples", "0", ">= 1"),
        (lambda: EoT(PGD(), eot_samples=0), "eot_samples", "0", ">= 1"),
        (lambda: ExpectedScore(L2(), 0), "eot_samples", "0", ">= 1"),
        (lambda: PGD(max_iterations=1.5), "max_iterations", "1.5", ">= 0"),
        (lambda: FGSM(max_batch=0), "max_batch", "0", ">= 1"),
        (lambda: OnePixel(population=3), "population", "3", r">= 4 \(DE/rand/1\)"),
        (lambda: OnePixel(generations=-2), "generations", "-2", ">= 0"),
        (lambda: OnePixel(max_batch=0.5), "max_batch", "0.5", ">= 1"),
        (lambda: StAdv(history=0), "history", "0", ">= 1"),
        (lambda: StAdv(max_line_search=0), "max_line_search", "0", ">= 1"),
        (lambda: StAdvPGD(pgd_steps=-1), "pgd_steps", "-1", ">= 0"),
    ],
)
def test_integer_parameters_name_the_value_and_the_range(make, name, bad, valid):
    with pytest.raises(ValueError, match=rf"{name} must be an integer {valid}, got {bad}$"):
        make()


def test_check_int_accepts_whole_numbers_only():
    check_int("steps", 3, minimum=0)
    check_int("steps", 3.0, minimum=3)  # a whole float (as a config may give) is fine
    for bad in (2, 3.5, "4", True, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match=rf"steps must be an integer >= 3, got {bad!r}"):
            check_int("steps", bad, minimum=3)


# --- minimal ε ----------------------------------------------------------------------------


def test_min_eps_flips_and_eps_minus_tol_does_not(metrics, batch):
    metric = metrics["l2"]
    prepared, prey, s_other = _prey(metric, batch)
    inner = APGD(max_iterations=10)
    attack = MinEps(inner, eps_max=0.1, tol=0.002)
    out = attack.run(metric, prepared, prey, s_other)
    min_eps = out.columns["min_eps"]
    found = torch.isfinite(min_eps)
    assert found.any()
    assert torch.equal(found, out.flipped)
    idx = found.nonzero().flatten()
    # the returned image flips within its budget
    assert ((out.adv[idx] - prey[idx]).flatten(1).abs().amax(1) <= min_eps[idx] + 1e-6).all()
    with torch.no_grad():
        assert (metric.score(prepared, out.adv)[idx] > s_other[idx]).all()
    # the attack at min_eps flips; at min_eps - tol it does not
    sub = (metric.prepare(batch.ref[idx]), prey[idx], s_other[idx])
    assert inner.attack(metric, *sub, min_eps[idx]).flipped.all()
    assert not inner.attack(metric, *sub, (min_eps[idx] - 0.002).clamp_min(0)).flipped.any()
    # an unflippable triplet at eps_max reports inf
    assert torch.isinf(min_eps[~found]).all()


def test_robustness_curve_and_median_radius():
    radii = np.array([0.01, 0.02, 0.03, np.inf])
    curve = robustness_curve(radii, np.array([0.0, 0.015, 0.03, 1.0]))
    assert curve.tolist() == [0.0, 0.25, 0.75, 0.75]
    assert median_radius(radii) == pytest.approx(0.025)
    assert median_radius(np.array([0.01, np.inf, np.inf])) == np.inf


# --- cascade ------------------------------------------------------------------------------


def test_cascade_is_the_worst_case_of_its_attacks(metrics, batch):
    metric = metrics["lpips_rand"]
    prepared, prey, s_other = _prey(metric, batch)
    members = [PGD(eps=0.002, max_iterations=4), Square(eps=0.002, max_queries=12, seed=0)]
    alone = [a.run(metric, prepared, prey, s_other).flipped for a in members]
    out = Cascade(members).run(metric, prepared, prey, s_other)
    # the first attack runs on every triplet, so its flips are the cascade's
    assert (out.flipped | ~alone[0]).all()
    assert int(out.flipped.sum()) >= max(int(f.sum()) for f in alone)
    index = out.columns["attack_index"]
    assert torch.equal(index >= 0, out.flipped)
    assert torch.equal(index == 0, alone[0])
    assert (out.adv - prey).abs().max() <= 0.002 + 1e-6
    with torch.no_grad():
        assert torch.equal(metric.score(prepared, out.adv) > s_other, out.flipped)


# --- configs and the leaderboard ----------------------------------------------------------

CHEAP = {
    "apgd": ["attack.max_iterations=3"],
    "apgd_l2": ["attack.max_iterations=3"],
    "apgd_eot": ["attack.max_iterations=3", "attack.eot_samples=2"],
    "pgd_eot": ["attack.attack.max_iterations=3", "attack.eot_samples=2"],
    "square": ["attack.max_queries=10"],
    "square_l2": ["attack.max_queries=10"],
    "min_eps": ["attack.attack.max_iterations=3", "attack.tol=0.02"],
    "autoattack": [
        "attack.attacks.0.max_iterations=2",
        "attack.attacks.1.max_iterations=2",
        "attack.attacks.2.max_iterations=2",
        "attack.attacks.3.max_queries=5",
    ],
}


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_configs_run_end_to_end(name, cfg_factory):
    assert_config_runs(cfg_factory, name, CHEAP[name])


def test_leaderboard_from_runs(cfg_factory, tmp_path):
    from attackpsm.report.leaderboard import write_leaderboard

    tables = {}
    for metric in ("l2", "ssim"):
        for name in ("none", "pgd", "apgd", "square", "square_l2", "min_eps"):
            cfg = cfg_factory(
                [
                    f"attack={name}",
                    f"metric={metric}",
                    "dataset.num_triplets=4",
                    "resolution.size=16",
                    *CHEAP.get(name, []),
                ]
            )
            out = run(cfg)
            tables[metric, name] = pd.read_parquet(Path(out["run_dir"]) / "results.parquet")
    md = write_leaderboard(tmp_path / "results", tmp_path / "board")
    for metric in ("l2", "ssim"):
        entry = json.loads(
            (tmp_path / "board" / "synthetic-res16" / f"{metric}.linf.json").read_text()
        )
        # worst case over the attacks at ε = 0.03: flipped by any of them
        union = pd.concat([tables[metric, a] for a in ("pgd", "apgd", "square")])
        expected = union.groupby("triplet_id")["flipped"].any().mean()
        assert entry["flip_rate"] == pytest.approx(expected)
        assert entry["flip_rate"] >= entry["flip_rate_by_attack"]["pgd"]["flip_rate"]
        assert entry["clean_accuracy"] == pytest.approx(
            tables[metric, "none"]["human_agrees"].astype(bool).mean()
        )
        radii = tables[metric, "min_eps"]["min_eps"].to_numpy()
        assert entry["median_radius"] in (pytest.approx(float(np.median(radii))), "inf")
        assert entry["queries_mean"] == pytest.approx(tables[metric, "square"]["queries"].mean())
        assert set(entry["attacks"]) == {"pgd", "apgd", "square", "min_eps"}
        black = json.loads(
            (tmp_path / "board" / "synthetic-res16" / f"{metric}.linf-blackbox.json").read_text()
        )
        assert black["attacks"] == ["square"]
        # the l2 Square is a black-box attack of the l2 threat model (ε = 1.0, as apgd_l2)
        l2 = json.loads((tmp_path / "board" / "synthetic-res16" / f"{metric}.l2.json").read_text())
        assert l2["attacks"] == ["square_l2"]
        assert l2["flip_rate"] == pytest.approx(tables[metric, "square_l2"]["flipped"].mean())
        assert l2["queries_mean"] == pytest.approx(tables[metric, "square_l2"]["queries"].mean())
        l2_black = json.loads(
            (tmp_path / "board" / "synthetic-res16" / f"{metric}.l2-blackbox.json").read_text()
        )
        assert l2_black["attacks"] == ["square_l2"]
    text = md.read_text()
    section = text.split("## synthetic · res16 · linf (")[1].split("##")[0]
    rows = [
        line for line in section.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")
    ]
    rates = [float(r.split("|")[4]) for r in rows]
    assert len(rates) == 2 and rates == sorted(rates)  # most robust first
