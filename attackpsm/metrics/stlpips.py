"""ST-LPIPS (Ghildyal & Liu, 2022): shift-tolerant LPIPS.

LPIPS with an anti-aliased backbone: every downsampling (strided conv or pooling) becomes a
stride-1 operation followed by a binomial blur-pool (``[1, 2, 1]`` filter, stride 2, with
reflection padding of 2 on each side), so imperceptible shifts of the input barely move
the features. Backbone and linear layers were retrained together; the complete models
come from the ``stlpips-pytorch==0.0.2`` wheel (see :mod:`.weights`), checksummed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attackpsm.metrics.lpips import FeatureDistance, normalize_channels
from attackpsm.metrics.weights.store import load


class BlurPool(nn.Module):
    """Binomial low-pass filter then stride-2 subsampling (anti-aliased downsampling).

    Reflection padding of ``filter_size - 1`` on every side, as in ST-LPIPS.
    """

    def __init__(self, channels: int, filter_size: int = 3):
        super().__init__()
        a = torch.tensor(
            [math.comb(filter_size - 1, k) for k in range(filter_size)], dtype=torch.float32
        )
        g = a[:, None] * a[None, :]
        self.pad = filter_size - 1
        self.register_buffer("filt", (g / g.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.conv2d(x, self.filt, stride=2, groups=x.shape[1])


def _conv(c_in: int, c_out: int, k: int, padding: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding)


def alexnet_shift_tolerant() -> tuple[nn.ModuleList, dict[int, list[int]]]:
    """The five tapped slices of ST-LPIPS(Alex) and, per slice, its layers' flat indices."""
    s1 = nn.Sequential(_conv(3, 64, 11, 2), BlurPool(64), nn.ReLU())
    s2 = nn.Sequential(nn.MaxPool2d(3, 1), BlurPool(64), _conv(64, 192, 5, 2), nn.ReLU())
    s3 = nn.Sequential(nn.MaxPool2d(3, 1), BlurPool(192), _conv(192, 384, 3, 1), nn.ReLU())
    s4 = nn.Sequential(_conv(384, 256, 3, 1), nn.ReLU())
    s5 = nn.Sequential(_conv(256, 256, 3, 1), nn.ReLU())
    # position in our slice -> index in the original flat ``features`` list
    layout = {0: [0, 1, 2], 1: [3, 4, 5, 6], 2: [7, 8, 9, 10], 3: [11, 12], 4: [13, 14]}
    return nn.ModuleList([s1, s2, s3, s4, s5]), layout


def vgg16_shift_tolerant() -> tuple[nn.ModuleList, dict[int, list[int]]]:
    """The five tapped slices of ST-LPIPS(VGG) and, per slice, its layers' flat indices."""
    cfg = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    slices, layout, flat, c_in = [], {}, 0, 3
    for s, widths in enumerate(cfg):
        layers: list[nn.Module] = []
        if s > 0:  # max-pool 2 (stride 1) + blur-pool replaces VGG's stride-2 max-pool
            layers += [nn.MaxPool2d(2, 1), BlurPool(c_in)]
        for w in widths:
            layers += [_conv(c_in, w, 3, 1), nn.ReLU()]
            c_in = w
        layout[s] = list(range(flat, flat + len(layers)))
        flat += len(layers)
        slices.append(nn.Sequential(*layers))
    return nn.ModuleList(slices), layout


_ARCH = {
    "alex": (alexnet_shift_tolerant, [64, 192, 384, 256, 256]),
    "vgg": (vgg16_shift_tolerant, [64, 128, 256, 512, 512]),
}


class STLPIPS(FeatureDistance):
    """Shift-tolerant LPIPS distance (Ghildyal & Liu, 2022), ``vST0.0`` release weights.

    Args:
        net: backbone, ``alex`` or ``vgg``.
        weights_dir: cache of pretrained weights (default: see :mod:`.weights.store`).
        allow_fetch: fetch missing weights (False on compute nodes: fail fast instead).

    References:
        Ghildyal, A., Liu, F. (2022). Shift-tolerant Perceptual Similarity Metric. ECCV.
    """

    MIN_SIZE = {"alex": 22, "vgg": 20}  # blur-pooled layers need this much

    @classmethod
    def minimum_size(cls, **params: Any) -> int:
        return cls.MIN_SIZE.get(params.get("net", "alex"), 22)

    def __init__(self, net: str = "alex", weights_dir: str | None = None, allow_fetch: bool = True):
        super().__init__()
        if net not in _ARCH:
            raise ValueError(f"ST-LPIPS net must be one of {sorted(_ARCH)}, got {net!r}")
        self.name = f"stlpips_{net}"
        build, channels = _ARCH[net]
        self.slices, layout = build()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))
        self._load(load(f"stlpips_{net}", weights_dir, allow_fetch=allow_fetch), layout)
        self.freeze()

    def _load(self, state: dict[str, torch.Tensor], layout: dict[int, list[int]]) -> None:
        """Map the wheel's ``net.slice<k>.<flat index>.*`` keys onto our modules."""
        ours: dict[str, torch.Tensor] = {
            "shift": state["scaling_layer.shift"],
            "scale": state["scaling_layer.scale"],
        }
        for k in range(len(self.lins)):
            ours[f"lins.{k}.weight"] = state[f"lin{k}.model.1.weight"]
        for s, flat in layout.items():
            for pos, index in enumerate(flat):
                for kind in ("weight", "bias", "filt"):
                    key = f"net.slice{s + 1}.{index}.{kind}"
                    if key in state:
                        ours[f"slices.{s}.{pos}.{kind}"] = state[key]
        # every tensor of the release finds its place (the blur filters included: they are
        # fixed binomial filters, and loading them checks our architecture lines up)
        if len(ours) != len(state):
            raise RuntimeError(f"ST-LPIPS weights: mapped {len(ours)} of {len(state)} tensors")
        own = self.state_dict()
        for key, value in ours.items():
            if key.endswith("filt") and not torch.equal(own[key], value):
                raise RuntimeError(f"ST-LPIPS blur filter {key} differs from the binomial filter")
        self.load_state_dict(ours, strict=True)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised activations of the five tapped layers (``[-1, 1]`` input)."""
        h = (x - self.shift) / self.scale
        outs = []
        for s in self.slices:
            h = s(h)
            outs.append(normalize_channels(h))
        return outs
