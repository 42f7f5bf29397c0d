"""A-DISTS (Ding et al., 2021): locally adaptive structure and texture similarity.

DISTS' six stages (the image and five VGG16 stages with l2-pooling, :mod:`.dists`) compared
*locally*: within a Gaussian window (21 x 21, sigma 7, valid convolution) each channel's
means, variances and covariance give a texture term ``T`` (means) and a structure term
``S`` (covariance), as in SSIM. Instead of DISTS' learned weights, a *dispersion index* of
the reference decides, per position, how much each counts:

- ``ratio = mean_c( var_ref / mean_ref )`` over a stage's channels (the index of
  dispersion: large for texture-like, Poisson-unlike responses);
- ``p_s = sigmoid((ratio - theta_k) / tau_k)`` weighs structure, ``p_t = 1 - p_s``
  texture, with the published per-stage ``(theta_k, tau_k)``;
- ``D = 1 - sum_k sum_c mean_xy(p_t T + p_s S) / 1475`` (every channel of the six stages
  weighs the same).

Training-free: the only parameters are the ImageNet VGG16 (:mod:`.weights` ``vgg16``) and
the six ``(theta, tau)`` pairs. Faithful to the official implementation (``ADISTS_pt.py``
of the authors' repository), including two details it implies:

- a stage smaller than the window (at 64 x 64: relu3_3 and deeper) uses global statistics
  (mean over the whole map) instead of local ones;
- the image stage has no ``(theta, tau)`` of its own: it uses the probabilities of the
  first VGG stage (same spatial size), as the official loop leaves them.

The dispersion index is the reference's, so the distance is not symmetric.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attackpsm.metrics.base import Metric
from attackpsm.metrics.dists import (
    CHANNELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_vgg_stages,
    vgg_features,
)
from attackpsm.metrics.weights.store import load

# (theta, tau) of the structure probability per stage (image, relu1_2 .. relu5_3); the
# image stage's entry is never used (see the module docstring).
THETA = ((0.0, 0.0), (1.0, 0.29), (2.0, 0.52), (2.95, 0.56), (0.97, 0.25), (0.21, 0.10))
C1 = C2 = 1e-6


def gaussian_window(size: int = 21, sigma: float | None = None) -> torch.Tensor:
    """Normalised ``size x size`` Gaussian (sigma ``size / 3`` by default), ``(1, 1, size, size)``."""
    sigma = size / 3 if sigma is None else sigma
    g = torch.tensor([math.exp(-((i - size // 2) ** 2) / (2 * sigma**2)) for i in range(size)])
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()[None, None]


class ADISTS(Metric):
    """A-DISTS distance (Ding et al., 2021), on ``[0, 1]`` images as in the original.

    Args:
        window_size: side of the Gaussian window of local statistics (21).
        weights_dir: cache of pretrained weights (default: see :mod:`.weights.store`).
        allow_fetch: fetch missing weights (False on compute nodes: fail fast instead).

    References:
        Ding, K., Liu, Y., Zou, X., Wang, S., Ma, K. (2021). Locally Adaptive Structure and
        Texture Similarity for Image Quality Assessment. ACM Multimedia 2021, 2483-2491.
    """

    name = "adists"

    def __init__(
        self, window_size: int = 21, weights_dir: str | None = None, allow_fetch: bool = True
    ):
        super().__init__()
        if int(window_size) != window_size or window_size < 1:
            raise ValueError(f"A-DISTS window_size must be a positive integer, got {window_size}")
        self.window_size = int(window_size)
        self.stages = build_vgg_stages(load("vgg16", weights_dir, allow_fetch=allow_fetch))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("window", gaussian_window(self.window_size))
        self.freeze()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six stages' activations of a ``[-1, 1]`` image (stage 0: the ``[0, 1]`` image)."""
        return vgg_features(self.stages, self.mean, self.std, x)

    def _local(self, f: torch.Tensor) -> torch.Tensor:
        """Window average of each channel (valid convolution), or the global mean if too small."""
        if min(f.shape[-2:]) < self.window_size:
            return f.mean(dim=(2, 3), keepdim=True)
        kernel = self.window.expand(f.shape[1], 1, -1, -1)
        return F.conv2d(f, kernel, groups=f.shape[1])

    def _moments(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self._local(f)
        if min(f.shape[-2:]) < self.window_size:  # global: the variance about the mean
            return mean, ((f - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        return mean, self._local(f * f) - mean**2

    def prepare(self, ref: torch.Tensor):
        """Per stage: the reference's features, local means and variances, and ``(p_t, p_s)``."""
        with torch.no_grad():
            out = []
            feats = self.features(ref)
            probs = [None] * len(feats)
            stats = [self._moments(f) for f in feats]
            for k in range(len(feats) - 1, 0, -1):
                mean, var = stats[k]
                ratio = (var / (mean + 1e-12)).mean(dim=1, keepdim=True)
                theta, tau = THETA[k]
                p_s = torch.sigmoid((ratio - theta) / tau)
                probs[k] = (1 - p_s, p_s)
            probs[0] = probs[1]  # the image stage uses the first VGG stage's probabilities
            for f, (mean, var), (p_t, p_s) in zip(feats, stats, probs, strict=True):
                out.append((f, mean, var, p_t, p_s))
            return out

    def score(self, prepared, x: torch.Tensor) -> torch.Tensor:
        similarity = 0.0
        for (f_ref, m_ref, v_ref, p_t, p_s), f_x in zip(prepared, self.features(x), strict=True):
            m_x, v_x = self._moments(f_x)
            if min(f_x.shape[-2:]) < self.window_size:
                cov = (f_x * f_ref).mean(dim=(2, 3), keepdim=True) - m_x * m_ref
            else:
                cov = self._local(f_x * f_ref) - m_x * m_ref
            texture = (2 * m_x * m_ref + C1) / (m_x**2 + m_ref**2 + C1)
            structure = (2 * cov + C2) / (v_x + v_ref + C2)
            similarity = similarity + (p_t * texture + p_s * structure).mean(dim=(2, 3)).sum(1)
        return 1.0 - similarity / sum(CHANNELS)
