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

from typing import Any

import torch
from torch import nn


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

    Inputs follow the package convention: ``(N, 3, H, W)`` float tensors in ``[-1, 1]``.
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
