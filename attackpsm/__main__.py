"""``python -m attackpsm [overrides] [-m] [overrides]`` and ``python -m attackpsm <command> [args]``.

A first word that names a command (:data:`attackpsm.commands.COMMANDS`: ``report``,
``leaderboard``, ``bench``, ...) runs that command; Hydra overrides are ``key=value`` words,
so the two never overlap. Anything else is a job or a sweep:

The command line is normalised first (:func:`attackpsm.config.normalise_argv`: ``-m``
anywhere, ``resolution=64`` as a group choice, any ``resolution=N`` as a generated option),
its group keys are checked (:func:`attackpsm.config.check_overrides`), then it is handed to
the Hydra app. A configuration error prints one line and exits 2; Ctrl-C prints one line
(what was saved, the command that resumes) and exits 130.
An ``experiment=<sweep>`` without ``-m`` stops with the command to run instead
(:func:`attackpsm.config.sweep_without_multirun`).
"""

from __future__ import annotations

import sys

from attackpsm.config import (
    MULTIRUN_FLAGS,
    ConfigError,
    check_overrides,
    normalise_argv,
    quote_numeric_choices,
    register_sizes,
    sweep_without_multirun,
)

__all__ = ["MULTIRUN_FLAGS", "main", "normalise_argv", "quote_numeric_choices"]


def main() -> None:
    args = sys.argv[1:]
    from attackpsm.commands import COMMANDS, dispatch

    if args and args[0] in COMMANDS:
        sys.argv = [f"python -m attackpsm {args[0]}", *args[1:]]
        sys.exit(dispatch(args[0], args[1:]))
    from attackpsm.commands.app import interrupted_line

    try:
        from attackpsm.commands.app import error_line, help_text

        if any(a in ("-h", "--help") for a in args):
            print(help_text())
            return
        problem = sweep_without_multirun(args)
        if problem:
            sys.exit(problem)  # exit status 1, the message on stderr
        try:
            register_sizes(args)
            check_overrides(args)
        except ConfigError as exc:
            print(error_line(exc), file=sys.stderr)
            sys.exit(2)
        sys.argv = [sys.argv[0], *normalise_argv(args)]
        from attackpsm.commands.app import main as app

        app()
    except KeyboardInterrupt as exc:
        print(f"\n{interrupted_line(exc, args)}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
