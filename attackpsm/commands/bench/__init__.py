"""``python -m attackpsm bench <mode> [flags]``: measurements of the engine and the pipeline.

One module per mode, each with its own flags beside the common ones (``--device``,
``--threads``, ``--out``, ``--markdown``), every one writing its results through
:func:`attackpsm.commands.bench.common.write_results` (a table on stdout, a JSON file):

* ``engine`` (the default: ``python -m attackpsm bench`` without a mode) -- the engine
  against a per-triplet loop written as the paper's algorithms read
  (:mod:`attackpsm.commands.bench.engine`), then the loading rows;
* ``loading`` -- BAPPS PNGs against the decoded-triplet cache, and whole runs next to the
  engine alone (:mod:`attackpsm.commands.bench.loading`);
* ``modes`` -- PGD's execution modes (:mod:`attackpsm.commands.bench.modes`);
* ``certify`` -- certification throughput (:mod:`attackpsm.commands.bench.certify`);
* ``logging`` -- the W&B logging overhead of one job
  (:mod:`attackpsm.commands.bench.logging_overhead`).

Metrics and attacks are composed from ``conf/`` as a run composes them.
"""

from __future__ import annotations

import argparse
import importlib

import torch

# mode -> its module; each has HELP, add_arguments(parser) and run(args, device)
MODES = {
    "engine": "attackpsm.commands.bench.engine",
    "loading": "attackpsm.commands.bench.loading",
    "modes": "attackpsm.commands.bench.modes",
    "certify": "attackpsm.commands.bench.certify",
    "logging": "attackpsm.commands.bench.logging_overhead",
}
DEFAULT_MODE = "engine"


def parser() -> argparse.ArgumentParser:
    """The bench's command line: one subcommand per mode, each with only its own flags."""
    from attackpsm.commands.bench.common import add_common_arguments

    p = argparse.ArgumentParser(
        prog="python -m attackpsm bench",
        description="Measurements of the engine and the pipeline, one mode at a time.",
        epilog=f"Without a mode: {DEFAULT_MODE}.",
    )
    sub = p.add_subparsers(dest="mode", metavar="MODE", required=True)
    for mode, name in MODES.items():
        module = importlib.import_module(name)
        mode_parser = sub.add_parser(mode, help=module.HELP, description=module.HELP)
        add_common_arguments(mode_parser)
        module.add_arguments(mode_parser)
    return p


def main(argv: list[str] | None = None) -> int:
    import sys

    from attackpsm.commands.bench.common import resolve_device
    from attackpsm.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in MODES and argv[0] not in ("-h", "--help")):
        argv.insert(0, DEFAULT_MODE)  # `bench --quick` is `bench engine --quick`
    args = parser().parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        return importlib.import_module(MODES[args.mode]).run(args, device)
    except ConfigError as error:  # a bad option or key: one line naming the valid ones
        raise SystemExit(str(error)) from error
