"""Files the package reads back are data, never code.

Every YAML or JSON file a command reads back from disk -- a run's ``identity.yaml``, a
shard's plan and checksum record, the merge's ``merged.json``, the Parquet metadata of
shard and merged files, a sweep's job records, ``wandb-aggregates.json``, a Hydra job's
saved ``config.yaml`` -- goes through :func:`load_record` or :func:`parse_record`: a size
limit, YAML's *safe* loader (plain mappings, lists, strings and numbers; no tags that
construct objects), at most 100 aliases and 100,000 values with aliases expanded (a
600-byte "billion laughs" file expands to 387 million), a bound on nesting depth, and no
OmegaConf interpolation (``${...}``) in a run record: the package writes its records resolved, and resolving a
planted ``${oc.decode:...}`` can turn a string into a ``_target_`` mapping.

What such a file names is built only through :func:`build_from_record`: interpolations
(when the file may hold them, as Hydra's saved configs do) are resolved first, and the
``_target_`` allowlist is applied to the *resolved* value, the one that is instantiated;
a resolved value that still reads as an interpolation is refused, since instantiating
would resolve it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from attackpsm.storage.shards import StorageError

# identity.yaml and a job's config.yaml are a few KB
MAX_YAML_BYTES = 1 << 20
# a shard's plan lists its triplet ids: ~1.5 MB for all 36,344 BAPPS val triplets in one shard
MAX_JSON_BYTES = 256 << 20
MAX_DEPTH = 64
# an alias is a reference, its expansion a copy: a 600-byte "billion laughs" file of 72
# aliases expands to 387 million strings. Aliases are few and expansion is bounded.
MAX_ALIASES = 100
MAX_YAML_NODES = 100_000
MAX_JSON_NODES = 20_000_000  # JSON has no aliases: its size bounds its expansion

# classes a run record may name in ``_target_``: the package's datasets, metrics, attacks
RUN_MODULES = ("attackpsm.data.", "attackpsm.metrics.", "attackpsm.attacks.")


class RecordError(StorageError, ValueError):
    """A file read back that is not plain data within the limits; the message names it."""


def _base_loader() -> type:
    """OmegaConf's YAML loader (PyYAML's safe loader reading scalars as OmegaConf does:
    ``1e-3`` is a float, dates stay strings), so a record reads as it did through
    ``OmegaConf.load``; PyYAML's safe loader where that is unavailable."""
    try:
        from omegaconf._utils import get_yaml_loader

        loader = get_yaml_loader()
        return loader if issubclass(loader, yaml.SafeLoader) else yaml.SafeLoader
    except Exception:  # noqa: BLE001 - a private helper of OmegaConf
        return yaml.SafeLoader


class _BoundedLoader(_base_loader()):  # type: ignore[misc]
    """A safe YAML loader that accepts at most :data:`MAX_ALIASES` aliases."""

    aliases = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                event = self.peek_event()
                raise yaml.YAMLError(
                    f"more than {MAX_ALIASES} aliases (the last *{event.anchor} at line "
                    f"{event.start_mark.line + 1}): not a file the package wrote"
                )
        return super().compose_node(parent, index)


def _check_shape(
    value: Any, path: Path, interpolations: bool, max_nodes: int = MAX_YAML_NODES
) -> None:
    """Depth and node count (aliases expanded) within bounds; no ``${`` strings unless
    ``interpolations``."""
    nodes = 0
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise RecordError(
                f"{path}: more than {max_nodes:,} values (aliases expanded); not a run record"
            )
        if depth > MAX_DEPTH:
            raise RecordError(f"{path}: nested deeper than {MAX_DEPTH} levels at {where or '.'}")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise RecordError(f"{path}: key {k!r} at {where or '.'} is not a plain value")
                stack.append((v, f"{where}.{k}" if where else str(k), depth + 1))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, str):
            if not interpolations and "${" in node:
                raise RecordError(
                    f"{path}: {where or 'the value'} holds an interpolation ({node[:80]!r}): "
                    "run records are written resolved, so this one was edited or planted; "
                    "refusing to read it (restore the file or delete the run directory)"
                )
        elif not isinstance(node, (int, float, bool)) and node is not None:
            raise RecordError(
                f"{path}: {where or 'the value'} is a {type(node).__name__}, not plain data"
            )


def parse_record(
    text: str | bytes, path: str | Path, interpolations: bool = False, fmt: str | None = None
) -> Any:
    """Parse a record's text (YAML or JSON by the name's suffix) as plain data.

    Args:
        text: the file's content.
        path: its name, for messages and the format.
        interpolations: accept ``${...}`` strings (Hydra's saved job configs hold them).
        fmt: ``json`` or ``yaml`` (default: ``json`` for a ``.json`` name, else ``yaml``).
    Raises:
        RecordError: naming the file and what is wrong with it.
    """
    path = Path(path)
    is_json = fmt == "json" if fmt else path.suffix == ".json"
    limit = MAX_JSON_BYTES if is_json else MAX_YAML_BYTES
    if len(text) > limit:
        raise RecordError(f"{path}: {len(text):,} bytes, more than the {limit:,} a record may have")
    try:
        value = json.loads(text) if is_json else yaml.load(text, Loader=_BoundedLoader)  # noqa: S506
    except RecursionError:
        raise RecordError(f"{path}: nested too deeply to be a run record") from None
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()
        raise RecordError(
            f"{path}: not a readable {'JSON' if is_json else 'YAML'} record "
            f"({type(exc).__name__}: {' '.join(first)[:200]})"
        ) from None
    _check_shape(value, path, interpolations, MAX_JSON_NODES if is_json else MAX_YAML_NODES)
    return value


def load_record(path: str | Path, interpolations: bool = False) -> Any:
    """Read a YAML or JSON file the package wrote, as plain data (see the module docstring).

    Raises:
        FileNotFoundError: it does not exist.
        RecordError: naming the file and what is wrong with it.
    """
    path = Path(path)
    limit = MAX_JSON_BYTES if path.suffix == ".json" else MAX_YAML_BYTES
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RecordError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size > limit:
        raise RecordError(f"{path}: {size:,} bytes, more than the {limit:,} a record may have")
    try:
        with open(path, "rb") as f:
            text = f.read(limit + 1)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise RecordError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not UTF-8 text") from None
    return parse_record(decoded, path, interpolations)


def load_mapping(path: str | Path, interpolations: bool = False) -> dict[str, Any]:
    """:func:`load_record` of a file that must hold a mapping (``{}`` for an empty file)."""
    value = load_record(path, interpolations)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"{path}: holds a {type(value).__name__}, not a mapping")
    return value


def check_targets(
    node: Any,
    source: str | Path,
    modules: Iterable[str] = RUN_MODULES,
    bases: tuple[type, ...] | None = None,
) -> None:
    """Refuse any ``_target_`` in ``node`` that is not an allowed class.

    A target must name a class defined in one of ``modules`` and, when ``bases`` is given
    (by default the package's datasets, metrics and attacks), a subclass of one of them.
    The string is checked before anything is imported.

    Raises:
        RecordError: naming the target, the file it came from and what is allowed.
    """
    modules = tuple(modules)
    if bases is None and modules == RUN_MODULES:
        from attackpsm.attacks.base import Attack
        from attackpsm.data.base import TripletDataset
        from attackpsm.metrics.base import Metric

        bases = (TripletDataset, Metric, Attack)

    def refuse(target: Any) -> RecordError:
        return RecordError(
            f"{source}: refusing to instantiate _target_ {target!r}: only classes in "
            f"{', '.join(modules)} may be named there"
        )

    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            target = item.get("_target_")
            if target is not None:
                if not isinstance(target, str) or not target.startswith(modules):
                    raise refuse(target)
                from hydra.utils import get_class

                try:
                    cls = get_class(target)
                except Exception as error:
                    raise refuse(target) from error
                if not (isinstance(cls, type) and f"{cls.__module__}.".startswith(modules)):
                    raise refuse(target)
                if bases and not issubclass(cls, bases):
                    raise refuse(target)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def resolved_spec(node: Any, source: str | Path) -> Any:
    """``node`` with its interpolations resolved, as plain data that holds none any more.

    Raises:
        RecordError: resolution fails, or a resolved value still reads as an interpolation
            (instantiating it would resolve it again, past the allowlist).
    """
    if OmegaConf.is_config(node) or isinstance(node, (dict, list)):
        try:
            conf = node if OmegaConf.is_config(node) else OmegaConf.create(node)
            value = OmegaConf.to_container(conf, resolve=True)
        except Exception as exc:  # noqa: BLE001 - an interpolation that cannot be resolved
            raise RecordError(
                f"{source}: cannot resolve its interpolations ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from None
    else:
        value = node
    _check_shape(value, Path(str(source)), interpolations=False)
    return value


def build_from_record(
    node: Any,
    source: str | Path,
    modules: Iterable[str] = RUN_MODULES,
    bases: tuple[type, ...] | None = None,
    drop: tuple[str, ...] = ("name", "cache"),
    **kwargs: Any,
) -> Any:
    """Instantiate a node read from a file: resolved first, then checked, then built.

    Args:
        node: the node (plain data or an OmegaConf node).
        source: the file it came from (named by every refusal).
        modules, bases: what its ``_target_`` may name (:func:`check_targets`).
        drop: top-level keys that name the option, not a parameter (as in
            :func:`attackpsm.config.build`).
        kwargs: passed to the constructor.
    """
    from hydra.utils import instantiate

    spec = resolved_spec(node, source)
    check_targets(spec, source, modules, bases)
    if isinstance(spec, dict):
        spec = {k: v for k, v in spec.items() if k not in drop}
    return instantiate(spec, **kwargs)
