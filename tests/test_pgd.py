"""PGD (Algorithm 1) invariants on real LPIPS(Alex) and on L2."""

from __future__ import annotations

import pytest
import torch

from attackpsm.attacks.pgd import PGD
from attackpsm.data.base import collate
from attackpsm.engine import attack_batch
from attackpsm.metrics.classic import L2
from attackpsm.protocol.twoafc import rank_loss
from tests.conftest import select_prey, synthetic_batch


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(num_triplets=24, seed=3)


@pytest.mark.parametrize("metric_name", ["lpips_alex", "l2"])
def test_pgd_invariants(metric_name, batch, lpips_alex):
    metric = lpips_alex if metric_name == "lpips_alex" else L2()
    attack = PGD(eps=0.03, alpha=0.001, max_iterations=30)
    prepared, prey, s_other = select_prey(metric, batch)
    out = attack.run(metric, prepared, prey, s_other)

    # the budget holds and the image stays valid
    assert (out.adv - prey).abs().max() <= 0.03 + 1e-6
    assert out.adv.min() >= -1 and out.adv.max() <= 1
    # 30 checks, as the released loop: iterations counts gradient steps, 0..29
    assert out.columns["iterations"].min() >= 0 and out.columns["iterations"].max() <= 29
    # flipped <=> s_adv > s_other
    assert torch.equal(out.flipped, out.s_adv > s_other)
    # re-scoring the returned adversarial image gives s_adv
    with torch.no_grad():
        rescored = metric.score(prepared, out.adv)
    torch.testing.assert_close(rescored, out.s_adv, rtol=1e-4, atol=1e-6)
    # early stop: a triplet that did not flip used every check
    assert (out.columns["iterations"][~out.flipped] == 29).all()
    if metric_name == "lpips_alex":
        assert out.flipped.any(), "PGD at eps=0.03 should flip some LPIPS(Alex) triplets"


def test_pgd_flips_at_first_check_when_already_flipped():
    metric = L2()
    ref = torch.zeros(2, 3, 8, 8)
    prey = torch.full((2, 3, 8, 8), 0.5)
    s_other = torch.tensor([0.1, 10.0])  # first: prey is already farther than other
    out = PGD().run(metric, metric.prepare(ref), prey, s_other)
    assert out.flipped.tolist() == [True, False]
    assert out.columns["iterations"][0] == 0
    assert torch.equal(out.adv[0], prey[0])


def test_pgd_step_follows_sign_of_eq1_gradient():
    """One step moves every value by exactly alpha in the direction that increases Eq. 1."""
    metric = L2()
    torch.manual_seed(0)
    ref = torch.rand(1, 3, 8, 8) * 0.2
    prey = ref + 0.1  # d = 0.01, every gradient component nonzero
    s_other = torch.tensor([1.0])
    out = PGD(alpha=0.002, max_iterations=1, checks=2, early_stop=True).run(
        metric, metric.prepare(ref), prey, s_other
    )
    step = out.adv - prey
    torch.testing.assert_close(step, torch.full_like(step, 0.002), rtol=0, atol=1e-6)
    assert rank_loss(s_other, metric(ref, out.adv)) > rank_loss(s_other, metric(ref, prey))


def test_fixed_step_mode_runs_all_steps():
    metric = L2()
    ref = torch.zeros(2, 3, 8, 8)
    prey = torch.full((2, 3, 8, 8), 0.5)
    s_other = torch.tensor([0.1, 10.0])
    out = PGD(eps=0.01, alpha=0.001, max_iterations=10, early_stop=False).run(
        metric, metric.prepare(ref), prey, s_other
    )
    assert (out.columns["iterations"] == 10).all()
    torch.testing.assert_close(
        (out.adv - prey).abs().amax(dim=(1, 2, 3)), torch.full((2,), 0.01), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "kwargs", [{"eps": -0.01}, {"alpha": 0.0}, {"alpha": -1e-3}, {"max_iterations": -1}]
)
def test_bad_parameters_are_clear_errors(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PGD(**kwargs)


def test_batched_equals_one_at_a_time(batch, lpips_alex):
    attack = PGD(max_iterations=10)
    rows, _ = attack_batch(lpips_alex, attack, batch)
    singles = []
    for i in range(6):
        one = collate(
            [
                {
                    "triplet_id": batch.triplet_id[i],
                    "subset": batch.subset[i],
                    "judge": float(batch.judge[i]),
                    "ref": batch.ref[i],
                    "p0": batch.p0[i],
                    "p1": batch.p1[i],
                }
            ]
        )
        r, _ = attack_batch(lpips_alex, attack, one)
        singles.append(r)
    for i, r in enumerate(singles):
        assert bool(r["flipped"].iloc[0]) == bool(rows["flipped"].iloc[i])
        assert r["iterations"].iloc[0] == rows["iterations"].iloc[i]
        assert r["s_adv"].iloc[0] == pytest.approx(rows["s_adv"].iloc[i], rel=1e-4, abs=1e-6)
