"""FMN (Pintor et al., 2021) on the 2AFC rank: ε* per triplet, checked against foolbox's.

The rank is wrapped as a two-class classifier with logits ``(-s_adv, -s_other)`` and label
0, as in ``tests/test_blackbox_parity.py``: foolbox's FMN "misclassifies" exactly when
``s_adv > s_other``, the paper's flip. Images map ``[-1, 1] -> [0, 1]`` at the wrapper's
edge, so foolbox's norms are half of ours; its ε* is measured here on its returned image,
on our scale, and a triplet counts as flipped only if our rule says so.
"""

from __future__ import annotations

import math

import pytest
import torch

from attackpsm.attacks.fmn import FMN, cosine_annealing
from attackpsm.metrics.base import select
from attackpsm.protocol.twoafc import rank_flipped
from tests.conftest import assert_config_runs, select_prey, synthetic_batch

NUM, SIZE, STEPS = 12, 32, 100


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@pytest.fixture(scope="module")
def triplets(lpips_alex):
    batch = synthetic_batch(NUM, seed=5, size=SIZE, variant="calibrated")
    prepared, prey, s_other = select_prey(lpips_alex, batch)
    return lpips_alex, prepared, prey, s_other


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_star_is_the_norm_of_a_flipping_perturbation(triplets, norm):
    """Checked independently of the attack's bookkeeping: the returned image flips the rank
    by our rule, and its perturbation has exactly the reported norm."""
    metric, prepared, prey, s_other = triplets
    out = FMN(norm=norm, steps=30).run(metric, prepared, prey, s_other)
    eps_star = out.columns["eps_star"]
    with torch.no_grad():
        flipped = rank_flipped(metric.score(prepared, out.adv), s_other)
    assert out.flipped.sum() > NUM // 2
    assert torch.equal(flipped, out.flipped)
    size = _size(out.adv - prey, norm)
    assert torch.allclose(size[out.flipped], eps_star[out.flipped], rtol=1e-5, atol=1e-7)
    assert torch.isinf(eps_star[~out.flipped]).all()
    assert (out.adv >= -1).all() and (out.adv <= 1).all()
    assert (out.columns["queries"] == 31).all()


def test_more_steps_never_raise_eps_star_median(triplets):
    metric, prepared, prey, s_other = triplets
    few = FMN(steps=10).run(metric, prepared, prey, s_other).columns["eps_star"]
    many = FMN(steps=60).run(metric, prepared, prey, s_other).columns["eps_star"]
    assert many.median() <= few.median()


def test_cosine_annealing_ends():
    assert cosine_annealing(2.0, 0.02, 0, 100) == 2.0
    assert math.isclose(cosine_annealing(2.0, 0.02, 100, 100), 0.02)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"norm": "l1"}, "norm must be one of"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"gamma": 1.5}, "gamma must be < 1"),
        ({"alpha": -1.0}, "alpha must be > 0"),
    ],
)
def test_bad_parameters_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FMN(**kwargs)


def test_config_runs_end_to_end(cfg_factory):
    assert_config_runs(cfg_factory, "fmn", ["attack.steps=5"])


foolbox = pytest.importorskip("foolbox")


class RankAsClassifier(torch.nn.Module):
    """The 2AFC rank of a batch of triplets as a classifier on ``[0, 1]`` images; each
    input finds its triplet as the nearest prey (foolbox attacks the whole batch)."""

    def __init__(self, metric, prepared, prey, s_other):
        super().__init__()
        self.metric, self.prepared, self.prey, self.s_other = metric, prepared, prey, s_other

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = x01 * 2 - 1
        idx = (x.detach()[:, None] - self.prey[None]).flatten(2).abs().amax(2).min(1).indices
        s_adv = self.metric.score(select(self.prepared, idx), x)
        return torch.stack([-s_adv, -self.s_other[idx]], dim=1)


def _theirs(triplets, norm: str) -> torch.Tensor:
    metric, prepared, prey, s_other = triplets
    model = foolbox.PyTorchModel(
        RankAsClassifier(metric, prepared, prey, s_other).eval(), bounds=(0, 1)
    )
    attack = (foolbox.attacks.LInfFMNAttack if norm == "linf" else foolbox.attacks.L2FMNAttack)(
        steps=STEPS
    )
    adv = attack.run(model, (prey + 1) / 2, torch.zeros(len(prey), dtype=torch.long)) * 2 - 1
    with torch.no_grad():
        flipped = rank_flipped(metric.score(prepared, adv), s_other)
    size = _size(adv - prey, norm)
    return torch.where(flipped, size, torch.full_like(size, math.inf))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_median_eps_star_no_larger_than_foolbox(triplets, norm):
    """Same triplets, same metric (LPIPS(Alex), real weights), same number of gradient
    steps. Ties: both implement Algorithm 1, so on ℓ∞ they agree up to the float rounding
    of foolbox's [0, 1] scale (relative 1e-4). On ℓ2 foolbox 3.3.4 never projects onto
    the ε ball (its ``L2FMNAttack.project`` rescales by ``norms / norms``), so its ε* is
    the first flipping point of an unconstrained walk."""
    metric, prepared, prey, s_other = triplets
    theirs = _theirs(triplets, norm)
    ours = FMN(norm=norm, steps=STEPS).run(metric, prepared, prey, s_other).columns["eps_star"]
    assert torch.isfinite(theirs).sum() >= NUM // 2
    assert ours.median() <= theirs.median() * (1 + 1e-4), (
        f"{norm}: our median ε* {ours.median():.6g}, foolbox's {theirs.median():.6g}"
    )
    print(f"{norm}: median ε* ours {ours.median():.6g}, foolbox {theirs.median():.6g}")
