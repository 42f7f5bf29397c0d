"""``python -m attackpsm [overrides] [-m] [overrides]``.

The command line is normalised first (:func:`attackpsm.config.normalise_argv`: ``-m``
anywhere, ``resolution=64`` as a group choice), then handed to the Hydra app. An
``experiment=<sweep>`` without ``-m`` stops with the command to run instead
(:func:`attackpsm.config.sweep_without_multirun`).
"""

from __future__ import annotations

import sys

from attackpsm.config import (
    MULTIRUN_FLAGS,
    normalise_argv,
    quote_numeric_choices,
    sweep_without_multirun,
)

__all__ = ["MULTIRUN_FLAGS", "main", "normalise_argv", "quote_numeric_choices"]


def main() -> None:
    problem = sweep_without_multirun(sys.argv[1:])
    if problem:
        sys.exit(problem)  # exit status 1, the message on stderr
    sys.argv = [sys.argv[0], *normalise_argv(sys.argv[1:])]
    from attackpsm.app import main as app

    app()


if __name__ == "__main__":
    main()
