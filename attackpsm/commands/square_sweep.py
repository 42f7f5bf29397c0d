"""Sweep of the Square attack's ``p_init`` per image size, query budget and norm.

The Square paper (Andriushchenko et al., 2020, Sec. 4) tuned ``p_init`` on ImageNet
classifiers; a 2AFC rank on small images is another objective. This sweep runs
:class:`~attackpsm.attacks.square.Square` (``attack=square`` / ``square_l2`` on
``metric=lpips_alex``, composed from ``conf/``) with each ``p_init`` on held-out synthetic
triplets (a generation seed no test and no default run uses) and prints, per setting, the
triplets flipped and the mean queries; the defaults in ``conf/attack/square.yaml`` and
``square_l2.yaml`` were chosen from its output (docs/research.md, "Square attack p_init").

Example:
    python -m attackpsm square-sweep --sizes 32 64 --queries 100 300 1000
"""

from __future__ import annotations

import argparse
import time

import torch

from attackpsm.config import build, compose_option
from attackpsm.data.base import collate
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.protocol.twoafc import choose_prey

HELD_OUT_SEED = 1009  # not the default dataset seed (0) nor a test's
# the conf/attack option of each norm
OPTIONS = {"linf": "square", "l2": "square_l2"}


def square(norm: str, eps: float, max_queries: int, p_init: float):
    """The Square attack of ``conf/attack/`` for ``norm`` with these parameters."""
    overrides = {"eps": eps, "max_queries": max_queries, "p_init": p_init}
    return build(compose_option("attack", OPTIONS[norm], overrides).attack)


def sweep(
    sizes: list[int],
    budgets: list[int],
    p_inits: list[float],
    norms: dict[str, float],
    num_triplets: int,
    seed: int = HELD_OUT_SEED,
) -> list[dict]:
    """One row per (norm, size, budget, p_init): triplets flipped, mean queries, seconds."""
    metric = build(compose_option("metric", "lpips_alex").metric)
    rows = []
    for size in sizes:
        data = SyntheticTriplets(size=size, num_triplets=num_triplets, seed=seed)
        batch = collate([data[i] for i in range(len(data))])
        prepared = metric.prepare(batch.ref)
        with torch.no_grad():
            chosen = choose_prey(metric.score(prepared, batch.p0), metric.score(prepared, batch.p1))
        prey = chosen.images(batch.p0, batch.p1)
        for norm, eps in norms.items():
            for budget in budgets:
                for p_init in p_inits:
                    attack = square(norm, eps, budget, p_init)
                    start = time.perf_counter()
                    out = attack.run(metric, prepared, prey, chosen.s_other)
                    rows.append(
                        {
                            "norm": norm,
                            "eps": eps,
                            "size": size,
                            "queries": budget,
                            "p_init": p_init,
                            "flipped": int(out.flipped.sum()),
                            "mean_queries": float(out.columns["queries"].float().mean()),
                            "seconds": time.perf_counter() - start,
                        }
                    )
                    print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict) -> str:
    return (
        f"| {row['norm']} | {row['eps']} | {row['size']} | {row['queries']} | {row['p_init']} "
        f"| {row['flipped']} | {row['mean_queries']:.0f} | {row['seconds']:.1f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--queries", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--p-init", type=float, nargs="+", default=[0.05, 0.1, 0.3, 0.5, 0.8])
    parser.add_argument("--num-triplets", type=int, default=24)
    parser.add_argument("--linf-eps", type=float, default=0.01, help="[-1, 1] scale")
    parser.add_argument("--l2-eps", type=float, default=0.5, help="[-1, 1] scale, 0 to skip")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    args = parser.parse_args(argv)
    norms = {"linf": args.linf_eps}
    if args.l2_eps > 0:
        norms["l2"] = args.l2_eps
    print(f"LPIPS(Alex), {args.num_triplets} synthetic triplets (seed {args.seed})")
    print("| norm | eps | size | queries | p_init | flipped | mean queries | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    sweep(args.sizes, args.queries, args.p_init, norms, args.num_triplets, args.seed)


if __name__ == "__main__":
    main()
