"""The gradient-masking diagnostics in the leaderboard: reports of ``python -m attackpsm
diagnose`` (:mod:`attackpsm.commands.diagnose`) read back, summarised per card and tabled
below ``leaderboard.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attackpsm.report.tables.format import fmt_cell
from attackpsm.storage.records import load_mapping


def read_diagnostics(results: str | Path) -> list[dict[str, Any]]:
    """The reports of ``python -m attackpsm diagnose`` below ``<results>/diagnostics``."""
    folder = Path(results) / "diagnostics"
    return (
        [load_mapping(p) for p in sorted(folder.rglob("*.json"))]  # data only
        if folder.is_dir()
        else []
    )


def diagnostics_for(
    e: dict[str, Any], metric_hash: str, reports: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The diagnostics of a leaderboard entry's metric config (``metric_hash``:
    :func:`attackpsm.report.cards.config_hash`) on its dataset and resolution, summarised for
    its card; ``None`` where that config was not diagnosed."""
    for rep in reports:
        if (
            rep.get("metric_config_hash") == metric_hash
            and rep.get("dataset") == e["dataset"]
            and rep.get("resolution") == e["resolution"]
        ):
            return {
                "passed": bool(rep["passed"]),
                "flags": list(rep["flags"]),
                "checks": {c["name"]: c["status"] for c in rep["checks"]},
                "triplets": rep.get("triplets_agree"),
                "date": rep.get("date"),
            }
    return None


def diagnostics_markdown(reports: list[dict[str, Any]]) -> str:
    """The gradient-masking diagnostics section: one row per diagnosed metric config."""
    if not reports:
        return ""
    names = ("gradient", "unbounded", "monotone", "blackbox", "randomness")
    lines = [
        "## Gradient-masking diagnostics (python -m attackpsm diagnose)",
        "",
        "| data | metric | config | " + " | ".join(names) + " | cos(∇, FD) | unbounded flip % "
        "| Square-only flips | verdict |",
        "|---|---|---|" + "---|" * len(names) + "---:|---:|---:|---|",
    ]
    for rep in sorted(reports, key=lambda r: (r["dataset"], r["resolution"], r["metric"])):
        checks = {c["name"]: c for c in rep["checks"]}

        def num(check: str, key: str, checks=checks) -> Any:
            return checks.get(check, {}).get("numbers", {}).get(key)

        status = [checks[n]["status"] if n in checks else "–" for n in names]
        verdict = "passed" if rep["passed"] else "FLAGGED: " + ", ".join(rep["flags"])
        lines.append(
            f"| {rep['dataset']}·{rep['resolution']} | {rep['metric']} | "
            f"{rep['metric_config_hash']} | " + " | ".join(status) + f" | "
            f"{fmt_cell(num('gradient', 'median_cosine'))} | "
            f"{fmt_cell(num('unbounded', 'flip_rate'), pct=True)} | "
            f"{fmt_cell(num('blackbox', 'square_only'))} | {verdict} |"
        )
    return "\n".join(["", *lines, ""])
