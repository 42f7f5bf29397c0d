"""``python -m attackpsm report <results dir | sweep dir> [--out DIR] [options]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m attackpsm report",
        description="The paper's tables and figures from a results directory (or a Hydra sweep directory).",
    )
    p.add_argument(
        "source", type=Path, help="results directory, one run folder, or logs/multiruns/<date>"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <source>/report)"
    )
    p.add_argument(
        "--examples",
        type=int,
        default=3,
        help="triplets per example grid; 0 = no grids (default 3)",
    )
    p.add_argument("--example-metrics", default="", help="comma list: grids only for these metrics")
    p.add_argument("--example-attacks", default="", help="comma list: grids only for these attacks")
    p.add_argument(
        "--device", default="cpu", help="device for regenerating examples: cpu | cuda | auto"
    )
    p.add_argument(
        "--dataset-root", default=None, help="dataset root on this machine, for the example grids"
    )
    p.add_argument(
        "--wandb",
        default="offline",
        choices=["offline", "online", "disabled", "none"],
        help="W&B mode of the report run (default offline; none = no W&B run)",
    )
    p.add_argument("--wandb-dir", default=None, help="W&B folder (default $ATTACKPSM_LOGS or logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = parse_args(argv)
    from attackpsm.report.build import build_report
    from attackpsm.report.load import RefusedRecord

    def split(text: str) -> list[str] | None:
        return [x for x in text.split(",") if x] or None

    refused: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RefusedRecord):
            refused.append(str(message))
        print(f"{category.__name__}: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            report = build_report(
                args.source,
                out=args.out,
                examples=args.examples,
                example_metrics=split(args.example_metrics),
                example_attacks=split(args.example_attacks),
                device=args.device,
                dataset_overrides={"root": args.dataset_root} if args.dataset_root else None,
                wandb_mode=None if args.wandb == "none" else args.wandb,
                wandb_dir=args.wandb_dir,
            )
        except FileNotFoundError as exc:
            if not refused:
                raise
            report = None
            print(f"error: {exc}", file=sys.stderr)
    if report is None:
        return _refusals(refused)
    print(
        f"{len(report.runs)} runs -> {len(report.tables)} tables, {len(report.figures)} figures in {report.out.absolute()}"
    )
    for t in report.tables:
        print(f"  tables/{t.name}.md  {t.title}")
    for stem in report.figures:
        print(f"  figures/{stem}.png")
    for note in report.notes:
        print(f"  note: {note}")
    return _refusals(refused) if refused else 0


def _refusals(refused: list[str]) -> int:
    print(
        f"error: {len(refused)} record(s) refused, their runs are not in the report:",
        file=sys.stderr,
    )
    for message in refused:
        print(f"  {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
