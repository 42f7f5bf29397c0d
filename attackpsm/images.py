"""The package's single image convention and the adapters at its edges.

Inside attackpsm an image batch is a ``float32`` tensor of shape ``(N, 3, H, W)`` with
values in ``[-1, 1]``. The paper states every perturbation budget on this scale (Sec. 3,
Alg. 1) and LPIPS consumes it directly. RMSE and PSNR are reported on the ``[0, 255]``
scale (Table 2, Table 4), so the conversions live here and nowhere else.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LOW, HIGH = -1.0, 1.0


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """HWC ``uint8`` RGB array -> CHW float tensor in ``[-1, 1]``."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {array.dtype} {array.shape}")
    return from_levels(torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1))


def from_levels(levels: torch.Tensor) -> torch.Tensor:
    """8-bit levels ``0 … 255`` -> ``[-1, 1]``: ``k / 127.5 - 1``, any layout.

    ``uint8`` (or other integer) levels are computed in ``float32``; floating-point levels
    (whole numbers, e.g. an optimiser's candidate colours) keep their dtype.
    """
    x = levels if levels.is_floating_point() else levels.float()
    return x / 127.5 - 1.0


def from_levels_numpy(levels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`from_levels` in numpy for ``uint8`` levels, into ``out`` (``float32``) if given.

    Bit-identical to :func:`from_levels` where numpy's ``float32`` arithmetic rounds as
    torch's does (callers check all 256 levels once); it runs without torch's thread pool.
    """
    x = np.divide(levels, np.float32(127.5), out=out, dtype=np.float32)  # cast and divide at once
    x -= np.float32(1.0)
    return x


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float -> ``uint8`` tensor (same layout), rounded to nearest."""
    return ((images.clamp(LOW, HIGH) + 1.0) * 127.5).round().to(torch.uint8)


def to_uint8_truncated(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float -> ``uint8`` the way the released code saves and measures images.

    The released code's ``tensor2im`` computes ``(x + 1) * 255 / 2`` in float32 and casts to
    ``uint8``, which *truncates* (no rounding): its RMSE and PSNR (Table 2, Table 4) are
    measured between such images, so the paper's columns use this conversion.
    """
    return ((images.float().clamp(LOW, HIGH) + 1.0) * 127.5).to(torch.uint8)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round to the nearest of the 256 levels: the loader's 8-bit images (``dataset.quantize``).

    Rounding models the released loader, which hands the metric the 8-bit result of a PIL
    resize. It is idempotent: an image already on the 8-bit grid is returned unchanged
    (:func:`on_grid`). Saving an adversarial image is a different step: :func:`saved`.
    """
    return from_levels(to_uint8(images))


def on_grid(images: torch.Tensor) -> bool:
    """Every value is one of the 256 levels ``k / 127.5 - 1`` (a dataset's 8-bit image)."""
    return bool(torch.equal(quantize(images), images))


def saved(images: torch.Tensor) -> torch.Tensor:
    """The image a saved 8-bit PNG of ``images`` reads back as: the package's one rule.

    **Saving truncates**, as the released code's ``tensor2im`` does
    (:func:`to_uint8_truncated`): it is the only 8-bit conversion of an attack's output in
    the released code, and the paper's RMSE and PSNR (Table 2, Table 4) were measured
    between such images. The same rule decides ``flipped_saved`` (and ``attack.flip_on=saved``),
    the 8-bit RMSE/PSNR and the 8-bit "% pixels" columns (:mod:`attackpsm.protocol.stats`) and the
    PNGs the transfer craft writes, so a saved file scores exactly as the table says.

    A consequence of computing ``(x + 1) * 127.5`` in float32 as ``tensor2im`` does: the
    dark levels ``k = 1 … 63`` of an 8-bit image land just below ``k`` and read one level
    low, so saving is *not* the identity on the 8-bit grid.
    """
    return from_levels(to_uint8_truncated(images))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` -> ``[0, 1]`` (adapter for libraries such as piq)."""
    return (images + 1.0) * 0.5


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Antialiased bilinear resize of a ``(N, 3, H, W)`` or ``(3, H, W)`` batch to ``size``.

    ``size=None`` keeps the native resolution. The same call is applied to the three images
    of a triplet, so they stay aligned.
    """
    if size is None:
        return images
    squeeze = images.dim() == 3
    x = images.unsqueeze(0) if squeeze else images
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        x = x.clamp(LOW, HIGH)
    return x.squeeze(0) if squeeze else x
