"""Traditional full-reference IQA metrics from piq: FSIMc, GMSD, VIF, HaarPSI, MDSI.

All are differentiable and batched. piq takes ``[0, 1]`` images (the adapter
:func:`~attackpsm.images.to_unit` maps the package's ``[-1, 1]`` images). Similarity
indices (FSIMc, HaarPSI: 1 = identical) become distances with the paper's
``(1 - s) / 2``; VIF, which exceeds 1 for contrast-enhanced images, with ``|1 - s| / 2``;
GMSD and MDSI already are deviations (0 = identical) and are used as they are.

Gradients: piq's gradient magnitudes and deviations use ``sqrt``, which has no derivative
at 0 (flat regions; GMSD and MDSI between identical images). There the gradient w.r.t. the
input is taken as 0 (:func:`~attackpsm.metrics.base.finite_gradient`) so that white-box
attacks never step on NaN.
"""

from __future__ import annotations

import piq
import torch

from attackpsm.images import to_unit
from attackpsm.metrics.base import Metric, finite_gradient


class PiqMetric(Metric):
    """A piq full-reference index as a distance; subclasses define :meth:`index`."""

    #: True when :meth:`index` is a similarity (converted with :meth:`to_distance`)
    similarity: bool = True

    def index(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The piq index of ``[0, 1]`` images, one value per sample."""
        raise NotImplementedError

    def to_distance(self, value: torch.Tensor) -> torch.Tensor:
        """A similarity index (at most 1, 1 = identical) as the paper's ``(1 - s) / 2``."""
        return (1.0 - value) / 2.0

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        value = self.index(to_unit(finite_gradient(x)).clamp(0, 1), to_unit(prepared).clamp(0, 1))
        return self.to_distance(value) if self.similarity else value


class FSIMc(PiqMetric):
    """FSIMc distance: feature similarity with chrominance (Zhang et al., 2011).

    Phase congruency and gradient magnitude on luma, plus the I/Q chroma channels.

    Args:
        scales: log-Gabor scales of the phase congruency (4).
        orientations: log-Gabor orientations (4).

    References:
        Zhang, L., Zhang, L., Mou, X., Zhang, D. (2011). FSIM: A Feature Similarity Index
        for Image Quality Assessment. IEEE TIP 20(8), 2378-2386.
    """

    name = "fsimc"
    min_size = 4

    def __init__(self, scales: int = 4, orientations: int = 4):
        super().__init__()
        self.scales = scales
        self.orientations = orientations

    def index(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return piq.fsim(
            x,
            ref,
            reduction="none",
            chromatic=True,
            scales=self.scales,
            orientations=self.orientations,
        )


class GMSD(PiqMetric):
    """GMSD: gradient magnitude similarity deviation (Xue et al., 2014); a distance.

    References:
        Xue, W., Zhang, L., Mou, X., Bovik, A. C. (2014). Gradient Magnitude Similarity
        Deviation: A Highly Efficient Perceptual Image Quality Index. IEEE TIP 23(2).
    """

    name = "gmsd"
    min_size = 4
    similarity = False

    def index(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return piq.gmsd(x, ref, reduction="none")


class VIF(PiqMetric):
    """VIF distance ``|1 - VIF| / 2``: piq's pixel-domain VIF (VIF-P; Sheikh & Bovik, 2006).

    VIF-P is the multi-scale pixel-domain approximation of VIF (four scales of Gaussian
    windows on the luma channel), not Sheikh & Bovik's wavelet-domain VIF. It is 1 for
    identical images, falls towards 0 as information is lost (blur, noise) and exceeds 1
    for contrast-enhanced images. The paper's ``(1 - s) / 2`` would then be negative; the
    distance here is ``|1 - VIF| / 2``: equal to ``(1 - VIF) / 2`` wherever VIF <= 1, and
    growing with the enhancement above 1, so it is >= 0 and 0 only where VIF = 1.

    Args:
        sigma_n_sq: variance of the visual noise model (2.0).

    References:
        Sheikh, H. R., Bovik, A. C. (2006). Image Information and Visual Quality.
        IEEE TIP 15(2), 430-444.
    """

    name = "vif"
    min_size = 48

    def __init__(self, sigma_n_sq: float = 2.0):
        super().__init__()
        self.sigma_n_sq = sigma_n_sq

    def index(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return piq.vif_p(x, ref, sigma_n_sq=self.sigma_n_sq, reduction="none")

    def to_distance(self, value: torch.Tensor) -> torch.Tensor:
        return (1.0 - value).abs() / 2.0


class HaarPSI(PiqMetric):
    """HaarPSI distance: Haar wavelet-based perceptual similarity (Reisenhofer et al., 2018).

    References:
        Reisenhofer, R., Bosse, S., Kutyniok, G., Wiegand, T. (2018). A Haar Wavelet-Based
        Perceptual Similarity Index for Image Quality Assessment. Signal Processing:
        Image Communication 61, 33-43.
    """

    name = "haarpsi"
    min_size = 16

    def index(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return piq.haarpsi(x, ref, reduction="none")


class MDSI(PiqMetric):
    """MDSI: mean deviation similarity index (Nafchi et al., 2016); a distance (0 = identical).

    References:
        Nafchi, H. Z., Shahkolaei, A., Hedjam, R., Cheriet, M. (2016). Mean Deviation
        Similarity Index: Efficient and Reliable Full-Reference Image Quality Evaluator.
        IEEE Access 4, 5579-5590.
    """

    name = "mdsi"
    min_size = 4
    similarity = False

    def index(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return piq.mdsi(x, ref, reduction="none")
