"""The Hydra configuration: where it lives, how command lines name it, how a node is built.

The lowest layer of the package besides :mod:`attackpsm.images` (README, "Architecture"):
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


def normalise_argv(args: Sequence[str]) -> list[str]:
    """Move every ``-m``/``--multirun`` to the front (once) and quote numeric group choices."""
    flags = [a for a in args if a in MULTIRUN_FLAGS]
    rest = [quote_numeric_choices(a) for a in args if a not in MULTIRUN_FLAGS]
    return (["--multirun"] if flags else []) + rest


def sweep_without_multirun(args: Sequence[str]) -> str | None:
    """Why a command line cannot run as given: an ``experiment=<name>`` that is a sweep
    (its file sets ``hydra.sweeper.params``) without ``-m``.

    Without ``-m`` Hydra would run one job with the default choices and ignore the sweep,
    so a user asking for a paper table would get one unrelated run. Returns the message
    naming the command to run (``None``: nothing wrong).
    """
    if any(a in MULTIRUN_FLAGS for a in args):
        return None
    for arg in args:
        match = re.match(r"^\+?experiment=([\w/-]+)$", arg)
        if not match:
            continue
        path = Path(CONFIG_DIR) / "experiment" / f"{match.group(1)}.yaml"
        if not path.is_file():
            return None  # Hydra names the valid options
        params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params")
        if not params:
            return None
        sweep = "; ".join(f"{k}: {v}" for k, v in params.items())
        command = " ".join(["python -m attackpsm -m", *args])
        return (
            f"experiment={match.group(1)} is a sweep ({sweep}) and runs only with -m "
            f"(without it Hydra would run one job with the default choices). Run:\n  {command}"
        )
    return None


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
