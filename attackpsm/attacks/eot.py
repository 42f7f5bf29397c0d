"""Expectation over transformation (Athalye et al., 2018) for stochastic metrics.

A stochastic metric such as E-LPIPS draws fresh random transformations at every
differentiated call, so one gradient is a noisy estimate. :class:`ExpectedScore` turns a
metric into the mean of ``samples`` such calls (:meth:`Metric.expected_score`): its gradient
is the average of ``samples`` gradients. Decisions (scores without a gradient) stay the
metric's own, under the triplet's common draws, so an attack run on it judges every flip
as the clean ranking was judged.
:class:`EoT` wraps any gradient attack (``attack=pgd_eot``) so that it sees that metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from attackpsm.attacks.base import Attack, AttackResult, Threat, Triplets, check_int, threat_of
from attackpsm.metrics.base import Metric


class ExpectedScore(Metric):
    """``metric`` averaged over ``samples`` draws; a deterministic metric is unchanged.

    Args:
        metric: the metric to average.
        samples: draws per score call.
    """

    def __init__(self, metric: Metric, samples: int):
        super().__init__()
        check_int("eot_samples", samples, minimum=1)
        self.metric = metric
        self.samples = int(samples)
        self.name = metric.name
        self.differentiable = metric.differentiable
        self.stochastic = metric.stochastic

    def prepare(self, ref: torch.Tensor) -> Any:
        return self.metric.prepare(ref)

    def score(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        return self.metric.expected_score(prepared, x, self.samples)


class EoT(Attack):
    """Run ``attack`` on the expected score over ``eot_samples`` draws of the metric.

    Args:
        attack: a gradient attack (e.g. :class:`~attackpsm.attacks.pgd.PGD`).
        eot_samples: draws averaged at every score and gradient (8).

    Example:
        >>> EoT(PGD(eps=0.03), eot_samples=8).run(elpips, elpips.prepare(ref), prey, s_other)
    """

    name = "eot"
    threat = Threat(norm="linf", access="white-box", randomised=True)  # see resolve_threat

    @classmethod
    def resolve_threat(cls, node: Mapping[str, Any]) -> Threat:
        """The inner attack's threat model, randomised (every score is an expectation)."""
        return replace(threat_of(node.get("attack") or {}), randomised=True)

    def __init__(self, attack: Attack, eot_samples: int = 8):
        check_int("eot_samples", eot_samples, minimum=1)
        self.attack = attack
        self.eot_samples = int(eot_samples)
        self.white_box = attack.white_box
        self.reverse = attack.reverse
        self.columns = attack.columns
        self.needs_triplets = attack.needs_triplets
        self.flip_on = attack.flip_on

    def run(
        self,
        metric: Metric,
        prepared_ref: Any,
        prey: torch.Tensor,
        s_other: torch.Tensor,
        triplets: Triplets | None = None,
    ) -> AttackResult:
        expected = ExpectedScore(metric, self.eot_samples)
        extra = {} if triplets is None else {"triplets": triplets}
        return self.attack.run(expected, prepared_ref, prey, s_other, **extra)
