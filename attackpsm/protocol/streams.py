"""Per-triplet random streams: counter-based numbers keyed by an image's pixels and a seed.

An attack that draws random numbers (One-pixel's population, Square's windows, APGD's
restarts) draws them as a hash of ``(key, step, slot)`` instead of from a shared generator;
so does the smoothed metric's common noise (keyed by the reference).
The number a triplet gets is then the same whatever the batch it sits in, the other
triplets still active, the device or the order of evaluation: a run with
``resolution.batch_size=1`` equals one with ``batch_size=64`` (the same numbers whatever the batch).
"""

from __future__ import annotations

import torch

from attackpsm.images import to_uint8

_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 value with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic): a counter-based hash."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MUL1
    z = (z ^ _shr(z, 27)) * _MUL2
    return z ^ _shr(z, 31)


def counter_uniform(key: torch.Tensor, *counters: torch.Tensor | int) -> torch.Tensor:
    """Uniform floats in ``[0, 1)`` that depend only on ``key`` and the counters.

    A counter-based generator: the number drawn for (triplet, step, slot) is a hash of
    those integers, so it is the same whatever the batch composition, the device or the
    order of evaluation -- a batched run equals one-at-a-time runs.
    """
    z = key
    for c in counters:
        z = _mix(z ^ (c if torch.is_tensor(c) else torch.as_tensor(c, device=key.device)))
    return _shr(z, 40).to(torch.float32) / float(1 << 24)


def image_keys(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One int64 key per image from its 8-bit pixel values and ``seed`` (content-addressed)."""
    values = to_uint8(images).flatten(1).to(torch.int64)
    position = torch.arange(values.shape[1], device=images.device, dtype=torch.int64)
    return _mix(_mix(values * 1_000_003 + position).sum(dim=1) ^ _mix(torch.tensor(seed)))


def uniform(keys: torch.Tensor, step: int, slots: int | tuple[int, ...]) -> torch.Tensor:
    """``(N, *slots)`` uniforms: triplet ``i`` gets the numbers of ``(keys[i], step, slot)``."""
    shape = (slots,) if isinstance(slots, int) else tuple(slots)
    count = 1
    for s in shape:
        count *= s
    slot = torch.arange(count, device=keys.device, dtype=torch.int64)
    return counter_uniform(keys[:, None], step, slot[None, :]).view(len(keys), *shape)


def below(u: torch.Tensor, size: int) -> torch.Tensor:
    """Uniforms in ``[0, 1)`` mapped to integers in ``[0, size)``."""
    return (u * size).long().clamp(max=size - 1)


def signs(u: torch.Tensor) -> torch.Tensor:
    """Uniforms mapped to ``±1`` with equal probability."""
    return torch.where(u < 0.5, -1.0, 1.0)


def normal(keys: torch.Tensor, step: int, slots: int | tuple[int, ...]) -> torch.Tensor:
    """``(N, *slots)`` standard normals from the streams ``2 step`` and ``2 step + 1``
    (Box-Muller)."""
    u1 = uniform(keys, 2 * step, slots).double()
    u2 = uniform(keys, 2 * step + 1, slots).double()
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 in (0, 1]: log is finite
    return (radius * torch.cos(2.0 * torch.pi * u2)).float()
