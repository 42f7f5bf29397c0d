"""attackpsm: adversarial attacks on perceptual similarity metrics.

Implements, batched and at cluster scale, the study "Attacking Perceptual Similarity
Metrics" (Ghildyal & Liu, TMLR 2023). The pipeline is

    data -> metrics -> attacks -> engine -> summary -> storage -> job -> report -> cluster

Image convention inside the package: ``float32`` tensors, NCHW, RGB, values in
``[-1, 1]`` -- the scale on which the paper states every epsilon (Sec. 3). Adapters that
convert to and from other ranges live at the edges (:mod:`attackpsm.images`).
"""

import os

# Intel MKL, the CPU BLAS inside PyTorch, splits a skinny matrix product across threads
# (a one-triplet convolution's backward pass, as when stAdv's L-BFGS has one triplet left)
# and adds the parts in an order that follows the threads' timing: on a busy machine the
# same seed gave different stAdv flows. MKL's Conditional Numerical Reproducibility mode
# "AUTO,STRICT" fixes the code path and the order of the sums for any number of threads
# (docs/guarantees.md, "Determinism"). MKL reads it at its first call; an explicit MKL_CBWR is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.5.0"

# The Python API (attackpsm/api.py), imported on first use so that `import attackpsm` stays
# light: attackpsm.metric("lpips_alex"), attackpsm.attack("pgd", eps=0.01),
# attackpsm.evaluate(metric, attack, ref, p0, p1), attackpsm.dataset("synthetic"), and
# attackpsm.run([...overrides]).
_API = ("metric", "attack", "dataset", "evaluate", "run")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module("attackpsm.api"), name)
    raise AttributeError(f"module 'attackpsm' has no attribute {name!r}")
