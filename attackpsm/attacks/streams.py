"""The per-triplet random streams of :mod:`attackpsm.streams`, under the attacks' name.

The streams live one layer down so that the metrics (the smoothed metric's common noise)
draw from them too; the attacks import them from either place.
"""

from attackpsm.streams import below, counter_uniform, image_keys, normal, signs, uniform

__all__ = ["below", "counter_uniform", "image_keys", "normal", "signs", "uniform"]
