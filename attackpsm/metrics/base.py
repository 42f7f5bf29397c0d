"""One metric interface: a batched, differentiable-or-not *distance* to a reference.

The paper's ``s_i`` is the metric's distance between ``I_i`` and ``I_ref``: smaller means
more similar (Sec. 3, footnote 1). Similarity scores (SSIM & co) are converted with the
official code's ``(1 - s) / 2`` so that every metric reads the same way.

A metric separates the work on the reference from the work on the candidate:
``prepare(ref)`` returns whatever the metric can reuse (LPIPS: the reference's
normalised features), and ``score(prepared, x)`` returns one distance per sample. Attacks
call ``prepare`` once per triplet and ``score`` at every iteration.
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
    """Index the batch dimension of a prepared reference (a tensor or nested list/tuple/dict)."""
    if torch.is_tensor(prepared):
        return prepared[index]
    if isinstance(prepared, (list, tuple)):
        return type(prepared)(select(p, index) for p in prepared)
    if isinstance(prepared, dict):
        return {k: select(v, index) for k, v in prepared.items()}
    raise TypeError(f"cannot index prepared reference of type {type(prepared).__name__}")


class Metric(nn.Module):
    """Base class of all metrics.

    Inputs follow the package convention: ``(N, 3, H, W)`` float tensors in ``[-1, 1]``;
    :meth:`prepare` and :meth:`score` refuse anything else (:func:`check_images`).
    Outputs are ``(N,)`` distances (lower = more similar). Metrics run in eval mode and
    never accumulate gradients into their own parameters.

    Attributes:
        name: config name (``metric=<name>``).
        differentiable: gradients w.r.t. the input are meaningful (white-box attacks).
        stochastic: two calls on the same input may differ (attacks must average, EoT).
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
        (:func:`attackpsm.preflight.check_run`).
        """
        return cls.min_size

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every ``prepare``/``score`` a metric defines checks its images first (the boundary)."""
        super().__init_subclass__(**kwargs)
        if "prepare" in cls.__dict__:
            cls.prepare = _checked_prepare(cls.__dict__["prepare"])
        if "score" in cls.__dict__:
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

    def expected_score(self, prepared: Any, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """Mean of ``draws`` calls of :meth:`score` (expectation over transformation).

        For a stochastic metric each call draws fresh randomness, so the gradient of the
        result is the average of ``draws`` gradients -- what an attack on it should follow.
        A deterministic metric is scored once, whatever ``draws``.
        """
        if not self.stochastic or draws <= 1:
            return self.score(prepared, x)
        return torch.stack([self.score(prepared, x) for _ in range(draws)]).mean(0)

    def forward(self, ref: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.prepare(ref), x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, differentiable={self.differentiable}, stochastic={self.stochastic}"


Metric.prepare = _checked_prepare(Metric.prepare)  # metrics that keep the raw reference
