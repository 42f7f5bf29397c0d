"""The Hydra configuration: where it lives, how command lines name it, how a node is built.

The lowest layer of the package besides :mod:`attackpsm.images` (docs/architecture.md, "Import layers"):
every command -- the app, the data tools, the craft stage, the bench -- composes the same
``conf/`` tree and instantiates its group nodes the same way.

Two adjustments are made to a command line before Hydra parses it:

* hydra-core rejects ``-m``/``--multirun`` after an override; the documented command
  ``python -m attackpsm attack=stadv metric=lpips_alex -m resolution=64,256`` puts it
  there, so the flag is moved to the front;
* Hydra parses ``resolution=64`` as the integer 64 and refuses it as a config-group
  choice; bare integers in the value of a group override are quoted (``'64'``), which
  names the option file ``conf/resolution/64.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

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


# keys an option file need not list (their default applies when absent): ``key=value`` on
# the command line adds or overrides them (Hydra's ``++key=value``)
OPTIONAL_KEYS = ("attack.target",)


def add_optional(arg: str) -> str:
    """``attack.target=reference`` -> ``++attack.target=reference``; anything else unchanged."""
    return f"++{arg}" if arg.split("=", 1)[0] in OPTIONAL_KEYS and "=" in arg else arg


def normalise_argv(args: Sequence[str]) -> list[str]:
    """Move every ``-m``/``--multirun`` to the front (once), quote numeric group choices and
    let :data:`OPTIONAL_KEYS` be set without a ``++``."""
    flags = [a for a in args if a in MULTIRUN_FLAGS]
    rest = [add_optional(quote_numeric_choices(a)) for a in args if a not in MULTIRUN_FLAGS]
    return (["--multirun"] if flags else []) + rest


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed ``config`` of ``python -m attackpsm <overrides>`` (one job, no sweep)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return hydra_compose(config_name="config", overrides=normalise_argv(list(overrides)))


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config-group node; its ``name`` key names the option, not an argument.

    ``dataset.cache`` says how the images are read (:mod:`attackpsm.data.cache`), not what
    the dataset is, so it is not passed to the dataset either.
    """
    from hydra.utils import instantiate

    spec = OmegaConf.to_container(node, resolve=True)
    spec.pop("name", None)
    spec.pop("cache", None)
    return instantiate(spec, **kwargs)
