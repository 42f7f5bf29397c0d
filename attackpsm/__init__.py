"""attackpsm: adversarial attacks on perceptual similarity metrics.

Implements, batched and at cluster scale, the study "Attacking Perceptual Similarity
Metrics" (Ghildyal & Liu, TMLR 2023). The pipeline is

    data -> metrics -> attacks -> stats -> results -> report

Image convention inside the package: ``float32`` tensors, NCHW, RGB, values in
``[-1, 1]`` -- the scale on which the paper states every epsilon (Sec. 3). Adapters that
convert to and from other ranges live at the edges (:mod:`attackpsm.images`).
"""

__version__ = "0.3.0"
