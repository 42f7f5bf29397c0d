"""Reports: the paper's tables and figures from any results directory.

``python -m attackpsm report results`` (or ``make report RESULTS=results``) reads every run
below a results directory or a Hydra sweep directory and writes, in ``results/report``:
markdown and CSV tables in the layouts of the paper's Tables 1-12 (with 95% Wilson
intervals on flip rates and the published numbers next to runs of the paper's settings),
PNG and SVG figures (accuracy vs robustness, flip rate vs ε, perturbation sizes, example
grids), and one W&B run (offline by default) with the same tables and figures.

Modules: :mod:`~attackpsm.report.load` (find and read runs), :mod:`~attackpsm.report.tables`,
:mod:`~attackpsm.report.figures`, :mod:`~attackpsm.report.examples` (regenerated
adversarial examples), :mod:`~attackpsm.report.paper` (published numbers),
:mod:`~attackpsm.report.build` (everything in one call).
"""

from attackpsm.report.build import Report, build_report
from attackpsm.report.load import Run, load_run, load_runs
from attackpsm.report.tables import Table, build_tables, flip_stats, wilson_interval

__all__ = [
    "Report",
    "Run",
    "Table",
    "build_report",
    "build_tables",
    "flip_stats",
    "load_run",
    "load_runs",
    "wilson_interval",
]
