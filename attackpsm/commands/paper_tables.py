"""``python -m attackpsm paper-tables TABLES_TXT``: regenerate the paper's published numbers shipped with the package (:mod:`attackpsm.report.paper`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attackpsm.report.paper import DATA_FILE, write_data_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "tables",
        type=Path,
        help="the paper's tables as plain rows (tables.txt: one '## [i] Table N: ...' block "
        "per table, cells separated by ' | ')",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output file (default: the package's {DATA_FILE})"
    )
    args = parser.parse_args(argv)
    if not args.tables.is_file():
        parser.error(f"no such file: {args.tables}")
    path = write_data_file(args.tables, args.out)
    records = json.loads(path.read_text(encoding="utf-8"))["records"]
    print(f"wrote {len(records)} records to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
