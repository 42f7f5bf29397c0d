"""PGD's execution options (docs/performance.md, "PGD execution modes"): fixed shapes with a mask, compaction
every k steps, no host synchronisation, torch.compile -- the same per-triplet results as
the default loop that shrinks its batch at every step (Algorithm 1)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from attackpsm.attacks.pgd import PGD, ReversePGD
from attackpsm.engine import attack_batch
from attackpsm.metrics.classic import L2
from tests.conftest import select_prey, synthetic_batch

# (compact_every, check_every): fixed shapes without any synchronisation, fixed shapes with
# the early-stop test at every step, compaction every 3 steps (and the test with it), every
# 2 steps without the test
MODES = {"masked": (0, 0), "masked_check1": (0, 1), "compact3": (3, 3), "compact2_nocheck": (2, 0)}


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(num_triplets=12, seed=5)


def _table(metric, attack, batch) -> pd.DataFrame:
    rows, errors = attack_batch(metric, attack, batch)
    assert errors.empty and len(rows) == len(batch)
    return rows


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: PGD(**kw),
        lambda **kw: PGD(max_iterations=8, early_stop=False, **kw),
        lambda **kw: ReversePGD(eps=0.05, alpha=0.004, **kw),
    ],
    ids=["pgd30", "pgd8_no_early_stop", "reverse"],
)
def test_l2_tables_are_bit_identical(make, mode, batch):
    """On L2 every option gives the default's per-triplet table bit for bit: flips, the
    check index at which each flipped, s_adv, the 8-bit re-check and the statistics."""
    metric = L2()
    default = _table(metric, make(), batch)
    compact_every, check_every = MODES[mode]
    other = _table(metric, make(compact_every=compact_every, check_every=check_every), batch)
    assert 0 < default["flipped"].sum() < len(default) or not make().early_stop
    pd.testing.assert_frame_equal(other, default, check_exact=True)


def test_lpips_decisions_are_identical(lpips_alex):
    """LPIPS(Alex), real weights: convolutions round with the batch shape, so a frozen
    triplet's ``s_adv`` (scored in a batch of another size than the shrinking loop's) may
    differ in its last bits; the decisions -- flip and iteration -- are identical."""
    batch = synthetic_batch(num_triplets=8, seed=5)
    default = _table(lpips_alex, PGD(), batch)
    assert default["flipped"].any() and (default["iterations"] > 0).any()
    for mode, (compact_every, check_every) in MODES.items():
        other = _table(lpips_alex, PGD(compact_every=compact_every, check_every=check_every), batch)
        for column in ("triplet_id", "prey", "flipped", "iterations", "flipped_saved"):
            assert other[column].tolist() == default[column].tolist(), (mode, column)
        torch.testing.assert_close(
            torch.tensor(other["s_adv"].values),
            torch.tensor(default["s_adv"].values),
            rtol=1e-5,
            atol=0,
        )


def test_frozen_triplet_keeps_the_image_that_flipped_it():
    """With fixed shapes a triplet flipped at check k keeps the image of check k while the
    loop goes on for the others: it equals the same triplet attacked alone (where the loop
    stops at k)."""
    metric = L2()
    ref = torch.zeros(2, 3, 8, 8)
    prey = torch.full((2, 3, 8, 8), 0.2)
    s_other = torch.tensor([0.2**2 * 1.0001, 10.0])  # the first flips after a few steps
    attack = PGD(alpha=0.001, compact_every=0, check_every=0)
    out = attack.run(metric, metric.prepare(ref), prey, s_other)
    alone = attack.run(metric, metric.prepare(ref[:1]), prey[:1], s_other[:1])
    assert out.flipped.tolist() == [True, False]
    assert 0 < int(out.columns["iterations"][0]) < 29 and int(out.columns["iterations"][1]) == 29
    assert torch.equal(out.adv[:1], alone.adv) and torch.equal(out.s_adv[:1], alone.s_adv)


def test_no_host_synchronisation_in_the_loop(monkeypatch, batch):
    """``compact_every=0, check_every=0``: the loop never reads a device value on the host
    (``.item()``, ``bool(tensor)``, ``nonzero``, ``.tolist()`` all raise here)."""
    metric = L2()
    prepared, prey, s_other = select_prey(metric, batch)
    expected = PGD().run(metric, prepared, prey, s_other)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the PGD loop")

    for name in ("item", "__bool__", "nonzero", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = PGD(compact_every=0, check_every=0).run(metric, prepared, prey, s_other)
    monkeypatch.undo()
    assert torch.equal(out.adv, expected.adv) and torch.equal(out.flipped, expected.flipped)
    assert torch.equal(out.columns["iterations"], expected.columns["iterations"])
    # the default loop does synchronise (the test above can fail)
    monkeypatch.setattr(torch.Tensor, "__bool__", forbidden)
    with pytest.raises(AssertionError, match="host synchronisation"):
        PGD().run(metric, prepared, prey, s_other)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog, batch):
    """A compiler that fails: the attack says why, runs eagerly and decides the same."""
    metric = L2()
    prepared, prey, s_other = select_prey(metric, batch)
    expected = PGD().run(metric, prepared, prey, s_other)

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler found (injected)")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    attack = PGD(compile=True, compact_every=0, check_every=0)
    with caplog.at_level(logging.WARNING, logger="attackpsm"):
        out = attack.run(metric, prepared, prey, s_other)
    assert "torch.compile (mode=default) of metric 'l2' failed" in caplog.text
    assert "no C++ compiler found (injected)" in caplog.text
    assert attack.compile_errors == ["RuntimeError: no C++ compiler found (injected)"]
    assert torch.equal(out.adv, expected.adv) and torch.equal(out.flipped, expected.flipped)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"compact_every": -1}, "compact_every must be an integer >= 0"),
        ({"check_every": 1.5}, "check_every must be an integer >= 0"),
        (
            {"compile": "fast"},
            r"compile must be one of \[False, True, 'default', 'reduce-overhead'",
        ),
    ],
)
def test_bad_execution_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PGD(**kwargs)


@pytest.mark.slow
def test_compiled_l2_decides_the_same(batch):
    """torch.compile for real (slow: compiling takes tens of seconds on a CPU), two compiled
    attacks in one process (the second reuses the first's compiled graphs). Compiled
    kernels may round differently, so decisions are compared, not bits. Skips, with the
    compiler's reason, where this machine cannot compile."""
    metric = L2()
    default = _table(metric, PGD(max_iterations=10), batch)
    for i, kwargs in enumerate(({}, {"compact_every": 0, "check_every": 0})):
        attack = PGD(max_iterations=10, compile=True, **kwargs)
        compiled = _table(metric, attack, batch)
        if attack.compile_errors and i == 0:
            pytest.skip(f"torch.compile unavailable here: {attack.compile_errors}")
        assert not attack.compile_errors  # compiling worked once: it works again
        assert compiled["flipped"].tolist() == default["flipped"].tolist()
        assert compiled["iterations"].tolist() == default["iterations"].tolist()


def test_bench_engine_mode_rows(lpips_alex):
    """``python -m attackpsm bench modes``: one row per mode, decisions compared
    with the default loop triplet by triplet."""
    from attackpsm.commands.bench.modes import engine_modes, format_engine_modes
    from attackpsm.commands.bench.workloads import Workload

    w = Workload("pgd", "lpips_alex", 32, "pgd", {"max_iterations": 6}, triplets=6, batch_size=4)
    rows = engine_modes(w, torch.device("cpu"), ["shrink", "masked", "compact:2"], [], passes=1)
    assert [r["mode"] for r in rows] == ["shrink", "masked", "compact:2"]
    assert all(r["same_decisions"] == r["triplets"] == 6 for r in rows)
    assert rows[0]["identical_table"] and rows[0]["vs_shrink"] == 1.0
    assert all(r["triplets_per_s"] > 0 and not r["compile_errors"] for r in rows)
    assert "| masked | cpu | 6 |" in format_engine_modes(rows)


@pytest.mark.parametrize("mode", ["fixed", "compact:0", "compact:x", "masked:-1"])
def test_bench_bad_engine_mode_is_a_clear_error(mode, tmp_path):
    from attackpsm.commands.bench import main
    from attackpsm.commands.bench.modes import parse_engine_mode

    with pytest.raises(ValueError, match=r"unknown engine mode .*valid: shrink \| masked"):
        parse_engine_mode(mode)
    with pytest.raises(SystemExit, match="unknown engine mode"):
        main(["modes", mode, "--device", "cpu", "--out", str(tmp_path / "b.json")])


def test_execution_options_as_config_overrides(cfg_factory):
    """``attack=pgd +attack.compact_every=0 +attack.check_every=0`` runs end to end."""
    from tests.conftest import assert_config_runs

    assert_config_runs(cfg_factory, "pgd", ["+attack.compact_every=0", "+attack.check_every=0"])


class _NaNAfterFirstStep(L2):
    """L2 whose distance is NaN for one triplet's reference at every candidate but its two
    clean distortions (a metric breaking its contract mid-attack)."""

    def __init__(self, ref, p0, p1):
        super().__init__()
        self.poisoned = (ref, p0, p1)

    def score(self, prepared, x):
        ref, p0, p1 = self.poisoned
        mine = (prepared == ref).flatten(1).all(1)
        clean = (x == p0).flatten(1).all(1) | (x == p1).flatten(1).all(1)
        return torch.where(mine & ~clean, float("nan"), super().score(prepared, x))


def test_nan_without_the_range_check_is_a_recorded_skip(batch):
    """With ``check_every=0`` the candidate is not range-checked (no synchronisation): a NaN
    distance during the attack still ends as a recorded skip, the others as by default."""
    metric = _NaNAfterFirstStep(batch.ref[:1], batch.p0[:1], batch.p1[:1])
    rows, errors = attack_batch(metric, PGD(compact_every=0, check_every=0), batch)
    assert errors["triplet_id"].tolist() == [batch.triplet_id[0]]
    assert "non-finite distance s_adv" in errors["reason"].iloc[0]
    expected = _table(L2(), PGD(), batch.take(slice(1, len(batch))))
    pd.testing.assert_frame_equal(rows, expected, check_exact=True)


def test_the_inner_loop_scores_unchecked_and_the_boundary_still_checks(batch, monkeypatch):
    """``Metric.score`` refuses an image off the ``[-1, 1]`` scale; ``score_unchecked`` is
    the same distance without the check, and it is what PGD's loop calls when it avoids
    host synchronisations (``check_every != 1``): no candidate of that loop is checked."""
    from attackpsm.metrics import base

    metric = L2()
    prepared, prey, s_other = select_prey(metric, batch)
    on_255_scale = (batch.p0 + 1) * 127.5
    with pytest.raises(ValueError, match=r"metric 'l2' expects the candidate .* got values in"):
        metric.score(prepared, on_255_scale)
    assert torch.equal(metric.score_unchecked(prepared, prey), metric.score(prepared, prey))
    assert metric.score_unchecked(prepared, on_255_scale).isfinite().all()

    roles: list[str] = []
    check = base.check_images
    monkeypatch.setattr(
        base,
        "check_images",
        lambda images, name, role: (roles.append(role), check(images, name, role)),
    )
    unchecked = PGD(compact_every=0, check_every=0).run(metric, prepared, prey, s_other)
    assert roles == []
    checked = PGD().run(metric, prepared, prey, s_other)
    assert roles and set(roles) == {"the candidate"}
    assert torch.equal(unchecked.flipped, checked.flipped)
