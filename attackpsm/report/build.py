"""One call from results to a report: tables, figures, example grids, W&B.

Output layout (``out``, by default ``<results>/report``)::

    report.md                  every table and figure, in the paper's order
    runs.csv                   the runs the report was built from
    tables/<name>.md, .csv     one file pair per table (see attackpsm.report.tables)
    figures/<name>.png, .svg   accuracy vs robustness, flip rate vs ε, histograms, examples
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from attackpsm.report import examples as ex
from attackpsm.report import figures
from attackpsm.report.load import Run, load_runs, runs_overview
from attackpsm.report.tables import Table, build_tables, markdown_table


@dataclass
class Report:
    """What :func:`build_report` made: the runs, the tables, the figure files."""

    source: Path
    out: Path
    runs: list[Run]
    tables: list[Table]
    figures: dict[str, list[Path]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


def make_figures(runs: list[Run], tables: list[Table]) -> dict:
    """All data figures (no example grids) as ``{file stem: matplotlib figure}``."""
    by_name = {t.name: t for t in tables}
    figs = {}
    acc, attacks, transfer = (
        by_name.get(n) for n in ("table1_accuracy", "attacks_all_runs", "table5_transfer")
    )
    if acc is not None and (attacks is not None or transfer is not None):
        figs.update(
            figures.accuracy_vs_robustness(
                acc.data, attacks.data if attacks else None, transfer.data if transfer else None
            )
        )
    figs.update(figures.flip_rate_vs_eps(runs))
    figs.update(figures.perturbation_histograms(runs))
    return figs


def example_runs(
    runs: list[Run], metrics: list[str] | None = None, attacks: list[str] | None = None
) -> list[Run]:
    """Attack runs with at least one triplet, optionally filtered by metric / attack name."""
    return [
        r
        for r in runs
        if r.family != "none"
        and not r.is_transfer
        and len(r.results)
        and (not metrics or r.metric in metrics)
        and (not attacks or r.attack in attacks)
    ]


def build_report(
    source: str | Path,
    out: str | Path | None = None,
    examples: int = 3,
    example_metrics: list[str] | None = None,
    example_attacks: list[str] | None = None,
    device: str = "cpu",
    dataset_overrides: dict | None = None,
    wandb_mode: str | None = "offline",
    wandb_dir: str | Path | None = None,
    progress: bool = True,
) -> Report:
    """Build the report of every run below ``source`` (results directory or sweep directory).

    Args:
        source: a results directory, one run folder, or a Hydra sweep directory.
        out: output folder (default ``<source>/report``).
        examples: triplets per example grid (0: no grids). Grids re-run the attack on those
            triplets (see :mod:`attackpsm.report.examples`); a run whose data or weights
            are not on this machine gets a note instead of a grid.
        example_metrics: restrict the grids to these metric names.
        example_attacks: restrict the grids to these attack names.
        device: where example attacks run.
        dataset_overrides: dataset parameters for the grids, e.g. ``{"root": ...}``.
        wandb_mode: ``offline`` / ``online`` / ``disabled``, or ``None`` for no W&B run.
        wandb_dir: where the W&B run folder goes (default ``$ATTACKPSM_LOGS`` or ``logs``).
        progress: say each stage on stderr, with a progress bar over the example grids
            (each re-runs an attack: the longest stage).
    """
    from tqdm.auto import tqdm

    def say(message: str) -> None:
        if progress:
            tqdm.write(f"report: {message}", file=sys.stderr)

    source = Path(source)
    out = Path(out) if out is not None else source / "report"
    runs = load_runs(source, progress=progress)
    if not runs:
        raise FileNotFoundError(
            f"no runs with results below {source} (expected <dataset>/<metric>/<attack>/res*/identity.yaml)"
        )
    say(f"{len(runs)} runs below {source.absolute()}; tables and figures")
    report = Report(source=source, out=out, runs=runs, tables=build_tables(runs))
    _write_tables_and_figures(report)
    if examples > 0:
        chosen = list(example_runs(runs, example_metrics, example_attacks))
        say(f"example grids of {len(chosen)} runs ({examples} triplets each, attacked again)")
        for run in tqdm(chosen, desc="example grids", unit="grid", disable=not progress):
            _write_example_grid(report, run, examples, device, dataset_overrides)

    (out / "report.md").write_text(render_index(report), encoding="utf-8")
    say(f"written to {out.absolute()}")
    if wandb_mode:
        log_to_wandb(report, wandb_mode, wandb_dir)
    return report


def _write_tables_and_figures(report: Report) -> None:
    """``runs.csv``, every table as CSV and markdown, every figure (PNG and SVG)."""
    out = report.out
    (out / "tables").mkdir(parents=True, exist_ok=True)
    runs_overview(report.runs).to_csv(out / "runs.csv", index=False)
    for t in report.tables:
        t.data.to_csv(out / "tables" / f"{t.name}.csv", index=False)
        (out / "tables" / f"{t.name}.md").write_text(t.markdown, encoding="utf-8")
    for stem, fig in make_figures(report.runs, report.tables).items():
        report.figures[stem] = figures.save_figure(fig, out / "figures", stem)


def _write_example_grid(
    report: Report, run: Run, n: int, device: str, dataset_overrides: dict | None
) -> None:
    """The example grid of one run (its attack re-run on ``n`` triplets), or a note in the
    report where the run's data or weights are not on this machine."""
    stem = figures.slug(
        "examples",
        run.dataset,
        run.dataset_variant,
        run.resolution_label,
        run.metric,
        run.attack,
        run.variant,
    )
    try:
        shown = ex.regenerate(run, n=n, device=device, dataset_overrides=dataset_overrides)
    except Exception as exc:  # data or weights not on this machine: note it, go on
        note = f"no example grid for {run.run_dir}: {type(exc).__name__}: {exc}"
        warnings.warn(note, stacklevel=3)
        report.notes.append(note)
        return
    if shown:
        report.figures[stem] = figures.save_figure(
            ex.example_grid(shown, ex.grid_title(run)), report.out / "figures", stem
        )


def render_index(report: Report) -> str:
    """``report.md``: the runs, every table, every figure."""
    overview = runs_overview(report.runs).drop(columns=["run_dir"])
    parts = [
        f"# Report: {report.source}\n",
        f"Made with `python -m attackpsm report {report.source}`. CSV files with every number are in `tables/`.\n",
        "## Runs\n",
        markdown_table(overview.astype(str)),
    ]
    parts += [t.markdown for t in report.tables]
    if report.figures:
        parts.append("## Figures\n")
        for stem, paths in report.figures.items():
            png = next(p for p in paths if p.suffix == ".png")
            parts.append(f"### {stem}\n\n![{stem}]({png.relative_to(report.out).as_posix()})\n")
    if report.notes:
        parts.append("## Notes\n")
        parts += [f"- {n}" for n in report.notes]
    return "\n".join(parts) + "\n"


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable pandas columns (``Int64``, ``boolean``) as objects with ``None`` for W&B."""
    out = frame.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.api.extensions.ExtensionDtype):
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


def log_to_wandb(
    report: Report, mode: str = "offline", log_dir: str | Path | None = None
) -> str | None:
    """Log every table and figure to one W&B run (``job_type=report``); returns its folder.

    Guarded like every W&B call of the package: a failure is a warning, never an error.
    """
    from attackpsm.job.loggers import WandbLogger

    log_dir = Path(log_dir or os.environ.get("ATTACKPSM_LOGS", "logs"))
    logger = WandbLogger(
        mode=mode,
        dir=str(log_dir),
        group="report",
        job_type="report",
        name=f"report/{report.source.resolve().name}",
    )
    if logger.run is None:
        return None
    try:
        logger.log_summary(
            {"runs": len(report.runs), "tables": len(report.tables), "figures": len(report.figures)}
        )
        for t in report.tables:
            logger.log_table(f"tables/{t.name}", _plain(t.data))
        try:
            import wandb

            logger.run.log(
                {
                    f"figures/{stem}": wandb.Image(
                        str(next(p for p in paths if p.suffix == ".png"))
                    )
                    for stem, paths in report.figures.items()
                }
            )
        except Exception as exc:
            warnings.warn(f"W&B figures failed: {exc}", stacklevel=2)
        files = [report.out / "report.md", report.out / "runs.csv"]
        files += sorted((report.out / "tables").glob("*"))
        files += [p for paths in report.figures.values() for p in paths if p.suffix == ".svg"]
        logger.log_files(files)
        run_dir = getattr(logger.run, "dir", None)
        return str(Path(run_dir).parent) if run_dir else None
    finally:
        logger.finish()
