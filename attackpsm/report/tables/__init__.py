"""The paper's tables, computed from loaded runs (:mod:`attackpsm.report.load`).

Every table is a tidy :class:`pandas.DataFrame` (written as CSV, exact numbers) plus a
markdown rendering in the paper's layout. Rows are always split by "same rank by human &
metric" (✓ accurate, ✗ inaccurate; ``n/a`` without a human label), as in the paper.
Flip rates carry a 95% Wilson score interval. Where a run is one of the paper's own
settings (dataset, resolution, attack parameters), the published number sits next to it
(``paper_*`` columns; see :mod:`attackpsm.report.paper`).

Tables, by file name, and the module that builds each:

- ``table1_accuracy`` -- clean accuracy and 2AFC score per metric (Table 1), and
  ``table1_accuracy_by_subset``; ``table3_similarity_difference`` -- mean ``|s_0 - s_1|``
  (Table 3): :mod:`.clean`.
- ``table2_attacks`` -- FGSM / PGD / One-pixel side by side (Table 2); ``table4_psnr`` --
  PSNR of the adversarial images per attack (Table 4): :mod:`.attacks`.
- ``table5_transfer`` -- flips of transferred adversarial images (Tables 5 and 9):
  :mod:`.table5`.
- ``table6_7_pgd_by_resolution``, ``table8_stadv``, ``table10_fgsm_vs_pgd``,
  ``table11_pgd_alpha``, ``table12_reverse_pgd`` -- the variants, when the runs exist; and
  ``attacks_all_runs`` -- every attack run in one long table (the CSV behind the rest):
  :mod:`.variants`.

Shared by them: the statistics (:mod:`attackpsm.summary.statistics`, also behind each run's own
``summary.md`` and ``table1.md``), the comparison with the paper (:mod:`.paper_compare`),
the rows of every attack run (:mod:`.attack_rows`) and the printing (:mod:`.format`).
"""

from __future__ import annotations

from attackpsm.report.load import Run
from attackpsm.report.tables.attack_rows import attack_rows, long_render
from attackpsm.report.tables.attacks import TABLE2_ATTACKS, table2_attacks, table4_psnr
from attackpsm.report.tables.clean import (
    clean_runs,
    table1_accuracy,
    table1_by_subset,
    table3_similarity_difference,
)
from attackpsm.report.tables.format import (
    AGREE_ORDER,
    FAMILY_ORDER,
    Table,
    fmt_flips,
    fmt_mu_sigma,
    fmt_paper_flips,
    markdown_table,
    metric_order,
)
from attackpsm.report.tables.paper_compare import (
    PAPER_PARAMS,
    paper_dataset,
    paper_like,
    paper_values,
)
from attackpsm.report.tables.table5 import table5_transfer
from attackpsm.report.tables.variants import all_attacks_table, variant_tables
from attackpsm.summary.results import extra_columns
from attackpsm.summary.statistics import (
    PX_COLUMNS,
    Z95,
    afc2_score,
    agree_labels,
    flip_stats,
    wilson_interval,
)

__all__ = [
    "AGREE_ORDER",
    "FAMILY_ORDER",
    "PAPER_PARAMS",
    "PX_COLUMNS",
    "TABLE2_ATTACKS",
    "Z95",
    "Table",
    "afc2_score",
    "agree_labels",
    "all_attacks_table",
    "attack_rows",
    "build_tables",
    "clean_runs",
    "extra_columns",
    "flip_stats",
    "fmt_flips",
    "fmt_mu_sigma",
    "fmt_paper_flips",
    "long_render",
    "markdown_table",
    "metric_order",
    "paper_dataset",
    "paper_like",
    "paper_values",
    "table1_accuracy",
    "table1_by_subset",
    "table2_attacks",
    "table3_similarity_difference",
    "table4_psnr",
    "table5_transfer",
    "variant_tables",
    "wilson_interval",
]


def build_tables(runs: list[Run]) -> list[Table]:
    """Every table the runs allow, in the paper's order."""
    rows = attack_rows(runs)
    tables: list[Table | None] = [table1_accuracy(runs), table1_by_subset(runs)]
    tables.append(table2_attacks(rows) if not rows.empty else None)
    tables.append(table3_similarity_difference(runs))
    tables.append(table4_psnr(rows) if not rows.empty else None)
    tables.append(table5_transfer(runs))
    tables.extend(variant_tables(rows))
    tables.append(all_attacks_table(rows) if not rows.empty else None)
    return [t for t in tables if t is not None and not t.data.empty]
