"""Which image the attack perturbs: ``attack.target: prey | reference | both``.

The paper perturbs the prey (Sec. 3). Robust-metric evaluations built on CLIP-like
embeddings perturb the *reference* instead; perturbing *both* distortions jointly is the
third option. :class:`TargetedAttack` runs any attack that works on ``(metric, prepared,
image, s_other)`` under the other two targets by handing it a view of the metric in which
the attacked image is the candidate:

- ``reference``: the candidate ``x`` replaces ``I_ref``; the view scores
  ``s_other · exp((f(x, I_prey) - f(x, I_other)) / s_other)``, positive, equal to
  ``s_other`` exactly when the two re-measured distances tie, so the attack's own rule
  ``score > s_other`` is the flip of the perturbed reference. The gradient reaches ``x``
  through the metric's candidate side, so the view uses ``f(I_prey, x)`` for
  ``f(x, I_prey)``: only metrics that are symmetric on the batch (checked to 1e-4
  relative before the attack) are accepted.
- ``both``: the candidate is ``[I_prey | I_other]`` side by side (one image twice as wide,
  one budget over both), scored ``s_other · exp((f(I_ref, x_prey) - f(I_ref, x_other)) /
  s_other)``. Flow-based attacks (stAdv) would warp across the seam and are refused.

Whatever the view said, the flip is decided afterwards with the metric itself, in the
paper's argument order, by :func:`attackpsm.protocol.twoafc.target_flipped`; ``s_adv`` is the
prey's re-measured distance and the column ``s_other_adv`` the other's.
"""

from __future__ import annotations

from typing import Any

import torch

from attackpsm.attacks.base import Attack, AttackResult
from attackpsm.images import saved
from attackpsm.metrics.base import Metric
from attackpsm.protocol.twoafc import TARGETS, check_target, target_flipped

SYMMETRY_TOLERANCE = 1e-4  # relative: f(I_ref, I_prey) vs f(I_prey, I_ref)


def _seeded(fn):
    """One common draw for a stochastic metric (it draws from the global generator)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return fn()


class _View(Metric):
    """The metric as seen by an attack on the reference or on both distortions."""

    def __init__(self, metric: Metric, target: str, width: int):
        super().__init__()
        self.metric = metric
        self.target = target
        self.width = width
        self.name = metric.name
        self.differentiable = metric.differentiable
        self.stochastic = metric.stochastic

    def score(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        if self.target == "reference":
            prep_prey, prep_other, s0 = prepared
            a = self.metric.score(prep_prey, x)
            b = self.metric.score(prep_other, x)
        else:
            prep_ref, s0 = prepared
            a = self.metric.score(prep_ref, x[..., : self.width])
            b = self.metric.score(prep_ref, x[..., self.width :])
        return s0 * torch.exp((a - b) / s0)


class TargetedAttack(Attack):
    """``attack`` with the reference, or both distortions, as the perturbed image.

    Args:
        attack: any attack that needs only the metric and the image (not ``saved`` or
            ``certify``, which read per-triplet state; not the reverse attack).
        target: ``"reference"`` or ``"both"`` (``"prey"`` needs no wrapper).

    Its threat model is the wrapped attack's with ``target`` set: read from the config node
    and its ``target`` key by :func:`attackpsm.attacks.base.threat_of`, as
    :func:`build_attack` reads them to wrap the attack.
    """

    def __init__(self, attack: Attack, target: str):
        check_target(target)
        if target == "prey":
            raise ValueError("attack.target=prey is the attack itself: no wrapper needed")
        if attack.reverse or attack.needs_triplets:
            raise ValueError(
                f"attack {attack.name!r} cannot take attack.target={target}: it "
                + ("is the reverse attack" if attack.reverse else "reads per-triplet state")
                + f"; attacks that can: the white-box and black-box attacks on the image "
                f"(targets {list(TARGETS)})"
            )
        from attackpsm.attacks.stadv import StAdv, StAdvPGD

        if target == "both" and isinstance(attack, (StAdv, StAdvPGD)):
            raise ValueError(
                f"attack {attack.name!r} cannot take attack.target=both: its flow field "
                "would warp across the seam of the two distortions; use attack.target=reference"
            )
        self.attack = attack
        self.target = target
        self.name = attack.name
        self.white_box = attack.white_box
        self.columns = (*attack.columns, "s_other_adv")

    def run_target(
        self,
        metric: Metric,
        ref: torch.Tensor,
        prepared_ref: Any,
        prey: torch.Tensor,
        other: torch.Tensor,
        s_prey: torch.Tensor,
        s_other: torch.Tensor,
    ) -> tuple[AttackResult, torch.Tensor]:
        """Attack the target; returns the result (``adv`` = the perturbed target) and the
        clean target it was made from (for the perturbation statistics)."""
        s0 = s_other.detach().clamp_min(1e-12)
        if self.target == "reference":
            prep_prey, prep_other = metric.prepare(prey), metric.prepare(other)
            with torch.no_grad():
                swapped = _seeded(lambda: metric.score(prep_prey, ref))
                direct = _seeded(lambda: metric.score(prepared_ref, prey))
            gap = ((swapped - direct).abs() / direct.abs().clamp_min(1e-12)).max().item()
            if gap > SYMMETRY_TOLERANCE:
                raise ValueError(
                    f"metric {metric.name!r} is not symmetric (f(ref, x) and f(x, ref) differ "
                    f"by {gap:.2g} relative, above {SYMMETRY_TOLERANCE:g}): attack.target="
                    "reference needs the gradient of f(ref', x) in ref', which this metric "
                    "does not expose; use attack.target=prey or both"
                )
            view = _View(metric, "reference", ref.shape[-1])
            start, prepared = ref, (prep_prey, prep_other, s0)
        else:
            view = _View(metric, "both", prey.shape[-1])
            start, prepared = torch.cat([prey, other], dim=-1), (prepared_ref, s0)
        out = self.attack.run(view, prepared, start, s0)
        adv = out.adv.detach()
        s_prey_adv, s_other_adv = self.distances(metric, ref, prepared_ref, prey, other, adv)
        flipped = target_flipped(self.target, s_prey_adv, s_other_adv)
        columns = {**out.columns, "s_other_adv": s_other_adv}
        return AttackResult(adv, s_prey_adv, flipped, columns), start

    def distances(
        self,
        metric: Metric,
        ref: torch.Tensor,
        prepared_ref: Any,
        prey: torch.Tensor,
        other: torch.Tensor,
        adv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s_prey_adv, s_other_adv)`` measured by the metric itself, in the paper's
        argument order ``f(I_ref, I_i)``."""
        with torch.no_grad():
            if self.target == "reference":
                prepared = metric.prepare(adv)
                return metric.score(prepared, prey), metric.score(prepared, other)
            w = prey.shape[-1]
            return metric.score(prepared_ref, adv[..., :w]), metric.score(
                prepared_ref, adv[..., w:]
            )

    def distances_saved(
        self,
        metric: Metric,
        ref: torch.Tensor,
        prey: torch.Tensor,
        other: torch.Tensor,
        adv: torch.Tensor,
        grid: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`distances` once the perturbed image is saved (:func:`attackpsm.images.saved`).

        As for the prey (``attackpsm.engine``): with the dataset's 8-bit images (``grid``) the
        unperturbed images are those files as they are; with float inputs every image is saved.
        """
        with torch.no_grad():
            if not grid:
                ref, prey, other = saved(ref), saved(prey), saved(other)
            return self.distances(metric, ref, metric.prepare(ref), prey, other, saved(adv))


def build_attack(node: Any) -> Attack:
    """The attack of a config node; its ``target`` key (``prey`` when absent) picks the
    perturbed image and is not a parameter of the attack itself."""
    from omegaconf import OmegaConf

    from attackpsm.config import build

    spec = OmegaConf.to_container(node, resolve=True)
    target = spec.pop("target", "prey")
    attack = build(OmegaConf.create(spec))
    if check_target(target) == "prey":
        return attack
    return TargetedAttack(attack, target)
