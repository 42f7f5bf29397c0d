"""Threat models: declared by each attack class, read for a config by ``threat_of``.

Every option of ``conf/attack`` resolves to a declared threat model, and its labels -- the
run key ``threat_model`` and ``eps`` (docs/wandb.md) and the leaderboard's threat models
(docs/reports.md) -- are the documented ones.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import attackpsm.attacks
from attackpsm.attacks.base import ACCESS, Attack, Threat, attack_class, threat_of
from attackpsm.attacks.target import TargetedAttack
from attackpsm.job.loggers import budget, threat_model

CONF = Path(__file__).resolve().parent.parent / "conf"
OPTIONS = sorted(p.stem for p in (CONF / "attack").glob("*.yaml"))
A = "attackpsm.attacks."


def attack_node(option: str) -> dict:
    """``attack=<option>`` as a run identity holds it (composed and resolved)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=[f"attack={option}", "device=cpu"])
    return OmegaConf.to_container(cfg.attack, resolve=True)


def attack_classes() -> list[type[Attack]]:
    """Every attack class defined in a module of :mod:`attackpsm.attacks`."""
    found = set()
    for info in pkgutil.iter_modules(attackpsm.attacks.__path__):
        module = importlib.import_module(A + info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Attack) and cls is not Attack and cls.__module__ == module.__name__:
                found.add(cls)
    return sorted(found, key=lambda c: c.__name__)


# The labels of docs/wandb.md ("Config keys") and docs/reports.md ("Leaderboard") for every
# option: (run key threat_model, run key eps, leaderboard threat models).
LABELS = {
    "apgd": ("linf", 0.03, ["linf"]),
    "apgd_eot": ("linf", 0.03, ["linf"]),
    "apgd_l2": ("l2", 1.0, ["l2"]),
    "autoattack": ("linf", 0.03, ["linf"]),
    "certify": ("certified-l2", None, []),
    "fgsm": ("linf", 0.05, ["linf"]),
    "fgsm003": ("linf", 0.03, ["linf"]),
    "fmn": ("linf", None, ["linf"]),
    "min_eps": ("linf", 0.1, ["linf"]),
    "min_eps_smoothed": ("l2", 2.0, ["l2"]),
    "none": ("none", None, []),
    "onepixel": ("l0-blackbox", None, []),
    "pgd": ("linf", 0.03, ["linf"]),
    "pgd10": ("linf", 0.03, ["linf"]),
    "pgd20": ("linf", 0.03, ["linf"]),
    "pgd_eot": ("linf", 0.03, ["linf"]),
    "pgd_reverse": ("linf", 0.03, []),
    "saved": ("transfer", None, []),
    "square": ("linf-blackbox", 0.03, ["linf", "linf-blackbox"]),
    "square_l2": ("l2-blackbox", 1.0, ["l2", "l2-blackbox"]),
    "stadv": ("flow", None, []),
    **{f"stadv_pgd{k}": ("flow+linf", 0.03, []) for k in ("", 5, 10, 15, 20)},
}


def test_every_attack_option_has_its_labels_listed():
    assert sorted(LABELS) == OPTIONS, "a new conf/attack option: add its labels to LABELS"


@pytest.mark.parametrize("option", OPTIONS)
def test_every_attack_option_resolves_to_its_declared_threat_model(option):
    node = attack_node(option)
    cls = attack_class(node)
    assert "threat" in vars(cls), f"{cls.__name__} inherits its threat model: declare one"
    threat = threat_of(node)
    assert threat.access in ACCESS
    assert (threat_model(node), budget(node), threat.counts_for) == LABELS[option]
    for target in ("reference", "both"):  # attack.target: its own leaderboard rows only
        other = threat_of({**node, "target": target})
        assert other.label == threat.label
        assert other.counts_for == [f"{t}-{target}" for t in threat.counts_for]


@pytest.mark.parametrize("cls", attack_classes(), ids=lambda c: c.__name__)
def test_every_attack_class_declares_a_consistent_threat_model(cls):
    if cls is TargetedAttack:
        # not a config target: build_attack wraps an attack for attack.target, whose threat
        # model threat_of reads from the wrapped attack's node and the target key
        return
    assert isinstance(vars(cls).get("threat"), Threat), f"{cls.__name__} declares no threat"
    declared = cls.threat
    params = inspect.signature(cls).parameters
    for key in (declared.budget, declared.norm_param):
        assert key is None or key in params, f"{cls.__name__} has no parameter {key!r}"
    if declared.norm_param is not None:  # the norm when the config does not pick one
        assert params[declared.norm_param].default == declared.norm
    if cls.resolve_threat.__func__ is Attack.resolve_threat.__func__:
        # a plain attack: what it may read is what it declares (composites set white_box
        # from their parts and derive their threat model from them)
        assert cls.white_box == (declared.access == "white-box")
        assert cls.reverse == declared.reverse


def test_composites_derive_their_threat_model_from_their_parts():
    apgd_l2 = {"_target_": A + "apgd.APGD", "eps": 0.5, "norm": "l2"}
    square_l2 = {"_target_": A + "square.Square", "eps": 0.25, "norm": "l2"}
    cascade = {"_target_": A + "cascade.Cascade", "attacks": [apgd_l2, square_l2]}
    assert (threat_of(cascade).norm, threat_of(cascade).eps) == ("l2", 0.5)
    assert threat_of(cascade).counts_for == ["l2"]  # one white-box part: not black-box
    blackbox = {**cascade, "attacks": [square_l2]}
    assert threat_of(blackbox).counts_for == ["l2", "l2-blackbox"]
    eot = {"_target_": A + "eot.EoT", "attack": square_l2}
    assert threat_of(eot).randomised and threat_of(eot).label == "l2-blackbox"
    assert not threat_of(square_l2).randomised
    assert threat_of({**apgd_l2, "eot_samples": 8}).randomised
    bisection = {"_target_": A + "min_eps.MinEps", "eps_max": 0.2}  # APGD when none given
    assert threat_of(bisection) == Threat(
        norm="linf",
        access="white-box",
        budget="eps_max",
        norm_param="norm",
        radius="min_eps",
        eps=0.2,
    )


@pytest.mark.parametrize(
    "target",
    ["x", "", "os.system", "attackpsm.certify.Certify", "attackpsm.attacks.base.Triplets"],
)
def test_a_target_that_is_no_attack_class_is_refused_by_name(target):
    with pytest.raises(ValueError, match=f"attack _target_ '{target}' is not an attack class"):
        threat_of({"_target_": target})


def test_an_attack_without_a_declaration_is_refused_by_name():
    class Undeclared(Attack):
        pass

    with pytest.raises(ValueError, match="attack class Undeclared declares no threat model"):
        Undeclared.resolve_threat({})
    with pytest.raises(ValueError, match=r"threat access must be one of \[.*\], got 'grey-box'"):
        Threat(norm="linf", access="grey-box")


def test_every_attack_option_has_the_report_family_its_class_declares():
    """The report's tables group runs by family (Tables 2, 4, 5): read from the class, so a
    renamed or moved class keeps its rows; an attack without one is grouped by its name."""
    from attackpsm.report.load import Run

    expected = {"none": "none", "fgsm": "fgsm", "pgd": "pgd", "pgd_reverse": "pgd_reverse"}
    expected |= {"onepixel": "onepixel", "stadv": "stadv", "stadv_pgd": "stadv_pgd"}
    expected |= {"saved": "transfer", "apgd": "apgd", "square": "square", "fmn": "fmn"}
    for name, family in expected.items():
        target = OmegaConf.load(CONF / "attack" / f"{name}.yaml")["_target_"]
        node = {"_target_": target, "name": name}
        run = Run(run_dir=Path("."), identity={"attack": node}, results=None)
        assert run.family == family, name
    stale = Run(
        run_dir=Path("."),
        identity={"attack": {"_target_": "attackpsm.certify.Certify", "name": "certify"}},
        results=None,
    )
    assert stale.family == "certify"  # a class of another version: its config name
