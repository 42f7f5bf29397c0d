"""Perturbation statistics on the paper's scales (Table 2, Table 4)."""

from __future__ import annotations

import math

import numpy as np
import torch

from attackpsm.protocol.stats import perturbation_stats


def test_scales_and_thresholds():
    prey = torch.zeros(1, 3, 4, 4)
    adv = prey.clone()
    adv[0, 0, 0, :] = 0.03  # projected exactly onto the budget: float32(0.03) is not > 0.03
    adv[0, 1, 0, 0] = 0.0015
    s = perturbation_stats(adv, prey)
    n = 3 * 4 * 4
    assert s["linf"].item() == torch.tensor(0.03).item()
    assert s["pct_px_gt_0.03_float"].item() == 0.0
    assert math.isclose(s["pct_px_gt_0.01_float"].item(), 100 * 4 / n, rel_tol=1e-6)
    assert math.isclose(s["pct_px_gt_0.001_float"].item(), 100 * 5 / n, rel_tol=1e-6)
    # RMSE on the [0, 255] scale: a [-1, 1] step of 0.03 is 0.03 * 127.5 grey levels
    expected = math.sqrt((4 * (0.03 * 127.5) ** 2 + (0.0015 * 127.5) ** 2) / n)
    assert math.isclose(s["rmse_float"].item(), expected, rel_tol=1e-5)
    assert math.isclose(s["psnr_float"].item(), 20 * math.log10(255 / expected), rel_tol=1e-5)


def test_projection_roundoff_is_a_plain_float32_comparison():
    """``(prey + δ) - prey`` with ``|δ| = 0.03`` reads back above or below 0.03 by float32
    round-off; the released code compares in float32 without a tolerance, so the values
    that read above count. The expected count is computed here with NumPy."""
    torch.manual_seed(0)
    prey = torch.rand(2, 3, 16, 16) * 1.9 - 0.95
    adv = prey + 0.03 * torch.sign(torch.randn_like(prey))
    s = perturbation_stats(adv, prey)
    delta = np.abs(adv.numpy() - prey.numpy()).reshape(2, -1)
    expected = 100.0 * (delta > np.float32(0.03)).mean(1)
    assert expected.min() > 0 and expected.max() < 100  # the round-off goes both ways
    np.testing.assert_allclose(s["pct_px_gt_0.03_float"].numpy(), expected, rtol=1e-6)
    assert (s["pct_px_gt_0.01_float"] == 100).all()


def test_unchanged_image():
    x = torch.rand(1, 3, 4, 4)
    s = perturbation_stats(x, x)
    for way in ("uint8", "float"):
        assert s[f"rmse_{way}"].item() == 0 and math.isinf(s[f"psnr_{way}"].item())
        assert s[f"pct_px_gt_0.001_{way}"].item() == 0
