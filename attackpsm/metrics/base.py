"""One metric interface: a batched, differentiable-or-not *distance* to a reference.

The paper's ``s_i`` is the metric's distance between ``I_i`` and ``I_ref``: smaller means
more similar (Sec. 3, footnote 1). Similarity scores (SSIM & co) are converted with the
official code's ``(1 - s) / 2`` so that every metric reads the same way.

A metric separates the work on the reference from the work on the candidate:
``prepare(ref)`` returns whatever the metric can reuse (LPIPS: the reference's
normalised features), and ``score(prepared, x)`` returns one distance per sample. Attacks
call ``prepare`` once per triplet and ``score`` at every iteration.

Both check their images at the boundary (:func:`check_images`). ``score_unchecked`` is the
same distance without the check, for an attack's inner loop on inputs already checked.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from attackpsm.images import HIGH, LOW

# inputs may overshoot [-1, 1] by float rounding (resizing, warps); beyond this they are on
# another scale ([0, 255]) and every distance would be wrong
RANGE_TOLERANCE = 1e-3


def check_images(images: torch.Tensor, metric: str, role: str) -> None:
    """Refuse an input that breaks the package convention (``attackpsm.images``).

    ``(N, 3, H, W)`` floating-point tensors with values in ``[-1, 1]`` (up to
    :data:`RANGE_TOLERANCE`). One reduction per call: negligible next to any metric.

    Raises:
        ValueError: naming the metric, the input (``role``) and what was wrong.
    """
    expected = f"metric {metric!r} expects {role} as (N, 3, H, W) float images in [-1, 1]"
    if not torch.is_tensor(images):
        raise ValueError(f"{expected}, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{expected}, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{expected}, got dtype {images.dtype}")
    if images.numel() == 0:
        return
    low, high = torch.aminmax(images.detach())
    low, high = low.item(), high.item()
    if not (low >= LOW - RANGE_TOLERANCE and high <= HIGH + RANGE_TOLERANCE):
        raise ValueError(f"{expected}, got values in [{low:.4g}, {high:.4g}]")


def _checked_prepare(prepare):
    @functools.wraps(prepare)
    def wrapper(self, ref: torch.Tensor) -> Any:
        check_images(ref, self.name, "the reference")
        return prepare(self, ref)

    return wrapper


def _checked_score(score):
    @functools.wraps(score)
    def wrapper(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.name, "the candidate")
        return score(self, prepared, x)

    return wrapper


class _FiniteGradient(torch.autograd.Function):
    """Identity whose backward replaces non-finite gradient entries with 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def finite_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged; gradients flowing back into it have NaN/inf entries set to 0.

    For formulas with points of no derivative (e.g. ``sqrt`` of a zero gradient magnitude
    in flat image regions): there the gradient is taken as 0 instead of poisoning an attack.
    """
    return _FiniteGradient.apply(x) if x.requires_grad else x


def select(prepared: Any, index: torch.Tensor) -> Any:
    """Index the batch dimension of a prepared reference (a tensor or nested list/tuple/dict).

    Plain numbers and ``None`` (a seed, the size of the batch the common draws were made
    for) are batch-wide and pass unchanged.
    """
    if torch.is_tensor(prepared):
        return prepared[index]
    if isinstance(prepared, (list, tuple)):
        return type(prepared)(select(p, index) for p in prepared)
    if isinstance(prepared, dict):
        return {k: select(v, index) for k, v in prepared.items()}
    if prepared is None or isinstance(prepared, (bool, int, float, str)):
        return prepared
    raise TypeError(f"cannot index prepared reference of type {type(prepared).__name__}")


# --- common random numbers (randomised metrics) ------------------------------------------

DRAWS = "common_draws"  # key of a prepared reference that holds its common draws


def common_draws(n: int, seed: int, device: torch.device | str) -> dict[str, Any]:
    """The common draws of a batch of ``n`` references, stored in its prepared reference.

    A randomised metric decides with draws that depend only on ``(seed, j)`` for draw ``j``
    and on the row a triplet had in this batch: ``rows`` follows the triplet through
    :func:`select` (an attack that drops finished triplets), ``n`` is the size the draws
    are made for. Both sides of every comparison of a triplet -- its clean ranking, every
    flip check, the saved image's -- are therefore scored under the same draws (common
    random numbers), and a zero perturbation scores exactly as the prey did.
    """
    return {"rows": torch.arange(n, device=device), "n": int(n), "seed": int(seed)}


def draw_generator(draws: dict[str, Any], j: int, device: torch.device | str) -> torch.Generator:
    """The generator of draw ``j`` of ``draws`` (:func:`common_draws`), on ``device``."""
    seed = (int(draws["seed"]) * 1_000_003 + int(j)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


def taking_gradient(x: torch.Tensor) -> bool:
    """A score of ``x`` is being differentiated: a randomised metric then draws afresh (EoT)."""
    return torch.is_grad_enabled() and x.requires_grad


class Metric(nn.Module):
    """Base class of all metrics.

    Inputs follow the package convention: ``(N, 3, H, W)`` float tensors in ``[-1, 1]``;
    :meth:`prepare` and :meth:`score` refuse anything else (:func:`check_images`).
    Outputs are ``(N,)`` distances (lower = more similar). Metrics run in eval mode and
    never accumulate gradients into their own parameters.

    Attributes:
        name: config name (``metric=<name>``).
        differentiable: gradients w.r.t. the input are meaningful (white-box attacks).
        stochastic: the metric is randomised (E-LPIPS' transformations, a random shift,
            Gaussian smoothing). Its :meth:`score` follows one rule: **without a gradient**
            (decisions: the clean ranking, every flip check, the saved image's check) it
            uses the common draws of the prepared reference (:func:`common_draws`), so two
            images of a triplet are compared under the same draws and a call repeats
            exactly; **with a gradient** (``x.requires_grad`` under grad mode) every call
            draws afresh, as expectation over transformation needs (Athalye et al., 2018).
    """

    name: str = "metric"
    differentiable: bool = True
    stochastic: bool = False
    # smallest image side (px) the metric accepts: below it a window, a pyramid level or a
    # pooling layer has nothing left (measured on random images; see :meth:`minimum_size`)
    min_size: int = 1

    @classmethod
    def minimum_size(cls, **params: Any) -> int:
        """The smallest image side the metric accepts with these constructor ``params``.

        Checked when a run is composed, before any data is read
        (:func:`attackpsm.job.preflight.check_run`).
        """
        return cls.min_size

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every ``prepare``/``score`` a metric defines checks its images first (the boundary).

        The ``score`` as written stays callable as :meth:`score_unchecked`.
        """
        super().__init_subclass__(**kwargs)
        if "prepare" in cls.__dict__:
            cls.prepare = _checked_prepare(cls.__dict__["prepare"])
        if "score" in cls.__dict__:
            cls.score_unchecked = cls.__dict__["score"]
            cls.score = _checked_score(cls.__dict__["score"])

    def __init__(self) -> None:
        super().__init__()
        self.training = False  # metrics are never trained; see also :meth:`train`

    def train(self, mode: bool = True) -> Metric:
        """Always eval mode (dropout off, fixed statistics), whatever ``mode`` says."""
        return super().train(False)

    def freeze(self) -> Metric:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def prepare(self, ref: torch.Tensor) -> Any:
        """Work on the reference that can be reused across many candidates."""
        return ref

    def score(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        """Distances between each ``x[i]`` and the prepared reference ``i``: shape ``(N,)``."""
        raise NotImplementedError

    def score_unchecked(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        """:meth:`score` without the check of ``x`` (:func:`check_images`).

        Allowed only inside an attack's inner loop, on candidates built from inputs that
        were already checked and clipped to ``[-1, 1]``: the check reads a value back from
        the device (a host synchronisation) at every call, which a loop that never waits
        for the device avoids (:class:`attackpsm.attacks.pgd.PGD` with ``check_every != 1``
        or ``compile``). Everywhere else call :meth:`score`.
        """
        raise NotImplementedError

    def expected_score(self, prepared: Any, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """Mean of ``draws`` calls of :meth:`score` (expectation over transformation).

        For a stochastic metric each call draws fresh randomness, so the gradient of the
        result is the average of ``draws`` gradients -- what an attack on it should follow.
        A deterministic metric is scored once, whatever ``draws``; without a gradient a
        stochastic one returns its decision score (the common draws, :meth:`score`).
        """
        if not self.stochastic or draws <= 1 or not taking_gradient(x):
            return self.score(prepared, x)
        return torch.stack([self.score(prepared, x) for _ in range(draws)]).mean(0)

    def prepare_like(self, ref: torch.Tensor, like: Any) -> Any:
        """:meth:`prepare` of ``ref`` that keeps the common draws of the prepared ``like``.

        For a second version of the same references (the saved 8-bit images): the
        comparisons made with it share the draws of those made with ``like``.
        """
        new = self.prepare(ref)
        if isinstance(new, dict) and isinstance(like, dict) and DRAWS in like:
            new[DRAWS] = like[DRAWS]
        return new

    def forward(self, ref: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.prepare(ref), x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, differentiable={self.differentiable}, stochastic={self.stochastic}"


Metric.prepare = _checked_prepare(Metric.prepare)  # metrics that keep the raw reference
