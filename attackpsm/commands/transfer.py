"""The transfer benchmark (Sec. 4.2, Table 5): craft on a source metric, evaluate on others.

Three commands, one experiment config (``conf/experiment/table5.yaml``)::

    python -m attackpsm craft experiment=table5 dataset.source=bapps      # 1. craft
    python -m attackpsm -m experiment=table5 dataset.source=bapps         # 2. evaluate
    python -m attackpsm transfer results                                  # 3. Table 5

Where each part lives:

- crafting, the explicit stage: :mod:`attackpsm.commands.craft` (runs on the source metric with
  ``craft=<dir>``), whose writer is :class:`attackpsm.storage.craft.CraftWriter`;
- the transfer set, read back (``dataset=transfer``, reads manifests only):
  :class:`attackpsm.data.transfer.TransferTriplets`;
- the saved image on a target (``attack=saved``): :class:`attackpsm.attacks.saved.SavedAdversarial`;
- Table 5 itself: :func:`attackpsm.report.tables.table5_transfer`, which this command and
  ``python -m attackpsm report`` both print. A target's "accurate samples" are the triplets
  it ranks as the humans did (✓); its flips there are Table 5's cells.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from attackpsm.data.transfer import TransferTriplets
from attackpsm.report.load import load_runs
from attackpsm.report.tables import Table, table5_transfer


def table5(results_dir: str | Path) -> Table | None:
    """Table 5 from the finished transfer evaluations below ``results_dir`` (``None``: none)."""
    return table5_transfer(load_runs(results_dir))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attackpsm transfer [results_dir]``: print Table 5 and save it under
    ``<results_dir>/transfer/table5.{md,csv}``."""
    args = list(sys.argv[1:] if argv is None else argv)
    results_dir = Path(args[0] if args else "results")
    table = table5(results_dir)
    if table is None:
        print(f"no transfer evaluations (dataset=transfer) under {results_dir}")
        return 1
    out = results_dir / TransferTriplets.name
    out.mkdir(parents=True, exist_ok=True)
    table.data.to_csv(out / "table5.csv", index=False)
    (out / "table5.md").write_text(table.markdown)
    print(table.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
