"""Parity with a public implementation: our Square and APGD flip at least as many triplets.

The 2AFC rank is wrapped as a two-class classifier with logits ``(-s_adv, -s_other)`` and
label 0: it "misclassifies" exactly when ``s_adv > s_other``, the paper's flip (Sec. 3,
"Attack Models"). ``torchattacks`` (PyPI) then attacks the same triplets, with the same
metric (LPIPS(Alex), real weights) and the same budget as ours. Our images live on the
``[-1, 1]`` scale and torchattacks' on ``[0, 1]``: the wrapper maps at its edge, so a
budget ``ε`` here is ``ε / 2`` there (ℓ∞ and ℓ2 alike).

torchattacks attacks any subset of its batch; the wrapper finds each image's triplet as
the prey nearest in ℓ∞ (and checks that it lies within the budget), so one batched call
attacks all triplets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from attackpsm.attacks.apgd import APGD
from attackpsm.attacks.square import Square
from attackpsm.metrics.base import select
from attackpsm.protocol.twoafc import rank_flipped
from tests.conftest import select_prey, synthetic_batch

torchattacks = pytest.importorskip("torchattacks")

CONF = Path(__file__).resolve().parents[1] / "conf" / "attack"
NUM, SIZE, LINF_EPS, L2_EPS, QUERIES = 24, 32, 0.01, 0.5, 300


class RankAsClassifier(torch.nn.Module):
    """The 2AFC rank of a batch of triplets as a classifier on ``[0, 1]`` images."""

    def __init__(self, metric, prepared, prey: torch.Tensor, s_other: torch.Tensor, eps, norm):
        super().__init__()
        self.metric, self.prepared, self.prey, self.s_other = metric, prepared, prey, s_other
        self.eps, self.norm = eps, norm

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = x01 * 2 - 1  # [0, 1] -> the package's [-1, 1]
        diff = (x.detach()[:, None] - self.prey[None]).flatten(2)
        dist = diff.abs().amax(2) if self.norm == "linf" else diff.norm(dim=2)
        near, idx = dist.min(1)
        assert (near <= self.eps * (1 + 1e-4) + 1e-5).all(), "an image left every prey's ball"
        s_adv = self.metric.score(select(self.prepared, idx), x)
        return torch.stack([-s_adv, -self.s_other[idx]], dim=1)


@pytest.fixture(scope="module")
def triplets(lpips_alex):
    batch = synthetic_batch(NUM, seed=5, size=SIZE, variant="calibrated")
    prepared, prey, s_other = select_prey(lpips_alex, batch)
    return lpips_alex, prepared, prey, s_other


def _theirs(make, triplets, eps: float, norm: str) -> int:
    """Triplets flipped by a torchattacks attack, judged by our rule on its output."""
    metric, prepared, prey, s_other = triplets
    model = RankAsClassifier(metric, prepared, prey, s_other, eps, norm).eval()
    labels = torch.zeros(len(prey), dtype=torch.long)
    with torch.no_grad():
        assert (model((prey + 1) / 2).argmax(1) == labels).all()  # clean: no flip
    with torch.random.fork_rng():  # torchattacks seeds the global generator
        adv = make(model)((prey + 1) / 2, labels).detach() * 2 - 1
    delta = (adv - prey).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-4) + 1e-5).all()
    with torch.no_grad():
        return int(rank_flipped(metric.score(prepared, adv), s_other).sum())


def _ours(attack, triplets) -> int:
    metric, prepared, prey, s_other = triplets
    return int(attack.run(metric, prepared, prey, s_other).flipped.sum())


@pytest.mark.parametrize(
    "norm, config, eps", [("linf", "square", LINF_EPS), ("l2", "square_l2", L2_EPS)]
)
def test_square_with_shipped_defaults_flips_as_many_as_torchattacks(triplets, norm, config, eps):
    """Our Square with the ``p_init`` of ``conf/attack/<config>.yaml`` vs torchattacks'
    Square with its own defaults (p_init 0.8, rescaled schedule), same queries."""
    p_init = OmegaConf.load(CONF / f"{config}.yaml").p_init
    theirs = _theirs(
        lambda m: torchattacks.Square(
            m, norm="Linf" if norm == "linf" else "L2", eps=eps / 2, n_queries=QUERIES, seed=0
        ),
        triplets,
        eps,
        norm,
    )
    ours = _ours(Square(eps=eps, max_queries=QUERIES, p_init=p_init, norm=norm), triplets)
    assert 0 < theirs < NUM  # the budget leaves room either way
    assert ours >= theirs - 1, f"ours flipped {ours}, torchattacks {theirs}"


def test_apgd_flips_as_many_as_torchattacks(triplets):
    """APGD-CE with its random start (one run, 30 steps) vs ours from the prey and from a
    random start."""
    theirs = _theirs(
        lambda m: torchattacks.APGD(m, eps=LINF_EPS / 2, steps=30, n_restarts=1, seed=0),
        triplets,
        LINF_EPS,
        "linf",
    )
    assert 0 < theirs < NUM
    for attack in (APGD(eps=LINF_EPS), APGD(eps=LINF_EPS, random_start=True)):
        ours = _ours(attack, triplets)
        assert ours >= theirs - 1, f"ours flipped {ours}, torchattacks {theirs}"
