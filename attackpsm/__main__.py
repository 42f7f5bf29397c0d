"""``python -m attackpsm [overrides] [-m] [overrides]``.

hydra-core rejects ``-m``/``--multirun`` after an override; the documented command
``python -m attackpsm attack=stadv metric=lpips_alex -m resolution=64,256`` puts it
there, so the flag is moved to the front before Hydra parses the command line.
"""

from __future__ import annotations

import sys

MULTIRUN_FLAGS = ("-m", "--multirun")


def normalise_argv(args: list[str]) -> list[str]:
    """Move every ``-m``/``--multirun`` to the front (once), keep everything else in order."""
    flags = [a for a in args if a in MULTIRUN_FLAGS]
    rest = [a for a in args if a not in MULTIRUN_FLAGS]
    return (["--multirun"] if flags else []) + rest


def main() -> None:
    sys.argv = [sys.argv[0], *normalise_argv(sys.argv[1:])]
    from attackpsm.app import main as app

    app()


if __name__ == "__main__":
    main()
