"""Shared mechanics of the attacks on a 2AFC triplet (Sec. 3, "Attack Models").

The engine picks the prey -- the distortion the metric ranks closer to the reference --
and hands each attack the prey, the prepared reference and ``s_other``. An attack
returns the adversarial image, its score ``s_adv`` and whether the rank flipped
(``s_adv > s_other``; reversed for the reverse attack of Appendix F). The prey rule, the
flip rule and the losses of Eq. 1 and Eq. 7 live in :mod:`attackpsm.protocol.twoafc`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from attackpsm.images import saved
from attackpsm.metrics.base import Metric
from attackpsm.protocol.twoafc import rank_flipped

# What an attack's stop rule judges (``attack.flip_on``): the float image the attack holds
# (the paper, whose released PGD decided on float tensors) or the 8-bit image it would save
# (:func:`attackpsm.images.saved`).
FLIP_ON = ("float", "saved")


@dataclass
class AttackResult:
    """What an attack returns for a batch of ``N`` preys.

    Attributes:
        adv: adversarial images ``(N, 3, H, W)`` in ``[-1, 1]``.
        s_adv: metric distance of ``adv`` to the reference ``(N,)``.
        flipped: ``(N,)`` bool, the rank flipped (Sec. 3: ``s_adv > s_other``).
        columns: per-triplet columns this attack adds to the results table.
        stopped: ``(N,)`` bool, what the stop rule decided (``attack.flip_on``); ``None``:
            the same as ``flipped`` (``flip_on="float"``). A cascade, restarts and a
            bisection go on where it is False.
    """

    adv: torch.Tensor
    s_adv: torch.Tensor
    flipped: torch.Tensor
    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped: torch.Tensor | None = None

    @property
    def success(self) -> torch.Tensor:
        """The stop rule's verdict: :attr:`stopped`, or :attr:`flipped` without one."""
        return self.flipped if self.stopped is None else self.stopped


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


def check_flip_on(value: Any) -> str:
    """``attack.flip_on`` validated: ``"float"`` or ``"saved"``."""
    if value not in FLIP_ON:
        raise ValueError(f"attack parameter flip_on must be one of {list(FLIP_ON)}, got {value!r}")
    return str(value)


def judge(
    metric: Metric | Callable[[Any, torch.Tensor], torch.Tensor],
    prepared: Any,
    x: torch.Tensor,
    s_other: torch.Tensor,
    reverse: bool = False,
    flip_on: str = "float",
    s: torch.Tensor | None = None,
    stochastic: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An attack's stop rule on candidates ``x``: ``(stop, s_float)``.

    ``s_float`` is the decision score of the float image (``s_adv``): ``s`` itself when
    given by a deterministic metric, else a score without gradient -- for a randomised
    metric that is the score under the triplet's common draws, never the draws of a
    gradient step (:class:`~attackpsm.metrics.base.Metric`). ``stop`` is the flip
    (:func:`~attackpsm.protocol.twoafc.rank_flipped`) of the float image (``flip_on="float"``, the
    paper) or of the 8-bit image the attack would save (``"saved"``,
    :func:`attackpsm.images.saved`).

    Args:
        metric: the metric, or the score function an attack calls in its place.
        s: the score the attack already computed for ``x`` (saves a call).
        stochastic: the metric is randomised (default: ``metric.stochastic``).
    """
    score = metric.score if isinstance(metric, Metric) else metric
    if stochastic is None:
        stochastic = bool(getattr(metric, "stochastic", False))
    with torch.no_grad():
        x = x.detach()
        s_float = score(prepared, x) if (s is None or stochastic) else s.detach()
        s_check = score(prepared, saved(x)) if flip_on == "saved" else s_float
    return rank_flipped(s_check, s_other, reverse), s_float


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
        flip_on: what an attack with a stop rule stops on (:data:`FLIP_ON`): ``"float"``,
            the float image's flip (the paper), or ``"saved"``, the flip of the 8-bit image
            it would save; an attack without a stop rule keeps ``"float"``. Whatever it
            stops on, :attr:`AttackResult.flipped` is the float image's flip.
    """

    name = "attack"
    white_box = True
    columns: tuple[str, ...] = ()
    reverse = False
    needs_triplets = False
    can_stall = True
    flip_on = "float"

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
