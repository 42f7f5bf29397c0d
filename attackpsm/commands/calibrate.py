"""Calibration of the ``synthetic`` set against BAPPS: ``python -m attackpsm calibrate``.

Scores the clean triplets with every offline metric that has a value in the paper's
Table 1 (accuracy on the unanimous BAPPS subset) or Table 3 (mean ``|s_0 - s_1|`` on the
samples the metric ranks like humans, ✓, and unlike them, ✗) and prints the synthetic
numbers beside the paper's. Images are rounded to 8 bits after the resize, as the paper's
loader hands the metrics 8-bit images. ``--by-family`` adds the accuracy per distortion
family. Real pretrained weights (``make weights``); nothing is attacked.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import pandas as pd
import torch

from attackpsm.data.base import collate
from attackpsm.data.synthetic import VARIANTS, SyntheticTriplets
from attackpsm.images import quantize
from attackpsm.protocol.twoafc import agreement, human_agrees

# Table 1, "Accuracy (%) on subset of BAPPS (12227 samples)"
PAPER_ACCURACY = {
    "l2": 79.7,
    "ssim": 80.8,
    "lpips_alex": 92.4,
    "lpips_vgg": 89.8,
    "dists": 91.3,
}
# Table 3, "Similarity Diff. abs(s_0 - s_1)": (✓, ✗)
PAPER_MARGIN = {
    "l2": (0.036, 0.025),
    "ssim": (0.114, 0.054),
    "lpips_alex": (0.169, 0.024),
    "lpips_vgg": (0.174, 0.037),
    "dists": (0.103, 0.022),
}
METRICS = tuple(PAPER_ACCURACY)
# what "behaves like BAPPS" means here: ✓ margin within ±30% of Table 3, accuracy within
# ±8 points of Table 1
MARGIN_TOLERANCE = 0.30
ACCURACY_TOLERANCE = 8.0


def build_metric(name: str):
    """One of :data:`METRICS` composed from ``conf/metric/<name>.yaml``, as a run builds it
    (real pretrained weights)."""
    from attackpsm.config import build, compose_option

    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid: {sorted(METRICS)}")
    return build(compose_option("metric", name).metric)


def load(data: SyntheticTriplets, quantized: bool = True):
    """The whole set as one batch, rounded to 8 bits unless ``quantized`` is False."""
    batch = collate([data[i] for i in range(len(data))])
    if batch.errors:
        raise RuntimeError(f"synthetic triplets failed to load: {batch.errors[:3]}")
    if quantized:
        batch.ref, batch.p0, batch.p1 = (quantize(t) for t in (batch.ref, batch.p0, batch.p1))
    return batch


def score(metric, batch, chunk: int = 64) -> pd.DataFrame:
    """Per triplet: ``s0``, ``s1``, the margin and whether the metric agrees with the label."""
    d0, d1 = [], []
    with torch.no_grad():
        for start in range(0, len(batch), chunk):
            sl = slice(start, start + chunk)
            prepared = metric.prepare(batch.ref[sl])
            d0.append(metric.score(prepared, batch.p0[sl]))
            d1.append(metric.score(prepared, batch.p1[sl]))
    d0, d1 = torch.cat(d0), torch.cat(d1)
    return pd.DataFrame(
        {
            "subset": batch.subset,
            "s0": d0.numpy(),
            "s1": d1.numpy(),
            "margin": (d0 - d1).abs().numpy(),
            # ✓/✗ and accuracy with the package's one tie rule (attackpsm.protocol.twoafc)
            "human_agrees": human_agrees(d0, d1, batch.judge).to_numpy(),
            "agreement": agreement(d0, d1, batch.judge),
        }
    )


def summarize(name: str, rows: pd.DataFrame) -> dict:
    """One row of the calibration table, with the paper's values and whether each holds."""
    agrees = rows.human_agrees.astype("boolean")
    ok, bad = rows[agrees.fillna(False).to_numpy()], rows[(~agrees).fillna(False).to_numpy()]
    accuracy = 100.0 * rows.agreement.mean()
    margin_ok = ok.margin.mean() if len(ok) else math.nan
    margin_bad = bad.margin.mean() if len(bad) else math.nan
    paper_ok, paper_bad = PAPER_MARGIN[name]
    return {
        "metric": name,
        "accuracy": accuracy,
        "paper_accuracy": PAPER_ACCURACY[name],
        "accuracy_holds": abs(accuracy - PAPER_ACCURACY[name]) <= ACCURACY_TOLERANCE,
        "n_ok": len(ok),
        "n_bad": len(bad),
        "margin_ok": margin_ok,
        "paper_margin_ok": paper_ok,
        "margin_ok_holds": abs(margin_ok / paper_ok - 1.0) <= MARGIN_TOLERANCE,
        "margin_bad": margin_bad,
        "paper_margin_bad": paper_bad,
    }


def markdown(table: pd.DataFrame) -> str:
    """The calibration table in the layout of docs/research.md, "Calibration of the synthetic set"."""
    head = (
        "| metric | accuracy | paper (Table 1, subset) | ✓ / ✗ | ✓ mean abs(s0 - s1) "
        "| paper ✓ (Table 3) | ✗ mean abs(s0 - s1) | paper ✗ |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in table.itertuples():
        acc_mark = "" if r.accuracy_holds else " (off)"
        margin_mark = "" if r.margin_ok_holds else " (off)"
        bad = "–" if math.isnan(r.margin_bad) else f"{r.margin_bad:.3f}"
        lines.append(
            f"| {r.metric} | {r.accuracy:.1f}%{acc_mark} | {r.paper_accuracy:.1f}% "
            f"| {r.n_ok} / {r.n_bad} | {r.margin_ok:.3f}{margin_mark} | {r.paper_margin_ok:.3f} "
            f"| {bad} | {r.paper_margin_bad:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attackpsm calibrate",
        description="Synthetic set vs BAPPS: clean accuracy (Table 1) and margins (Table 3).",
    )
    parser.add_argument("--num-triplets", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="calibrated", choices=VARIANTS)
    parser.add_argument("--families", nargs="*", default=None)
    parser.add_argument("--metrics", nargs="*", default=list(METRICS), choices=METRICS)
    parser.add_argument("--no-quantize", action="store_true", help="skip the 8-bit rounding")
    parser.add_argument("--by-family", action="store_true", help="accuracy per family too")
    args = parser.parse_args(argv)

    data = SyntheticTriplets(
        size=args.size,
        num_triplets=args.num_triplets,
        seed=args.seed,
        families=args.families,
        variant=args.variant,
    )
    batch = load(data, quantized=not args.no_quantize)
    summaries, per_family = [], {}
    from tqdm.auto import tqdm

    for name in tqdm(args.metrics, desc="calibrate", unit="metric", leave=False):
        rows = score(build_metric(name), batch)
        summaries.append(summarize(name, rows))
        per_family[name] = rows.groupby("subset").human_agrees.mean() * 100.0
    table = pd.DataFrame(summaries)
    print(
        f"synthetic ({args.variant}), {len(data)} triplets at {args.size}x{args.size}, "
        f"seed {args.seed}, {'8-bit' if not args.no_quantize else 'float'} images"
    )
    print(markdown(table))
    if args.by_family:
        print("\naccuracy (%) per family")
        print(pd.DataFrame(per_family).round(1).to_string())
    holds = bool(table.accuracy_holds.all() and table.margin_ok_holds.all())
    print(
        f"\nwithin ±{MARGIN_TOLERANCE:.0%} of Table 3 (✓) and ±{ACCURACY_TOLERANCE:.0f} points "
        f"of Table 1 for every metric: {'yes' if holds else 'no'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
