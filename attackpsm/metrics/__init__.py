"""Metrics: every metric is a :class:`~attackpsm.metrics.base.Metric` (a distance).

One module per family (config names in ``conf/metric/``):

- :mod:`.classic`: ``l2``, ``ssim`` (as released) and ``ssim_piq``, ``ms_ssim`` (MS-SSIM
  that runs at 64x64) and ``ms_ssim_iqa`` (as released, from 161 px);
- :mod:`.cw_ssim`: ``cw_ssim`` on a differentiable complex steerable pyramid;
- :mod:`.iqa`: ``fsimc``, ``gmsd``, ``vif``, ``haarpsi``, ``mdsi`` (piq);
- :mod:`.lpips`: ``lpips_alex``, ``lpips_vgg``, ``lpips_squeeze`` (online-only weights);
- :mod:`.dists`: ``dists``;
- :mod:`.stlpips`: ``stlpips_alex``, ``stlpips_vgg``;
- :mod:`.elpips`: ``elpips_vgg`` (stochastic: an ensemble of random transformations);
- :mod:`.watson`: ``watson_dft`` (Watson-DFT, the authors' released parameters);
- :mod:`.adists`: ``adists`` (A-DISTS, training-free);
- :mod:`.pieapp`: ``pieapp`` (online-only weights).

Pretrained weights come from :mod:`.weights` (``make weights``), checksummed; the authors'
own files that no package registry carries come from their pinned URL or a weights mirror.
"""

from attackpsm.metrics.base import Metric, finite_gradient, select

__all__ = ["Metric", "finite_gradient", "select"]
