"""``metric=smoothed``: the Gaussian-smoothed 2AFC decision (Cohen et al., 2019).

The 2AFC decision of a metric ``f`` on a triplet is "the prey stays closer than the other
image": not ``rank_flipped(f(I_ref, x), s_other)`` (Sec. 3, "Attack Models"), a binary
classifier of the prey ``x``. Randomized smoothing replaces it by the decision that holds
for the majority of noisy copies ``x + N(0, σ²I)``: with ``p`` the probability that the prey
stays closer under the noise, the smoothed decision keeps the rank when ``p > 1/2``, and
Cohen et al. (2019, Theorem 1) certify that no ℓ2 perturbation smaller than ``σ Φ⁻¹(p)``
changes it (:mod:`attackpsm.attacks.certify` estimates ``p`` and the radius).

σ is on the package's ``[-1, 1]`` image scale (:mod:`attackpsm.images`), the scale of the
paper's ε. A noisy copy is clipped to that range before the base metric sees it (a metric
is defined on images, and its input check refuses anything else); Cohen et al.'s Theorem 1
holds for any base classifier, so the certificate is that of the smoothed decision of
"metric after clipping".

As a :class:`~attackpsm.metrics.base.Metric` (randomised: decisions and gradients draw
differently, the rule of :class:`~attackpsm.metrics.base.Metric`):

- a *decision* -- :meth:`Smoothed.score` without a gradient: the clean ranking (``d0``,
  ``d1``, prey, ``s_other``), every flip check, the saved image's check -- is the *median*
  distance of ``draws`` noisy copies whose noise is common to every image of the triplet:
  draw ``j`` is a counter-based stream keyed by the reference's pixels and ``seed``
  (:mod:`attackpsm.protocol.streams`), so it is the same whatever the batch. ``median(s_adv) > s_other`` exactly
  when the majority of the draws put the candidate beyond ``s_other``: an attack's flip is a
  flip of the smoothed (majority) decision, estimated on the same noise that ranked the
  clean images, so a zero perturbation never flips. ``draws`` defaults to 100, the
  selection sample size ``n0`` of Cohen et al.'s CERTIFY;
- a *gradient*: :meth:`Smoothed.score` is one fresh noisy copy, and
  :meth:`Smoothed.expected_score` (``attack=apgd_eot``, ``min_eps_smoothed``) the median of
  ``eot_samples`` fresh copies whose gradient is that of their mean (expectation over
  transformation, Athalye et al., 2018).

``s_other`` is a constant for the prey's smoothed decision, so Cohen et al.'s Theorem 1
applies to it as to any threshold (:mod:`attackpsm.attacks.certify`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import DRAWS, Metric, taking_gradient
from attackpsm.protocol.streams import image_keys, normal

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "conf" / "metric"


def metric_options() -> list[str]:
    """The names of ``conf/metric/*.yaml`` that can be smoothed (all but ``smoothed``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "smoothed")


def build_base(name: str, **paths: Any) -> Metric:
    """The metric ``conf/metric/<name>.yaml``, with ``weights_dir``/``allow_fetch`` from ``paths``.

    Raises:
        ValueError: ``name`` is no metric option.
    """
    valid = metric_options()
    if name not in valid:
        raise ValueError(f"metric.base must be one of {valid}, got {name!r}")
    node = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"), resolve=False)
    node.pop("name", None)
    for key, value in paths.items():
        if key in node and value is not None:
            node[key] = value
    for key, value in list(node.items()):  # a path key without a value: the metric's default
        if isinstance(value, str) and value.startswith("${"):
            node.pop(key)
    return instantiate(node)


class Smoothed(Metric):
    """A metric whose 2AFC decision is smoothed with Gaussian noise on the prey.

    Args:
        base: the metric to smooth: a ``conf/metric`` option name (``lpips_alex``) or a
            :class:`~attackpsm.metrics.base.Metric`.
        sigma: noise standard deviation σ on the ``[-1, 1]`` scale (0.12).
        draws: noisy copies per decision (100, Cohen et al.'s ``n0``), common to every
            image of a triplet.
        seed: seed of the common noise.
        weights_dir: weights folder handed to the base metric (``paths.weights_dir``).
        allow_fetch: handed to the base metric (``paths.allow_fetch``).

    Example:
        >>> Smoothed("lpips_alex", sigma=0.12).noisy_scores(prepared, prey, noise)

    References:
        Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized
        Smoothing", ICML 2019.
    """

    stochastic = True

    def __init__(
        self,
        base: str | Metric,
        sigma: float = 0.12,
        draws: int = 100,
        seed: int = 0,
        weights_dir: str | None = None,
        allow_fetch: bool | None = None,
    ):
        super().__init__()
        if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0):
            raise ValueError(f"metric.sigma must be a number > 0, got {sigma!r}")
        if isinstance(base, str):
            base = build_base(base, weights_dir=weights_dir, allow_fetch=allow_fetch)
        if not isinstance(base, Metric):
            raise ValueError(f"metric.base must be a metric option name, got {base!r}")
        if isinstance(base, Smoothed):
            raise ValueError("metric.base cannot itself be smoothed")
        self.base = base.freeze()
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"metric.draws must be an integer >= 1, got {draws!r}")
        self.sigma = float(sigma)
        self.draws = int(draws)
        self.seed = int(seed)
        self.name = f"smoothed_{base.name}_s{self.sigma:g}"
        self.differentiable = base.differentiable

    def prepare(self, ref: torch.Tensor) -> Any:
        return {"base": self.base.prepare(ref), DRAWS: image_keys(ref, self.seed)}

    def score(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        """A decision: the median noisy distance under the common noise; with a gradient:
        one fresh noisy distance."""
        if taking_gradient(x):
            return self.noisy_scores(prepared, x, torch.randn_like(x))
        keys = prepared[DRAWS]
        scores = []
        for j in range(self.draws):
            noise = normal(keys, j, tuple(x.shape[1:]))
            scores.append(self.noisy_scores(prepared, x, noise))
        return torch.stack(scores).median(0).values

    def noisy_scores(self, prepared: Any, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``f(I_ref_i, clip(x_i + σ · noise_i))`` for standard normal ``noise`` of ``x``'s shape.

        ``prepared`` is this metric's prepared reference (or the base metric's).
        """
        if isinstance(prepared, dict) and DRAWS in prepared:
            prepared = prepared["base"]
        noisy = x + self.sigma * noise.to(x.device, x.dtype)
        return self.base.score(prepared, noisy.clamp(LOW, HIGH))

    def expected_score(self, prepared: Any, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """With a gradient: the median of ``draws`` fresh noisy distances (its comparison
        with ``s_other`` is the majority vote), whose gradient is that of their mean (EoT).
        Without one: the decision (:meth:`score`)."""
        if not taking_gradient(x):
            return self.score(prepared, x)
        scores = torch.stack(
            [self.noisy_scores(prepared, x, torch.randn_like(x)) for _ in range(max(draws, 1))]
        )
        median = scores.median(0).values
        mean = scores.mean(0)
        return median.detach() + mean - mean.detach()

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, draws={self.draws}"
