"""``metric=smoothed``: the Gaussian-smoothed 2AFC decision (Cohen et al., 2019).

The 2AFC decision of a metric ``f`` on a triplet is "the prey stays closer than the other
image": not ``rank_flipped(f(I_ref, x), s_other)`` (Sec. 3, "Attack Models"), a binary
classifier of the prey ``x``. Randomized smoothing replaces it by the decision that holds
for the majority of noisy copies ``x + N(0, σ²I)``: with ``p`` the probability that the prey
stays closer under the noise, the smoothed decision keeps the rank when ``p > 1/2``, and
Cohen et al. (2019, Theorem 1) certify that no ℓ2 perturbation smaller than ``σ Φ⁻¹(p)``
changes it (:mod:`attackpsm.certify` estimates ``p`` and the radius).

σ is on the package's ``[-1, 1]`` image scale (:mod:`attackpsm.images`), the scale of the
paper's ε. A noisy copy is clipped to that range before the base metric sees it (a metric
is defined on images, and its input check refuses anything else); Cohen et al.'s Theorem 1
holds for any base classifier, so the certificate is that of the smoothed decision of
"metric after clipping".

As a :class:`~attackpsm.metrics.base.Metric`:

- :meth:`Smoothed.score` is the base metric's clean distance, so the engine's ``d0``,
  ``d1``, prey and ``s_other`` are those of the base metric -- the decision being smoothed;
- :meth:`Smoothed.expected_score` (what the EoT attacks call, ``attack=apgd_eot`` or
  ``min_eps`` with ``eot_samples > 1``) draws ``draws`` noisy copies and returns the *median*
  noisy distance, whose gradient is that of the mean (expectation over transformation,
  Athalye et al., 2018): ``median > s_other`` exactly when the majority of the draws flip,
  so an attack's flip is a flip of the smoothed (majority) decision as estimated on those
  draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import Metric

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
        if isinstance(value, str) and value.startswith("${paths."):
            node.pop(key)
    return instantiate(node)


class Smoothed(Metric):
    """A metric whose 2AFC decision is smoothed with Gaussian noise on the prey.

    Args:
        base: the metric to smooth: a ``conf/metric`` option name (``lpips_alex``) or a
            :class:`~attackpsm.metrics.base.Metric`.
        sigma: noise standard deviation σ on the ``[-1, 1]`` scale (0.12).
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
        self.sigma = float(sigma)
        self.name = f"smoothed_{base.name}_s{self.sigma:g}"
        self.differentiable = base.differentiable

    def prepare(self, ref: torch.Tensor) -> Any:
        return self.base.prepare(ref)

    def score(self, prepared: Any, x: torch.Tensor) -> torch.Tensor:
        """The base metric's clean distance (the decision that is smoothed)."""
        return self.base.score(prepared, x)

    def noisy_scores(self, prepared: Any, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``f(I_ref_i, clip(x_i + σ · noise_i))`` for standard normal ``noise`` of ``x``'s shape."""
        noisy = x + self.sigma * noise.to(x.device, x.dtype)
        return self.base.score(prepared, noisy.clamp(LOW, HIGH))

    def expected_score(self, prepared: Any, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """Median of ``draws`` noisy distances (its comparison with ``s_other`` is the
        majority vote); the gradient is that of their mean (EoT)."""
        scores = torch.stack(
            [self.noisy_scores(prepared, x, torch.randn_like(x)) for _ in range(max(draws, 1))]
        )
        median = scores.median(0).values
        mean = scores.mean(0)
        return median.detach() + mean - mean.detach()

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
