"""Fidelity of the classic metrics to the paper's released code, and the distance contract.

- ``ssim`` and ``ms_ssim_iqa`` reproduce the released code's SSIM (``pytorch_ssim``) and
  MS-SSIM (IQA_pytorch's ``MS_SSIM``) on fixed images (reference values below);
- ``cw_ssim`` weights its map with a centred Gaussian on non-square images and stays a
  distance on flat images;
- ``vif`` is a distance (finite, >= 0, 0 at identity) also where VIF exceeds 1.

Every metric here also gets the property checks: identity gives 0, symmetry where the
metric is symmetric, growth with a distortion's strength, finite input gradients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import piq
import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir
from numpy.lib.stride_tricks import sliding_window_view
from skimage import data as skdata

from attackpsm.images import from_uint8, to_unit
from attackpsm.job.run import build
from attackpsm.metrics.classic import (
    MSSSIMIQA,
    SSIM,
    SSIMPiq,
    ms_ssim_iqa,
    ms_ssim_iqa_min_size,
    ssim,
)
from attackpsm.metrics.cw_ssim import CWSSIM
from attackpsm.metrics.iqa import VIF

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def noisy(a: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``a`` plus Gaussian noise of ``sigma`` grey levels, rounded back to 8 bits."""
    rng = np.random.default_rng(seed)
    out = a.astype(np.float64) + rng.normal(0.0, sigma, a.shape)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def contrast(a: np.ndarray, gain: float, offset: float) -> np.ndarray:
    out = (a.astype(np.float64) - 128.0) * gain + offset
    return np.clip(out, 0, 255).round().astype(np.uint8)


def as_batch(a: np.ndarray) -> torch.Tensor:
    return from_uint8(np.ascontiguousarray(a))[None]


def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed 8-bit image pairs (scikit-image photographs, integer crops and seeded noise)."""
    ast, cat, cof = skdata.astronaut(), skdata.chelsea(), skdata.coffee()
    cof64 = cof[::4, ::4][:64, 20:84]
    big = ast[::2, ::2][:176, 40:221]
    return {
        "astronaut_noise": (ast[::8, ::8], noisy(ast[::8, ::8], 12.0, 0)),
        "chelsea_shift": (cat[100:164, 150:214], cat[101:165, 151:215]),
        "coffee_contrast": (cof64, contrast(cof64, 0.7, 140.0)),
        "astronaut_40x56_noise": (ast[200:240, 180:236], noisy(ast[200:240, 180:236], 30.0, 1)),
        "astronaut_176x181_noise": (big, noisy(big, 12.0, 2)),
        "chelsea_192x192_shift": (cat[50:242, 100:292], cat[52:244, 101:293]),
    }


# The released SSIM and MS-SSIM of each pair in ``pairs()``: a script outside the project
# ran the released code on these arrays, converted as the released loader does
# (``ToTensor`` then ``Normalize(0.5, 0.5)``: [-1, 1], float32), calling the metric as the
# released code does (reference first, one pair at a time). SSIM: the function ``_ssim``
# of pytorch_ssim (Po-Hsun-Su/pytorch-ssim, ``pytorch_ssim/__init__.py``, window 11,
# ``size_average=True``), transcribed line by line. MS-SSIM: ``IQA_pytorch.MS_SSIM
# (channels=3)(ref, dist, as_loss=False)`` imported from the IQA_pytorch 0.1 wheel (PyPI).
RELEASED_SSIM = {
    "astronaut_noise": 0.8956989645957947,
    "chelsea_shift": 0.6734580993652344,
    "coffee_contrast": 0.777759850025177,
    "astronaut_40x56_noise": 0.2897125482559204,
}
RELEASED_MS_SSIM = {
    "astronaut_176x181_noise": 0.9342350363731384,
    "chelsea_192x192_shift": 0.7528842091560364,
}


def two_photos() -> torch.Tensor:
    """A batch of two 64x64 references."""
    return torch.cat([as_batch(pairs()[n][0]) for n in ("astronaut_noise", "chelsea_shift")])


def compose_metric(name: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return build(compose(config_name="config", overrides=[f"metric={name}"]).metric)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = int(2 * round(3 * sigma) + 1)
    c = torch.arange(k, dtype=x.dtype) - k // 2
    g = torch.exp(-(c**2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.dtype)
    x = F.pad(x, (k // 2,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, g.view(1, 1, k, 1).repeat(3, 1, 1, 1), groups=3)


def ladder(x: torch.Tensor) -> list[torch.Tensor]:
    """Growing noise, then growing blur, of ``x``."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return [(x + s * noise).clamp(-1, 1) for s in (0.02, 0.08, 0.25)] + [
        blur(x, s) for s in (0.6, 1.2, 2.4)
    ]


def check_properties(metric, ref: torch.Tensor, symmetric: bool) -> None:
    """Identity 0, symmetry, growth under noise and blur, finite gradients, >= 0."""
    with torch.no_grad():
        assert torch.all(metric(ref, ref).abs() < 1e-6), "d(x, x) is not 0"
        steps = ladder(ref)
        d = torch.stack([metric(ref, x) for x in steps])  # (6, N)
        assert torch.all(torch.isfinite(d)) and torch.all(d >= 0)
        for severity in (d[:3], d[3:]):
            assert torch.all(severity[1:] > severity[:-1]), f"not growing: {severity}"
        if symmetric:
            torch.testing.assert_close(metric(steps[1], ref), d[1], rtol=1e-5, atol=1e-7)
    x = steps[1].clone().requires_grad_(True)
    metric(ref, x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --- SSIM as released ------------------------------------------------------------------------


@pytest.mark.parametrize("pair", sorted(RELEASED_SSIM))
def test_ssim_equals_the_released_ssim(pair):
    ref, dist = map(as_batch, pairs()[pair])
    torch.testing.assert_close(
        ssim(ref, dist), torch.tensor([RELEASED_SSIM[pair]]), rtol=0, atol=1e-5
    )
    # the configured metric is that SSIM as the paper's distance (1 - s) / 2
    metric = compose_metric("ssim")
    assert isinstance(metric, SSIM) and metric.name == "ssim"
    expected = torch.tensor([(1 - RELEASED_SSIM[pair]) / 2])
    torch.testing.assert_close(metric(ref, dist), expected, rtol=0, atol=5e-6)


def test_ssim_piq_is_the_standard_ssim_and_differs_from_the_released_one():
    ref, dist = map(as_batch, pairs()["astronaut_noise"])
    metric = compose_metric("ssim_piq")
    assert isinstance(metric, SSIMPiq) and metric.name == "ssim_piq"
    standard = piq.ssim(to_unit(dist), to_unit(ref), data_range=1.0, reduction="none")
    torch.testing.assert_close(metric(ref, dist), (1 - standard) / 2)
    # [0, 1] inputs and valid windows vs [-1, 1] and zero padding: not the same number
    assert abs(standard.item() - RELEASED_SSIM["astronaut_noise"]) > 0.01


def test_paper_table_experiments_use_the_released_ssim():
    for name in ("table2", "table10", "table11"):
        params = yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text())
        assert "ssim" in params["hydra"]["sweeper"]["params"]["metric"].split(",")
    assert yaml.safe_load((CONF_DIR / "metric" / "ssim.yaml").read_text())["_target_"] == (
        "attackpsm.metrics.classic.SSIM"
    )


def test_ssim_properties():
    ref = two_photos()
    check_properties(compose_metric("ssim"), ref, symmetric=True)


# --- MS-SSIM as released (IQA_pytorch) ---------------------------------------------------------


@pytest.mark.parametrize("pair", sorted(RELEASED_MS_SSIM))
def test_ms_ssim_iqa_equals_the_released_ms_ssim(pair):
    ref, dist = map(as_batch, pairs()[pair])
    expected = torch.tensor([RELEASED_MS_SSIM[pair]])
    torch.testing.assert_close(ms_ssim_iqa(ref, dist), expected, rtol=0, atol=1e-5)
    metric = compose_metric("ms_ssim_iqa")
    assert isinstance(metric, MSSSIMIQA)
    torch.testing.assert_close(metric(ref, dist), (1 - expected) / 2, rtol=0, atol=5e-6)


def test_ms_ssim_iqa_refuses_images_under_161_px():
    assert ms_ssim_iqa_min_size() == MSSSIMIQA.min_size == 161
    x = torch.zeros(1, 3, 161, 170)
    assert ms_ssim_iqa(x, x).item() == pytest.approx(1.0)
    for size in ((64, 64), (160, 200), (200, 160)):
        x = torch.zeros(1, 3, *size)
        with pytest.raises(ValueError, match=r"at least 161 px.*ms_ssim below"):
            MSSSIMIQA()(x, x)


def test_ms_ssim_iqa_is_finite_where_the_released_formula_is_nan():
    """Opposite mean brightness, same texture: a negative coarsest SSIM (NaN in the release)."""
    a = as_batch(pairs()["astronaut_176x181_noise"][0])
    x, y = 0.5 + 0.2 * a, (-0.5 + 0.2 * a).requires_grad_(True)
    assert ms_ssim_iqa(x, y).item() == 0.0
    d = MSSSIMIQA()(x, y)
    assert d.item() == pytest.approx(0.5)
    d.sum().backward()
    assert torch.isfinite(y.grad).all()


def test_ms_ssim_iqa_properties():
    ref = as_batch(pairs()["astronaut_176x181_noise"][0])
    check_properties(MSSSIMIQA(), ref, symmetric=True)


# --- CW-SSIM -----------------------------------------------------------------------------------


def cw_ssim_by_hand(cx: np.ndarray, cy: np.ndarray, centred: bool, k: float = 1e-12) -> float:
    """CW-SSIM of complex subbands ``(C, O, h, w)`` written out in NumPy (float64).

    7x7 sums of ``c_x conj(c_y)`` and of the energies; the map weighted by a Gaussian the
    size of the map with sigma = subband height / 4, centred (``centred=True``) or, as the
    code before the fix did on non-square images, the top-left corner of a square one.
    """
    corr = sliding_window_view(cx * np.conj(cy), (7, 7), axis=(-2, -1)).sum(axis=(-1, -2))
    energy = np.abs(cx) ** 2 + np.abs(cy) ** 2
    energy = sliding_window_view(energy, (7, 7), axis=(-2, -1)).sum(axis=(-1, -2))
    cssim = (2 * np.abs(corr) / 49 + k) / (energy / 49 + k)
    mh, mw = cssim.shape[-2:]
    sigma = cx.shape[-2] / 4
    if centred:
        yy, xx = np.meshgrid(
            np.arange(mh) - (mh - 1) / 2, np.arange(mw) - (mw - 1) / 2, indexing="ij"
        )
    else:
        n = max(mh, mw)
        yy, xx = np.meshgrid(np.arange(n) - (n - 1) / 2, np.arange(n) - (n - 1) / 2, indexing="ij")
        sigma = cx.shape[-1] / 4
    g = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))[:mh, :mw]
    return float((cssim * g / g.sum()).sum(axis=(-1, -2)).mean())


def test_cw_ssim_on_a_non_square_pair_uses_a_centred_window():
    img = from_uint8(skdata.astronaut())[None]
    x = F.interpolate(img, size=(96, 160), mode="bilinear", antialias=True)
    # the right part replaced by another photograph: the CW-SSIM map varies across the image
    other = F.interpolate(
        from_uint8(skdata.chelsea())[None], size=(96, 160), mode="bilinear", antialias=True
    )
    y = torch.cat([torch.roll(x, 2, dims=-1)[..., :64], other[..., 64:]], dim=-1)
    metric = CWSSIM()
    pyr = metric.pyramid((96, 160), x.device)
    with torch.no_grad():
        ours = 1 - 2 * metric(x, y).item()
        cx = pyr(to_unit(y) * 255.0)[-1][0].numpy().astype(np.complex128)
        cy = pyr(to_unit(x) * 255.0)[-1][0].numpy().astype(np.complex128)
    assert cx.shape[-2:] == (12, 20)
    centred = cw_ssim_by_hand(cx, cy, centred=True)
    off_centre = cw_ssim_by_hand(cx, cy, centred=False)
    assert ours == pytest.approx(centred, rel=1e-4, abs=1e-6)
    assert abs(off_centre - centred) > 100 * 1e-4 * abs(centred)  # the check can fail


def test_cw_ssim_is_a_distance_on_flat_images():
    photo = as_batch(pairs()["astronaut_noise"][0])
    flats = [torch.full_like(photo, v) for v in (-1.0, 0.0, 0.3, 1.0)]
    metric = CWSSIM()
    with torch.no_grad():
        for a in flats:
            assert metric(a, a).item() == 0.0  # was -100: the offset in |.| outweighed K
            for b in [*flats, photo]:
                for d in (metric(a, b), metric(b, a)):
                    assert torch.isfinite(d).all() and 0 <= d.item() <= 0.5, d
    x = flats[2].clone().requires_grad_(True)
    metric(flats[2], x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cw_ssim_properties():
    ref = two_photos()
    check_properties(CWSSIM(), ref, symmetric=True)


# --- VIF ---------------------------------------------------------------------------------------


def test_vif_is_a_distance_where_vif_exceeds_one():
    """Contrast enhancement gives VIF > 1: the distance grows with it instead of going negative."""
    ref = 0.5 * as_batch(pairs()["astronaut_noise"][0])
    metric = compose_metric("vif")
    assert isinstance(metric, VIF)
    gains = (1.1, 1.3, 1.6, 1.9)
    with torch.no_grad():
        vif = torch.cat(
            [piq.vif_p(to_unit(ref * g), to_unit(ref), reduction="none") for g in gains]
        )
        d = torch.cat([metric(ref, ref * g) for g in gains])
    assert torch.all(vif > 1)
    torch.testing.assert_close(d, (vif - 1) / 2)
    assert torch.all(d[1:] > d[:-1])


def test_vif_below_one_is_the_papers_distance():
    ref, dist = map(as_batch, pairs()["astronaut_noise"])
    with torch.no_grad():
        vif = piq.vif_p(to_unit(dist), to_unit(ref), reduction="none")
        assert vif.item() < 1
        torch.testing.assert_close(VIF()(ref, dist), (1 - vif) / 2)


def test_vif_properties_and_flat_images():
    ref = two_photos()
    check_properties(VIF(), ref, symmetric=False)
    flats = [torch.full_like(ref[:1], v) for v in (-1.0, 0.3, 1.0)]
    with torch.no_grad():
        for a in flats:
            for b in [*flats, ref[:1]]:
                d = VIF()(a, b)
                assert torch.isfinite(d).all() and d.item() >= 0
