"""Golden files: every table the report writes, byte for byte, from a fixed set of runs.

The runs are hand-written per-triplet tables (``results.parquet`` + ``identity.yaml``) in the
layout the engine writes, covering every table of the report: BAPPS 64x64 in the paper's
settings (Tables 1-4, 10-12 with the published numbers next to them), PieAPP at two
resolutions and stAdv (Tables 6-8), transferred images from two crafted columns (Table 5),
and a synthetic dataset with unlabelled triplets, tied votes and metric ties (``n/a`` rows).
Every value is a small dyadic fraction (exact in binary floating point, float32 where the
engine writes float32) and none is computed with a transcendental function, so the CSVs'
full-precision numbers are the same on every platform.

Besides the report's tables, each run's own summary (:func:`attackpsm.summary.results.summarize`,
Table-2 layout) and Table 1 (:func:`attackpsm.summary.accuracy.clean_accuracy`) are compared, since
they come from the same statistics.

To accept a deliberate change of a table: ``ATTACKPSM_UPDATE_GOLDEN=1 pytest
tests/test_report_golden.py`` rewrites ``tests/golden/``; review the diff before committing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from attackpsm.protocol.stats import STAT_COLUMNS
from attackpsm.protocol.twoafc import human_agrees
from attackpsm.report.load import load_runs, runs_overview
from attackpsm.report.tables import attack_rows, build_tables
from attackpsm.summary.accuracy import clean_accuracy, clean_accuracy_markdown
from attackpsm.summary.results import BASE_COLUMNS, summarize, summary_markdown
from tests.conftest import write_finished_run
from tests.test_report import (
    BAPPS,
    PGD,
    SAVED,
    TRANSFER,
)  # the paper's settings, as the report tests use them

GOLDEN = Path(__file__).parent / "golden" / "report"
UPDATE = os.environ.get("ATTACKPSM_UPDATE_GOLDEN") == "1"
ROOT_TOKEN = "<results>"

PIEAPP = {
    "_target_": "attackpsm.data.pieapp.PieAPP",
    "name": "pieapp",
    "root": "data/pieapp",
    "split": "test",
    "threshold": 0.85,
}
SYNTHETIC = {
    "_target_": "attackpsm.data.synthetic.Synthetic",
    "name": "synthetic",
    "num_triplets": 24,
    "seed": 0,
}
NONE = {"_target_": "attackpsm.attacks.none.NoAttack", "name": "none"}
FGSM = {"_target_": "attackpsm.attacks.fgsm.FGSM", "name": "fgsm", "max_eps": 0.05}
ONEPIXEL = {"_target_": "attackpsm.attacks.onepixel.OnePixel", "name": "onepixel", "pixels": 1}
REVERSE = {**PGD, "_target_": "attackpsm.attacks.pgd.ReversePGD", "name": "pgd_reverse"}
STADV = {
    "_target_": "attackpsm.attacks.stadv.StAdv",
    "name": "stadv",
    "alpha": 50.0,
    "beta": 0.05,
    "variant": "paper",
    "max_iterations": None,
}


def per_triplet(
    n: int,
    k: int,
    *,
    judges: tuple[float, ...] = (1.0, 0.0, 1.0, 1.0, 0.0),
    flip_every: int | None = 3,
    subsets: tuple[str, ...] = ("cnn", "traditional"),
    ties: tuple[int, ...] = (),
    **columns: np.ndarray,
) -> pd.DataFrame:
    """``n`` triplets in the engine's per-triplet layout, from index arithmetic only.

    ``k`` shifts every pattern so that runs differ; row ``i`` flips when
    ``(i + k) % flip_every == 0`` (never without ``flip_every``: a clean run). Distances, scores and perturbation sizes are multiples
    of 1/1024 or 1/8 (exact in binary), one flipped PSNR is ``inf`` (an unchanged 8-bit
    image) and the rows in ``ties`` have ``d0 == d1``.
    """
    i = np.arange(n)
    j = i + k
    judge = np.array([judges[m % len(judges)] for m in j], dtype=float)
    d0 = (1 + (j * 5) % 13) / 64.0
    d1 = (1 + (j * 3) % 11) / 64.0
    d1[list(ties)] = d0[list(ties)]
    is_p1 = d0 > d1
    s_prey = np.where(is_p1, d1, d0)
    s_other = np.where(is_p1, d0, d1)
    flipped = j % flip_every == 0 if flip_every else np.zeros(n, bool)
    s_adv = np.where(flipped, s_other + 1 / 128, s_prey + 1 / 256)
    flipped_saved = flipped & (j % 5 != 0)
    rmse = 0.25 * (1 + (j * 3) % 9)
    psnr = 36.0 + 0.5 * ((j * 5) % 11)
    psnr[flipped & (j % 7 == 0)] = np.inf
    frame = pd.DataFrame(
        {
            "triplet_id": [f"t/{m:05d}" for m in i],
            "subset": [subsets[m % len(subsets)] for m in j],
            "judge": judge,
            "d0": d0,
            "d1": d1,
            "human_agrees": human_agrees(d0, d1, judge).array,
            "prey": is_p1.astype(int),
            "s_other": s_other,
            "s_prey": s_prey,
            "s_adv": s_adv,
            "flipped": flipped,
            "s_adv_saved": np.where(flipped_saved, s_adv, s_prey),
            "flipped_saved": flipped_saved,
            "iterations": np.where(flipped, 1 + (j * 7) % 28, 29),  # 30 checks: 0..29
            "linf": (1 + j % 4) / 128.0,
            "rmse_uint8": rmse,
            "psnr_uint8": psnr,
            "rmse_float": rmse - 0.125,
            "psnr_float": psnr + 0.25,
            "pct_px_gt_0.001_float": 50.0 + 2.5 * (j % 17),
            "pct_px_gt_0.01_float": 1.5 * (j % 13),
            "pct_px_gt_0.03_float": 0.125 * (j % 3),
            "pct_px_gt_0.001_uint8": 40.0 + 2.5 * (j % 11),
            "pct_px_gt_0.01_uint8": 0.5 * (j % 7),
            "pct_px_gt_0.03_uint8": np.zeros(n),
        }
    )
    # the engine's precision: scores and sizes float32 (FGSM's ε float64)
    single = ["judge", "d0", "d1", "s_other", "s_prey", "s_adv", "s_adv_saved", *STAT_COLUMNS]
    frame[single] = frame[single].astype(np.float32)
    for name, values in columns.items():
        frame[name] = values
    assert list(frame.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    return frame


def write_run(
    root: Path, dataset: dict, metric: str, attack: dict, rows: pd.DataFrame, resolution=64
) -> None:
    """A finished run folder as the engine leaves it (identity, results, errors)."""
    identity = {
        "dataset": dataset,
        "metric": {"_target_": "x", "name": metric},
        "attack": attack,
        "resolution": resolution,
        "seed": 0,
        "version": "0.1.0",
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = root / dataset["name"] / metric / attack["name"] / f"res{resolution}-{digest}"
    run_dir.mkdir(parents=True)
    (run_dir / "identity.yaml").write_text(yaml.safe_dump(identity))
    write_finished_run(run_dir, rows)


def make_runs(root: Path) -> None:
    """The fixed set of runs behind the golden files."""
    n = 40
    eps = np.where(np.arange(n) % 3 == 0, (1 + np.arange(n) % 40) / 1024.0, np.nan)
    for m, metric in enumerate(("l2", "lpips_alex")):
        write_run(root, BAPPS, metric, NONE, per_triplet(n, m, flip_every=None))
        write_run(root, BAPPS, metric, PGD, per_triplet(n, m + 1))
        write_run(root, BAPPS, metric, FGSM, per_triplet(n, m + 2, flip_every=4, eps_found=eps))
        queries = (np.arange(n) * 37 % 400).astype(float)
        write_run(root, BAPPS, metric, ONEPIXEL, per_triplet(n, m + 3, queries=queries))
    # Table 10: FGSM at PGD's budget; Table 11: PGD with another step size; Table 12
    write_run(
        root,
        BAPPS,
        "l2",
        {**FGSM, "name": "fgsm003", "max_eps": 0.03},
        per_triplet(n, 4, flip_every=5, eps_found=eps),
    )
    write_run(root, BAPPS, "l2", {**PGD, "alpha": 0.00375}, per_triplet(n, 5, flip_every=2))
    write_run(root, BAPPS, "lpips_alex", REVERSE, per_triplet(n, 6, flip_every=6))
    # Tables 6 and 8: PieAPP at two resolutions, stAdv at two α
    for res in (64, 256):
        write_run(root, PIEAPP, "lpips_alex", PGD, per_triplet(24, res, flip_every=2), res)
    for alpha in (50.0, 200.0):
        rows = per_triplet(24, int(alpha), flip_every=3)
        write_run(root, PIEAPP, "lpips_alex", {**STADV, "alpha": alpha}, rows, 256)
    # the synthetic dataset: unlabelled triplets, tied votes, metric ties -> n/a rows
    judges = (1.0, 0.0, float("nan"), 0.5, 0.75, 1.0, 0.25)
    subsets = ("blur", "noise", "jpeg")
    for attack, flip_every in ((NONE, None), (PGD, 2)):
        rows = per_triplet(
            28, 7, judges=judges, subsets=subsets, ties=(0, 5), flip_every=flip_every
        )
        write_run(root, SYNTHETIC, "ssim", attack, rows, 32)
    # Table 5: two crafted columns, evaluated on two target metrics
    for column, k in (("stadv", 0), ("pgd10", 1)):
        for metric in ("l2", "ssim"):
            rows = per_triplet(30, k + len(metric), flip_every=4 + k)
            write_run(root, {**TRANSFER, "column": column}, metric, SAVED, rows)


@pytest.fixture(scope="session")
def golden_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden") / "runs"
    make_runs(root)
    return root


def _text(value: str, root: Path) -> str:
    """Run folders are temporary: name them relative to the results directory."""
    for r in {str(root.resolve()), str(root)}:
        value = value.replace(r, ROOT_TOKEN)
    return value


def _outputs(root: Path) -> dict[str, str]:
    """Every file the report writes for its tables, plus each run's summary and Table 1."""
    runs = load_runs(root)
    out = {"runs.csv": runs_overview(runs).to_csv(index=False)}
    for t in build_tables(runs):
        out[f"{t.name}.csv"] = t.data.to_csv(index=False)
        out[f"{t.name}.md"] = t.markdown
    # each run writes its own summary.csv / table1.csv: compared as written, one per run
    summary_csv, summary_md, table1_csv, table1_md = [], [], [], []
    for r in runs:
        name = f"{r.dataset}/{r.metric}/{r.attack}/{r.resolution_label} {r.variant}".strip()
        summary = summarize(r.results, r.metric, r.attack, skipped=r.skipped)
        summary_csv.append(f"# {name}\n{summary.to_csv(index=False)}")
        summary_md.append(f"## {name}\n\n{summary_markdown(summary)}")
        if r.family == "none":
            clean = clean_accuracy(r.results, r.metric)
            table1_csv.append(f"# {name}\n{clean.to_csv(index=False)}")
            table1_md.append(f"## {name}\n\n{clean_accuracy_markdown(clean)}")
    out["run_summaries.csv"] = "\n".join(summary_csv)
    out["run_summaries.md"] = "\n".join(summary_md)
    out["run_table1.csv"] = "\n".join(table1_csv)
    out["run_table1.md"] = "\n".join(table1_md)
    return {name: _text(text, root) for name, text in out.items()}


EXPECTED_TABLES = {
    "table1_accuracy",
    "table1_accuracy_by_subset",
    "table2_attacks",
    "table3_similarity_difference",
    "table4_psnr",
    "table5_transfer",
    "table6_7_pgd_by_resolution",
    "table8_stadv",
    "table10_fgsm_vs_pgd",
    "table11_pgd_alpha",
    "table12_reverse_pgd",
    "attacks_all_runs",
}


def test_every_table_is_built(golden_runs):
    names = {t.name for t in build_tables(load_runs(golden_runs))}
    assert names == EXPECTED_TABLES
    tables = {t.name: t for t in build_tables(load_runs(golden_runs))}
    # the fixture reaches the published numbers and the n/a rows
    assert tables["table2_attacks"].data["paper_flipped"].notna().any()
    assert tables["table5_transfer"].data["paper_flipped"].notna().any()
    assert tables["table1_accuracy"].data["paper_accuracy_pct"].notna().any()
    assert (tables["attacks_all_runs"].data["agrees"] == "n/a").any()


def test_report_tables_match_golden_files(golden_runs):
    produced = _outputs(golden_runs)
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.iterdir():
            old.unlink()
        for name, text in produced.items():
            (GOLDEN / name).write_bytes(text.encode("utf-8"))
    committed = {p.name for p in GOLDEN.iterdir()}
    assert committed == set(produced), "tables added or missing; see the module docstring"
    changed = [
        name for name, text in produced.items() if (GOLDEN / name).read_bytes() != text.encode()
    ]
    assert not changed, f"tables differ from tests/golden/report: {changed}"


def test_run_summary_and_report_rows_are_the_same_numbers(golden_runs):
    """Each run's summary.md (Table-2 layout) and the report's row of that run agree."""
    runs = load_runs(golden_runs)
    report = build_tables(runs)
    rows = next(t for t in report if t.name == "attacks_all_runs").data
    shared = ["samples", "flipped", "flipped_pct", "flipped_saved", "rmse_mean", "rmse_std"]
    shared += ["psnr_mean", "psnr_std", "mean_eps", "pct_px_gt_0.001", "pct_px_gt_0.03"]
    checked = 0
    for r in runs:
        if r.family == "none" or r.is_transfer:
            continue
        summary = summarize(r.results, r.metric, r.attack).set_index("agrees")[shared]
        mine = rows[rows["run_dir"] == str(r.run_dir)].set_index("agrees")[shared]
        pd.testing.assert_frame_equal(
            summary.astype(float), mine.astype(float), check_names=False, rtol=0, atol=0
        )
        checked += 1
    assert checked == 14


def test_psnr_of_unchanged_images_gives_one_mean(tmp_path):
    """Float32 PSNRs with ``inf`` among them (flipped, yet the 8-bit image is unchanged):
    the run's summary and the report hold the same mean and spread, to the last bit."""
    rows = per_triplet(60, 0, flip_every=1)
    psnr = (30.0 + 20.0 * np.random.default_rng(0).random(60)).astype(np.float32)
    psnr[::3] = np.inf
    rows["psnr_uint8"] = psnr
    write_run(tmp_path, BAPPS, "l2", PGD, rows)
    (run,) = load_runs(tmp_path)
    summary = summarize(run.results, "l2", "pgd").set_index("agrees")
    report = attack_rows([run]).set_index("agrees")
    for col in ("psnr_mean", "psnr_std"):
        assert summary[col].astype(float).tolist() == report[col].tolist()
    assert np.isfinite(report["psnr_mean"]).all()
