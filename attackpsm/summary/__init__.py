"""Every number a table, a log or a report shows, computed from per-triplet tables.

- :mod:`attackpsm.summary.statistics`: flip rates with Wilson intervals, the ✓/✗ split,
  accuracy, 2AFC score, finite means (Tables 1-4, 6-12).
- :mod:`attackpsm.summary.results`: the per-triplet columns and a run's Table-2 summary.
- :mod:`attackpsm.summary.accuracy`: the clean accuracy of Table 1 (``attack=none``).
- :mod:`attackpsm.summary.headline`: a run's headline numbers, their ✓/✗ and per-subset
  split, its size distributions (what ``run()`` returns and a W&B run shows).
- :mod:`attackpsm.summary.curves`: robustness curves (flip rate of the ✓ triplets against
  ε, iterations, queries).
- :mod:`attackpsm.summary.sweep`: a sweep's Table-2 rows, flip-rate grid, curves and
  leaderboard.

Loggers (:mod:`attackpsm.job`), storage (:mod:`attackpsm.storage`), reports
(:mod:`attackpsm.report`) and the end of a sweep (:mod:`attackpsm.cluster`) call these
functions; none computes a summary of its own.
"""
