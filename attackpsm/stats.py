"""Perturbation statistics of one adversarial image (Table 2, Table 4).

All on the paper's scales (REFERENCE: "All ε are on the [-1, 1] image scale; RMSE and PSNR
are on the [0, 255] scale"): ``linf`` and the "% pixels with ε > t" columns use ``|δ|``
per channel value on ``[-1, 1]``; ``rmse`` and ``psnr`` use ``δ`` rescaled to ``[0, 255]``.
"""

from __future__ import annotations

import torch

THRESHOLDS = (0.001, 0.01, 0.03)
# float32 round-off of ``(prey + δ) - prey`` near 1 is ~1e-7: a value projected onto the
# budget ε (e.g. 0.03) can read back as 0.0300000012 and must not count as "above 0.03"
ROUNDOFF = 1e-6


def frac_column(t: float) -> str:
    return f"frac_gt_{t:g}"


def perturbation_stats(adv: torch.Tensor, prey: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample ``linf``, ``rmse``, ``psnr`` and ``frac_gt_<t>`` (percent of values).

    Args:
        adv: adversarial images ``(N, 3, H, W)`` in ``[-1, 1]``.
        prey: the images they were made from.
    """
    delta = (adv - prey).flatten(1)
    absd = delta.abs()
    rmse = (delta * 127.5).pow(2).mean(1).sqrt()
    psnr = 20.0 * torch.log10(255.0 / rmse)  # +inf when nothing changed
    out = {"linf": absd.amax(1), "rmse": rmse, "psnr": psnr}
    for t in THRESHOLDS:
        out[frac_column(t)] = 100.0 * (absd > t + ROUNDOFF).float().mean(1)
    return out
