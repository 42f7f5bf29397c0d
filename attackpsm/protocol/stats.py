"""Perturbation sizes of one adversarial image, both ways (Table 2, Table 4).

Every size is reported twice, with the way it is measured in the column name:

- ``*_uint8``: between the 8-bit images a viewer sees -- the prey and the adversarial image
  converted as the released code's ``tensor2im`` does, which **truncates** to ``uint8``
  (:func:`attackpsm.images.to_uint8_truncated`). Truncation, not rounding, because the
  paper's RMSE and PSNR were measured between those images: the paper's numbers can only
  be compared with values measured the same way.
  A consequence the paper's numbers carry: ``(x + 1) * 127.5`` in float32 lands just below
  the integer for the dark levels ``k = 1 … 63`` of ``x = k / 127.5 - 1`` (the values the
  released loader produces too), which then read one level low; a prey pixel on such a
  level and its adversarial value a fraction of a level above it differ by a whole level.
  The 8-bit RMSE of a small perturbation is therefore larger than the float one.
- ``*_float``: on the float perturbation ``δ = I_adv - I_prey`` the attack produced.

Columns (the paper's scales: "RMSE was calculated on images with pixel values ranging
[0, 255]"; every ε "computed from normalized images in the range [-1, 1]", Sec. 4):

- ``linf``: ``max |δ|`` on ``[-1, 1]``;
- ``rmse_uint8``, ``psnr_uint8`` and ``rmse_float``, ``psnr_float``: on ``[0, 255]``
  (PSNR = ``20 log10(255 / RMSE)``, ``+inf`` when nothing changed);
- ``pct_px_gt_<t>_float``: percent of values (per channel) with ``|δ| > t``, a plain
  float32 comparison as in the released code: a value that lands exactly on a multiple of
  a step (``δ = 0.001`` after one PGD step) reads as ``0.00099999`` or ``0.00100002``
  after float32 round-off, so about half of such values count;
- ``pct_px_gt_<t>_uint8``: the same count on the 8-bit images' difference (divided by
  127.5 to be on ``[-1, 1]``): > 0.001 is any changed value, > 0.01 two grey levels or
  more, > 0.03 four or more.

The paper's definitions (:data:`PAPER_COLUMNS`): RMSE and PSNR between the 8-bit images,
% pixels on the float δ. Every table that prints a paper number uses these.
"""

from __future__ import annotations

import torch

from attackpsm.images import to_uint8_truncated

THRESHOLDS = (0.001, 0.01, 0.03)


def pct_column(t: float, way: str) -> str:
    """Name of the "% pixels with ε > t" column measured ``way`` (``float`` or ``uint8``)."""
    if way not in ("float", "uint8"):
        raise ValueError(f"way must be 'float' or 'uint8', got {way!r}")
    return f"pct_px_gt_{t:g}_{way}"


STAT_COLUMNS = [
    "linf",
    "rmse_uint8",
    "psnr_uint8",
    "rmse_float",
    "psnr_float",
    *[pct_column(t, "float") for t in THRESHOLDS],
    *[pct_column(t, "uint8") for t in THRESHOLDS],
]
# The paper's definition of each reported size -> the per-triplet column that holds it.
PAPER_COLUMNS = {
    "rmse": "rmse_uint8",
    "psnr": "psnr_uint8",
    **{f"pct_px_gt_{t:g}": pct_column(t, "float") for t in THRESHOLDS},
}
PAPER_DEFINITIONS = (
    "RMSE and PSNR ([0, 255] scale) between the 8-bit prey and adversarial images "
    "(truncated to uint8 as the released code's tensor2im does); % pixels with ε > t: "
    "values of the float δ = I_adv - I_prey above t on the [-1, 1] scale (float32 "
    "comparison); over the flipped samples"
)

FLIP_DEFINITIONS = (
    "#Flipped decides on the float adversarial image (the paper); #Flipped after saving on "
    "that image saved as an 8-bit PNG, truncated as the released code's tensor2im does (the "
    "one rule of the 8-bit RMSE, PSNR and % pixel columns too)"
)


def _rmse_psnr(diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rmse = diff.pow(2).mean(1).sqrt()
    return rmse, 20.0 * torch.log10(255.0 / rmse)  # +inf when nothing changed


def perturbation_stats(adv: torch.Tensor, prey: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample sizes of ``adv - prey``, every column of :data:`STAT_COLUMNS`.

    Args:
        adv: adversarial images ``(N, 3, H, W)`` in ``[-1, 1]``.
        prey: the images they were made from.

    Returns:
        ``{column: (N,) tensor}``; see the module docstring for the definitions.
    """
    delta = (adv.float() - prey.float()).flatten(1)
    absd = delta.abs()
    levels = (to_uint8_truncated(adv).float() - to_uint8_truncated(prey).float()).flatten(1)
    out = {"linf": absd.amax(1)}
    out["rmse_uint8"], out["psnr_uint8"] = _rmse_psnr(levels)
    out["rmse_float"], out["psnr_float"] = _rmse_psnr(delta * 127.5)
    for t in THRESHOLDS:
        out[pct_column(t, "float")] = 100.0 * (absd > t).float().mean(1)
    steps = levels.abs() / 127.5
    for t in THRESHOLDS:
        out[pct_column(t, "uint8")] = 100.0 * (steps > t).float().mean(1)
    return {k: out[k] for k in STAT_COLUMNS}
