"""Traditional full-reference metrics: L2 and SSIM.

SSIM comes from piq (Wang et al., 2004), differentiable and batched; it is a similarity,
converted to a distance with ``(1 - ssim) / 2`` as in the paper's official code.
"""

from __future__ import annotations

import piq
import torch

from attackpsm.images import to_unit
from attackpsm.metrics.base import Metric


class L2(Metric):
    """Mean squared error on the ``[-1, 1]`` scale (the paper's L2 row, Table 2)."""

    name = "l2"

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x - prepared).pow(2).flatten(1).mean(1)


class SSIM(Metric):
    """SSIM distance ``(1 - SSIM) / 2`` (Wang et al., 2004; piq implementation).

    Args:
        kernel_size: Gaussian window size (11 in the original paper).
        kernel_sigma: Gaussian window sigma (1.5).
        downsample: piq's automatic downsampling for large images; off by default so that
            the metric sees exactly the pixels the attack changes.
    """

    name = "ssim"

    def __init__(self, kernel_size: int = 11, kernel_sigma: float = 1.5, downsample: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel_sigma = kernel_sigma
        self.downsample = downsample

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = piq.ssim(
            to_unit(x).clamp(0, 1),
            to_unit(prepared).clamp(0, 1),
            kernel_size=self.kernel_size,
            kernel_sigma=self.kernel_sigma,
            data_range=1.0,
            reduction="none",
            downsample=self.downsample,
        )
        return (1.0 - s) / 2.0
