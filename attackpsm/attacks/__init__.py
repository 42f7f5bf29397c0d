"""Attacks on similarity metrics, grouped by threat model (one file per attack).

White-box (gradients of the metric):
    :class:`~attackpsm.attacks.fgsm.FGSM` (Alg. 3), :class:`~attackpsm.attacks.pgd.PGD`
    (Alg. 1), :class:`~attackpsm.attacks.pgd.ReversePGD` (Appendix F),
    :class:`~attackpsm.attacks.stadv.StAdv` (Alg. 2), :class:`~attackpsm.attacks.stadv.StAdvPGD`,
    :class:`~attackpsm.attacks.apgd.APGD` (Auto-PGD, ℓ∞/ℓ2).
Black-box (metric outputs only):
    :class:`~attackpsm.attacks.onepixel.OnePixel` (Su et al.),
    :class:`~attackpsm.attacks.square.Square` (Andriushchenko et al., ℓ∞/ℓ2).
Stronger evaluation: :class:`~attackpsm.attacks.eot.EoT` (stochastic metrics),
    :class:`~attackpsm.attacks.min_eps.MinEps` (per-triplet minimal ε, bisection),
    :class:`~attackpsm.attacks.fmn.FMN` (per-triplet minimal ℓ∞/ℓ2 perturbation, FMN),
    :class:`~attackpsm.attacks.cascade.Cascade` (``attack=autoattack``).
Transfer (no access to the target): :class:`~attackpsm.attacks.saved.SavedAdversarial`.
No attack: :class:`~attackpsm.attacks.none.NoAttack` (clean accuracy).
"""

from attackpsm.attacks.apgd import APGD
from attackpsm.attacks.base import Attack, AttackResult
from attackpsm.attacks.cascade import Cascade
from attackpsm.attacks.eot import EoT
from attackpsm.attacks.fgsm import FGSM
from attackpsm.attacks.fmn import FMN
from attackpsm.attacks.min_eps import MinEps
from attackpsm.attacks.none import NoAttack
from attackpsm.attacks.onepixel import OnePixel
from attackpsm.attacks.pgd import PGD, ReversePGD
from attackpsm.attacks.saved import SavedAdversarial
from attackpsm.attacks.square import Square
from attackpsm.attacks.stadv import StAdv, StAdvPGD
from attackpsm.protocol.twoafc import rank_flipped, rank_loss, reverse_rank_loss

__all__ = [
    "APGD",
    "FGSM",
    "FMN",
    "PGD",
    "Attack",
    "AttackResult",
    "Cascade",
    "EoT",
    "MinEps",
    "NoAttack",
    "SavedAdversarial",
    "OnePixel",
    "ReversePGD",
    "Square",
    "StAdv",
    "StAdvPGD",
    "rank_flipped",
    "rank_loss",
    "reverse_rank_loss",
]
