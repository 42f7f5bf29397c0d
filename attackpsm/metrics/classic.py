"""Traditional full-reference metrics: L2, SSIM and MS-SSIM.

SSIM comes from piq (Wang et al., 2004), differentiable and batched. MS-SSIM (Wang et al.,
2003) is implemented here because piq's refuses images under 161 px and the paper reports
it at 64x64 (see :func:`ms_ssim` for how the scales adapt). Both are similarities,
converted to distances with ``(1 - s) / 2`` as in the paper's official code.
"""

from __future__ import annotations

from typing import Any

import piq
import torch
import torch.nn.functional as F

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

    @classmethod
    def minimum_size(cls, **params: Any) -> int:
        """One Gaussian window: the image side must be at least ``kernel_size``."""
        return int(params.get("kernel_size", 11))

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


# Wang et al. (2003), Table 1: the weights of the five scales, finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(
    size: int, sigma: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Normalised ``size x size`` Gaussian window, shape ``(1, 1, size, size)``."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g[:, None] * g[None, :]
    return (g / g.sum())[None, None]


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, c1: float, c2: float):
    """Per-channel mean SSIM and contrast-structure (cs) terms over a valid-mode window."""
    ch = x.shape[1]
    w = window.expand(ch, 1, *window.shape[-2:])

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=ch)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs).mean(dim=(-1, -2)), cs.mean(dim=(-1, -2))


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
    scale_weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """MS-SSIM of ``[0, 1]`` images, one value per sample; any size of at least 2^(M-1) px.

    The standard definition (Wang et al., 2003; piq's ``multi_scale_ssim``): at each of the
    ``M`` scales the images are low-passed and halved (2x2 average pooling, replicate
    padding on odd sizes); the contrast-structure terms of scales 1..M-1 and the full SSIM
    of scale M are raised to the scale weights and multiplied; channels are averaged.

    How the scales adapt to small images: SSIM statistics use a Gaussian window in valid
    mode, which needs at least ``kernel_size`` pixels. Where a scale is smaller than the
    window, the *same* Gaussian (same sigma) is truncated to the largest odd size that
    fits and renormalised. At 64x64 the five scales are 64, 32, 16, 8, 4 px with windows of
    11, 11, 11, 7, 3 taps. From ``(kernel_size - 1) * 2^(M-1) + 1`` px on (161 px for the
    defaults) no window is truncated and the value equals the standard MS-SSIM.

    Args:
        x: images ``(N, C, H, W)`` in ``[0, 1]``.
        y: images of the same shape in ``[0, 1]``.
        kernel_size: Gaussian window size at full size (11).
        kernel_sigma: Gaussian window sigma (1.5).
        scale_weights: exponents of the scales, finest first.
        k1: SSIM constant K1 (0.01).
        k2: SSIM constant K2 (0.03).

    Returns:
        ``(N,)`` MS-SSIM values (1 for identical images).

    References:
        Wang, Z., Simoncelli, E. P., Bovik, A. C. (2003). Multi-scale Structural Similarity
        for Image Quality Assessment. Asilomar Conference on Signals, Systems and Computers.
    """
    levels = len(scale_weights)
    if min(x.shape[-2:]) < 2 ** (levels - 1):
        raise ValueError(
            f"MS-SSIM with {levels} scales needs images of at least {2 ** (levels - 1)} px, got {tuple(x.shape[-2:])}"
        )
    c1, c2 = k1**2, k2**2
    terms = []
    for level in range(levels):
        if level > 0:
            pad = max(x.shape[-2] % 2, x.shape[-1] % 2)
            if pad:
                x = F.pad(x, [pad, 0, pad, 0], mode="replicate")
                y = F.pad(y, [pad, 0, pad, 0], mode="replicate")
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        fits = min(kernel_size, *x.shape[-2:])
        size = fits if fits % 2 == 1 else fits - 1
        window = gaussian_window(size, kernel_sigma, x.dtype, x.device)
        ssim_val, cs = _ssim_terms(x, y, window, c1, c2)
        terms.append(ssim_val if level == levels - 1 else cs)
    stacked = torch.stack(terms)  # (levels, N, C)
    # clamp, not relu: a zero base would give an infinite gradient of x ** w (w < 1)
    stacked = stacked.clamp_min(1e-12)
    w = torch.tensor(scale_weights, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return torch.prod(stacked**w, dim=0).mean(dim=1)


class MSSSIM(Metric):
    """MS-SSIM distance ``(1 - MS-SSIM) / 2`` (Wang et al., 2003), usable at 64x64.

    See :func:`ms_ssim` for how the scales adapt to images under 161 px.

    Args:
        kernel_size: Gaussian window size (11).
        kernel_sigma: Gaussian window sigma (1.5).
    """

    name = "ms_ssim"
    min_size = 16

    def __init__(self, kernel_size: int = 11, kernel_sigma: float = 1.5):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel_sigma = kernel_sigma

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = ms_ssim(
            to_unit(x).clamp(0, 1),
            to_unit(prepared).clamp(0, 1),
            kernel_size=self.kernel_size,
            kernel_sigma=self.kernel_sigma,
        )
        return (1.0 - s) / 2.0
