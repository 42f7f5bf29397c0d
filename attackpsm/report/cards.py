"""Robustness cards: one self-describing JSON file per leaderboard entry.

In the style of RobustBench's model cards, a card states what was evaluated and how:
the metric (its config and a checksum of the weights it ran with), the data (dataset,
split, resolution, fingerprint), the threat model and its ε, the clean 2AFC accuracy, the
robust accuracy, the attacks with their parameters and forward/backward passes per
triplet, the gradient-masking diagnostics (:mod:`attackpsm.commands.diagnose`), the certified
radius where one was computed, the tool version and the date. The numbers of the
leaderboard entry travel in ``results`` unchanged, so the leaderboard is rebuilt from the
cards alone (:func:`entry_from_card`; ``python -m attackpsm leaderboard --from-cards``).

Every card is validated against :data:`CARD_SCHEMA` (JSON Schema, draft 2020-12) before it
is written and when it is read: with ``jsonschema`` when it is installed, otherwise with
:func:`explicit_check`, a small check of the same required fields and types.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from attackpsm import __version__
from attackpsm.attacks.apgd import APGD
from attackpsm.attacks.base import attack_class, threat_of
from attackpsm.attacks.fmn import FMN
from attackpsm.attacks.pgd import PGD
from attackpsm.report.diagnostics import diagnostics_for
from attackpsm.report.load import Run
from attackpsm.storage.records import load_mapping

SCHEMA_VERSION = 1

# the keys of a leaderboard entry that a card states at its top level (the rest of the
# entry travels unchanged in ``results``)
_TOP = ("dataset", "resolution", "metric", "threat_model")

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_RADIUS = {"anyOf": [{"type": "number", "minimum": 0}, {"const": "inf"}, {"type": "null"}]}

CARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "attackpsm robustness card",
    "type": "object",
    "required": [
        "schema_version",
        "metric",
        "data",
        "threat_model",
        "eps",
        "clean_accuracy",
        "robust_accuracy",
        "attacks",
        "diagnostics",
        "certified_radius",
        "tool",
        "date",
        "results",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "metric": {
            "type": "object",
            "required": ["name", "config", "weights_sha256"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "config": {"type": "object"},
                "weights_sha256": {
                    "anyOf": [{"type": "string", "pattern": "^[0-9a-f]{64}$"}, {"type": "null"}]
                },
                "weights_note": {"type": "string"},
            },
        },
        "data": {
            "type": "object",
            "required": ["dataset", "split", "resolution", "triplets"],
            "properties": {
                "dataset": {"type": "string", "minLength": 1},
                "split": {"type": ["string", "null"]},
                "resolution": {"type": "string", "pattern": "^res"},
                "triplets": {"type": "integer", "minimum": 0},
                "fingerprint": {"type": ["string", "null"]},
            },
        },
        "threat_model": {
            "type": "object",
            "required": ["name", "norm", "access", "target"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "norm": {"enum": ["linf", "l2"]},
                "access": {"enum": ["white-box", "black-box", "certified"]},
                "target": {"type": "string"},
            },
        },
        "eps": _NUMBER_OR_NULL,
        "clean_accuracy": {
            "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]
        },
        "robust_accuracy": {
            "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]
        },
        "attacks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "config", "forward_passes", "backward_passes"],
                "properties": {
                    "name": {"type": "string"},
                    "config": {"type": "object"},
                    "forward_passes": _NUMBER_OR_NULL,
                    "backward_passes": _NUMBER_OR_NULL,
                },
            },
        },
        "diagnostics": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["passed", "flags", "checks"],
                    "properties": {
                        "passed": {"type": "boolean"},
                        "flags": {"type": "array", "items": {"type": "string"}},
                        "checks": {"type": "object"},
                    },
                },
            ]
        },
        "certified_radius": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["median", "sigma"],
                    "properties": {"median": _RADIUS, "sigma": _NUMBER_OR_NULL},
                },
            ]
        },
        "tool": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"const": "attackpsm"}, "version": {"type": "string"}},
        },
        "date": {"type": "string", "minLength": 10},
        "results": {"type": "object"},
    },
}

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
    "null": type(None),
}


def config_hash(node: dict[str, Any]) -> str:
    """8 hex digits naming a metric config (where its weights live excluded, as in a run's
    identity): the diagnostics of a metric and its cards find each other by it."""
    keep = {
        k: v for k, v in node.items() if k not in ("weights_dir", "weights_mirror", "allow_fetch")
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:8]


class CardError(ValueError):
    """A card that does not follow :data:`CARD_SCHEMA`; the message names the field."""


def _type_ok(value: Any, kinds: str | list[str]) -> bool:
    kinds = [kinds] if isinstance(kinds, str) else kinds
    for kind in kinds:
        if kind in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, _TYPES[kind]):
            return True
    return False


def explicit_check(card: Any, schema: dict[str, Any] = CARD_SCHEMA, where: str = "card") -> None:
    """The subset of JSON Schema that :data:`CARD_SCHEMA` uses (type, required, const,
    enum, anyOf, minimum, maximum, minLength, properties, items, pattern), checked by hand
    for installations without ``jsonschema``.

    Raises:
        CardError: naming the first field that breaks the schema.
    """
    import re

    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                explicit_check(card, option, where)
                return
            except CardError as error:
                errors.append(str(error))
        raise CardError(f"{where}: matches none of the allowed forms ({'; '.join(errors)})")
    if "const" in schema and card != schema["const"]:
        raise CardError(f"{where}: must be {schema['const']!r}, got {card!r}")
    if "enum" in schema and card not in schema["enum"]:
        raise CardError(f"{where}: must be one of {schema['enum']}, got {card!r}")
    if "type" in schema and not _type_ok(card, schema["type"]):
        raise CardError(f"{where}: must be of type {schema['type']}, got {card!r}")
    if isinstance(card, (int, float)) and not isinstance(card, bool):
        if "minimum" in schema and card < schema["minimum"]:
            raise CardError(f"{where}: must be >= {schema['minimum']}, got {card}")
        if "maximum" in schema and card > schema["maximum"]:
            raise CardError(f"{where}: must be <= {schema['maximum']}, got {card}")
    if isinstance(card, str):
        if len(card) < schema.get("minLength", 0):
            raise CardError(f"{where}: must not be empty")
        if "pattern" in schema and not re.search(schema["pattern"], card):
            raise CardError(f"{where}: must match {schema['pattern']!r}, got {card!r}")
    if isinstance(card, dict):
        for key in schema.get("required", ()):
            if key not in card:
                raise CardError(f"{where}: missing required field {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in card:
                explicit_check(card[key], sub, f"{where}.{key}")
    if isinstance(card, list) and "items" in schema:
        for i, item in enumerate(card):
            explicit_check(item, schema["items"], f"{where}[{i}]")


def validate(card: Any) -> None:
    """Raise :class:`CardError` unless ``card`` follows :data:`CARD_SCHEMA`."""
    try:
        import jsonschema
    except ImportError:
        explicit_check(card)
        return
    try:
        jsonschema.validate(card, CARD_SCHEMA)
    except jsonschema.ValidationError as error:
        path = "card" + "".join(f"[{p!r}]" for p in error.absolute_path)
        raise CardError(f"{path}: {error.message}") from None


def entry_from_card(card: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard entry a (validated) card was made from."""
    validate(card)
    return {
        "dataset": card["data"]["dataset"],
        "resolution": card["data"]["resolution"],
        "metric": card["metric"]["name"],
        "threat_model": card["threat_model"]["name"],
        **card["results"],
    }


def card_path(out: str | Path, entry: dict[str, Any]) -> Path:
    """``<out>/cards/<dataset>-<res>/<metric>.<threat model>.card.json``."""
    return (
        Path(out)
        / "cards"
        / f"{entry['dataset']}-{entry['resolution']}"
        / f"{entry['metric']}.{entry['threat_model']}.card.json"
    )


def write_card(card: dict[str, Any], path: str | Path) -> Path:
    """Validate ``card`` and write it to ``path`` (folders made as needed)."""
    validate(card)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return path


def read_cards(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``*.card.json`` below ``folder``, validated (sorted by path)."""
    cards = []
    for path in sorted(Path(folder).rglob("*.card.json")):
        card = load_mapping(path)  # plain data within size limits
        try:
            validate(card)
        except CardError as error:
            raise CardError(f"{path}: {error}") from None
        cards.append(card)
    return cards


def passes(run: Run) -> tuple[float | None, float | None]:
    """Mean forward and backward passes of the metric per triplet, where the run's columns
    say: forward = ``queries`` (metric calls) or, for PGD, ``iterations + 1`` checks;
    backward = the gradient steps (PGD, APGD: ``iterations``; FMN: ``queries·steps/(steps+1)``; a
    black-box attack: 0). ``None`` where the columns do not tell."""
    cls, table = attack_class(run.identity["attack"]), run.results
    if not len(table):
        return None, None
    forward = float(table["queries"].mean()) if "queries" in table else None
    backward = None
    if issubclass(cls, PGD):  # ReversePGD too
        forward = float(table["iterations"].mean()) + 1
        backward = float(table["iterations"].mean())
    elif issubclass(cls, APGD):
        backward = float(table["iterations"].mean())
    elif issubclass(cls, FMN) and forward is not None:  # steps + 1 scored points, steps gradients
        steps = int(run.identity["attack"].get("steps", 100))
        backward = forward * steps / (steps + 1)
    elif threat_of(run.identity["attack"]).access == "black-box":
        backward = 0.0
    return forward, backward


def _weights_sha256(metric_cfg: dict[str, Any], cache: dict[str, Any]) -> tuple[str | None, str]:
    """Content checksum of the built metric's parameters and buffers (the weights it ran
    with: :func:`attackpsm.metrics.weights.store.content_sha256`), or ``None`` and why not."""
    key = config_hash(metric_cfg)
    if key not in cache:
        try:
            from omegaconf import OmegaConf

            from attackpsm.config import build
            from attackpsm.metrics.weights.store import content_sha256

            metric = build(OmegaConf.create(metric_cfg))
            cache[key] = (
                content_sha256(metric.state_dict()),
                "sha256 over every tensor of the metric's state, key order",
            )
        except Exception as error:  # noqa: BLE001 -- weights not on this machine: say so
            cache[key] = (None, f"metric not built here: {type(error).__name__}: {error}"[:300])
    return cache[key]


def make_card(
    e: dict[str, Any],
    members: list[Run],
    reports: list[dict[str, Any]] = (),
    weights_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The robustness card of one leaderboard entry (schema: :data:`CARD_SCHEMA`), from the
    runs it was built from and the diagnostics reports (:mod:`attackpsm.report.diagnostics`)."""
    first = members[0].identity if members else {"dataset": {}, "metric": {"name": e["metric"]}}
    metric_cfg = first["metric"]
    sha, note = _weights_sha256(metric_cfg, {} if weights_cache is None else weights_cache)
    dataset = first["dataset"]
    split = dataset.get("split")
    if split is None and dataset.get("subsets"):
        split = ",".join(map(str, dataset["subsets"]))
    if split is None and "seed" in dataset:
        split = f"seed={dataset['seed']}" + (
            f", variant={dataset['variant']}" if "variant" in dataset else ""
        )
    threat = e["threat_model"]
    attacks = []
    for r in members:
        fwd, bwd = passes(r)
        attacks.append(
            {
                "name": r.identity["attack"]["name"],
                "config": r.identity["attack"],
                "forward_passes": fwd,
                "backward_passes": bwd,
            }
        )
    certified = None
    if threat == "certified-l2":
        certified = {"median": e["median_certified_radius"], "sigma": e.get("sigma")}
    return {
        "schema_version": 1,
        "metric": {
            "name": e["metric"],
            "config": metric_cfg,
            "weights_sha256": sha,
            "weights_note": note,
        },
        "data": {
            "dataset": e["dataset"],
            "split": split,
            "resolution": e["resolution"],
            "triplets": int(e["triplets"]),
            "fingerprint": first.get("data_fingerprint"),
        },
        "threat_model": {
            "name": threat,
            "norm": "l2" if "l2" in threat else "linf",
            "access": "certified"
            if threat.startswith("certified")
            else ("black-box" if "blackbox" in threat else "white-box"),
            # the perturbed image (attack.target): the prey, the distortion the metric ranks
            # closer (Sec. 3, the default), the reference, or both distortions
            "target": next((r.identity["attack"].get("target", "prey") for r in members), "prey"),
        },
        "eps": e.get("budget"),
        "clean_accuracy": e.get("clean_accuracy"),
        "robust_accuracy": e.get("robust_accuracy"),
        "attacks": attacks,
        "diagnostics": diagnostics_for(e, config_hash(metric_cfg), list(reports)),
        "certified_radius": certified,
        "tool": {
            "name": "attackpsm",
            "version": __version__,
            "run_versions": sorted({str(r.identity.get("version")) for r in members}),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": {
            k: v
            for k, v in e.items()
            if k not in ("dataset", "resolution", "metric", "threat_model")
        },
    }
