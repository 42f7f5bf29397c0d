"""PieAPP (Prashnani et al., 2018): perceptual image error from pairwise preference.

A shared convolutional network embeds 64x64 patches of both images; one head maps the
feature difference to a per-patch error, another to a per-patch weight; the score is the
weighted mean error over patches (a distance: larger = more different). The network is
piq's port of the authors' model.

Online-only: the trained weights are published only as a web download (no package
registry carries them), so ``pieapp`` works where ``make weights`` could fetch them and
fails with :class:`~attackpsm.metrics.weights.safeload.WeightsUnavailable` elsewhere.
"""

from __future__ import annotations

import torch
from piq.functional import crop_patches
from piq.pieapp import PieAPPModel

from attackpsm.images import to_unit
from attackpsm.metrics.base import Metric
from attackpsm.metrics.weights.store import load

PATCH = 64


class PieAPP(Metric):
    """PieAPP distance on ``[0, 255]`` patches of side 64 (Prashnani et al., 2018).

    Args:
        stride: step between patches (27 as in piq; a 64x64 image is one patch).
        weights_dir: cache of pretrained weights (default: see :mod:`.weights.store`).
        allow_fetch: fetch missing weights (False on compute nodes: fail fast instead).

    References:
        Prashnani, E., Cai, H., Mostofi, Y., Sen, P. (2018). PieAPP: Perceptual
        Image-Error Assessment through Pairwise Preference. CVPR.
    """

    name = "pieapp"
    min_size = PATCH  # one 64x64 patch

    def __init__(self, stride: int = 27, weights_dir: str | None = None, allow_fetch: bool = True):
        super().__init__()
        self.stride = stride
        state = load("pieapp", weights_dir, allow_fetch=allow_fetch)
        self.model = PieAPPModel()
        self.model.load_state_dict(state)
        self.freeze()

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and weight features of every patch, ``(N, patches, F)`` each."""
        if min(x.shape[-2:]) < PATCH:
            raise ValueError(
                f"PieAPP needs images of at least {PATCH}x{PATCH}, got {tuple(x.shape[-2:])}"
            )
        patches = crop_patches(to_unit(x).clamp(0, 1) * 255.0, size=PATCH, stride=self.stride)
        features, w = self.model(patches)  # patches of image i are rows i*P .. (i+1)*P - 1
        n = x.shape[0]
        return features.view(n, -1, features.shape[-1]), w.view(n, -1, w.shape[-1])

    def prepare(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.embed(ref)

    def score(self, prepared: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        ref_features, ref_weights = prepared
        features, w = self.embed(x)
        errors, w = self.model.compute_difference(ref_features - features, ref_weights - w)
        errors, w = errors.squeeze(-1), w.squeeze(-1)  # (N, patches)
        return (errors * w).sum(1) / w.sum(1)
