"""Every number a table, a log or a report shows, computed from per-triplet tables.

- :mod:`attackpsm.summary.statistics`: flip rates with Wilson intervals, the ✓/✗ split,
  accuracy, 2AFC score, finite means (Tables 1-4, 6-12).
- :mod:`attackpsm.summary.results`: the per-triplet columns and a run's Table-2 summary.
- :mod:`attackpsm.summary.accuracy`: the clean accuracy of Table 1 (``attack=none``).

Loggers (:mod:`attackpsm.job`), storage (:mod:`attackpsm.storage`) and reports
(:mod:`attackpsm.report`) call these functions; none computes a summary of its own.
"""
