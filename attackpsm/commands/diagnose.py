"""Gradient-masking diagnostics of a metric: would a reviewer trust its attack results?

``python -m attackpsm diagnose metric=<name> [overrides]`` composes ``conf/`` as a run does
(plus the ``diagnose`` group, ``conf/diagnose/default.yaml``), reads a small held-out set,
and runs on its ✓ triplets (the metric ranks as humans did, the paper's main rows) the
checks of the robustness-evaluation checklists:

``gradient``
    The input gradient of the prey's distance is finite, non-zero, and agrees in direction
    with central finite differences along random ±1 directions (median cosine over
    triplets). A gradient computed through a detached or ``no_grad`` stage disagrees with
    the finite differences, which see the whole function (Carlini et al., 2019, Sec. 5.2,
    "verify that the gradients are correct"; Athalye et al., 2018, Sec. 3: obfuscated,
    shattered gradients; AutoAttack's "zero gradients" flag).
``unbounded``
    APGD with ε at the width of the ``[-1, 1]`` scale flips essentially every ✓ triplet;
    if not, the gradient does not reach the image (Carlini et al., 2019, Sec. 5.3:
    "unbounded attacks must reach 100% success").
``monotone``
    The flip rate never falls as the steps or ε grow, within the stated tolerance
    (Carlini et al., 2019, Sec. 5.3 and 5.5: more iterations and a larger budget must not
    help the defender).
``blackbox``
    Square at the same ε flips no more than the white-box APGD runs at that ε did (Carlini
    et al., 2019, Sec. 5.4: "a black-box attack beating white-box ones signals gradient
    masking"; AutoAttack's "Square decreased the robust accuracy" flag).
``randomness``
    A metric that says it is deterministic returns identical scores on repeated calls
    (AutoAttack's "randomized defense" flag). For a stochastic metric (E-LPIPS): the
    gradient of one draw against the expectation-over-transformation gradient (Athalye et
    al., 2018, Sec. 4), two independent EoT gradients must agree, and the clean decision of
    one draw under common random numbers (both distortions scored with the same draw) must
    agree with the EoT decision at least as often as with independent draws.

Every check prints ``passed`` or ``flagged`` with its numbers; the command exits 0 when
every check passed, 1 when any was flagged (2 when it could not run: a bad override,
missing weights, no usable triplet), and writes the report as JSON under
``diagnose.out`` (the leaderboard's diagnostics section and robustness cards read it).

References:
    Carlini, N. et al. (2019). On Evaluating Adversarial Robustness. arXiv:1902.06705.
    Athalye, A., Carlini, N., Wagner, D. (2018). Obfuscated Gradients Give a False Sense of
    Security. ICML.
    Croce, F., Hein, M. (2020). Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks (AutoAttack). ICML; its ``flags_doc.md``.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from attackpsm import __version__
from attackpsm.attacks.apgd import APGD
from attackpsm.attacks.base import AttackResult
from attackpsm.attacks.square import Square
from attackpsm.config import build, compose
from attackpsm.data.base import collate
from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import Metric, select
from attackpsm.protocol.twoafc import choose_prey, human_agrees
from attackpsm.report.cards import config_hash

CHECKS = ("gradient", "unbounded", "monotone", "blackbox", "randomness")


@dataclass
class Check:
    """One diagnostic: its name, ``passed`` (False: flagged), its numbers and a sentence."""

    name: str
    passed: bool
    numbers: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def status(self) -> str:
        return "passed" if self.passed else "flagged"


@dataclass
class Triplets:
    """The ✓ triplets under diagnosis: prepared references, preys and ``s_other``."""

    prepared: Any
    prey: torch.Tensor
    s_other: torch.Tensor
    ref: torch.Tensor
    others: torch.Tensor

    def __len__(self) -> int:
        return len(self.prey)


def allowed_drop(n: int, tolerance: float) -> int:
    """Triplets a flip count may fall by (or a black-box attack exceed by): the stated
    tolerance ``max(1, ceil(tolerance * n))``; 1 triplet on the default 24-triplet set."""
    return max(1, math.ceil(tolerance * n - 1e-9))


def _seeded(seed: int, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()`` with the global generators seeded by ``seed`` (a common random number for a
    stochastic metric, which draws from the global generator), restored afterwards."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return fn()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two ``(N, ...)`` tensors (0 where either row is zero)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))


def _median(values: torch.Tensor) -> float:
    values = values.detach().double().cpu()
    return float(values.median()) if len(values) else float("nan")


# --- the checks ---------------------------------------------------------------------------


def check_gradient(metric: Metric, t: Triplets, d: DictConfig) -> Check:
    """Finite, non-zero input gradient that agrees with central finite differences.

    For each triplet and each of ``d.directions`` random ±1 directions ``v`` (zero where
    ``x ± h`` would leave ``[-1, 1]``): the directional derivative ``<∇s(x), v>`` against
    ``(s(x + h v) - s(x - h v)) / 2h``. Per triplet the cosine between the two vectors of
    directional derivatives; passed when every gradient is finite and non-zero and the
    median cosine is at least ``d.min_cosine``. Computed in float64 where the metric allows
    (rounding then cannot explain a disagreement); a stochastic metric uses one common
    draw for the gradient and both finite differences.
    """
    m64, dtype = metric, torch.float32
    try:
        m64 = copy.deepcopy(metric).double()
        dtype = torch.float64
        prepared = m64.prepare(t.ref.double())
        _seeded(0, lambda: m64.score(prepared, t.prey.double()))
    except Exception:  # noqa: BLE001 -- a metric with float32-only parts: check it as is
        m64, dtype = metric, torch.float32
        prepared = metric.prepare(t.ref)
    x = t.prey.to(dtype)
    h = float(d.fd_step)

    def score(z: torch.Tensor) -> torch.Tensor:
        return _seeded(0, lambda: m64.score(prepared, z))

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(xg).sum(), xg)
    finite = torch.isfinite(grad.flatten(1)).all(1)
    norm = grad.flatten(1).nan_to_num().norm(dim=1)
    nonzero = norm > 0
    room = ((x + h) <= HIGH) & ((x - h) >= LOW)
    gen = torch.Generator().manual_seed(0)
    analytic, numeric = [], []
    with torch.no_grad():
        for _ in range(int(d.directions)):
            v = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(x) * room
            analytic.append((grad.nan_to_num() * v).flatten(1).sum(1))
            numeric.append((score(x + h * v) - score(x - h * v)) / (2 * h))
    cos = _cosine(torch.stack(analytic, 1), torch.stack(numeric, 1))
    rel = (
        (torch.stack(analytic, 1) - torch.stack(numeric, 1)).norm(dim=1)
        / torch.stack(numeric, 1).norm(dim=1).clamp_min(1e-30)
    ).double()
    med = _median(cos)
    passed = bool(finite.all() and nonzero.all() and med >= float(d.min_cosine))
    return Check(
        "gradient",
        passed,
        {
            "finite": f"{int(finite.sum())}/{len(t)}",
            "non_zero": f"{int(nonzero.sum())}/{len(t)}",
            "median_grad_l2": _median(norm),
            "median_cosine": med,
            "min_cosine": float(cos.min()),
            "median_rel_error": _median(rel),
            "directions": int(d.directions),
            "fd_step": h,
            "dtype": str(dtype).replace("torch.", ""),
        },
        f"median cosine(gradient, finite differences) >= {d.min_cosine}, "
        "every gradient finite and non-zero",
    )


def _attack(attack, metric: Metric, t: Triplets) -> AttackResult:
    return attack.run(metric, t.prepared, t.prey, t.s_other)


def _apgd(metric: Metric, d: DictConfig, eps: float, steps: int, seed: int) -> APGD:
    draws = int(d.eot_samples) if metric.stochastic else 1
    return APGD(eps=eps, max_iterations=steps, eot_samples=draws, seed=seed)


def check_unbounded(metric: Metric, t: Triplets, d: DictConfig, seed: int) -> Check:
    """APGD at ε = ``d.unbounded_eps`` (the width of the scale) flips ≥ ``d.min_unbounded_rate``."""
    out = _attack(_apgd(metric, d, float(d.unbounded_eps), int(d.unbounded_steps), seed), metric, t)
    rate = float(out.flipped.float().mean())
    return Check(
        "unbounded",
        rate >= float(d.min_unbounded_rate),
        {
            "eps": float(d.unbounded_eps),
            "steps": int(d.unbounded_steps),
            "flipped": f"{int(out.flipped.sum())}/{len(t)}",
            "flip_rate": rate,
        },
        f"an unbounded APGD flips >= {d.min_unbounded_rate:.0%} of the ✓ triplets",
    )


def check_monotone(
    metric: Metric, t: Triplets, d: DictConfig, seed: int, runs: dict[tuple[float, int], Any]
) -> Check:
    """Flip counts of APGD over ``d.steps`` (at ``d.eps``) and over ``d.eps_grid`` (at 30
    steps) never fall by more than :func:`allowed_drop` from one setting to the next."""
    slack = allowed_drop(len(t), float(d.tolerance))

    def flips(eps: float, steps: int) -> torch.Tensor:
        key = (round(float(eps), 9), int(steps))
        if key not in runs:
            runs[key] = _attack(_apgd(metric, d, float(eps), int(steps), seed), metric, t).flipped
        return runs[key]

    by_steps = {int(k): int(flips(d.eps, k).sum()) for k in sorted(d.steps)}
    by_eps = {float(e): int(flips(e, 30).sum()) for e in sorted(d.eps_grid)}
    drops = []
    for series in (list(by_steps.values()), list(by_eps.values())):
        drops += [a - b for a, b in zip(series, series[1:], strict=False)]
    worst = max([0, *drops])
    return Check(
        "monotone",
        worst <= slack,
        {
            "flipped_by_steps": {str(k): v for k, v in by_steps.items()},
            "eps_of_steps": float(d.eps),
            "flipped_by_eps": {str(k): v for k, v in by_eps.items()},
            "largest_drop": worst,
            "allowed_drop": slack,
            "triplets": len(t),
        },
        f"flips fall by at most {slack} triplet(s) as steps or ε grow",
    )


def check_blackbox(
    metric: Metric, t: Triplets, d: DictConfig, seed: int, runs: dict[tuple[float, int], Any]
) -> Check:
    """Square at ε = ``d.eps`` flips at most :func:`allowed_drop` triplets that no white-box
    APGD run at that ε (every ``d.steps``) flipped."""
    slack = allowed_drop(len(t), float(d.tolerance))
    eps = round(float(d.eps), 9)
    white = [v for (e, _), v in runs.items() if e == eps]
    if not white:
        white = [_attack(_apgd(metric, d, eps, 30, seed), metric, t).flipped]
    white_any = torch.stack(white).any(0)
    square = Square(eps=eps, max_queries=int(d.square_queries), seed=seed)
    if metric.stochastic:
        from attackpsm.attacks.eot import ExpectedScore

        black = _attack(square, ExpectedScore(metric, int(d.eot_samples)), t).flipped
    else:
        black = _attack(square, metric, t).flipped
    only = int((black & ~white_any).sum())
    return Check(
        "blackbox",
        only <= slack,
        {
            "eps": eps,
            "square_queries": int(d.square_queries),
            "square_flipped": int(black.sum()),
            "white_box_flipped": int(white_any.sum()),
            "square_only": only,
            "allowed": slack,
            "triplets": len(t),
        },
        f"Square flips at most {slack} triplet(s) that white-box APGD did not",
    )


def check_randomness(metric: Metric, t: Triplets, d: DictConfig) -> Check:
    """Deterministic metrics: repeated calls agree. Stochastic ones: EoT gradients and
    decisions under common random numbers (module docstring)."""
    with torch.no_grad():
        first = metric.score(t.prepared, t.prey)
        second = metric.score(t.prepared, t.prey)
    if not metric.stochastic:
        diff = float((first - second).abs().max())
        return Check(
            "randomness",
            diff == 0.0,
            {"stochastic": False, "max_repeat_difference": diff},
            "a deterministic metric returns identical scores on repeated calls",
        )
    m = int(d.eot_samples)

    def grad(seeds: Sequence[int]) -> torch.Tensor:
        total = torch.zeros_like(t.prey)
        for s in seeds:
            x = t.prey.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(_seeded(s, lambda x=x: metric.score(t.prepared, x)).sum(), x)
            total += g
        return total / len(seeds)

    single = grad([10_000])
    eot_a = grad(range(1, m + 1))
    eot_b = grad(range(m + 1, 2 * m + 1))
    single_cos = _median(_cosine(single, eot_a))
    eot_cos = _median(_cosine(eot_a, eot_b))

    # clean decisions: prey vs other, one draw each, with and without common random numbers
    k = int(d.crn_draws)
    with torch.no_grad():
        prep_others = t.prepared
        crn, indep, mean_prey, mean_other = [], [], 0.0, 0.0
        for s in range(k):
            sp = _seeded(100 + s, lambda: metric.score(t.prepared, t.prey))
            so = _seeded(100 + s, lambda: metric.score(prep_others, t.others))
            so_ind = _seeded(100 + k + s, lambda: metric.score(prep_others, t.others))
            crn.append(sp < so)
            indep.append(sp < so_ind)
            mean_prey, mean_other = mean_prey + sp / k, mean_other + so_ind / k
        eot_decision = mean_prey < mean_other
        crn_agree = float(torch.stack(crn).eq(eot_decision).float().mean())
        ind_agree = float(torch.stack(indep).eq(eot_decision).float().mean())
    slack = float(d.tolerance)
    passed = eot_cos >= float(d.min_eot_cosine) and crn_agree >= ind_agree - slack
    return Check(
        "randomness",
        passed,
        {
            "stochastic": True,
            "eot_samples": m,
            "single_vs_eot_cosine": single_cos,
            "eot_vs_eot_cosine": eot_cos,
            "crn_decision_agreement": crn_agree,
            "independent_decision_agreement": ind_agree,
            "draws": k,
        },
        f"two EoT gradients agree (median cosine >= {d.min_eot_cosine}); single-draw "
        "decisions under common random numbers agree with the EoT decision at least as "
        "often as independent draws do",
    )


# --- the command --------------------------------------------------------------------------


def held_out(cfg: DictConfig) -> DictConfig:
    """The config of the held-out set: synthetic data with ``diagnose.held_out_seed``."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        if "seed" in cfg.dataset and cfg.diagnose.get("held_out_seed") is not None:
            cfg.dataset.seed = int(cfg.diagnose.held_out_seed)
        if "num_triplets" in cfg.dataset:
            cfg.dataset.num_triplets = int(cfg.diagnose.num_triplets)
    return cfg


def load_triplets(metric: Metric, cfg: DictConfig, device: torch.device) -> tuple[Triplets, int]:
    """The ✓ triplets of the first ``diagnose.num_triplets`` of the held-out set, and how
    many triplets were read."""
    from attackpsm.job.run import build_dataset  # the run's dataset builder (errors name the fix)

    dataset = build_dataset(held_out(cfg))
    n = min(len(dataset), int(cfg.diagnose.num_triplets))
    if n == 0:
        raise SystemExit(f"dataset {cfg.dataset.name!r} has no usable triplets")
    batch = collate([dataset[i] for i in range(n)]).to(device)
    with torch.no_grad():
        prepared = metric.prepare(batch.ref)
        d0, d1 = metric.score(prepared, batch.p0), metric.score(prepared, batch.p1)
    agrees = human_agrees(d0, d1, batch.judge).fillna(False).to_numpy(dtype=bool)
    keep = torch.as_tensor(agrees, device=device).nonzero().flatten()
    if len(keep) == 0:
        raise SystemExit(
            f"none of the {n} held-out triplets is ranked as humans did by {metric.name!r}: "
            "raise diagnose.num_triplets"
        )
    chosen = choose_prey(d0[keep], d1[keep])
    return (
        Triplets(
            select(prepared, keep),
            chosen.images(batch.p0[keep], batch.p1[keep]),
            chosen.s_other,
            batch.ref[keep],
            chosen.others(batch.p0[keep], batch.p1[keep]),
        ),
        n,
    )


def diagnose(cfg: DictConfig, checks: Sequence[str] = CHECKS) -> dict[str, Any]:
    """Run the checks named in ``checks`` for the metric of ``cfg``; the report as a dict."""
    from attackpsm.job.run import resolve_device, seed_everything

    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown diagnostic(s) {unknown}; valid: {list(CHECKS)}")
    seed_everything(int(cfg.seed))
    device = resolve_device(cfg.device)
    metric = build(cfg.metric).to(device)
    if not metric.differentiable:
        raise SystemExit(
            f"metric {metric.name!r} is not differentiable: gradient-masking diagnostics "
            "need a white-box metric"
        )
    d = cfg.diagnose
    t, read = load_triplets(metric, cfg, device)
    seed = int(cfg.seed)
    runs: dict[tuple[float, int], Any] = {}
    done: list[Check] = []
    for name in checks:
        if name == "gradient":
            done.append(check_gradient(metric, t, d))
        elif name == "unbounded":
            done.append(check_unbounded(metric, t, d, seed))
        elif name == "monotone":
            done.append(check_monotone(metric, t, d, seed, runs))
        elif name == "blackbox":
            done.append(check_blackbox(metric, t, d, seed, runs))
        elif name == "randomness":
            done.append(check_randomness(metric, t, d))
    metric_cfg = OmegaConf.to_container(cfg.metric, resolve=True)
    return {
        "metric": cfg.metric.name,
        "metric_config": metric_cfg,
        "metric_config_hash": config_hash(metric_cfg),
        "dataset": cfg.dataset.name,
        "held_out_seed": held_out(cfg).dataset.get("seed"),
        "resolution": f"res{cfg.resolution.size or 'native'}",
        "triplets_read": read,
        "triplets_agree": len(t),
        "passed": all(c.passed for c in done),
        "flags": [c.name for c in done if not c.passed],
        "checks": [asdict(c) | {"status": c.status} for c in done],
        "tool_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def report_text(report: dict[str, Any]) -> str:
    """The report as printed: one line per check, its status and numbers."""
    lines = [
        f"diagnostics · {report['metric']} ({report['metric_config_hash']}) · "
        f"{report['dataset']} {report['resolution']} · {report['triplets_agree']} ✓ of "
        f"{report['triplets_read']} held-out triplets"
    ]
    for c in report["checks"]:
        numbers = ", ".join(f"{k}={_fmt(v)}" for k, v in c["numbers"].items())
        lines.append(f"  {c['name']:<11} {c['status'].upper():<8} {numbers}")
        lines.append(f"  {'':<11} {'':<8} ({c['note']})")
    verdict = "all checks passed" if report["passed"] else f"flagged: {', '.join(report['flags'])}"
    return "\n".join([*lines, verdict])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    """``<out>/<dataset>-<res>/<metric>-<config hash>.json``."""
    path = (
        Path(out)
        / f"{report['dataset']}-{report['resolution']}"
        / f"{report['metric']}-{report['metric_config_hash']}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attackpsm diagnose [overrides]``: 0 when every check passed, 1 when one
    was flagged, 2 when the diagnostics could not run (the error is printed)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    if not any(a.split("=", 1)[0].lstrip("+~") == "diagnose" for a in args):
        args = ["+diagnose=default", *args]
    try:
        cfg = compose(["logger=none", *args])
        checks = list(cfg.diagnose.get("checks") or CHECKS)
        report = diagnose(cfg, checks)
    except (Exception, SystemExit) as error:  # noqa: BLE001 -- exit 2: could not run, never "flagged"
        if isinstance(error, SystemExit) and not isinstance(error.code, str):
            raise
        print(f"diagnose: error: {error}", file=sys.stderr)
        return 2
    print(report_text(report))
    if cfg.diagnose.get("out"):
        print(f"-> {write_report(report, cfg.diagnose.out)}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
