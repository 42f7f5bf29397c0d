"""The study's rules, below every other layer: what a 2AFC decision, a flip and a
perturbation statistic are.

- :mod:`attackpsm.protocol.twoafc`: the 2AFC rank, the prey choice (Sec. 3), the flip test
  (Algorithms 1-3), the one tie rule, accuracy and 2AFC score (Table 1).
- :mod:`attackpsm.protocol.stats`: the perturbation statistics of Table 2 (ℓ∞, RMSE, PSNR,
  % pixels changed) and what each column means.
- :mod:`attackpsm.protocol.streams`: common random numbers for randomised metrics and
  attacks (one draw stream per triplet).
"""
