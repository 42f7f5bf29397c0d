"""Which published numbers a run is compared with (the ``paper_*`` columns).

A run sits next to the paper's number only when it is one of the paper's settings: the
paper's selection of its dataset, the resolution of the table, and the attack parameters of
Sec. 3 (Alg. 1-3) wherever the run has them. The numbers themselves are
:mod:`attackpsm.report.paper`.
"""

from __future__ import annotations

from typing import Any

from attackpsm.report import paper
from attackpsm.report.load import Run

# The paper's attack settings (Sec. 3, Alg. 1-3); a run is compared with the paper only when
# its parameters match these wherever it has them.
PAPER_PARAMS: dict[str, dict[str, Any]] = {
    "fgsm": {"max_eps": 0.05},
    "pgd": {"eps": 0.03, "alpha": 0.001, "max_iterations": 30, "early_stop": True},
    "onepixel": {"pixels": 1},
    "pgd_reverse": {"eps": 0.03, "alpha": 0.001, "max_iterations": 30, "early_stop": True},
    "stadv": {"alpha": 50.0, "beta": 0.05, "variant": "paper", "max_iterations": None},
}
# Parameters that the paper's tables vary (so they are looked up, not required).
VARIED = {"fgsm": ("max_eps",), "pgd": ("alpha",), "stadv": ("alpha",)}
# Which tables may hold the published numbers of a run, by dataset and attack family.
PAPER_TABLES = {
    ("bapps", "fgsm"): (2, 10),
    ("bapps", "pgd"): (2, 11),
    ("bapps", "onepixel"): (2,),
    ("bapps", "pgd_reverse"): (12,),
    ("pieapp", "pgd"): (6,),
    ("pieapp", "stadv"): (8,),
    ("clic", "pgd"): (7,),
}


def same(a: Any, b: Any) -> bool:
    """Equal parameter values (numbers to a relative 1e-6, booleans as booleans)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 + 1e-6 * abs(float(b))
    return a == b


def paper_like(attack: str, params: dict[str, Any], varied_ok: bool = False) -> bool:
    """The run uses the paper's setting of ``attack`` (``varied_ok``: except the varied knob)."""
    spec = PAPER_PARAMS.get(attack, {})
    skip = VARIED.get(attack, ()) if varied_ok else ()
    return all(k in skip or k not in params or same(params[k], v) for k, v in spec.items())


def paper_dataset(run: Run) -> bool:
    """The run's triplets are the paper's selection of its dataset."""
    p = run.dataset_params
    if run.dataset == "bapps":
        return p.get("split", "val") == "val" and p.get("subsets") is None
    if run.dataset == "pieapp":
        return p.get("split", "test") == "test" and same(p.get("threshold", 0.85), 0.85)
    return run.dataset == "clic"


def paper_values(run: Run, agrees: str) -> tuple[int | None, dict[str, float]]:
    """(table number, published values) for ``run``'s ✓ or ✗ row; ``(None, {})`` if none."""
    if agrees not in ("✓", "✗") or not paper_dataset(run):
        return None, {}
    if run.dataset == "bapps" and run.dataset_params.get("filter", "unanimous") != "unanimous":
        return None, {}
    family = run.family
    tables = PAPER_TABLES.get((run.dataset, family), ())
    params = run.attack_params
    if not tables or not paper_like(family, params, varied_ok=True):
        return None, {}
    keys = {k: params[k] for k in VARIED.get(family, ()) if k in params}
    for table in tables:
        values = paper.lookup(
            table, run.metric, agrees, run.dataset, run.resolution, attack=family, **keys
        )
        if values is not None:
            values = dict(values)
            if table == 2 and family in ("fgsm", "pgd"):  # Table 4 has their PSNR
                values.update(
                    paper.lookup(
                        4,
                        run.metric,
                        agrees,
                        run.dataset,
                        run.resolution,
                        attack=family,
                        **keys,
                    )
                    or {}
                )
            return table, values
    return None, {}


def clean_paper_values(run: Run, table: int, agrees: str | None) -> dict[str, float] | None:
    """Published clean numbers of Table 1 or 3 (BAPPS 64x64, the paper's selection)."""
    if run.dataset == "bapps" and run.resolution == 64 and paper_dataset(run):
        return paper.lookup(table, run.metric, agrees, "bapps", 64, attack="none")
    return None
