"""Attacks on similarity metrics, grouped by threat model (one file per attack).

White-box (gradients of the metric):
    :class:`~attackpsm.attacks.fgsm.FGSM` (Alg. 3), :class:`~attackpsm.attacks.pgd.PGD`
    (Alg. 1), :class:`~attackpsm.attacks.pgd.ReversePGD` (Appendix F),
    :class:`~attackpsm.attacks.stadv.StAdv` (Alg. 2), :class:`~attackpsm.attacks.stadv.StAdvPGD`.
Black-box (metric outputs only):
    :class:`~attackpsm.attacks.onepixel.OnePixel` (Su et al.).
Transfer (no access to the target): :class:`attackpsm.transfer.SavedAdversarial`.
No attack: :class:`~attackpsm.attacks.none.NoAttack` (clean accuracy).
"""

from attackpsm.attacks.base import Attack, AttackResult, rank_flipped, rank_loss, reverse_rank_loss
from attackpsm.attacks.fgsm import FGSM
from attackpsm.attacks.none import NoAttack
from attackpsm.attacks.onepixel import OnePixel
from attackpsm.attacks.pgd import PGD, ReversePGD
from attackpsm.attacks.stadv import StAdv, StAdvPGD

__all__ = [
    "FGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "NoAttack",
    "OnePixel",
    "ReversePGD",
    "StAdv",
    "StAdvPGD",
    "rank_flipped",
    "rank_loss",
    "reverse_rank_loss",
]
