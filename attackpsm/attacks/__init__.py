"""Attacks on similarity metrics, grouped by threat model.

White-box (gradients of the metric): :class:`~attackpsm.attacks.pgd.PGD`.
"""

from attackpsm.attacks.base import Attack, AttackResult, rank_loss
from attackpsm.attacks.pgd import PGD

__all__ = ["PGD", "Attack", "AttackResult", "rank_loss"]
