"""``python -m attackpsm dashboard``: the W&B workspace of a sweep (:mod:`attackpsm.report.dashboard`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from attackpsm.report.dashboard import apply, reachable, specification


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--entity", help="W&B entity (default: W&B's own, when the workspace is saved)")
    p.add_argument("--project", default="attackpsm", help="W&B project (default: attackpsm)")
    p.add_argument("--sweep", type=Path, help="a sweep or results directory: show only its runs")
    p.add_argument("--name", help="workspace name")
    p.add_argument(
        "--out",
        type=Path,
        help="specification file (default: dashboard.json in the --sweep directory, else in "
        "$ATTACKPSM_RESULTS or results/)",
    )
    p.add_argument(
        "--include-partial",
        action="store_true",
        help="also show runs that are not complete (running shards, shards of a sharded run)",
    )
    p.add_argument("--offline", action="store_true", help="only write the specification file")
    p.add_argument("--apply", type=Path, metavar="SPEC", help="save a written specification on W&B")
    args = p.parse_args(argv)

    if args.apply:
        spec = json.loads(args.apply.read_text())
        out = args.apply
    else:
        if args.sweep is not None and not args.sweep.is_dir():
            p.error(f"--sweep {args.sweep}: no such directory")
        spec = specification(
            args.entity, args.project, args.sweep, args.name, include_partial=args.include_partial
        )
        out = (
            args.out
            or (
                args.sweep
                if args.sweep is not None
                else Path(os.environ.get("ATTACKPSM_RESULTS", "results"))
            )
            / "dashboard.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(spec, indent=1, ensure_ascii=False))
        panels = sum(len(s["panels"]) for s in spec["sections"])
        print(f"workspace specification: {out} ({panels} panels, {len(spec['groups'])} run groups)")
    if args.offline or not reachable():
        if not args.offline:
            print("W&B is not reachable from here: nothing was saved on W&B.")
        print(
            "Apply it later from a machine with access (after `wandb sync` of the offline runs):\n"
            f"  python -m attackpsm dashboard --apply {out}"
        )
        return 0
    try:
        url = apply(spec)
    except ImportError:
        print(
            "the wandb-workspaces package is missing: pip install 'attackpsm[dashboard]'",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        print(f"saving the workspace failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"the specification is in {out}; retry with --apply", file=sys.stderr)
        return 1
    print(f"workspace saved: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
