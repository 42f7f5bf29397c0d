"""``python -m attackpsm weights [names] [--mirror DIR]``: fetch and verify pretrained weights into the cache (:mod:`attackpsm.metrics.weights`)."""

from __future__ import annotations

import argparse
import sys

from attackpsm.metrics.weights.registry import OFFICIAL, SPECS
from attackpsm.metrics.weights.safeload import WeightsUnavailable
from attackpsm.metrics.weights.sources import ENV_MIRROR
from attackpsm.metrics.weights.store import ENV_CACHE, fetch, fetch_official


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch all pretrained weights into the cache.")
    parser.add_argument(
        "names", nargs="*", default=sorted(SPECS), help=f"subset of {sorted(SPECS)}"
    )
    parser.add_argument(
        "--cache-dir", default=None, help=f"default: ${ENV_CACHE} or ~/.cache/attackpsm/weights"
    )
    parser.add_argument(
        "--mirror",
        default=None,
        help=f"directory of official files, used when their URL is unreachable (default: ${ENV_MIRROR})",
    )
    args = parser.parse_args(argv)
    failed = []
    for name in args.names:
        try:
            if name in OFFICIAL:
                path = fetch_official(name, args.cache_dir, args.mirror)
            else:
                path = fetch(name, args.cache_dir)
        except WeightsUnavailable as exc:
            if name in OFFICIAL:
                # web and mirror both failed: report and go on; only the metrics that need
                # this file fail (clearly, naming the mirror option)
                print(f"{name}: unavailable here: {exc}", file=sys.stderr)
                failed.append(name)
                continue
            if not SPECS[name].online_only:
                raise
            # online-only weights: report and go on; the metrics that need them fail clearly
            print(f"{name}: unavailable here (online-only): {str(exc)[:300]}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: {path}")
    if failed:
        print(f"weights not fetched: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
