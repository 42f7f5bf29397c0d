"""``python -m attackpsm [overrides] [-m] [overrides]``.

Two adjustments are made to the command line before Hydra parses it:

* hydra-core rejects ``-m``/``--multirun`` after an override; the documented command
  ``python -m attackpsm attack=stadv metric=lpips_alex -m resolution=64,256`` puts it
  there, so the flag is moved to the front;
* Hydra parses ``resolution=64`` as the integer 64 and refuses it as a config-group
  choice; bare integers in the value of a group override are quoted (``'64'``), which
  names the option file ``conf/resolution/64.yaml``.
"""

from __future__ import annotations

import re
import sys

MULTIRUN_FLAGS = ("-m", "--multirun")
# config groups whose option names are numbers
NUMERIC_GROUPS = ("resolution",)
_GROUP_OVERRIDE = re.compile(r"^([+~]{0,2}(?:" + "|".join(NUMERIC_GROUPS) + r"))=(.*)$")
_BARE_INT = re.compile(r"(?<![\w.'\"])(\d+)(?![\w.'\"])")


def quote_numeric_choices(arg: str) -> str:
    """``resolution=64,256`` -> ``resolution='64','256'``; anything else unchanged."""
    match = _GROUP_OVERRIDE.match(arg)
    if not match:
        return arg
    quoted = _BARE_INT.sub(r"'\1'", match.group(2))
    return f"{match.group(1)}={quoted}"


def normalise_argv(args: list[str]) -> list[str]:
    """Move every ``-m``/``--multirun`` to the front (once) and quote numeric group choices."""
    flags = [a for a in args if a in MULTIRUN_FLAGS]
    rest = [quote_numeric_choices(a) for a in args if a not in MULTIRUN_FLAGS]
    return (["--multirun"] if flags else []) + rest


def main() -> None:
    sys.argv = [sys.argv[0], *normalise_argv(sys.argv[1:])]
    from attackpsm.app import main as app

    app()


if __name__ == "__main__":
    main()
