"""The command line: ``python -m attackpsm <command> [args]`` and the Hydra app.

Each command is a module here with a ``main(argv)``; ``python -m attackpsm`` without a
command word runs a job or a sweep (:mod:`attackpsm.commands.app`). Commands parse their
arguments and call the library; they hold no pipeline logic of their own.
"""

from __future__ import annotations

# command word -> (module, one-line description); `python -m attackpsm --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "report": (
        "attackpsm.commands.report",
        "paper tables and figures of a results or sweep directory",
    ),
    "leaderboard": (
        "attackpsm.commands.leaderboard",
        "robustness leaderboard and cards of a results directory",
    ),
    "diagnose": ("attackpsm.commands.diagnose", "gradient-masking checks of a metric"),
    "dashboard": ("attackpsm.commands.dashboard", "the W&B workspace of a sweep"),
    "cluster": ("attackpsm.commands.cluster", "status, merge and resubmission of a sweep"),
    "data": ("attackpsm.commands.data", "download, index and count datasets; build caches"),
    "weights": ("attackpsm.commands.weights", "fetch and verify pretrained weights"),
    "bench": (
        "attackpsm.commands.bench",
        "engine vs per-triplet loop (default), loading, PGD modes, certify, logging",
    ),
    "calibrate": ("attackpsm.commands.calibrate", "the synthetic set against BAPPS (Tables 1, 3)"),
    "craft": ("attackpsm.commands.craft", "craft adversarial images for a transfer study"),
    "transfer": ("attackpsm.commands.transfer", "Table 5 of a transfer study"),
    "paper-tables": (
        "attackpsm.commands.paper_tables",
        "the paper's published numbers from its tables (paper_tables.json)",
    ),
    "square-sweep": (
        "attackpsm.commands.square_sweep",
        "Square's query budget against its flip rate",
    ),
}


def dispatch(word: str, argv: list[str]) -> int:
    """Run command ``word`` with ``argv``; its exit status."""
    import importlib

    module = importlib.import_module(COMMANDS[word][0])
    status = module.main(argv)
    return int(status or 0)
