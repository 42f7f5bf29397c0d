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

from hydra.errors import InstantiationException
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

    register_sizes(overrides)
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
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as exc:
        # a parameter the target refuses (attack.eps=-0.1): its own message, without
        # Hydra's "Error in call to target" wrapping
        cause = exc.__cause__
        if type(cause) is ValueError:
            name = node.get("name", spec.get("_target_"))
            raise ParameterError(f"{name}: {cause}") from cause
        raise


class ConfigError(ValueError):
    """A value of the configuration that cannot run, with a message that says what to do.

    ``python -m attackpsm`` prints the message alone (no traceback) and exits with status 2;
    the Python API raises it.
    """


class ParameterError(ConfigError, InstantiationException):
    """A parameter value that the option's class refuses when it is built."""


# keys of a group node that are not arguments of its target (see :func:`build`)
_NOT_ARGUMENTS = ("_target_", "_partial_", "name", "cache")


def target_parameters(target: str) -> dict[str, Any] | None:
    """``{parameter: annotation}`` of a ``_target_`` class's constructor; ``None`` when it
    takes arbitrary keywords (``**kwargs``) or cannot be imported."""
    import inspect
    import typing

    from hydra.utils import get_class

    if not target:  # a node without a target (Hydra would log "Empty path")
        return None
    try:
        cls = get_class(target)
        signature = inspect.signature(cls.__init__)
    except Exception:  # noqa: BLE001 - an unknown target fails in instantiate, with its own message
        return None
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - annotations that do not resolve: names only
        hints = {}
    params: dict[str, Any] = {}
    for name, p in list(signature.parameters.items())[1:]:
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind is not p.VAR_POSITIONAL:
            params[name] = hints.get(name, p.annotation)
    return params


def type_name(annotation: Any) -> str:
    """``float``, ``int | None``, ... of an annotation, for messages."""
    import inspect

    if annotation is inspect.Parameter.empty:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def accepts(annotation: Any, value: Any) -> bool | None:
    """Whether ``value`` (as OmegaConf hands it over) fits ``annotation``; ``None``: unknown.

    Only the plain types a command line can give are judged (``float``, ``int``, ``bool``,
    ``str``, ``None`` and their unions); anything else is left to the target.
    """
    import types
    import typing

    if annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [accepts(a, value) for a in typing.get_args(annotation)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:  # a whole float (3.0) passes, as the attacks' own checks allow
        whole = isinstance(value, float) and value.is_integer()
        return whole or (isinstance(value, int) and not isinstance(value, bool))
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        from omegaconf import ListConfig

        return isinstance(value, list | tuple | ListConfig) or value is None
    return None


def describe_keys(params: dict[str, Any]) -> str:
    """``eps (float), alpha (float), ...``: the keys of an option and their types."""
    return ", ".join(f"{k} ({type_name(t)})" for k, t in params.items())


def check_node(node: DictConfig, group: str) -> None:
    """Every key of a composed group node is a parameter of its target, of the right type.

    Raises :class:`ConfigError` naming the key, the value, the expected type and the valid
    keys of the option (``attack.eps='abc'``, ``+attack.epsilon=0.01``).
    """
    import difflib

    if not isinstance(node, DictConfig) or not node.get("_target_"):
        return
    params = target_parameters(str(node._target_))
    if params is None:
        return
    option = node.get("name", "?")
    for key in node:
        if key in _NOT_ARGUMENTS or str(key).startswith("_") or f"{group}.{key}" in OPTIONAL_KEYS:
            continue
        value = OmegaConf.to_container(node, resolve=False)[key]
        if key not in params:
            close = difflib.get_close_matches(str(key), list(params), n=1)
            hint = f" Did you mean {group}.{close[0]}?" if close else ""
            raise ConfigError(
                f"{group}.{key}={value!r}: {group} {option!r} has no key {key!r}.{hint} "
                f"Its keys: {describe_keys(params)}"
            )
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - an interpolation that fails is reported by build
            continue
        if accepts(params[key], value) is False:
            raise ConfigError(
                f"{group}.{key}={value!r}: expected {type_name(params[key])}, got "
                f"{type(value).__name__}. {group} {option!r} keys: {describe_keys(params)}"
            )


def option_names(group: str) -> list[str]:
    """The options of a config group: the ``conf/<group>/*.yaml`` file names."""
    folder = Path(CONFIG_DIR) / group
    names = [p.stem for p in folder.glob("*.yaml")] if folder.is_dir() else []
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def compose_option(
    group: str, name: str, overrides: dict[str, Any] | None = None, extra: Sequence[str] = ()
) -> DictConfig:
    """The composed config of ``<group>=<name>`` (and the ``extra`` command-line overrides)
    with ``overrides`` set on its node and checked (:func:`check_node`), as
    ``python -m attackpsm <group>=<name> <group>.<key>=<value>`` composes it."""
    from omegaconf import open_dict

    if name not in option_names(group):
        raise ConfigError(
            f"{group}={name!r} is not an option; the options of {group}: "
            + ", ".join(option_names(group))
        )
    cfg = compose([f"{group}={name}", *extra])
    node = cfg[group]
    with open_dict(node):
        for key, value in (overrides or {}).items():
            node[key] = value
    check_node(node, group)
    return cfg


def check_overrides(args: Sequence[str]) -> None:
    """Keys of group options given on a command line exist in every option they apply to.

    Hydra refuses ``attack.epsilon=0.01`` with "use +attack.epsilon", which the target then
    refuses in turn; a sweep ``attack=pgd,square attack.alpha=0.01`` fails as a whole
    without naming Square. Checked first, this names the key, the value, the option (of a
    sweep, each option that lacks it) and that option's keys. Only a first-level key of a
    group (``attack.<key>``) is checked; values are checked after composition
    (:func:`check_node`).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in normalise_argv(args) if a not in ("--multirun",) and "=" in a]
        )
    except Exception:  # noqa: BLE001 - Hydra's own parser reports a malformed override
        return
    try:
        _check_group_keys(parsed)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - anything else (a glob sweep, ...) is Hydra's to report
        return


def _check_group_keys(parsed: list[Any]) -> None:
    groups = {g for g in ("attack", "metric", "dataset", "resolution", "logger") if option_names(g)}
    groups.add("experiment")
    choices: dict[str, list[str]] = {}
    for o in parsed:
        if o.key_or_group in groups and not o.is_delete():
            choices[o.key_or_group] = (
                [str(v) for v in o.sweep_string_iterator()]
                if o.is_sweep_override()
                else [str(o.value())]
            )
    for o in parsed:
        group, _, key = o.key_or_group.partition(".")
        if group == "experiment" or group not in groups or not key or "." in key or o.is_delete():
            continue
        if o.key_or_group in OPTIONAL_KEYS:  # not a parameter of the option: checked when built
            continue
        if group not in choices and "experiment" in choices:
            continue  # the experiment picks the option: checked after composition
        options = choices.get(group) or [_default_choice(group)]
        for option in options:
            if option is None or option not in option_names(group):
                continue
            node = compose([f"{group}={option}"])[group]
            params = target_parameters(str(node.get("_target_", ""))) or {}
            if key in node or key in params:
                if o.is_add() or key in node or not params:
                    continue
                raise ConfigError(
                    f"{o.input_line}: {group} {option!r} takes {key!r} but does not set it by "
                    f"default; add it with +{group}.{key}=..."
                )
            if not node.get("_target_") or target_parameters(str(node._target_)) is None:
                continue
            import difflib

            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean {group}.{close[0]}?" if close else ""
            sweep = f" (in the sweep {group}={','.join(options)})" if len(options) > 1 else ""
            raise ConfigError(
                f"{o.input_line}: {group} {option!r}{sweep} has no key {key!r}.{hint} "
                f"Its keys: {describe_keys(params)}"
            )


def _default_choice(group: str) -> str | None:
    defaults = OmegaConf.load(Path(CONFIG_DIR) / "config.yaml").get("defaults", [])
    for entry in defaults:
        if isinstance(entry, DictConfig) and group in entry:
            return str(entry[group])
    return None


def register_sizes(args: Sequence[str]) -> list[int]:
    """Make ``resolution=<N>`` a group option for any whole ``N`` without a file.

    ``conf/resolution/`` holds the paper's sizes (64, 256, 512, 768, native); another
    ``resolution=N`` (``resolution=128``, also in a sweep) gets a generated option: ``size``
    N and the ``batch_size`` of the nearest file at or above N (the largest file beyond
    768), so memory stays within what that file was sized for. Returns the sizes added.
    """
    from hydra.core.config_store import ConfigStore

    files = {}
    for name in option_names("resolution"):
        node = OmegaConf.load(Path(CONFIG_DIR) / "resolution" / f"{name}.yaml")
        if isinstance(node.get("size"), int):
            files[int(node.size)] = int(node.batch_size)
    added = []
    for arg in args:
        match = _GROUP_OVERRIDE.match(arg)
        if not match or match.group(1).lstrip("+~") != "resolution":
            continue
        for n in {int(v) for v in re.findall(r"(?<![\w.])(\d+)(?![\w.])", match.group(2))}:
            if n in files or n < 1:
                continue
            above = [s for s in sorted(files) if s >= n]
            batch = files[above[0]] if above else files[max(files)]
            ConfigStore.instance().store(
                group="resolution", name=str(n), node={"size": n, "batch_size": batch}
            )
            added.append(n)
    return added
