"""Stand-in attacks with a known result, for tests of the engine's bookkeeping."""

from __future__ import annotations

from attackpsm.attacks.base import Attack, AttackResult
from attackpsm.protocol.twoafc import rank_flipped


class Shift(Attack):
    """Adds a fixed amount to every value of the prey."""

    def __init__(self, step: float):
        self.step = step

    def run(self, metric, prepared_ref, prey, s_other):
        adv = prey + self.step
        s_adv = metric.score(prepared_ref, adv)
        return AttackResult(adv, s_adv, rank_flipped(s_adv, s_other))
