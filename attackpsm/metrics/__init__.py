"""Metrics: every metric is a :class:`~attackpsm.metrics.base.Metric` (a distance)."""

from attackpsm.metrics.base import Metric, select

__all__ = ["Metric", "select"]
