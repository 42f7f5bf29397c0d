"""Perturbation statistics on the paper's scales (Table 2, Table 4)."""

from __future__ import annotations

import math

import torch

from attackpsm.stats import perturbation_stats


def test_scales_and_thresholds():
    prey = torch.zeros(1, 3, 4, 4)
    adv = prey.clone()
    adv[0, 0, 0, :] = 0.03  # projected exactly onto the budget: not "above 0.03"
    adv[0, 1, 0, 0] = 0.0015
    s = perturbation_stats(adv, prey)
    n = 3 * 4 * 4
    assert s["linf"].item() == torch.tensor(0.03).item()
    assert s["frac_gt_0.03"].item() == 0.0
    assert math.isclose(s["frac_gt_0.01"].item(), 100 * 4 / n, rel_tol=1e-6)
    assert math.isclose(s["frac_gt_0.001"].item(), 100 * 5 / n, rel_tol=1e-6)
    # RMSE on the [0, 255] scale: a [-1, 1] step of 0.03 is 0.03 * 127.5 grey levels
    expected = math.sqrt((4 * (0.03 * 127.5) ** 2 + (0.0015 * 127.5) ** 2) / n)
    assert math.isclose(s["rmse"].item(), expected, rel_tol=1e-5)
    assert math.isclose(s["psnr"].item(), 20 * math.log10(255 / expected), rel_tol=1e-5)


def test_projection_roundoff_is_not_above_the_budget():
    torch.manual_seed(0)
    prey = torch.rand(2, 3, 16, 16) * 1.9 - 0.95
    adv = prey + 0.03 * torch.sign(torch.randn_like(prey))
    s = perturbation_stats(adv, prey)
    assert (s["frac_gt_0.03"] == 0).all() and (s["frac_gt_0.01"] == 100).all()


def test_unchanged_image():
    x = torch.rand(1, 3, 4, 4)
    s = perturbation_stats(x, x)
    assert s["rmse"].item() == 0 and math.isinf(s["psnr"].item()) and s["frac_gt_0.001"].item() == 0
