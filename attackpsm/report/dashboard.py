"""``python -m attackpsm dashboard``: a saved W&B workspace for a project or one sweep.

The workspace answers "which metric is most robust at which ε" on its first screen, then
shows what the runs log (:mod:`attackpsm.job.loggers`):

1. **Robustness**: the fraction of ✓ triplets flipped against ε, one curve per metric on
   one panel (the sweep run's ``sweep/curves/eps`` table,
   :func:`attackpsm.cluster.aggregate.log_sweep`; without ``--sweep``, every run's ``curves/eps``), the leaderboard table (metric × attack ×
   ε: flip rate with its 95% interval, RMSE of the flips, median minimal ε and certified
   radius where measured, ranked), and the curves against iterations and queries;
2. live progress of every shard; 3. histograms; 4. example images; 5. the headline numbers
   by metric × attack × resolution; 6. per subset.

Only complete runs are shown unless ``--include-partial``: aggregate runs, single-shard
runs once finished and sweep runs (config ``complete``). The workspace is described once,
as a plain specification (:func:`specification`), and built with the ``wandb-workspaces``
package (``pip install 'attackpsm[dashboard]'``).

The specification is written inside the results (or sweep) directory; without a
connection to W&B it is applied later, after ``wandb sync`` of the offline runs, from a
machine that has one (the entity, unless given, is W&B's default for the logged-in user)::

    python -m attackpsm dashboard --sweep logs/multiruns/2026-12-04_10-00-00
    # writes logs/multiruns/2026-12-04_10-00-00/dashboard.json, then elsewhere:
    python -m attackpsm dashboard --apply logs/multiruns/2026-12-04_10-00-00/dashboard.json
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from attackpsm.job.loggers import CURVE_TITLES, sweep_group
from attackpsm.summary.curves import CURVE
from attackpsm.summary.headline import DISTRIBUTIONS

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
    (a results directory or a Hydra sweep directory, as ``python -m attackpsm report`` reads)."""
    from attackpsm.report.load import discover
    from attackpsm.storage import read_identity

    out = []
    for run_dir in discover(path):
        identity = read_identity(run_dir)  # plain data within limits, or an error naming it
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


def _curve_panel(table: str, x: str) -> dict[str, Any]:
    """A table logged with W&B's line-plot preset, one line per ``curve`` (the metric)."""
    return _panel(
        "curve",
        f"{CURVE_TITLES[x]} (one curve per metric)",
        table=f"{table}_table",
        x=x,
        y="flip_rate",
        stroke=CURVE,
    )


def _robustness_panels(sweep: bool) -> list[dict[str, Any]]:
    """The curves of flip rate against ε, iterations and queries, and the ranking table: a
    sweep's leaderboard, or per project the runs' Table 2."""
    prefix = "sweep/" if sweep else ""
    table = (
        _panel(
            "table",
            "leaderboard: metric × attack × ε (✓ triplets; rank 1 = most robust)",
            table="sweep/leaderboard",
        )
        if sweep  # the leaderboard is a sweep's; per project, the runs' Table 2
        else _panel("table", "Table 2 of every run (✓ / ✗ rows)", table="summary")
    )
    return [
        _curve_panel(f"{prefix}curves/eps", "eps"),
        table,
        _curve_panel(f"{prefix}curves/iterations", "iterations"),
        _curve_panel(f"{prefix}curves/queries", "queries"),
    ]


def _headline_panels() -> list[dict[str, Any]]:
    """Bars of the headline numbers, the parallel coordinates and the report's figures."""
    headline = [
        _panel(
            "bar",
            f"{key} by metric × attack × resolution",
            metrics=[key, f"{key}/agree", f"{key}/disagree"] if key != "accuracy" else [key],
            groupby=list(GROUP_BY),
        )
        for key in HEADLINE
    ]
    return [
        *headline,
        _panel(
            "parallel",
            "metric → attack → resolution → ε → flip rate",
            columns=[f"config:{k}" for k in GROUP_BY]
            + ["config:eps", "summary:flip_rate", "summary:flip_rate_saved"],
        ),
        _panel(
            "media",
            "report figures: flip rate vs ε, perturbation sizes (aggregate runs)",
            keys=["figures/*"],
        ),
    ]


def _sections(sweep: bool, subsets: list[str]) -> list[dict[str, Any]]:
    """The workspace's sections, in order; a per-subset one for the subsets the runs hold."""
    sections = [
        {
            "name": "Robustness: which metric flips least at which ε",
            "panels": _robustness_panels(sweep),
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
                for key in DISTRIBUTIONS
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
        {"name": "Flip rate by metric × attack × resolution", "panels": _headline_panels()},
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
    return sections


def specification(
    entity: str | None = None,
    project: str = "attackpsm",
    sweep: str | Path | None = None,
    name: str | None = None,
    include_partial: bool = False,
) -> dict[str, Any]:
    """The workspace as plain data (JSON-able): sections of panels, the runs it shows.

    With ``sweep``, the workspace shows only that sweep's runs (their W&B groups and the
    sweep run's), its curves and leaderboard, and a per-subset section for the subsets its
    results hold. ``entity`` ``None``: W&B's default entity when the workspace is saved.
    """
    runs = sweep_runs(sweep) if sweep is not None else []
    subsets = sorted({s for r in runs for s in r["subsets"]})
    groups = {r["group"] for r in runs}
    if runs:  # the sweep run, named by the runs it sums up
        groups.add(sweep_group([r["group"] for r in runs]))
    return {
        "entity": entity,
        "project": project,
        "name": name or (f"attackpsm sweep {Path(sweep).name}" if sweep else "attackpsm"),
        "groups": sorted(groups),
        "filters": {} if include_partial else {"complete": True},
        "groupby": list(GROUP_BY),
        "runs": runs,
        "sections": _sections(sweep is not None, subsets),
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
        if p["type"] == "curve":  # the line-plot preset the runs logged the table with
            return wr.CustomChart(
                query={"summaryTable": {"tableKey": p["table"]}},
                chart_name="wandb/line/v0",
                chart_fields={"x": p["x"], "y": p["y"], "stroke": p["stroke"]},
                chart_strings={"title": p["title"]},
            )
        if p["type"] == "table":
            return wr.WeavePanelSummaryTable(table_name=p["table"])
        raise ValueError(
            f"unknown panel type {p['type']!r}; valid: bar, parallel, scatter, line, media, "
            "curve, table"
        )

    filters = [ws.Metric("Group").isin(spec["groups"])] if spec["groups"] else []
    filters += [ws.Config(k) == v for k, v in spec.get("filters", {}).items()]
    return ws.Workspace(
        entity=spec["entity"] or default_entity(),
        project=spec["project"],
        name=spec["name"],
        sections=[
            ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"]], is_open=True)
            for s in spec["sections"]
        ],
        runset_settings=ws.RunsetSettings(
            filters=filters or "", groupby=[ws.Config(k) for k in spec["groupby"]]
        ),
    )


def default_entity() -> str:
    """W&B's own default entity: ``WANDB_ENTITY``, the settings, else the logged-in user's."""
    import wandb

    entity = os.environ.get("WANDB_ENTITY") or wandb.setup().settings.entity
    if entity:
        return entity
    entity = wandb.Api().default_entity
    if not entity:
        raise ValueError("no W&B entity: pass --entity, set WANDB_ENTITY or run `wandb login`")
    return entity


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
