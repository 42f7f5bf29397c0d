"""Traditional full-reference metrics: L2, SSIM and MS-SSIM.

Two SSIMs (Wang et al., 2004), both differentiable and batched:

- ``ssim`` is the SSIM of the paper's released code (``pytorch_ssim``): the package's
  ``[-1, 1]`` images as they are, 11x11 Gaussian window (sigma 1.5) with *zero padding*
  (the map has the image's size), ``C1 = 0.01^2``, ``C2 = 0.03^2`` (constants for a data
  range of 1 applied to images of range 2), the map averaged over channels and pixels.
  The paper-table experiments use it.
- ``ssim_piq`` is the standard SSIM as piq computes it: ``[0, 1]`` images, valid-mode
  window, same constants.

Two MS-SSIMs (Wang et al., 2003):

- ``ms_ssim`` is the standard definition (piq's ``multi_scale_ssim``) made to run at
  64x64 (see :func:`ms_ssim`): the released MS-SSIM cannot run there.
- ``ms_ssim_iqa`` is the released code's MS-SSIM (IQA_pytorch's ``MS_SSIM``) on
  ``[-1, 1]`` images, valid 11x11 windows at five scales: it needs at least 161 px
  (see :func:`ms_ssim_iqa`).

All are similarities, converted to distances with ``(1 - s) / 2`` as in the paper's
official code.
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


class SSIMPiq(Metric):
    """SSIM distance ``(1 - SSIM) / 2`` (Wang et al., 2004) as piq computes it.

    The standard SSIM: ``[0, 1]`` images, valid-mode Gaussian window. It differs from the
    paper's released SSIM (:class:`SSIM`) in the input scale and the border handling.

    Args:
        kernel_size: Gaussian window size (11 in the original paper).
        kernel_sigma: Gaussian window sigma (1.5).
        downsample: piq's automatic downsampling for large images; off by default so that
            the metric sees exactly the pixels the attack changes.
    """

    name = "ssim_piq"

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


def gaussian_window(
    size: int | tuple[int, int], sigma: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Normalised, centred Gaussian window, shape ``(1, 1, h, w)``.

    Args:
        size: ``h`` (a square window) or ``(h, w)``.
        sigma: standard deviation in pixels, the same along both axes.
        dtype: dtype of the window.
        device: device of the window.
    """
    h, w = (size, size) if isinstance(size, int) else size

    def profile(n: int) -> torch.Tensor:
        coords = torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2.0
        return torch.exp(-(coords**2) / (2 * sigma**2))

    g = profile(h)[:, None] * profile(w)[None, :]
    return (g / g.sum())[None, None]


def _ssim_maps(
    x: torch.Tensor,
    y: torch.Tensor,
    window: torch.Tensor,
    c1: float,
    c2: float,
    padding: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance and contrast-structure (cs) maps of SSIM (Wang et al., 2004, Eqs. 6, 9, 13).

    Local statistics are Gaussian-weighted means over ``window``, each channel separately;
    ``padding`` zero-pads the images (0: valid mode). SSIM's map is ``luminance * cs``.
    """
    ch = x.shape[1]
    w = window.expand(ch, 1, *window.shape[-2:])

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, padding=padding, groups=ch)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return luminance, cs


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """The paper's released SSIM (``pytorch_ssim``), one value per sample.

    The images are used as given (the package's ``[-1, 1]`` scale, as the released code
    feeds them) and zero-padded by ``kernel_size // 2`` so that the SSIM map has the
    image's size; near the border the local means are pulled towards 0 by the padding.
    ``C1 = k1^2`` and ``C2 = k2^2`` are not scaled by the data range (2 on ``[-1, 1]``),
    as in the release. The map is averaged over channels and pixels.

    Args:
        x: images ``(N, C, H, W)``.
        y: images of the same shape.
        kernel_size: Gaussian window size (11).
        kernel_sigma: Gaussian window sigma (1.5).
        k1: SSIM constant K1 (0.01).
        k2: SSIM constant K2 (0.03).

    Returns:
        ``(N,)`` SSIM values (1 for identical images).

    References:
        Wang, Z., Bovik, A. C., Sheikh, H. R., Simoncelli, E. P. (2004). Image Quality
        Assessment: From Error Visibility to Structural Similarity. IEEE TIP 13(4).
    """
    window = gaussian_window(kernel_size, kernel_sigma, x.dtype, x.device)
    luminance, cs = _ssim_maps(x, y, window, k1**2, k2**2, padding=kernel_size // 2)
    return (luminance * cs).mean(dim=(1, 2, 3))


class SSIM(Metric):
    """SSIM distance ``(1 - SSIM) / 2`` as in the paper's released code (see :func:`ssim`).

    The paper's SSIM rows (Tables 1, 2, 5, 10, 11) use it; piq's standard SSIM is
    :class:`SSIMPiq` (``metric=ssim_piq``).

    Args:
        kernel_size: Gaussian window size (11).
        kernel_sigma: Gaussian window sigma (1.5).
    """

    name = "ssim"

    def __init__(self, kernel_size: int = 11, kernel_sigma: float = 1.5):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel_sigma = kernel_sigma

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = ssim(prepared, x, kernel_size=self.kernel_size, kernel_sigma=self.kernel_sigma)
        return (1.0 - s) / 2.0


# Wang et al. (2003), Table 1: the weights of the five scales, finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, c1: float, c2: float):
    """Per-channel mean SSIM and contrast-structure (cs) terms over a valid-mode window."""
    luminance, cs = _ssim_maps(x, y, window, c1, c2)
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


def _iqa_scale_sizes(size: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """Image sizes at the scales of :func:`ms_ssim_iqa` (2x2 average pooling, padded if odd)."""
    sizes = [tuple(size)]
    for _ in range(levels - 1):
        sizes.append(tuple(n // 2 + n % 2 for n in sizes[-1]))
    return sizes


def ms_ssim_iqa_min_size(kernel_size: int = 11, levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest side on which :func:`ms_ssim_iqa` runs (161 px for the defaults)."""
    side = kernel_size
    while min(_iqa_scale_sizes((side, side), levels)[-1]) < kernel_size:
        side += 1
    return side


def ms_ssim_iqa(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
    scale_weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """The paper's released MS-SSIM (IQA_pytorch's ``MS_SSIM``), one value per sample.

    As the released code computes it: images used as given (``[-1, 1]``); at each of the
    five scales the SSIM statistics over a valid-mode 11x11 Gaussian window (sigma 1.5),
    ``C1 = k1^2``, ``C2 = k2^2``, the contrast-structure map clipped at 0 and averaged over
    channels and pixels; between scales 2x2 average pooling, zero-padded by one pixel on an
    odd side. The scales are combined as IQA_pytorch writes it,
    ``prod_{j<M} cs_j^{w_j} * ssim_M^{w_M}`` with the last factor inside the product over
    the ``M - 1`` finer scales, so the coarsest SSIM enters with exponent ``(M - 1) w_M``
    (0.533), not ``w_M`` as in Wang et al. (2003).

    Where IQA_pytorch gives NaN (a negative coarsest-scale SSIM, possible on ``[-1, 1]``
    images, raised to a fractional power) the value here is 0 (least similar), so the
    distance stays finite. Everywhere else the values are the same.

    Args:
        x: images ``(N, C, H, W)``, both sides at least :func:`ms_ssim_iqa_min_size` (161).
        y: images of the same shape.
        kernel_size: Gaussian window size (11).
        kernel_sigma: Gaussian window sigma (1.5).
        scale_weights: exponents of the scales, finest first.
        k1: SSIM constant K1 (0.01).
        k2: SSIM constant K2 (0.03).

    Returns:
        ``(N,)`` MS-SSIM values (1 for identical images).

    Raises:
        ValueError: the coarsest scale is smaller than the window.

    References:
        Wang, Z., Simoncelli, E. P., Bovik, A. C. (2003). Multi-scale Structural Similarity
        for Image Quality Assessment. Asilomar Conference on Signals, Systems and Computers.
    """
    levels = len(scale_weights)
    coarsest = _iqa_scale_sizes(x.shape[-2:], levels)[-1]
    if min(coarsest) < kernel_size:
        raise ValueError(
            f"ms_ssim_iqa: images of {tuple(x.shape[-2:])} px are {coarsest} px at the coarsest "
            f"of {levels} scales, smaller than the {kernel_size}-px window; it needs at least "
            f"{ms_ssim_iqa_min_size(kernel_size, levels)} px per side (use ms_ssim below that)"
        )
    window = gaussian_window(kernel_size, kernel_sigma, x.dtype, x.device)
    cs_means = []
    for level in range(levels):
        if level > 0:
            padding = (x.shape[-2] % 2, x.shape[-1] % 2)
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
        luminance, cs = _ssim_maps(x, y, window, k1**2, k2**2)
        cs = F.relu(cs)
        cs_means.append(cs.mean(dim=(1, 2, 3)))
    ssim_coarsest = (luminance * cs).mean(dim=(1, 2, 3))
    w = torch.tensor(scale_weights, dtype=x.dtype, device=x.device)

    def power(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        # base ** exponent for base > 0, else 0; finite gradient everywhere (w < 1)
        positive = base > 0
        return torch.where(positive, torch.where(positive, base, 1.0) ** exponent, 0.0)

    cs_terms = torch.stack([power(c, e) for c, e in zip(cs_means[:-1], w[:-1], strict=True)])
    return torch.prod(cs_terms * power(ssim_coarsest, w[-1]), dim=0)


class MSSSIMIQA(Metric):
    """MS-SSIM distance ``(1 - MS-SSIM) / 2`` as in the paper's released code.

    See :func:`ms_ssim_iqa`; it runs only on images of at least 161 px per side (not at
    the paper's 64x64: use :class:`MSSSIM` there).

    Args:
        kernel_size: Gaussian window size (11).
        kernel_sigma: Gaussian window sigma (1.5).
    """

    name = "ms_ssim_iqa"
    #: smallest image side the metric accepts
    min_size = ms_ssim_iqa_min_size()

    def __init__(self, kernel_size: int = 11, kernel_sigma: float = 1.5):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel_sigma = kernel_sigma
        self.min_size = ms_ssim_iqa_min_size(kernel_size)

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = ms_ssim_iqa(prepared, x, kernel_size=self.kernel_size, kernel_sigma=self.kernel_sigma)
        return (1.0 - s) / 2.0
