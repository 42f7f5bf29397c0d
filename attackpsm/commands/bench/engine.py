"""``python -m attackpsm bench [engine]`` (``make bench``): the engine against a per-triplet loop.

For each workload both sides get the same triplets and the same attack parameters (the
metric and the attack composed from ``conf/`` as a run composes them):

* **reference** -- one triplet at a time, written the way the paper's algorithms read:
  PGD and FGSM literally as Algorithms 1 and 3 (batch 1, ``f(I_ref, I_adv)`` evaluated from
  scratch at every check, a Python-level early stop / ε scan); stAdv and One-pixel as the
  framework's own attack called on one triplet at a time.
* **engine** -- :func:`attackpsm.engine.attack_batch` on large batches (prepared
  reference features, active-set early stopping, the batched ε scan, the batched
  L-BFGS, the population scored as one batch). It also does the 8-bit re-check and the
  perturbation statistics, which the reference skips: the comparison is conservative.

It prints throughput (triplets/s) of each side, the ratio, peak memory, and whether both
reach the same flip decision for every triplet (a disagreement counts as within float
tolerance only when one side's final margin ``|s_adv - s_other|`` is below ``--tol``);
with every workload, the loading and end-to-end rows of :mod:`.loading` follow.

Weights are real (LPIPS from :mod:`attackpsm.metrics.weights`). Nothing here changes what
is computed: both sides run the same attack with the same iterations and loss.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from attackpsm.attacks.base import Attack
from attackpsm.commands.bench.common import (
    build_attack,
    build_metric,
    head,
    peak_mib,
    reset_peak,
    sync,
    synthetic_batches,
    write_results,
)
from attackpsm.commands.bench.workloads import (
    OPTIONS,
    Workload,
    add_workload_arguments,
    engine_options,
    select_workloads,
)
from attackpsm.data.base import collate
from attackpsm.engine import attack_batch
from attackpsm.images import HIGH, LOW
from attackpsm.metrics.base import Metric
from attackpsm.protocol.twoafc import choose_prey, rank_flipped, rank_loss

HELP = "engine vs per-triplet loop: throughput, memory, same decisions (the default)"

# --- per-triplet reference loops ----------------------------------------------------------


def _select_prey(metric: Metric, ref, p0, p1):
    """Algorithm 1, lines 1-4, for one triplet: ``(prey image, s_other as a float)``."""
    with torch.no_grad():
        chosen = choose_prey(metric(ref, p0), metric(ref, p1))
    return chosen.images(p0, p1), chosen.s_other.item()


def reference_pgd(metric: Metric, ref, p0, p1, eps=0.03, alpha=0.001, checks=30):
    """Algorithm 1 for one triplet with ``checks`` flip checks (the released loop's 30;
    Algorithm 1 as printed: 31); returns (flipped, s_adv, s_other)."""
    prey, s_other = _select_prey(metric, ref, p0, p1)
    delta = torch.zeros_like(prey)
    k = 0
    s_adv = float("nan")
    last = checks - 1
    while k <= last:
        adv = (prey + delta).clamp(LOW, HIGH).detach().requires_grad_(True)
        s = metric(ref, adv)
        s_adv = s.item()
        if rank_flipped(s_adv, s_other):
            return True, s_adv, s_other
        if k == last:  # the gradient of the last check is never used
            break
        loss = rank_loss(torch.tensor(s_other), s).sum()
        (grad,) = torch.autograd.grad(loss, adv)
        stepped = adv.detach() + alpha * grad.sign()
        delta = (stepped - prey).clamp(-eps, eps)
        k += 1
    return False, s_adv, s_other


def reference_fgsm(metric: Metric, ref, p0, p1, max_eps=0.05, eps_step=0.0001):
    """Algorithm 3 verbatim for one triplet: one gradient, then a linear ε scan."""
    prey, s_other = _select_prey(metric, ref, p0, p1)
    x = prey.detach().clone().requires_grad_(True)
    loss = rank_loss(torch.tensor(s_other), metric(ref, x)).sum()
    (grad,) = torch.autograd.grad(loss, x)
    sign = grad.sign()
    s_adv = float("nan")
    eps = eps_step
    while eps <= max_eps:  # Alg. 3, lines 8-15: ε grows by repeated addition
        with torch.no_grad():
            adv = (prey + eps * sign).clamp(LOW, HIGH)
            s_adv = metric(ref, adv).item()
        if rank_flipped(s_adv, s_other):
            return True, s_adv, s_other
        eps += eps_step
    return False, s_adv, s_other


def reference_with(attack: Attack) -> Callable:
    """The framework's attack applied to one triplet at a time (stAdv, One-pixel)."""

    def one(metric: Metric, ref, p0, p1):
        prey, s_other = _select_prey(metric, ref, p0, p1)
        so = torch.tensor([s_other])
        out = attack.run(metric, metric.prepare(ref), prey, so)
        return bool(out.flipped[0]), float(out.s_adv[0]), s_other

    return one


def reference_for(w: Workload, attack: Attack) -> Callable:
    if w.attack == "pgd":
        return lambda m, r, a, b: reference_pgd(
            m, r, a, b, attack.eps, attack.alpha, attack.n_checks
        )
    if w.attack == "fgsm":
        return lambda m, r, a, b: reference_fgsm(m, r, a, b, attack.max_eps, attack.eps_step)
    return reference_with(attack)


# --- measurement --------------------------------------------------------------------------

SLOWER = "engine slower than its per-triplet loop"


@dataclass
class Row:
    workload: str
    device: str
    triplets: int
    reference_triplets: int
    reference_per_s: float
    engine_per_s: float
    ratio: float
    reference_peak_mib: float
    engine_peak_mib: float
    agree: int
    disagree_within_tol: int
    disagree: int
    engine_flip_rate: float
    notes: list[str] = field(default_factory=list)


def _timed(
    engine_pass: Callable[[], list],
    reference_pass: Callable[[], list],
    device: torch.device,
    passes: int,
) -> dict[str, Any]:
    """Both sides timed ``passes`` times, alternately, so that other jobs on the machine slow
    both alike: each side's fastest pass and peak memory, and the first pass's outputs."""
    out: dict[str, Any] = {"engine_s": float("inf"), "reference_s": float("inf")}
    out |= {"engine_peak": 0.0, "reference_peak": 0.0, "engine_rows": None, "decisions": None}
    for _ in range(max(1, passes)):
        for side, fn in (("engine", engine_pass), ("reference", reference_pass)):
            if side == "engine":
                sync(device)
            reset_peak(device)
            t0 = time.perf_counter()
            result = fn()
            sync(device)
            out[f"{side}_s"] = min(out[f"{side}_s"], time.perf_counter() - t0)
            out[f"{side}_peak"] = max(out[f"{side}_peak"], peak_mib(device))
            key = "engine_rows" if side == "engine" else "decisions"
            if out[key] is None:
                out[key] = result
    return out


def _compare(engine, decisions: list, triplet_ids: list[str], tol: float) -> tuple[int, int, int]:
    """``(agree, differ within float tolerance, differ)`` over the loop's triplets."""
    agree = within = disagree = 0
    for i, (flip, s_adv, s_other) in enumerate(decisions):
        e = engine.iloc[i]
        assert e["triplet_id"] == triplet_ids[i]
        if bool(e["flipped"]) == flip:
            agree += 1
        elif min(abs(s_adv - s_other), abs(float(e["s_adv"]) - float(e["s_other"]))) <= tol * max(
            abs(s_other), 1e-12
        ):
            within += 1
        else:
            disagree += 1
    return agree, within, disagree


def measure(
    w: Workload,
    device: torch.device,
    reference_limit: int,
    tol: float,
    passes: int = 1,
    profile: int = 0,
) -> Row:
    """One workload's row: each side timed ``passes`` times, alternately; the fastest counts.

    ``profile > 0``: afterwards one more pass of each side under :mod:`cProfile`, and the
    ``profile`` functions with the most time of their own printed for each side.
    """
    unknown = sorted(set(w.options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown bench options {unknown}; valid: {list(OPTIONS)}")
    metric = build_metric(w.metric, device)
    attack = build_attack(w.attack, **w.params)
    items, batches = synthetic_batches(w.size, w.triplets, w.batch_size, device)
    engine_metric = metric
    if "channels_last" in w.options:
        engine_metric = build_metric(w.metric, device).to(memory_format=torch.channels_last)
        batches = [
            b.map_images(lambda t: t.contiguous(memory_format=torch.channels_last)) for b in batches
        ]

    ref_fn = reference_for(w, attack)
    n_ref = min(reference_limit, len(items))
    singles = collate(items[:n_ref]).to(device)

    def engine_pass() -> list:
        with engine_options(w.options):
            return [attack_batch(engine_metric, attack, b)[0] for b in batches]

    def reference_pass() -> list:  # the first `reference_limit` triplets, default settings
        return [
            ref_fn(metric, singles.ref[i : i + 1], singles.p0[i : i + 1], singles.p1[i : i + 1])
            for i in range(n_ref)
        ]

    with engine_options(w.options):  # warm-up on the first batch's first triplets
        attack_batch(engine_metric, attack, head(batches[0], 2))
    timed = _timed(engine_pass, reference_pass, device, passes)
    if profile > 0:
        for side, fn in (("engine", engine_pass), ("loop", reference_pass)):
            print(f"[bench] {w.label}: profile of the {side}", flush=True)
            _profile(fn, profile)
    import pandas as pd

    engine = pd.concat(timed["engine_rows"], ignore_index=True)
    agree, within, disagree = _compare(engine, timed["decisions"], singles.triplet_id, tol)
    ref_rate = n_ref / timed["reference_s"]
    eng_rate = len(items) / timed["engine_s"]
    notes = [SLOWER] if eng_rate < ref_rate else []
    return Row(
        w.label,
        str(device),
        len(items),
        n_ref,
        ref_rate,
        eng_rate,
        eng_rate / ref_rate,
        timed["reference_peak"],
        timed["engine_peak"],
        agree,
        within,
        disagree,
        float(engine["flipped"].mean()),
        notes,
    )


def _profile(fn: Callable[[], Any], top: int) -> None:
    """Run ``fn`` under cProfile; print the ``top`` functions by their own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(fn)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def format_table(rows: list[Row]) -> str:
    head = "| workload | device | triplets (engine / ref) | reference/s | engine/s | ratio | peak MiB (ref / engine) | same decision | within tol | differ | flip rate |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.device} | {r.triplets} / {r.reference_triplets} | {r.reference_per_s:.2f} | "
            f"{r.engine_per_s:.2f} | {r.ratio:.1f}x | {r.reference_peak_mib:.0f} / {r.engine_peak_mib:.0f} | "
            f"{r.agree}/{r.reference_triplets} | {r.disagree_within_tol} | {r.disagree} | {r.engine_flip_rate:.1%} |"
        )
    for r in rows:
        if r.engine_per_s < r.reference_per_s:
            lines.append(f"| WARNING {r.workload}: {SLOWER} ({r.ratio:.2f}x) |" + " |" * 10)
    return "\n".join(lines)


# --- the subcommand ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    parser.add_argument(
        "--reference-limit", type=int, default=None, help="triplets run by the per-triplet loop"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="relative margin under which a differing decision is float noise",
    )
    parser.add_argument(
        "--options",
        default=None,
        help=f"engine-side settings added to every workload, comma-separated: {', '.join(OPTIONS)}",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after each workload, profile one more pass of each side (cProfile) and print "
        "the N functions with the most time of their own",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=2,
        help="timed passes of each side (alternating; the fastest kept)",
    )
    parser.add_argument(
        "--no-loading",
        dest="loading",
        action="store_false",
        help="leave out the loading and end-to-end rows (`bench loading`) that follow the "
        "workloads when every workload runs",
    )
    parser.add_argument(
        "--loading-triplets",
        default=None,
        metavar="LOADING,RUN",
        help="triplets of those rows (default: 512,256 on CPU, 4096,12227 on GPU)",
    )


def run(args: argparse.Namespace, device: torch.device) -> int:
    """Every selected workload's row; then, with all of them, the loading rows."""
    from attackpsm.commands.bench import loading

    workloads = select_workloads(device, args.quick, args.workloads, args.options)
    limit = args.reference_limit or (64 if device.type == "cuda" else 16)
    rows = []
    for w in workloads:
        print(f"[bench] {w.label}: {w.triplets} triplets, batch {w.batch_size} ...", flush=True)
        rows.append(measure(w, device, limit, args.tol, args.passes, args.profile))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    table = format_table(rows) if rows else ""
    extra = None
    if args.loading and args.workloads == "all":
        extra = loading.measure(device, args.loading_triplets)
        table = "\n\n".join(t for t in (table, loading.format_pipeline(extra)) if t)
    write_results(args, device, {"rows": [asdict(r) for r in rows], "pipeline": extra}, table)
    bad = [r.workload for r in rows if r.disagree]
    if bad:
        print(f"decisions differ beyond float tolerance in: {bad}")
        return 1
    return 0
