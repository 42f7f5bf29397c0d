"""``python -m attackpsm data``: fetch datasets and count their triplets.

::

    python -m attackpsm data download bapps --root data/bapps [--splits val train]
    python -m attackpsm data download pieapp --root data/pieapp
    python -m attackpsm data count bapps [dataset.root=... dataset.filter=all ...]
    python -m attackpsm data cache bapps resolution=64 [--workers N] [overrides ...]

``count`` composes the same config as ``python -m attackpsm dataset=<name>`` (so the same
roots, environment variables and overrides apply), builds the index and prints the
triplets per subset and those recorded as unusable -- the paper's counts, when the real
data is present (BAPPS val unanimous 12,227; PieAPP test 1,381; CLIC 5,220). ``cache``
builds (or verifies) the decoded-triplet cache that ``dataset.cache=true`` reads, under
``paths.cache_dir`` (:mod:`attackpsm.data.cache`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def count(name: str, overrides: list[str]) -> dict[str, dict[str, int]]:
    """Index ``dataset=<name>`` with the app's config and print its counts per subset."""
    from attackpsm.config import build, compose

    cfg = compose([f"dataset={name}", "logger=none", *overrides])
    dataset = build(cfg.dataset, size=None)
    counts = dataset.counts()
    width = max([len(s) for s in counts] + [6])
    print(f"{'subset':<{width}}  triplets  unusable")
    for subset, c in counts.items():
        print(f"{subset:<{width}}  {c['triplets']:>8}  {c['errors']:>8}")
    total = sum(c["triplets"] for c in counts.values())
    bad = sum(c["errors"] for c in counts.values())
    print(f"{'total':<{width}}  {total:>8}  {bad:>8}")
    return counts


def cache(name: str, overrides: list[str], workers: int | None) -> Path:
    """Build or verify the decoded-triplet cache of ``dataset=<name>`` at the composed resolution."""
    from attackpsm.config import build, compose
    from attackpsm.data.cache import ensure_cache

    cfg = compose([f"dataset={name}", "logger=none", *overrides])
    dataset = build(cfg.dataset, size=cfg.resolution.size)
    built = ensure_cache(dataset, cfg.paths.cache_dir, workers=workers)
    print(
        f"cache ready: {Path(built.path).absolute()} ({len(built)} triplets, {len(built.errors)} unusable)"
    )
    return built.path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attackpsm data", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch a dataset from its official source")
    dl.add_argument("dataset", choices=["bapps", "pieapp"])
    dl.add_argument(
        "--root", type=Path, required=True, help="where to put it (becomes dataset.root)"
    )
    dl.add_argument("--splits", nargs="+", default=["val"], help="bapps: val and/or train")
    dl.add_argument("--keep-archives", action="store_true")
    ct = sub.add_parser("count", help="count the triplets of dataset=<name> after filtering")
    ct.add_argument("dataset", choices=["bapps", "pieapp", "clic", "synthetic"])
    ct.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset.root=/data/bapps")
    ca = sub.add_parser(
        "cache", help="build or verify the decoded 8-bit triplets of dataset=<name>"
    )
    ca.add_argument("dataset", choices=["bapps", "pieapp", "clic", "synthetic"])
    ca.add_argument("overrides", nargs="*", help="config overrides, e.g. resolution=64")
    ca.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPUs)")
    args = parser.parse_args(argv)

    if args.command in ("count", "cache"):
        from attackpsm.data.files import DatasetLayoutError

        try:
            if args.command == "count":
                count(args.dataset, args.overrides)
            else:
                cache(args.dataset, args.overrides, args.workers)
        except Exception as exc:  # instantiate wraps the loader's error; show the loader's
            cause = exc.__cause__ if isinstance(exc.__cause__, DatasetLayoutError) else exc
            if not isinstance(cause, DatasetLayoutError):
                raise
            print(f"error: {cause}", file=sys.stderr)
            return 2
        return 0
    from attackpsm.data import download

    if args.dataset == "bapps":
        root = download.download_bapps(args.root, args.splits, keep_archives=args.keep_archives)
    else:
        root = download.download_pieapp(args.root, keep_archives=args.keep_archives)
    print(f"done: use dataset={args.dataset} dataset.root={root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
