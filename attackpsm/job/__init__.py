"""One job of a sweep: compose, check, load, attack, write, summarise, log.

- :mod:`attackpsm.job.run`: :func:`attackpsm.job.run.run`, the job as named steps.
- :mod:`attackpsm.job.preflight`: the checks that run before any work is done.
- :mod:`attackpsm.job.loggers`: W&B (offline or online) and the null logger.
- :mod:`attackpsm.job.progress`: a shard's live history (running counts, one record a batch).
- :mod:`attackpsm.job.examples`: a shard's example images (flipped ✓ and ✗ triplets).
"""
