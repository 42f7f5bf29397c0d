"""``attack=none``: no perturbation; evaluates the clean metric (Table 1)."""

from __future__ import annotations

from typing import Any

import torch

from attackpsm.attacks.base import Attack, AttackResult, Threat
from attackpsm.metrics.base import Metric


class NoAttack(Attack):
    """Returns the prey unchanged: ``s_adv = s_prey``, nothing flips."""

    name = "none"
    white_box = False
    can_stall = False
    threat = Threat(norm="none", access="none")
    family = "none"

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        with torch.no_grad():
            s_adv = metric.score(prepared_ref, prey)
        return AttackResult(prey, s_adv, torch.zeros_like(s_adv, dtype=torch.bool))
