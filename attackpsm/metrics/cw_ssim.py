"""CW-SSIM (Wang & Simoncelli, 2005; Sampat et al., 2009) on a complex steerable pyramid.

Small translations, scalings and rotations change mostly the *phase* of local complex
wavelet coefficients, not their structure; CW-SSIM compares coefficients
``c_x, c_y`` of the same subband with

    cssim = (2 |sum_w c_x conj(c_y)| + K) / (sum_w |c_x|^2 + sum_w |c_y|^2 + K)

over a sliding 7x7 window ``w``, weights the map with a centred Gaussian (sigma = subband
height / 4, on square and non-square images alike), and averages over the orientations of
the coarsest level. The pyramid is a differentiable, batched,
frequency-domain complex steerable pyramid (Simoncelli & Freeman, 1995; Portilla &
Simoncelli, 2000) written with ``torch.fft``: raised-cosine radial masks in log2 frequency
(one octave per level, decimation by 2 after each level) and one-sided angular masks
``cos(theta - pi b / K)^(K-1)`` that give analytic (complex) subbands.

Defaults follow the widely used PyTorch port (IQA_pytorch): 4 levels, 8 orientations,
images on the ``[0, 255]`` scale, ``K = 1e-12``, each colour channel separately then
averaged. At 64x64 the coarsest level is 8x8, so the 7x7 window leaves a 2x2 map.
CW-SSIM is a similarity (at most 1, 1 = identical); the distance is ``(1 - s) / 2``. On
flat images the subbands are (nearly) empty; the modulus is computed exactly (an offset
under the square root would outweigh the tiny ``K``), so the distance stays in ``[0, 0.5]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attackpsm.images import to_unit
from attackpsm.metrics.base import Metric
from attackpsm.metrics.classic import gaussian_window


def _raised_cosine_high(log_rad: torch.Tensor) -> torch.Tensor:
    """High-pass transition: 0 below ``log2 r = -1``, 1 above 0, ``cos(pi/2 * log2 r)`` between."""
    t = log_rad.clamp(-1.0, 0.0)
    return torch.cos(math.pi / 2 * t)


def _raised_cosine_low(log_rad: torch.Tensor) -> torch.Tensor:
    """The complementary low-pass: ``sqrt(1 - high^2)``."""
    t = log_rad.clamp(-1.0, 0.0)
    return torch.sin(-math.pi / 2 * t)


def _polar_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``log2`` radius (Nyquist = 1) and angle of a centred (fftshifted) frequency grid."""
    y = (torch.arange(h, device=device, dtype=torch.float64) - h // 2) / (h / 2)
    x = (torch.arange(w, device=device, dtype=torch.float64) - w // 2) / (w / 2)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    rad = torch.sqrt(xx**2 + yy**2)
    rad[h // 2, w // 2] = rad[h // 2, w // 2 - 1]  # avoid log(0) at DC (as in pyrtools)
    return torch.log2(rad), torch.atan2(yy, xx)


def _crop_centre(t: torch.Tensor) -> torch.Tensor:
    """The centre half of a centred spectrum (decimation by 2 in space)."""
    h, w = t.shape[-2:]
    lh, lw = math.ceil((h - 0.5) / 2), math.ceil((w - 0.5) / 2)
    sh = h // 2 - (math.ceil((lh + 0.5) / 2) - 1)
    sw = w // 2 - (math.ceil((lw + 0.5) / 2) - 1)
    return t[..., sh : sh + lh, sw : sw + lw]


class SteerablePyramid(torch.nn.Module):
    """Complex steerable pyramid (frequency domain) for images of one fixed size.

    Args:
        size: ``(H, W)`` of the images.
        levels: number of band-pass levels (each one octave, decimated by 2).
        orientations: number of oriented subbands per level.

    :meth:`masks` exposes the filters (for tests of the tight-frame property);
    :meth:`forward` returns the complex subbands of every level.
    """

    def __init__(self, size: tuple[int, int], levels: int = 4, orientations: int = 8):
        super().__init__()
        h, w = size
        if min(h, w) < 2**levels:
            raise ValueError(f"a {levels}-level pyramid needs images of at least {2**levels} px")
        self.levels, self.orientations = levels, orientations
        order = orientations - 1
        const = (
            (2 ** (2 * order))
            * math.factorial(order) ** 2
            / (orientations * math.factorial(2 * order))
        )
        log_rad, angle = _polar_grid(h, w, torch.device("cpu"))
        self.register_buffer("lo0", _raised_cosine_low(log_rad).float())
        self.register_buffer("hi0", _raised_cosine_high(log_rad).float())
        self._band_names: list[list[str]] = []
        self._low_names: list[str] = []
        for level in range(levels):
            high = _raised_cosine_high(log_rad + 1 + level)
            names = []
            for b in range(orientations):
                alpha = (
                    torch.remainder(angle - math.pi * b / orientations + math.pi, 2 * math.pi)
                    - math.pi
                )
                angular = (
                    2 * math.sqrt(const) * torch.cos(alpha) ** order * (alpha.abs() < math.pi / 2)
                )
                name = f"band_{level}_{b}"
                self.register_buffer(name, (high * angular).float())
                names.append(name)
            self._band_names.append(names)
            log_rad, angle = _crop_centre(log_rad), _crop_centre(angle)
            name = f"low_{level}"
            self.register_buffer(name, _raised_cosine_low(log_rad + 1 + level).float())
            self._low_names.append(name)
        self.order = order

    def masks(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[torch.Tensor]], list[torch.Tensor]]:
        """``(hi0, lo0, bands[level][orientation], lows[level])`` frequency masks."""
        bands = [[getattr(self, n) for n in names] for names in self._band_names]
        return self.hi0, self.lo0, bands, [getattr(self, n) for n in self._low_names]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Complex subbands ``(N, C, orientations, H / 2^l, W / 2^l)`` for each level ``l``."""
        spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)) * self.lo0
        phase = (-1j) ** self.order
        out = []
        for level in range(self.levels):
            bands = torch.stack(
                [spectrum * getattr(self, n) for n in self._band_names[level]], dim=2
            )
            out.append(torch.fft.ifft2(torch.fft.ifftshift(phase * bands, dim=(-2, -1))))
            spectrum = _crop_centre(spectrum) * getattr(self, self._low_names[level])
        return out


def _box(t: torch.Tensor, size: int) -> torch.Tensor:
    """Valid-mode mean over ``size x size`` windows of a real ``(..., H, W)`` tensor."""
    shape = t.shape
    flat = t.reshape(-1, 1, *shape[-2:])
    out = F.avg_pool2d(flat, size, stride=1)
    return out.reshape(*shape[:-2], *out.shape[-2:])


def cw_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    pyramid: SteerablePyramid,
    window: int = 7,
    k: float = 1e-12,
) -> torch.Tensor:
    """CW-SSIM of ``[0, 255]`` images on the coarsest level of ``pyramid``, one value per sample.

    Args:
        x: images ``(N, C, H, W)`` on the ``[0, 255]`` scale.
        y: images of the same shape.
        pyramid: a :class:`SteerablePyramid` built for ``(H, W)``.
        window: side of the sliding window (7).
        k: stabilising constant ``K`` (1e-12).

    Returns:
        ``(N,)`` CW-SSIM values (1 for identical images).

    References:
        Wang, Z., Simoncelli, E. P. (2005). Translation Insensitive Image Similarity in
        Complex Wavelet Domain. ICASSP. Sampat, M. P., Wang, Z., Gupta, S., Bovik, A. C.,
        Markey, M. K. (2009). Complex Wavelet Structural Similarity: A New Image
        Similarity Index. IEEE TIP 18(11), 2385-2401.
    """
    cx = pyramid(x)[-1]
    cy = pyramid(y)[-1]
    corr = cx * cy.conj()
    corr_re, corr_im = _box(corr.real, window), _box(corr.imag, window)
    energy = _box(cx.real**2 + cx.imag**2 + cy.real**2 + cy.imag**2, window)
    cssim = (2 * _modulus(corr_re, corr_im) + k) / (energy + k)  # (N, C, orientations, h, w)
    # the map's weights, as in the CW-SSIM reference code (Sampat et al., 2009): a centred
    # Gaussian the size of the map, sigma = subband height / 4 (also on non-square images)
    gauss = gaussian_window(tuple(cssim.shape[-2:]), cx.shape[-2] / 4, cssim.dtype, cssim.device)
    return (cssim * gauss[0, 0]).sum(dim=(-1, -2)).mean(dim=(1, 2))


def _modulus(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """``|re + i im|``, exactly 0 at 0 with a zero (not NaN) gradient there.

    A flat image has empty band-pass subbands; any offset inside the square root would then
    outweigh the tiny ``K`` and push CW-SSIM far above 1.
    """
    sq = re**2 + im**2
    nonzero = sq > 0
    return torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, 1.0)), 0.0)


class CWSSIM(Metric):
    """CW-SSIM distance ``(1 - CW-SSIM) / 2`` (Wang & Simoncelli, 2005), differentiable.

    Args:
        levels: pyramid levels; CW-SSIM uses the coarsest (4).
        orientations: subbands per level (8).
        window: sliding window side (7).
        k: stabilising constant on the ``[0, 255]`` scale (1e-12).
    """

    name = "cw_ssim"
    min_size = 64  # 4 pyramid levels

    def __init__(self, levels: int = 4, orientations: int = 8, window: int = 7, k: float = 1e-12):
        super().__init__()
        self.levels, self.orientations, self.window, self.k = levels, orientations, window, k
        self._pyramids: dict[tuple, SteerablePyramid] = {}

    def pyramid(self, size: tuple[int, int], device: torch.device) -> SteerablePyramid:
        """The pyramid for one image size and device (built once, then reused)."""
        key = (size, str(device))
        if key not in self._pyramids:
            pyr = SteerablePyramid(size, self.levels, self.orientations).to(device)
            coarsest = min(size) // 2 ** (self.levels - 1)
            if coarsest < self.window:
                raise ValueError(
                    f"CW-SSIM: the coarsest level is {coarsest} px, smaller than the {self.window}-px window; "
                    f"use fewer levels or larger images"
                )
            self._pyramids[key] = pyr
        return self._pyramids[key]

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        pyr = self.pyramid(tuple(x.shape[-2:]), x.device)
        s = cw_ssim(to_unit(x) * 255.0, to_unit(prepared) * 255.0, pyr, self.window, self.k)
        # CW-SSIM <= 1 (Cauchy-Schwarz); the clamp only absorbs rounding at identity
        return ((1.0 - s) / 2.0).clamp_min(0.0)
