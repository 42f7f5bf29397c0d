"""Watson-DFT (Czolbe et al., NeurIPS 2020): Watson's perceptual model on block DFTs.

Watson's (1993) model of visual masking, with the DCT replaced by a discrete Fourier
transform so that small shifts change phases rather than amplitudes. Per colour channel
(YCbCr), on ``8 x 8`` blocks ``k`` with DFT coefficients ``c[k, i, j]`` (``rfft2 / 64``,
so ``8 x 5`` per block):

1. **luminance masking** (paper Eq. 2): the base sensitivity ``t[i, j]`` of each
   frequency is scaled by the block's mean-luminance ratio,
   ``t_l[k] = t * (|c_ref[k, 0, 0]| / mean_k |c_ref[k, 0, 0]|) ** alpha``;
2. **contrast masking** (Eq. 3): ``s = smoothmax(t_l, |c_ref| ** w * t_l ** (1 - w))``,
   the smooth maximum being a softmax-weighted average of the two;
3. **pooling** (Eq. 4): ``D_amp = (sum |(|c_x| - |c_ref|) / s| ** beta) ** (1 / beta)``;
4. **phase** (Eq. 6): ``D_phase = sum w_phase * angle(c_x, c_ref)`` over the coefficients
   that have a phase (the four purely real ones of an ``8 x 8`` real DFT get weight 0).

The distance of a channel is ``D_amp + D_phase``; the RGB metric converts to YCbCr and
returns the softmax-weighted sum of the three channels' distances. All parameters
(``t``, ``alpha``, ``w``, ``beta``, ``w_phase`` per channel, the channel weights and the
colour transform) are the authors' released ones, trained on BAPPS 2AFC
(``rgb_watson_fft_trial0.pth``, :mod:`.weights` ``watson_dft_rgb``). The reference decides
the masking, so the distance is not symmetric.

Agreement with the release (``WatsonDistanceFft`` in a ``ColorWrapper``): the same
formulas with the same ``1e-10`` stabilisers, on ``[0, 1]`` images, reference as the
``target``. Two choices differ and are stated here:

- the release averages the DC amplitude for luminance masking over the whole *batch*;
  here it is averaged over each image's own blocks, so a distance never depends on the
  other images of a batch (identical to the release at batch size 1);
- the release's default loss wraps this in a random shift of up to 8 px (replication
  padding) applied to both images, a training-time augmentation; it is off by default
  here (a deterministic metric for attacks) and on with ``random_shift=True`` (the metric
  is then stochastic).

Image sides must be multiples of 8 (64 x 64 in the paper's protocol).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attackpsm.images import to_unit
from attackpsm.metrics.base import Metric, taking_gradient
from attackpsm.metrics.weights.store import load_official

EPS = 1e-10
BLOCK = 8
CHANNELS = ("ly", "lcb", "lcr")  # Y, Cb, Cr: the release's per-channel parameter prefixes


def block_dft(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Real 2-D DFT of non-overlapping ``block x block`` tiles of ``(N, H, W)``.

    Returns:
        Complex ``(N, K, block, block // 2 + 1)``, divided by ``block ** 2``; ``K`` blocks.
    """
    n, h, w = x.shape
    tiles = x.reshape(n, h // block, block, w // block, block).permute(0, 1, 3, 2, 4)
    tiles = tiles.reshape(n, -1, block, block)
    return torch.fft.rfft2(tiles) / block**2


def _amplitude(c: torch.Tensor) -> torch.Tensor:
    # the release adds the stabiliser to both the real and the imaginary part
    return torch.sqrt((c.real + EPS) ** 2 + (c.imag + EPS) ** 2)


def _phase(c: torch.Tensor) -> torch.Tensor:
    return torch.atan2(c.imag, c.real + EPS)


class WatsonDFT(Metric):
    """Watson-DFT distance (Czolbe et al., 2020), RGB, with the authors' parameters.

    Args:
        random_shift: shift both images by the same random 0..7 px (replication padding)
            before each evaluation, as the release's default loss does (randomised). A
            decision (a score without gradient) is the exact mean over all 64 shifts --
            every image of a triplet under the same shifts, so a zero perturbation never
            flips; a differentiated score draws one shift, as the release's loss does.
        weights_dir: cache of pretrained weights (default: see :mod:`.weights.store`).
        weights_mirror: directory holding the official parameter file, used when its URL
            is unreachable (``paths.weights_mirror``).
        allow_fetch: fetch missing weights (False on compute nodes: fail fast instead).

    References:
        Czolbe, S., Krause, O., Cox, I., Igel, C. (2020). A Loss Function for Generative
        Neural Networks Based on Watson's Perceptual Model. NeurIPS 33, 2051-2061.
    """

    name = "watson_dft"

    def __init__(
        self,
        random_shift: bool = False,
        weights_dir: str | None = None,
        weights_mirror: str | None = None,
        allow_fetch: bool = True,
    ):
        super().__init__()
        self.random_shift = bool(random_shift)
        self.stochastic = self.random_shift
        state = load_official("watson_dft_rgb", weights_dir, weights_mirror, allow_fetch)
        # YCbCr = RGB @ transform + bias (the release stores the transposed matrix)
        self.register_buffer("transform", state["to_YCbCr.transform"].clone())
        self.register_buffer("bias", state["to_YCbCr.bias"].clone())
        self.register_buffer("channel_weights", torch.softmax(state["w_tild"], dim=0))
        t, alpha, w, beta, w_phase = [], [], [], [], []
        for prefix in CHANNELS:
            if int(state[f"{prefix}.blocksize"]) != BLOCK:
                raise ValueError(
                    f"Watson-DFT weights have block size {int(state[f'{prefix}.blocksize'])}; "
                    f"this model uses {BLOCK}"
                )
            t.append(state[f"{prefix}.t_tild"].exp())
            alpha.append(state[f"{prefix}.alpha"])
            w.append(torch.sigmoid(state[f"{prefix}.w_tild"]))
            beta.append(state[f"{prefix}.beta"])
            phase = state[f"{prefix}.w_phase_tild"].exp()
            # purely real coefficients have no phase: (0, 0), (0, 4), (4, 0), (4, 4)
            last = BLOCK // 2
            for i, j in ((0, 0), (0, last), (last, 0), (last, last)):
                phase[i, j] = 0.0
            w_phase.append(phase)
        self.register_buffer("t", torch.stack(t))  # (3, 8, 5)
        self.register_buffer("alpha", torch.stack(alpha))  # (3,)
        self.register_buffer("w", torch.stack(w))
        self.register_buffer("beta", torch.stack(beta))
        self.register_buffer("w_phase", torch.stack(w_phase))
        self.freeze()

    def _ycbcr(self, images: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` RGB ``(N, 3, H, W)`` -> YCbCr of the ``[0, 1]`` image, same layout."""
        h, w = images.shape[-2:]
        if h % BLOCK or w % BLOCK:
            raise ValueError(
                f"watson_dft needs image sides that are multiples of {BLOCK}, got {h}x{w}"
            )
        rgb = to_unit(images).permute(0, 2, 3, 1)
        return (rgb @ self.transform + self.bias).permute(0, 3, 1, 2)

    def _shift(
        self, ref: torch.Tensor, x: torch.Tensor, offset: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The release's random shift: pad by 4 (replicate), crop at the same random offset
        (or at ``offset``)."""
        h, w = x.shape[-2:]
        if offset is None:
            offset = tuple(int(v) for v in torch.randint(0, BLOCK, (2,)))
        dy, dx = offset
        pad = BLOCK // 2

        def crop(img: torch.Tensor) -> torch.Tensor:
            return F.pad(img, (pad, pad, pad, pad), mode="replicate")[..., dy : dy + h, dx : dx + w]

        return crop(ref), crop(x)

    def prepare(self, ref: torch.Tensor):
        """Per channel: the reference's DFT amplitudes, phases and masking thresholds."""
        if self.random_shift:
            return ref  # the shift is drawn per call: nothing to reuse
        with torch.no_grad():
            return self._prepare(ref)

    def _prepare(self, ref: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ycc = self._ycbcr(ref)
        out = []
        for ch in range(3):
            c = block_dft(ycc[:, ch])
            amp = _amplitude(c)
            dc = amp[:, :, 0, 0]  # (N, K)
            mean_dc = dc.mean(dim=1, keepdim=True)  # per image (the release: per batch)
            t_l = self.t[ch] * (((dc + EPS) / (mean_dc + EPS)) ** self.alpha[ch])[..., None, None]
            masked = (amp.abs() + EPS) ** self.w[ch] * t_l ** (1 - self.w[ch])
            # smooth maximum of the two thresholds (softmax weights), paper Eq. 3
            weights_ = torch.softmax(torch.stack([t_l, masked], dim=-1), dim=-1)
            s = t_l * weights_[..., 0] + masked * weights_[..., 1]
            out.append((amp, _phase(c), s))
        return out

    def score(self, prepared, x: torch.Tensor) -> torch.Tensor:
        if self.random_shift:
            if taking_gradient(x):
                ref, x = self._shift(prepared, x)
                return self._score(self._prepare(ref), x)
            total = 0.0
            for dy in range(BLOCK):  # a decision: the expectation over every shift, exactly
                for dx in range(BLOCK):
                    ref, moved = self._shift(prepared, x, (dy, dx))
                    total = total + self._score(self._prepare(ref), moved)
            return total / BLOCK**2
        return self._score(prepared, x)

    def _score(self, prepared, x: torch.Tensor) -> torch.Tensor:
        ycc = self._ycbcr(x)
        total = 0.0
        for ch, (amp_ref, phase_ref, s) in enumerate(prepared):
            c = block_dft(ycc[:, ch])
            beta = self.beta[ch]
            pooled = ((((_amplitude(c) - amp_ref) / s).abs() + EPS) ** beta + EPS).sum(
                dim=(1, 2, 3)
            )
            amplitude_term = pooled ** (1 / beta)
            # the factor < 1 keeps acos away from +-1, where its derivative is infinite
            angle = torch.acos(torch.cos(_phase(c) - phase_ref) * (1 - EPS * 1e3))
            phase_term = (angle * self.w_phase[ch]).sum(dim=(1, 2, 3))
            total = total + self.channel_weights[ch] * (amplitude_term + phase_term)
        return total
