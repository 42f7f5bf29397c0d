"""``python -m attackpsm.dashboard``: a saved W&B workspace for a project or one sweep.

The workspace shows what the runs log (:mod:`attackpsm.loggers`): the flip rate by
metric × attack × resolution (Table 2's headline, with its ✓/✗ rows and per subset), the
robustness curves (flip rate against the budget ε, and the report's flip-rate-vs-ε figures
of the aggregate runs), the live progress of every shard, the histograms and the example
images. It is described once, as a plain specification (:func:`specification`), and built
with the ``wandb-workspaces`` package (``pip install 'attackpsm[dashboard]'``).

Without a connection to W&B the specification is written to a JSON file, applied later
from a machine that has one::

    python -m attackpsm.dashboard --entity E --project P --sweep multirun/2026-12-04/10-00-00
    # offline: writes dashboard.json, then elsewhere:
    python -m attackpsm.dashboard --apply dashboard.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import yaml

HEADLINE = ("flip_rate", "flip_rate_saved", "rmse_flipped_mean", "accuracy")
LIVE = (
    "flip_rate",
    "flip_rate_agree",
    "flip_rate_disagree",
    "flip_rate_saved",
    "triplets_per_s",
    "iterations_mean",
    "queries_mean",
    "skipped",
    "gpu_memory_gib",
)
# config keys of every shard's run (the run's Hydra config) and of the aggregate runs
GROUP_BY = ("metric.name", "attack.name", "resolution.size")


def sweep_runs(path: str | Path) -> list[dict[str, Any]]:
    """Metric, attack, resolution, W&B group and subsets of each run folder below ``path``
    (a results directory or a Hydra sweep directory, as ``python -m attackpsm.report`` reads)."""
    from attackpsm.report.load import discover

    out = []
    for run_dir in discover(path):
        identity = yaml.safe_load((run_dir / "identity.yaml").read_text())
        subsets: list[str] = []
        for name in (
            "results.parquet",
            *sorted(p.name for p in run_dir.glob("shard-*-of-*.parquet")),
        ):
            f = run_dir / name
            if f.exists() and not name.endswith(".errors.parquet"):
                subsets += pd.read_parquet(f, columns=["subset"])["subset"].astype(str).tolist()
        out.append(
            {
                # the runner's W&B group: the run folder relative to the results directory
                "group": "/".join(run_dir.parts[-4:]),
                "metric": identity["metric"]["name"],
                "attack": identity["attack"]["name"],
                "resolution": identity.get("resolution"),
                "eps": identity["attack"].get("eps"),
                "subsets": sorted(set(subsets)),
            }
        )
    return out


def _panel(kind: str, title: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "title": title, **fields}


def specification(
    entity: str, project: str, sweep: str | Path | None = None, name: str | None = None
) -> dict[str, Any]:
    """The workspace as plain data (JSON-able): sections of panels, the runs it shows.

    With ``sweep``, the workspace shows only that sweep's runs (their W&B groups) and a
    per-subset section for the subsets its results hold.
    """
    runs = sweep_runs(sweep) if sweep is not None else []
    subsets = sorted({s for r in runs for s in r["subsets"]})
    headline = [
        _panel(
            "bar",
            f"{key} by metric × attack × resolution",
            metrics=[key, f"{key}/agree", f"{key}/disagree"] if key != "accuracy" else [key],
            groupby=list(GROUP_BY),
        )
        for key in HEADLINE
    ]
    headline.append(
        _panel(
            "parallel",
            "metric → attack → resolution → flip rate",
            columns=[f"config:{k}" for k in GROUP_BY]
            + ["summary:flip_rate", "summary:flip_rate_saved"],
        )
    )
    sections = [
        {"name": "Flip rate by metric × attack × resolution", "panels": headline},
        {
            "name": "Robustness curves",
            "panels": [
                _panel(
                    "scatter",
                    "flip rate vs ε (one point per run)",
                    x="config:attack.eps",
                    y="summary:flip_rate",
                ),
                _panel(
                    "scatter",
                    "flip rate vs resolution",
                    x="config:resolution.size",
                    y="summary:flip_rate",
                ),
                _panel(
                    "media",
                    "report figures: flip rate vs ε, perturbation sizes (aggregate runs)",
                    keys=["figures/*"],
                ),
            ],
        },
        {
            "name": "Live progress (x: triplets done)",
            "panels": [
                _panel("line", f"progress/{key}", x="progress/triplets", y=[f"progress/{key}"])
                for key in LIVE
            ],
        },
        {
            "name": "Distributions",
            "panels": [
                _panel("line", f"histogram of {key}", x="Step", y=[f"dist/{key}"])
                for key in ("rmse", "linf", "margin", "iterations", "queries", "min_eps")
            ],
        },
        {
            "name": "Example images",
            "panels": [
                _panel("media", "flipped, metric agrees with humans (✓)", keys=["examples/agree"]),
                _panel(
                    "media", "flipped, metric disagrees with humans (✗)", keys=["examples/disagree"]
                ),
            ],
        },
    ]
    if subsets:
        sections.append(
            {
                "name": "Per subset",
                "panels": [
                    _panel(
                        "bar",
                        f"{key} per subset",
                        metrics=[f"{key}/{s}" for s in subsets],
                        groupby=list(GROUP_BY),
                    )
                    for key in ("flip_rate", "accuracy")
                ],
            }
        )
    return {
        "entity": entity,
        "project": project,
        "name": name or (f"attackpsm sweep {Path(sweep).name}" if sweep else "attackpsm"),
        "groups": sorted({r["group"] for r in runs}),
        "groupby": list(GROUP_BY),
        "runs": runs,
        "sections": sections,
    }


# --- wandb-workspaces -------------------------------------------------------------------------


def _field(name: str):
    import wandb_workspaces.reports.v2 as wr

    kind, _, key = name.partition(":")
    if not key:
        return name
    return wr.Config(key) if kind == "config" else wr.SummaryMetric(key)


def build_workspace(spec: dict[str, Any]):
    """The ``wandb_workspaces`` Workspace of a specification (nothing is sent)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def panel(p: dict[str, Any]):
        if p["type"] == "bar":
            return wr.BarPlot(
                title=p["title"], metrics=p["metrics"], groupby=wr.Config(p["groupby"][0])
            )
        if p["type"] == "parallel":
            return wr.ParallelCoordinatesPlot(
                title=p["title"],
                columns=[wr.ParallelCoordinatesPlotColumn(metric=_field(c)) for c in p["columns"]],
            )
        if p["type"] == "scatter":
            return wr.ScatterPlot(title=p["title"], x=_field(p["x"]), y=_field(p["y"]))
        if p["type"] == "line":
            return wr.LinePlot(title=p["title"], x=p["x"], y=p["y"])
        if p["type"] == "media":
            return wr.MediaBrowser(title=p["title"], media_keys=p["keys"])
        raise ValueError(
            f"unknown panel type {p['type']!r}; valid: bar, parallel, scatter, line, media"
        )

    filters = [ws.Metric("Group").isin(spec["groups"])] if spec["groups"] else ""
    return ws.Workspace(
        entity=spec["entity"],
        project=spec["project"],
        name=spec["name"],
        sections=[
            ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"]], is_open=True)
            for s in spec["sections"]
        ],
        runset_settings=ws.RunsetSettings(
            filters=filters, groupby=[ws.Config(k) for k in spec["groupby"]]
        ),
    )


def reachable(timeout: float = 3.0) -> bool:
    """Whether the W&B server (``WANDB_BASE_URL``, default api.wandb.ai) answers on its port."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def apply(spec: dict[str, Any]) -> str:
    """Save the workspace on W&B; returns its URL."""
    workspace = build_workspace(spec)
    workspace.save()
    return str(workspace.url)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--entity", help="W&B entity (user or team)")
    p.add_argument("--project", default="attackpsm", help="W&B project (default: attackpsm)")
    p.add_argument("--sweep", type=Path, help="a sweep or results directory: show only its runs")
    p.add_argument("--name", help="workspace name")
    p.add_argument("--out", type=Path, default=Path("dashboard.json"), help="specification file")
    p.add_argument("--offline", action="store_true", help="only write the specification file")
    p.add_argument("--apply", type=Path, metavar="SPEC", help="save a written specification on W&B")
    args = p.parse_args(argv)

    if args.apply:
        spec = json.loads(args.apply.read_text())
    else:
        if not args.entity:
            p.error("--entity is required (or --apply SPEC)")
        spec = specification(args.entity, args.project, args.sweep, args.name)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(spec, indent=1, ensure_ascii=False))
        print(
            f"workspace specification: {args.out} ({sum(len(s['panels']) for s in spec['sections'])} panels, {len(spec['groups'])} run groups)"
        )
    if args.offline or not reachable():
        if not args.offline:
            print("W&B is not reachable from here: nothing was saved on W&B.")
        print(
            "Apply it later from a machine with access (after `wandb sync` of the offline runs):\n"
            f"  python -m attackpsm.dashboard --apply {args.apply or args.out}"
        )
        return 0
    try:
        url = apply(spec)
    except ImportError:
        print(
            "the wandb-workspaces package is missing: pip install 'attackpsm[dashboard]'",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        print(f"saving the workspace failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            f"the specification is in {args.apply or args.out}; retry with --apply", file=sys.stderr
        )
        return 1
    print(f"workspace saved: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
