"""E-LPIPS (Kettunen et al., 2019): a VGG16 LPIPS under an ensemble of random transformations.

Each *draw* applies one random transformation -- the same one to the reference and to the
candidate -- and evaluates the E-LPIPS network on the transformed pair; the metric is the
expectation over draws, estimated by the mean of ``ensemble`` draws per :meth:`score`
call. This is the release's ``elpips_vgg`` configuration (``vgg_ensemble``):

- **network**: the ImageNet VGG16 with *average* pooling (2x2) instead of max pooling;
  14 layers are compared -- the (LPIPS-scaled) input image and the output of every one of
  the 13 convolution + ReLU layers (not only the five LPIPS slices);
- **linear layers**: E-LPIPS' own, retrained for that network (``vgg_full_avg.npy`` of the
  release, :mod:`.weights` ``elpips_vgg``): per layer, channel-normalised features
  (LPIPS Eq. 1), squared difference, spatial mean, weighted sum over channels;
- **input**: ``[0, 1]`` images are transformed, mapped to ``[-1, 1]`` and scaled with
  LPIPS' shift and scale;
- **transformations** (paper Sec. 3): downscaling by an integer factor ``s`` (box filter),
  ``P(s) ~ 1/s^2`` for ``s = 1..scale_levels``, with a random sub-pixel phase (reflection
  padding); a random translation of 0..``offset_max`` px (reflection padding); a random
  flip (horizontal, vertical, both or none) and a random transpose; a random permutation
  of the colour channels and a random per-channel colour scaling in ``[0.2, 1]``;
- **dropout** (keep probability 0.99) on the input of every convolution, with the same
  mask for the reference and the candidate.

One difference from the release, stated plainly: for a batch, the release samples the
flips, colour permutations and colour factors stratified over the batch (Latin hypercube);
here each pair samples them independently. For one pair (batch size 1) the distributions
are the same.

How the paper uses it: E-LPIPS is *evaluated* -- its distances on the transferred
adversarial examples (Table 5) and its scores in the distance tables -- never attacked
white-box; the score, i.e. the full ensemble, is what its numbers rest on.

**Decisions and gradients draw differently** (the rule of
:class:`~attackpsm.metrics.base.Metric`):

- a *decision* (a score without a gradient: the clean ranking, every flip check, the saved
  image's check) is the mean over ``draws`` transformations that are common to every image
  of a triplet: both images of a comparison see the same transformations, as in the
  authors' tool, which compares two images under shared draws. With independent draws
  for each side, sampling noise alone flips ranks (of 16 triplets, 3 "flipped" with no
  perturbation at 8 draws); with common draws a zero perturbation scores exactly as the
  prey did and never flips. ``draws`` defaults to 200, the default of the authors'
  distance tool;
- a *gradient* (an attack's step) averages ``ensemble`` fresh draws per call
  (expectation over transformation); raise ``ensemble`` for a better estimate, or average
  several calls with :meth:`~attackpsm.metrics.base.Metric.expected_score`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attackpsm.images import to_unit
from attackpsm.metrics.base import DRAWS, Metric, common_draws, draw_generator, taking_gradient
from attackpsm.metrics.lpips import normalize_channels
from attackpsm.metrics.weights.store import load, load_official

# torchvision VGG16 ``features`` conv indices, per block; a 2x2 average pool precedes every
# block but the first. E-LPIPS compares the input and the ReLU output of all 13 convolutions.
VGG_BLOCKS = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
LAYER_CHANNELS = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))))


@dataclass
class Draw:
    """One sampled transformation for a batch of ``n`` pairs."""

    scale: int  # downscaling factor (shared by the batch)
    scale_phase: tuple[int, int]  # (y, x) padding before downscaling
    swap: bool  # transpose H and W (shared by the batch)
    offsets: torch.Tensor  # (n, 2) translation in px
    flips: torch.Tensor  # (n,) 0: flip x, 1: flip y, 2: both, 3: none
    permutations: torch.Tensor  # (n, 3) colour channel order
    colors: torch.Tensor  # (n, 3) colour factors in [0.2, 1]

    def take(self, rows: torch.Tensor) -> Draw:
        """The draw of the pairs ``rows`` (the batch-wide parts unchanged)."""
        return Draw(
            self.scale,
            self.scale_phase,
            self.swap,
            self.offsets[rows],
            self.flips[rows],
            self.permutations[rows],
            self.colors[rows],
        )


class ELPIPS(Metric):
    """E-LPIPS-VGG distance (Kettunen et al., 2019) with its own linear layers; stochastic.

    Args:
        ensemble: fresh draws averaged by one :meth:`score` call that is differentiated
            (the Monte-Carlo estimate of the expectation; its gradient averages the
            draws' gradients).
        draws: common draws averaged by a decision (a :meth:`score` without gradient),
            200 as in the authors' distance tool. Cost grows linearly: on one CPU core a
            64x64 pair takes about 53 ms per draw (10.6 s at 200); lower it for CPU runs.
        seed: seed of the common draws (draw ``j`` of batch row ``i`` depends only on
            ``seed``, ``j``, ``i`` and the batch size).
        scale_levels: largest downscaling factor (8 in the release).
        offset_max: largest translation in px (7).
        dropout_keep: keep probability of the dropout on convolution inputs (0.99).
        transforms: apply the random transformations (False: the E-LPIPS network on the
            images as they are).
        weights_dir: cache of pretrained weights (default: see :mod:`.weights.store`).
        weights_mirror: directory holding the official linear-layer file, used when its
            URL is unreachable (``paths.weights_mirror``).
        allow_fetch: fetch missing weights (False on compute nodes: fail fast instead).

    References:
        Kettunen, M., Härkönen, E., Lehtinen, J. (2019). E-LPIPS: Robust Perceptual Image
        Similarity via Random Transformation Ensembles. arXiv:1906.03973.
    """

    name = "elpips_vgg"
    min_size = 48  # random downscaling leaves VGG too little below this (failed at random)
    stochastic = True

    def __init__(
        self,
        ensemble: int = 8,
        draws: int = 200,
        seed: int = 0,
        scale_levels: int = 8,
        offset_max: int = 7,
        dropout_keep: float = 0.99,
        transforms: bool = True,
        weights_dir: str | None = None,
        weights_mirror: str | None = None,
        allow_fetch: bool = True,
    ):
        super().__init__()
        if int(ensemble) != ensemble or ensemble < 1:
            raise ValueError(f"E-LPIPS ensemble must be an integer >= 1, got {ensemble}")
        if isinstance(draws, bool) or int(draws) != draws or draws < 1:
            raise ValueError(f"E-LPIPS draws must be an integer >= 1, got {draws!r}")
        self.draws = int(draws)
        self.seed = int(seed)
        if not 0.0 < dropout_keep <= 1.0:
            raise ValueError(f"E-LPIPS dropout_keep must be in (0, 1], got {dropout_keep}")
        self.ensemble = int(ensemble)
        self.scale_levels = int(scale_levels)
        self.offset_max = int(offset_max)
        self.dropout_keep = float(dropout_keep)
        self.transforms = bool(transforms)
        self.stochastic = self.transforms or self.dropout_keep < 1.0
        vgg = load("vgg16", weights_dir, allow_fetch=allow_fetch)
        lin = load_official("elpips_vgg", weights_dir, weights_mirror, allow_fetch)
        self.convs = nn.ModuleDict()
        for index in itertools.chain(*VGG_BLOCKS):
            w = vgg[f"features.{index}.weight"]
            conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(vgg[f"features.{index}.bias"])
            self.convs[str(index)] = conv
        self.lins = nn.ModuleList()
        for k, channels in enumerate(LAYER_CHANNELS):
            w = lin[f"lin{k}.model.1.weight"]  # (1, 1, C, 1): a 1x1 convolution, C -> 1
            if w.numel() != channels:
                raise ValueError(
                    f"E-LPIPS linear layer {k} has {w.numel()} weights, not {channels}"
                )
            layer = nn.Conv2d(channels, 1, 1, bias=False)
            layer.weight.data.copy_(w.reshape(1, channels, 1, 1))
            self.lins.append(layer)
        # LPIPS' input scaling (v0.1)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.freeze()

    # --- transformations ------------------------------------------------------------------

    def sample(
        self, n: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Draw:
        """Sample one transformation for ``n`` pairs (from ``generator`` on ``device``, or
        the global torch RNG: seeded runs repeat)."""
        g = {"generator": generator}
        on = {"device": device if generator is not None else "cpu"}
        probs = torch.tensor([1.0 / s**2 for s in range(1, self.scale_levels + 1)], **on)
        scale = int(torch.multinomial(probs, 1, **g).item()) + 1
        phase = tuple(int(v) for v in torch.randint(0, scale, (2,), **g, **on))
        return Draw(
            scale=scale,
            scale_phase=phase,
            swap=bool(torch.randint(0, 2, (), **g, **on).item()),
            offsets=torch.randint(0, self.offset_max + 1, (n, 2), device=device, **g),
            flips=torch.randint(0, 4, (n,), device=device, **g),
            permutations=_PERMUTATIONS.to(device)[torch.randint(0, 6, (n,), device=device, **g)],
            colors=0.2 + 0.8 * torch.rand(n, 3, device=device, **g),
        )

    def apply(self, draw: Draw, images: torch.Tensor) -> torch.Tensor:
        """Apply ``draw`` to ``[0, 1]`` images ``(k*n, 3, H, W)`` (pair ``i`` at rows ``i + j*n``)."""
        n = draw.offsets.shape[0]
        k = images.shape[0] // n
        x = images
        if draw.scale > 1:
            s = draw.scale
            h, w = x.shape[-2:]
            full_h = (s - 1 + h + s - 1) // s * s
            full_w = (s - 1 + w + s - 1) // s * s
            py, px = draw.scale_phase
            x = _reflect_pad(x, (px, full_w - w - px, py, full_h - h - py))
            x = F.avg_pool2d(x, s)
        if self.offset_max > 0:
            m = self.offset_max
            h, w = x.shape[-2:]
            padded = _reflect_pad(x, (m, m, m, m))
            oy, ox = draw.offsets.repeat(k, 1).unbind(1)
            rows = oy[:, None] + torch.arange(h + m, device=x.device)[None]
            cols = ox[:, None] + torch.arange(w + m, device=x.device)[None]
            batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(
                0, 3, 1, 2
            )
        flips = draw.flips.repeat(k).view(-1, 1, 1, 1)
        x = torch.where((flips == 0) | (flips == 2), x.flip(-1), x)
        x = torch.where((flips == 1) | (flips == 2), x.flip(-2), x)
        if draw.swap:
            x = x.transpose(-1, -2)
        perm = draw.permutations.repeat(k, 1)
        x = torch.gather(x, 1, perm[:, :, None, None].expand(-1, -1, *x.shape[-2:]))
        return x * draw.colors.repeat(k, 1)[:, :, None, None]

    # --- network --------------------------------------------------------------------------

    def _features(
        self, x: torch.Tensor, n: int, common: tuple[torch.Generator, dict] | None = None
    ) -> list[torch.Tensor]:
        """The 14 normalised layers of ``[-1, 1]`` images ``(2n, ...)``, pair-shared dropout.

        ``common``: (generator, draws) of a decision -- the dropout masks are drawn for the
        whole batch the common draws were made for and taken at the pairs' rows.
        """
        h = (x - self.shift) / self.scale
        outs = [normalize_channels(h)]
        for block, indices in enumerate(VGG_BLOCKS):
            if block > 0:
                h = F.avg_pool2d(h, 2)
            for index in indices:
                if self.dropout_keep < 1.0:
                    if common is None:
                        u = torch.rand((n, *h.shape[1:]), device=h.device)
                    else:
                        gen, info = common
                        size = (info["n"], *h.shape[1:])
                        u = torch.rand(size, device=h.device, generator=gen)[info["rows"]]
                    keep = u < self.dropout_keep
                    h = h * (keep.to(h.dtype) / self.dropout_keep).repeat(2, 1, 1, 1)
                h = F.relu(self.convs[str(index)](h))
                outs.append(normalize_channels(h))
        return outs

    def draw_distance(
        self, ref: torch.Tensor, x: torch.Tensor, common: dict | None = None, j: int = 0
    ) -> torch.Tensor:
        """E-LPIPS network distance of one random draw, ``(N,)``; inputs in ``[-1, 1]``.

        ``common`` (:func:`~attackpsm.metrics.base.common_draws`): take common draw ``j``
        instead of a fresh one.
        """
        n = x.shape[0]
        both = torch.cat([to_unit(ref), to_unit(x)])
        shared = None
        if common is not None:
            gen = draw_generator(common, j, x.device)
            shared = (gen, common)
        if self.transforms:
            if shared is None:
                draw = self.sample(n, x.device)
            else:
                draw = self.sample(common["n"], x.device, gen).take(common["rows"])
            both = self.apply(draw, both)
        feats = self._features(both * 2.0 - 1.0, n, shared)
        total = 0.0
        for f, lin in zip(feats, self.lins, strict=True):
            total = total + lin((f[n:] - f[:n]) ** 2).mean(dim=(2, 3))
        return total.flatten()

    def prepare(self, ref: torch.Tensor):
        # transformations are drawn per call, so no reference work is reusable; a randomised
        # metric keeps the batch's common draws next to the reference
        if not self.stochastic:
            return ref
        return {"ref": ref, DRAWS: common_draws(ref.shape[0], self.seed, ref.device)}

    def score(self, prepared, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``ensemble`` fresh draws (with a gradient) or of the ``draws`` common
        draws (a decision)."""
        if not self.stochastic:
            return self.draw_distance(prepared, x)
        ref = prepared["ref"]
        if taking_gradient(x):
            total = 0.0
            for _ in range(self.ensemble):
                total = total + self.draw_distance(ref, x)
            return total / self.ensemble
        total = 0.0
        for j in range(self.draws):
            total = total + self.draw_distance(ref, x, prepared[DRAWS], j)
        return total / self.draws


def _reflect_pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflection padding that also works when a pad exceeds the size (repeated reflection)."""
    left, right, top, bottom = pad
    while max(left, right, top, bottom) > 0:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (
            a - b for a, b in zip((left, right, top, bottom), step, strict=True)
        )
    return x
