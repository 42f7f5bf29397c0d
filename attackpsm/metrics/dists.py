"""DISTS (Ding et al., 2020): deep image structure and texture similarity.

A VGG16 whose max-pooling layers are replaced by l2-pooling (a Hanning-windowed, strided
root-mean-square) feeds six stages -- the image itself and relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3. Per channel, a *texture* term compares global means and a *structure*
term compares global (co)variances, SSIM-style; learned weights ``alpha`` and ``beta``
(one per channel, 1475 in all) combine them. DISTS is a distance: ``1 - sum(...)``.

Weights: the ImageNet VGG16 from :mod:`.weights` (``vgg16``) and ``alpha``/``beta`` from
the ``dists-pytorch==0.1`` wheel (``dists``), both checksummed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attackpsm.images import to_unit
from attackpsm.metrics.base import Metric
from attackpsm.metrics.weights.store import load

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision VGG16 ``features``: conv layer indices of each DISTS stage (a ReLU follows
# each conv); every stage after the first starts with l2-pooling instead of max-pooling.
_STAGES = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
CHANNELS = [3, 64, 128, 256, 512, 512]


def hanning_kernel(size: int = 5) -> torch.Tensor:
    """The normalised 2-D Hanning window of DISTS' l2-pooling (``size`` 5 -> 3x3 taps)."""
    n = torch.arange(size, dtype=torch.float64)
    a = (0.5 - 0.5 * torch.cos(2 * torch.pi * n / (size - 1)))[1:-1]
    g = a[:, None] * a[None, :]
    return (g / g.sum()).float()


class L2Pooling(nn.Module):
    """``sqrt(conv(x^2, hanning) + 1e-12)`` with stride 2: the anti-aliased pooling of DISTS."""

    def __init__(self, channels: int, size: int = 5):
        super().__init__()
        self.padding = (size - 2) // 2
        self.register_buffer("kernel", hanning_kernel(size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.kernel, stride=2, padding=self.padding, groups=x.shape[1])
        return (out + 1e-12).sqrt()


def vgg_features(
    stages: nn.ModuleList, mean: torch.Tensor, std: torch.Tensor, x: torch.Tensor
) -> list[torch.Tensor]:
    """The ``[0, 1]`` image and the activations of each VGG stage for a ``[-1, 1]`` image
    (ImageNet normalisation), as DISTS and A-DISTS compare them."""
    x = to_unit(x)
    feats = [x]
    h = (x - mean) / std
    for stage in stages:
        h = stage(h)
        feats.append(h)
    return feats


def build_vgg_stages(state: dict[str, torch.Tensor] | None) -> nn.ModuleList:
    """Five VGG16 stages with l2-pooling, loaded from a torchvision ``features.*`` state."""
    stages = nn.ModuleList()
    in_ch = 3
    for s, convs in enumerate(_STAGES):
        layers: list[nn.Module] = [L2Pooling(in_ch)] if s > 0 else []
        for index in convs:
            out_ch = CHANNELS[s + 1]
            conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            if state is not None:
                with torch.no_grad():
                    conv.weight.copy_(state[f"features.{index}.weight"])
                    conv.bias.copy_(state[f"features.{index}.bias"])
            layers += [conv, nn.ReLU()]
            in_ch = out_ch
        stages.append(nn.Sequential(*layers))
    return stages


class DISTS(Metric):
    """DISTS distance (Ding et al., 2020), on ``[0, 1]`` images as in the original.

    Args:
        weights_dir: cache of pretrained weights (default: see :mod:`.weights.store`).
        allow_fetch: fetch missing weights (False on compute nodes: fail fast instead).
        require_grad: ``True`` (default): gradients reach the image through every stage,
            as the metric's definition implies. ``False`` reproduces the ``DISTS_pytorch``
            package's default call ``forward(x, y, require_grad=False)``: the VGG stages run
            under ``torch.no_grad()`` but stage 0 is the input tensor itself, so an attack
            still gets a gradient -- from the 3 pixel-level channels only (the RGB means,
            variances and covariance), a far weaker direction. Distances are identical
            either way; only white-box attacks see the difference (docs/research.md, "Why
            DISTS flips more here than in the paper").

    References:
        Ding, K., Ma, K., Wang, S., Simoncelli, E. P. (2020). Image Quality Assessment:
        Unifying Structure and Texture Similarity. IEEE TPAMI 44(5), 2567-2581.
    """

    name = "dists"

    def __init__(
        self, weights_dir: str | None = None, allow_fetch: bool = True, require_grad: bool = True
    ):
        super().__init__()
        if not isinstance(require_grad, bool):
            raise ValueError(f"dists: require_grad must be true or false, got {require_grad!r}")
        self.require_grad = require_grad
        vgg = load("vgg16", weights_dir, allow_fetch=allow_fetch)
        params = load("dists", weights_dir, allow_fetch=allow_fetch)
        self.stages = build_vgg_stages(vgg)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        w_sum = params["alpha"].sum() + params["beta"].sum()
        # normalised weights, split per stage: alpha weighs texture, beta structure
        self.register_buffer("alpha", (params["alpha"] / w_sum).flatten())
        self.register_buffer("beta", (params["beta"] / w_sum).flatten())
        self.freeze()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six stages' activations of a ``[-1, 1]`` image (stage 0: the ``[0, 1]`` image).

        With ``require_grad=False`` stages 1-5 carry no gradient (``DISTS_pytorch``'s
        default ``torch.no_grad()`` forward); stage 0 always does.
        """
        if self.require_grad:
            return vgg_features(self.stages, self.mean, self.std, x)
        with torch.no_grad():
            deep = vgg_features(self.stages, self.mean, self.std, x.detach())[1:]
        return [to_unit(x), *deep]

    def prepare(self, ref: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per stage: the reference's features, their spatial means and variances."""
        with torch.no_grad():
            out = []
            for f in self.features(ref):
                mean = f.mean(dim=(2, 3))
                var = ((f - mean[..., None, None]) ** 2).mean(dim=(2, 3))
                out.append((f, mean, var))
            return out

    def score(self, prepared, x: torch.Tensor) -> torch.Tensor:
        c1 = c2 = 1e-6
        alphas = torch.split(self.alpha, CHANNELS)
        betas = torch.split(self.beta, CHANNELS)
        similarity = 0.0
        for (f_ref, m_ref, v_ref), f_x, alpha, beta in zip(
            prepared, self.features(x), alphas, betas, strict=True
        ):
            m_x = f_x.mean(dim=(2, 3))
            v_x = ((f_x - m_x[..., None, None]) ** 2).mean(dim=(2, 3))
            cov = (f_x * f_ref).mean(dim=(2, 3)) - m_x * m_ref
            texture = (2 * m_x * m_ref + c1) / (m_x**2 + m_ref**2 + c1)
            structure = (2 * cov + c2) / (v_x + v_ref + c2)
            similarity = similarity + (texture * alpha).sum(1) + (structure * beta).sum(1)
        return 1.0 - similarity
