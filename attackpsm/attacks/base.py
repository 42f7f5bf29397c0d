"""Shared mechanics of the attacks on a 2AFC triplet (Sec. 3, "Attack Models").

The engine picks the prey -- the distortion the metric ranks closer to the reference --
and hands each attack the prey, the prepared reference and ``s_other``. An attack
returns the adversarial image, its score ``s_adv`` and whether the rank flipped
(``s_adv > s_other``; reversed for the reverse attack of Appendix F). The prey rule, the
flip rule and the losses of Eq. 1 and Eq. 7 live in :mod:`attackpsm.twoafc`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from attackpsm.metrics.base import Metric


@dataclass
class AttackResult:
    """What an attack returns for a batch of ``N`` preys.

    Attributes:
        adv: adversarial images ``(N, 3, H, W)`` in ``[-1, 1]``.
        s_adv: metric distance of ``adv`` to the reference ``(N,)``.
        flipped: ``(N,)`` bool, the rank flipped (Sec. 3: ``s_adv > s_other``).
        columns: per-triplet columns this attack adds to the results table.
    """

    adv: torch.Tensor
    s_adv: torch.Tensor
    flipped: torch.Tensor
    columns: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Triplets:
    """Which triplets a batch of ``N`` preys belongs to, for attacks that need to know.

    Attributes:
        triplet_id: the ``N`` triplet ids, in the order of the preys.
        prey_is_p1: ``(N,)`` bool, the prey is ``p1`` (else ``p0``), as the engine chose it.
    """

    triplet_id: list[str]
    prey_is_p1: torch.Tensor

    def __len__(self) -> int:
        return len(self.triplet_id)

    def take(self, index: torch.Tensor) -> Triplets:
        """The triplets at ``index`` (a 1-D tensor of positions), in that order."""
        positions = index.detach().cpu().tolist()
        return Triplets(
            [self.triplet_id[i] for i in positions],
            self.prey_is_p1[index.to(self.prey_is_p1.device)],
        )


class Attack:
    """Base class. Subclasses implement :meth:`run` and declare their threat model.

    Attributes:
        name: config name (``attack=<name>``).
        white_box: uses gradients of the metric (False: may only read metric outputs).
        columns: names of the extra per-triplet columns :meth:`run` returns.
        reverse: the prey is the *less* similar distortion and success is
            ``s_adv < s_other`` (Appendix F); the engine picks the prey accordingly.
        needs_triplets: :meth:`run` takes a ``triplets`` keyword (:class:`Triplets`): which
            triplets the preys belong to (``attack=saved`` reads each one's saved image,
            ``attack=certify`` seeds each one's noise). Most attacks need only the prey.
        can_stall: the returned image is where the attack's search ended, so an unflipped
            image that never left the prey means the search stalled (the engine's
            ``stalled`` column). False where the prey is returned on purpose (``none``,
            ``certify``, ``min_eps``'s unflipped triplets, ``saved``'s missing images).
    """

    name = "attack"
    white_box = True
    columns: tuple[str, ...] = ()
    reverse = False
    needs_triplets = False
    can_stall = True

    def run(
        self, metric: Metric, prepared_ref: Any, prey: torch.Tensor, s_other: torch.Tensor
    ) -> AttackResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise a clear error for a budget or step that makes no sense."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"attack parameter {name} must be {bound}, got {value}")


# Images live on the [-1, 1] scale (Sec. 3): no ℓ∞ budget or step can exceed its width 2.
LINF_MAX = 2.0
# FGSM's scan evaluates max_eps / eps_step budgets per triplet (Alg. 3); 20,000 covers the
# whole [-1, 1] scale at the paper's 0.0001 step and keeps the scan's memory bounded.
MAX_FGSM_STEPS = 20_000


def check_at_most(name: str, value: float, bound: float, why: str) -> None:
    """Raise a clear error, naming the bound and why, for a value above ``bound``."""
    if value > bound:
        raise ValueError(f"attack parameter {name} must be <= {bound} ({why}), got {value}")


def check_int(name: str, value: Any, minimum: int, note: str = "") -> None:
    """Raise a clear error unless ``value`` is a whole number ``>= minimum``.

    ``note`` (e.g. ``"DE/rand/1"``) says why the bound is what it is. Floats such as ``3.0``
    pass (Hydra may hand them over); ``True``/``False`` and non-numbers do not.
    """
    why = f" ({note})" if note else ""
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or value < minimum:
        raise ValueError(
            f"attack parameter {name} must be an integer >= {minimum}{why}, got {value!r}"
        )
