"""Shared mechanics of the attacks on a 2AFC triplet (Sec. 3, "Attack Models").

The engine picks the prey -- the distortion the metric ranks closer to the reference --
and hands each attack the prey, the prepared reference and ``s_other``. An attack
returns the adversarial image, its score ``s_adv`` and whether the rank flipped
(``s_adv > s_other``; reversed for the reverse attack of Appendix F). The prey rule, the
flip rule and the losses of Eq. 1 and Eq. 7 live in :mod:`attackpsm.protocol.twoafc`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from attackpsm.images import saved
from attackpsm.metrics.base import Metric
from attackpsm.protocol.twoafc import rank_flipped

# What an attack's stop rule judges (``attack.flip_on``): the float image the attack holds
# (the paper, whose released PGD decided on float tensors) or the 8-bit image it would save
# (:func:`attackpsm.images.saved`).
FLIP_ON = ("float", "saved")

# What an attacker may read of the metric (:attr:`Threat.access`): its gradients, its outputs
# only, nothing (images crafted on another metric), or no attack at all -- a certificate of a
# smoothed metric (``attack=certify``) or the clean accuracy (``attack=none``).
ACCESS = ("white-box", "black-box", "transfer", "certified", "none")
# The perturbation sets ranked on the leaderboard: ℓp balls of radius ε on the [-1, 1] scale.
RANKED_NORMS = ("linf", "l2")


@dataclass(frozen=True)
class Threat:
    """The threat model of an attack: the perturbation set, the budget and the access.

    Each attack class declares one as its ``threat`` attribute; :func:`threat_of` reads it
    for a config node, with the node's values filled in (the norm an ``attack.norm`` picks,
    the budget ``eps``, the perturbed image ``attack.target``). The leaderboard and the run
    keys of the loggers take every threat label from here.

    Attributes:
        norm: the perturbation set: ``linf`` or ``l2`` (a ball of radius ε on the
            ``[-1, 1]`` scale), ``l0`` (a few pixels, One-pixel), ``flow`` (a smooth flow
            field, stAdv, Eq. 5), ``flow+linf`` (stAdv then an ℓ∞ ball), ``none``.
        access: one of :data:`ACCESS`.
        budget: the attack parameter that holds the ε of ``norm`` (``eps``, FGSM's
            ``max_eps``, ``min_eps``'s ``eps_max``, stAdv+PGD's ``pgd_eps``); ``None``
            where the attack has none (minimum-norm attacks, stAdv, One-pixel, no attack).
        norm_param: the attack parameter that picks the norm (``norm`` for the attacks
            that take ℓ∞ or ℓ2), whose default is ``norm``; ``None``: the norm is fixed.
        radius: the per-triplet column holding the minimal budget that flips the rank, for
            attacks whose result is that radius rather than a flip at a fixed ε
            (``min_eps``, FMN's ``eps_star``); ``None`` otherwise.
        reverse: the attack's goal is the reverse rank flip of Appendix F (not a
            robustness attack).
        randomised: every score and gradient is an expectation over the draws of a
            randomised metric (EoT, or ``eot_samples > 1``).
        eps: the budget's value in a config ([-1, 1] scale), or ``None``.
        target: the perturbed image (``attack.target``: ``prey``, ``reference``, ``both``).
    """

    norm: str
    access: str
    budget: str | None = None
    norm_param: str | None = None
    radius: str | None = None
    reverse: bool = False
    randomised: bool = False
    eps: float | None = None
    target: str = "prey"

    def __post_init__(self) -> None:
        if self.access not in ACCESS:
            raise ValueError(f"threat access must be one of {list(ACCESS)}, got {self.access!r}")

    @property
    def label(self) -> str:
        """The run key ``threat_model``: ``linf``, ``l2`` (white-box), ``linf-blackbox``,
        ``l2-blackbox``, ``l0-blackbox`` (metric outputs only), ``flow``, ``flow+linf``,
        ``transfer``, ``certified-l2``, ``none``. The target is not part of it."""
        if self.access in ("transfer", "none"):
            return self.access
        if self.access == "certified":
            return f"certified-{self.norm}"
        return f"{self.norm}-blackbox" if self.access == "black-box" else self.norm

    @property
    def ranked(self) -> bool:
        """The attack counts on the leaderboard: a forward attack in an ℓp ball."""
        return (
            self.norm in RANKED_NORMS
            and self.access in ("white-box", "black-box")
            and not self.reverse
        )

    @property
    def counts_for(self) -> list[str]:
        """The leaderboard's threat models this attack counts for (``[]``: none).

        ``linf`` counts every ℓ∞ attack, white- or black-box, ``linf-blackbox`` the
        black-box ones only (likewise ``l2``); an attack on another target than the prey
        counts for its own threat models, suffixed with the target (``linf-reference``).
        """
        if not self.ranked:
            return []
        names = [self.norm, f"{self.norm}-blackbox"] if self.access == "black-box" else [self.norm]
        return names if self.target == "prey" else [f"{t}-{self.target}" for t in names]


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
        threat: the threat model (:class:`Threat`); attacks made of other attacks derive
            theirs from their parts (:meth:`resolve_threat`).
        family: the paper's attack family the report's tables group runs by (``fgsm``,
            ``pgd``, ``stadv``, ``transfer``, ...; Tables 2, 4 and 5); ``None``: the run's
            attack config name (:attr:`attackpsm.report.load.Run.family`).
    """

    name = "attack"
    white_box = True
    columns: tuple[str, ...] = ()
    reverse = False
    needs_triplets = False
    can_stall = True
    flip_on = "float"
    threat: ClassVar[Threat | None] = None
    family: ClassVar[str | None] = None

    @classmethod
    def resolve_threat(cls, node: Mapping[str, Any]) -> Threat:
        """The threat model of this attack under config ``node``: the declared one, with
        the norm ``node`` picks (:attr:`Threat.norm_param`), its budget's value and, for
        ``eot_samples > 1``, randomised. Composite attacks override this."""
        declared = cls.threat
        if declared is None:
            raise ValueError(f"attack class {cls.__name__} declares no threat model")
        norm = declared.norm
        if declared.norm_param is not None:
            norm = str(node.get(declared.norm_param, declared.norm))
        eps = node.get(declared.budget) if declared.budget is not None else None
        eot = node.get("eot_samples")
        return replace(
            declared,
            norm=norm,
            eps=None if eps is None else float(eps),
            randomised=declared.randomised or (eot is not None and int(eot) > 1),
        )

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


def attack_class(node: Mapping[str, Any]) -> type[Attack]:
    """The attack class a config node names in ``_target_``, imported, not instantiated;
    only classes of :mod:`attackpsm.attacks` are accepted."""
    target = str(node.get("_target_") or "")
    module, _, name = target.rpartition(".")
    cls = None
    if module.startswith("attackpsm.attacks."):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ValueError(
            f"attack _target_ {target!r} is not an attack class of attackpsm.attacks "
            "(e.g. attackpsm.attacks.pgd.PGD): its threat model is unknown"
        )
    return cls


def threat_of(node: Mapping[str, Any]) -> Threat:
    """The threat model of an attack config node (a run identity's ``attack``): declared by
    the class its ``_target_`` names (:attr:`Attack.threat`), with the node's norm and budget
    and its perturbed image (``target``, the prey when absent)."""
    threat = attack_class(node).resolve_threat(node)
    return replace(threat, target=str(node.get("target") or "prey"))
