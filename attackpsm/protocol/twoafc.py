"""The 2AFC rules of the paper in one place: prey, flip, losses, human agreement, 2AFC score.

A 2AFC triplet is a reference ``I_ref``, two distortions ``I_0``, ``I_1`` and ``judge``, the
fraction of raters who preferred ``I_1`` (Sec. 3, "Dataset"). ``s_i = f(I_ref, I_i)`` is
the metric's distance (smaller = more similar). Everything below is a pure function of
``(d0, d1, judge)`` and the attack's scores; the engine, the attacks, the bench's
reference loops, Table 1 and the report all call these functions and decide nothing on
their own.

**Prey** (Alg. 1-3, lines 1-4): ``rank = int(s_0 > s_1)``; ``rank = 1`` makes ``I_1`` the
prey and ``s_other = s_0``, otherwise ``I_0`` is the prey and ``s_other = s_1``. The
reverse attack (Appendix F) attacks the *other* image: the prey is the one the standard
rule leaves alone.

**Flip** (Sec. 3, "Attack Models"): the attack succeeds when ``s_adv > s_other``; for the
reverse attack when ``s_adv < s_other``. Strict inequalities: equal scores are no flip.
:func:`rank_flipped` is the only place this is decided: the attacks call it on the float
adversarial image (or, with ``attack.flip_on=saved``, on the image they would save), the
engine again on the saved adversarial image (``flipped_saved``,
:func:`attackpsm.images.saved`) and the transfer craft on the saved PNGs.

**Losses**: Eq. 1 ``J = (s_other / (s_other + s_adv) - 1)^2`` (FGSM, PGD) and Eq. 7
``J = (s_other / (s_other + s_adv))^2`` (reverse PGD), both maximised.

**Ties** (``d0 == d1``): the metric states no preference, so it gets *half credit*
everywhere -- the rule of the 2AFC score of Zhang et al. (2018), whose released
``score_2afc_dataset`` scores a triplet ``(d0 < d1) * (1 - judge) + (d0 > d1) * judge +
(d0 == d1) * 0.5``. Concretely:

- the per-triplet agreement with the human choice (:func:`agreement`) is 1, 0, or 0.5 on a
  tie; the 2AFC score (:func:`twoafc_scores`) is ``judge``, ``1 - judge``, or 0.5 on a tie;
- the accuracy of Table 1 (:func:`accuracy`) is the mean agreement, so a tie adds half a
  correct sample (on unanimous triplets the accuracy *equals* the 2AFC score);
- the ✓/✗ split (:func:`human_agrees`) puts a tie in neither row: it is ``<NA>`` (``n/a``),
  like a triplet without a label or with a tied human vote (``judge == 0.5``).

Why this rule: Table 1's published 2AFC scores were computed with it, so any other rule
would make ours incomparable; a tie is no preference, so counting it as agreement
overstates the accuracy and counting it as disagreement understates it; and with half
credit the accuracy on unanimous triplets and the 2AFC score are one number, not two.
Ties are rare with float scores but not impossible with 8-bit inputs (two distortions
that round to the same image, or a metric that saturates).

A tie still has a prey (Alg. 1 takes ``I_0``: ``int(s_0 > s_1) = 0``), so it is attacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

AGREE, DISAGREE, NO_CHOICE = "✓", "✗", "n/a"
SPLIT_ORDER = (AGREE, DISAGREE, NO_CHOICE)


# --- prey and flip (Alg. 1-3, Appendix F) ------------------------------------------------


@dataclass
class Prey:
    """The attacked side of each triplet of a batch.

    Attributes:
        is_p1: ``(N,)`` bool, ``I_1`` is the prey (the paper's ``rank = 1``).
        s_prey: the prey's clean score.
        s_other: the other image's score, the target the attack must cross.
    """

    is_p1: torch.Tensor
    s_prey: torch.Tensor
    s_other: torch.Tensor

    def images(self, p0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
        """The prey images ``(N, 3, H, W)``."""
        return torch.where(self.is_p1[:, None, None, None], p1, p0)

    def others(self, p0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
        """The other images ``(N, 3, H, W)``."""
        return torch.where(self.is_p1[:, None, None, None], p0, p1)


def choose_prey(d0: torch.Tensor, d1: torch.Tensor, reverse: bool = False) -> Prey:
    """Alg. 1, lines 1-4: ``rank = int(s_0 > s_1)``; reversed: the other image (App. F).

    Args:
        d0: ``s_0 = f(I_ref, I_0)`` per triplet.
        d1: ``s_1 = f(I_ref, I_1)`` per triplet.
        reverse: attack the less similar image (the reverse attack of Appendix F).
    """
    is_p1 = d0 > d1
    if reverse:
        is_p1 = ~is_p1
    return Prey(is_p1, torch.where(is_p1, d1, d0), torch.where(is_p1, d0, d1))


def rank_flipped(s_adv: Any, s_other: Any, reverse: bool = False) -> Any:
    """Success of an attack (Sec. 3): ``s_adv > s_other``; ``s_adv < s_other`` reversed.

    Works on tensors, arrays and numbers alike (broadcasting as they do).
    """
    return s_adv < s_other if reverse else s_adv > s_other


# --- which image is perturbed (the threat model's target) --------------------------------

TARGETS = ("prey", "reference", "both")


def check_target(target: Any) -> str:
    """``target`` if it names a threat-model target, else a clear error naming the valid ones."""
    if target not in TARGETS:
        raise ValueError(f"attack.target must be one of {list(TARGETS)}, got {target!r}")
    return str(target)


def target_flipped(target: str, s_prey_adv: Any, s_other_adv: Any, reverse: bool = False) -> Any:
    """The flip rule of each target, in one place (the prey is always chosen on the clean
    triplet by :func:`choose_prey`):

    - ``prey`` (the paper, Sec. 3): only ``I_prey`` is perturbed; ``s_other_adv`` is the
      clean ``s_other``, so this is :func:`rank_flipped` exactly;
    - ``reference`` (as robust-CLIP-based metric evaluations perturb it): ``I_ref`` is
      perturbed; both distances are re-measured to the perturbed reference,
      ``s_prey_adv = f(I_ref', I_prey)`` and ``s_other_adv = f(I_ref', I_other)``;
    - ``both``: ``I_0`` and ``I_1`` are perturbed jointly (one budget per image),
      ``s_prey_adv = f(I_ref, I_prey')`` and ``s_other_adv = f(I_ref, I_other')``.

    In every case the rank flips when the prey ends strictly farther than the other image,
    ``s_prey_adv > s_other_adv`` (``<`` for the reverse attack, Appendix F).
    """
    check_target(target)
    return rank_flipped(s_prey_adv, s_other_adv, reverse)


def flip_margin(s_other: torch.Tensor, s_adv: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Signed distance to the flip: ``s_adv - s_other`` (``s_other - s_adv`` reversed).

    Positive exactly when :func:`rank_flipped` holds; the objective of the attacks that
    maximise the margin (APGD, Square) and how a cascade ranks unflipped candidates.
    """
    return s_other - s_adv if reverse else s_adv - s_other


def rank_loss(s_other: torch.Tensor, s_adv: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``J = (s_other / (s_other + s_adv) - 1)^2``, one value per sample.

    Maximised by FGSM and PGD: it grows as ``s_adv`` grows past ``s_other``.
    """
    return (s_other / (s_other + s_adv) - 1.0) ** 2


def reverse_rank_loss(s_other: torch.Tensor, s_adv: torch.Tensor) -> torch.Tensor:
    """Eq. 7 (Appendix F): ``J = (s_other / (s_other + s_adv))^2``, one value per sample.

    Maximised by the reverse PGD attack: it grows as ``s_adv`` falls below ``s_other``.
    """
    return (s_other / (s_other + s_adv)) ** 2


# --- agreement with humans (Table 1, the ✓/✗ rows of every table) ------------------------


def _arrays(*values: Any) -> tuple[np.ndarray, ...]:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().double().numpy()
        out.append(np.asarray(v, dtype=float))
    return tuple(out)


def metric_choice(d0: Any, d1: Any) -> np.ndarray:
    """The metric's preference for ``I_1``: 1 (``d1 < d0``), 0 (``d0 < d1``), 0.5 on a tie."""
    d0, d1 = _arrays(d0, d1)
    return np.where(d1 < d0, 1.0, np.where(d0 < d1, 0.0, 0.5))


def twoafc_scores(d0: Any, d1: Any, judge: Any) -> np.ndarray:
    """Per-triplet 2AFC score (Zhang et al., 2018): the fraction of raters who agree.

    ``judge`` when the metric prefers ``I_1``, ``1 - judge`` when it prefers ``I_0``, 0.5
    on a tie (the module's tie rule). NaN where ``judge`` is NaN (no label).
    """
    choice = metric_choice(d0, d1)
    (judge,) = _arrays(judge)
    return choice * judge + (1.0 - choice) * (1.0 - judge)


def agreement(d0: Any, d1: Any, judge: Any) -> np.ndarray:
    """Per triplet: 1 if the metric ranks as the human majority did, 0 if not, 0.5 on a tie.

    NaN where there is no human choice: no label (``judge`` NaN) or a tied vote
    (``judge == 0.5``). On unanimous triplets this equals :func:`twoafc_scores`.
    """
    choice = metric_choice(d0, d1)
    (judge,) = _arrays(judge)
    human = np.where(judge > 0.5, 1.0, 0.0)
    out = np.where(choice == 0.5, 0.5, (choice == human).astype(float))
    return np.where(np.isnan(judge) | (judge == 0.5), np.nan, out)


def accuracy(d0: Any, d1: Any, judge: Any) -> tuple[float, int]:
    """Mean :func:`agreement` over triplets with a human choice, and their count.

    The accuracy of Table 1 (on the unanimous triplets) and of every run's headline; a
    metric tie counts as half a correct sample. ``(nan, 0)`` when nothing is labelled.
    """
    a = agreement(d0, d1, judge)
    a = a[~np.isnan(a)]
    return (float(a.mean()) if len(a) else float("nan")), int(len(a))


def human_agrees(d0: Any, d1: Any, judge: Any) -> pd.Series:
    """The ✓/✗ split of every table: True, False, or ``<NA>`` (no human choice, or a tie).

    Nullable booleans (``pd.BooleanDtype``), one per triplet.
    """
    a = agreement(d0, d1, judge)
    out = pd.array(a == 1.0, dtype="boolean")
    out[np.isnan(a) | (a == 0.5)] = pd.NA
    return pd.Series(out)


def split_labels(agrees: pd.Series) -> pd.Series:
    """``human_agrees`` -> ``"✓"``, ``"✗"`` or ``"n/a"`` per row (same index)."""
    values = agrees.astype("boolean")
    out = pd.Series(NO_CHOICE, index=agrees.index, dtype=object)
    out[values.fillna(False).astype(bool)] = AGREE
    out[(~values).fillna(False).astype(bool)] = DISAGREE
    return out
