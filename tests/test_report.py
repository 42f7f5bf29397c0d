"""Reports: tables from hand-built results with known counts, figures, W&B, examples, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from attackpsm.commands.report import main as report_main
from attackpsm.report import paper
from attackpsm.report.build import build_report, log_to_wandb
from attackpsm.report.load import load_runs
from attackpsm.report.tables import build_tables, fmt_flips, wilson_interval
from attackpsm.summary.results import BASE_COLUMNS
from tests.conftest import write_finished_run

TABLES_TXT = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables.txt"

BAPPS = {
    "_target_": "attackpsm.data.bapps.BAPPS",
    "name": "bapps",
    "root": "data/bapps",
    "split": "val",
    "subsets": None,
    "filter": "unanimous",
}
PGD = {
    "_target_": "attackpsm.attacks.pgd.PGD",
    "name": "pgd",
    "eps": 0.03,
    "alpha": 0.001,
    "max_iterations": 30,
    "early_stop": True,
}
# the transfer evaluation (dataset=transfer attack=saved) of stAdv images crafted on
# LPIPS(Alex) from BAPPS
TRANSFER = {
    "_target_": "attackpsm.data.transfer.TransferTriplets", "name": "transfer", "column": "stadv",
    "select": "stadv", "max_rmse": 3.0, "accurate_only": True, "source": "bapps",
    "source_overrides": [], "source_metric": "lpips_alex", "manifest": None,
}  # fmt: skip
SAVED = {
    "_target_": "attackpsm.attacks.saved.SavedAdversarial",
    "name": "saved",
    "source": TRANSFER,
}


# --- hand-built results ------------------------------------------------------------------------


def triplets(
    n_agree: int, k_agree: int, n_disagree: int, k_disagree: int, **columns
) -> pd.DataFrame:
    """Rows with known counts: ``n_agree`` ✓ rows of which the first ``k_agree`` flipped,
    then ``n_disagree`` ✗ rows of which the first ``k_disagree`` flipped.

    ✓ rows: judge 1, d0 = 0.3, d1 = 0.1 (|s0 - s1| = 0.2); ✗ rows: judge 0, d0 = 0.15,
    d1 = 0.10 (|s0 - s1| = 0.05). The metric always prefers p1, so p1 is the prey.
    """
    n = n_agree + n_disagree
    agree = np.r_[np.ones(n_agree, bool), np.zeros(n_disagree, bool)]
    flipped = np.r_[np.arange(n_agree) < k_agree, np.arange(n_disagree) < k_disagree]
    d0 = np.where(agree, 0.3, 0.15)
    d1 = np.full(n, 0.1)
    frame = pd.DataFrame(
        {
            "triplet_id": [f"cnn/{i:06d}" for i in range(n)],
            "subset": np.where(np.arange(n) % 2 == 0, "cnn", "traditional"),
            "judge": np.where(agree, 1.0, 0.0),
            "d0": d0,
            "d1": d1,
            "human_agrees": pd.array(agree, dtype="boolean"),
            "prey": np.ones(n, int),
            "s_other": d0,
            "s_prey": d1,
            "s_adv": np.where(flipped, d0 + 0.01, d1 + 0.01),
            "flipped": flipped,
            "s_adv_saved": np.where(flipped, d0 + 0.01, d1 + 0.01),
            "flipped_saved": flipped,
            "iterations": np.where(flipped, 5, 30),
            "linf": np.full(n, 0.01),
            "rmse_uint8": np.ones(n),
            "psnr_uint8": np.full(n, 48.13),
            "rmse_float": np.full(n, 0.9),
            "psnr_float": np.full(n, 49.0),
            "pct_px_gt_0.001_float": np.full(n, 80.0),
            "pct_px_gt_0.01_float": np.full(n, 10.0),
            "pct_px_gt_0.03_float": np.zeros(n),
            "pct_px_gt_0.001_uint8": np.full(n, 70.0),
            "pct_px_gt_0.01_uint8": np.full(n, 5.0),
            "pct_px_gt_0.03_uint8": np.zeros(n),
        }
    )
    for name, values in columns.items():
        frame[name] = values
    assert set(BASE_COLUMNS) <= set(frame.columns)
    return frame


def write_run(
    results_dir: Path, metric: str, attack: dict, rows: pd.DataFrame, dataset=None, resolution=64
) -> Path:
    dataset = dataset or BAPPS
    identity = {
        "dataset": dataset,
        "metric": {"_target_": "x", "name": metric},
        "attack": attack,
        "resolution": resolution,
        "seed": 0,
        "version": "0.1.0",
    }
    digest = abs(hash(json.dumps(identity, sort_keys=True))) % 10**10
    run_dir = (
        results_dir / dataset["name"] / metric / attack["name"] / f"res{resolution}-{digest:010d}"
    )
    run_dir.mkdir(parents=True)
    (run_dir / "identity.yaml").write_text(yaml.safe_dump(identity))
    write_finished_run(run_dir, rows)
    return run_dir


@pytest.fixture
def results(tmp_path) -> Path:
    """A results directory in the paper's settings (BAPPS, 64x64) with known counts."""
    root = tmp_path / "results"
    # PGD on LPIPS(Alex): ✓ 7/10 flipped, ✗ 4/5; RMSE of the flipped ✓ rows 1..7, PSNR 40..50 + one inf
    pgd = triplets(10, 7, 5, 4)
    pgd.loc[:6, "rmse_uint8"] = np.arange(1, 8, dtype=float)
    pgd.loc[:6, "psnr_uint8"] = [40.0, 42.0, 44.0, 46.0, 48.0, 50.0, np.inf]
    write_run(root, "lpips_alex", PGD, pgd)
    write_run(root, "lpips_alex", {**PGD, "alpha": 0.00375}, triplets(10, 9, 5, 5))
    write_run(root, "lpips_alex", {"_target_": "x", "name": "none"}, triplets(10, 0, 5, 0))
    # FGSM: ✓ 3/10 flipped at ε = 0.01, 0.02, 0.03
    eps = np.full(15, np.nan)
    eps[:3] = [0.01, 0.02, 0.03]
    eps[10:12] = [0.001, 0.002]
    fgsm = {"_target_": "attackpsm.attacks.fgsm.FGSM", "name": "fgsm", "max_eps": 0.05}
    write_run(root, "lpips_alex", fgsm, triplets(10, 3, 5, 2, eps_found=eps))
    # FGSM at PGD's budget (Table 10): ✓ 2/10
    write_run(
        root,
        "lpips_alex",
        {**fgsm, "name": "fgsm003", "max_eps": 0.03},
        triplets(10, 2, 5, 2, eps_found=np.where(np.arange(15) < 2, 0.02, np.nan)),
    )
    # One-pixel with its own column
    write_run(
        root,
        "lpips_alex",
        {"_target_": "x", "name": "onepixel", "pixels": 1},
        triplets(10, 8, 5, 5, queries=np.arange(15, dtype=float)),
    )
    # transfer evaluation (dataset=transfer attack=saved) of the stAdv images crafted on
    # LPIPS(Alex) from BAPPS, on L2: 16 accurate of 20 labelled, 4 of them flipped
    write_run(root, "l2", SAVED, triplets(16, 4, 4, 1), dataset=TRANSFER)
    write_run(root, "l2", SAVED, triplets(16, 6, 4, 1), dataset={**TRANSFER, "column": "pgd10"})
    return root


# --- statistics ---------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(7, 10)  # textbook value: 0.3968 to 0.8922
    assert lo == pytest.approx(0.3968, abs=1e-4)
    assert hi == pytest.approx(0.8922, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert fmt_flips(7, 70.0, 39.68, 89.22) == "7/70% [40–89]"


# --- the paper's numbers -------------------------------------------------------------------------


def test_shipped_paper_numbers():
    assert paper.lookup(2, "l2", "✓", "bapps", 64, attack="pgd") == pytest.approx(
        {
            "samples": 9750,
            "flipped": 2348,
            "flipped_pct": 24.0,
            "pct_px_gt_0.001": 84.4,
            "pct_px_gt_0.01": 56.1,
            "pct_px_gt_0.03": 0.0,
            "rmse_mean": 1.9,
            "rmse_std": 1.0,
        }
    )
    assert paper.lookup(10, "dists", "✗", attack="fgsm", max_eps=0.03)["mean_eps"] == 0.011
    assert paper.lookup(11, "ssim", "✗", attack="pgd", alpha=0.006)["flipped"] == 1858
    assert (
        paper.lookup(5, "swiniqa", "✓", attack="transfer", source="stAdv+PGD(20)")["flipped"] == 482
    )
    assert paper.lookup(7, "dists", "✓", "clic", 768, attack="pgd")["flipped"] == 1286
    assert (
        paper.lookup(8, "lpips_alex", "✓", "pieapp", 256, attack="stadv", alpha=200.0)["rmse_std"]
        == 1.3
    )
    assert paper.lookup(1, "lpips_alex", attack="none") == {"accuracy": 92.4, "afc2_full": 69.8}
    assert paper.lookup(2, "l2", "✓", attack="pgd", alpha=0.002) is None
    counts = pd.Series([r["table"] for r in paper.records()]).value_counts()
    # Table 2: 6 metrics x 2 rows x 3 attacks; Table 5: 18 metrics x 7 sources
    assert counts[2] == 36 and counts[5] == 126 and counts[12] == 2


@pytest.mark.skipif(
    not TABLES_TXT.exists(), reason="the paper's tables.txt is not next to this checkout"
)
def test_shipped_numbers_match_the_papers_tables():
    assert paper.parse_tables(TABLES_TXT.read_text()) == list(paper.records())


# --- tables -------------------------------------------------------------------------------------------


def _row(table, **keys) -> pd.Series:
    frame = table.data
    for k, v in keys.items():
        frame = frame[frame[k] == v]
    assert len(frame) == 1, frame
    return frame.iloc[0]


def test_tables_from_known_counts(results):
    runs = load_runs(results)
    assert len(runs) == 8
    assert {r.family for r in runs} == {"none", "fgsm", "pgd", "onepixel", "transfer"}
    tables = {t.name: t for t in build_tables(runs)}
    assert {
        "table1_accuracy",
        "table2_attacks",
        "table3_similarity_difference",
        "table4_psnr",
        "table5_transfer",
        "table11_pgd_alpha",
        "attacks_all_runs",
    } <= set(tables)

    # Table 1: 10 of 15 labelled samples ranked as humans did; paper: 92.4
    acc = _row(tables["table1_accuracy"], metric="lpips_alex")
    assert (acc["labelled"], acc["accurate"]) == (15, 10)
    assert acc["accuracy_pct"] == pytest.approx(100 * 10 / 15)
    assert acc["afc2_pct"] == pytest.approx(100 * 10 / 15)  # unanimous: 2AFC = accuracy
    assert acc["from_run"] == "none"
    assert acc["paper_accuracy_pct"] == 92.4

    # Table 2: PGD ✓ 7/10 with the Wilson interval; only the paper's α is in Table 2
    t2 = tables["table2_attacks"]
    pgd = _row(t2, attack="pgd", agrees="✓")
    assert (pgd["samples"], pgd["flipped"]) == (10, 7)
    assert pgd["flipped_pct"] == 70.0
    assert pgd["ci_low_pct"] == pytest.approx(39.68, abs=0.01)
    assert pgd["ci_high_pct"] == pytest.approx(89.22, abs=0.01)
    assert pgd["rmse_mean"] == pytest.approx(4.0)
    assert pgd["rmse_std"] == pytest.approx(np.std(np.arange(1, 8), ddof=1))
    assert (pgd["paper_flipped"], pgd["paper_flipped_pct"], pgd["paper_table"]) == (8806, 78.0, 2)
    assert _row(t2, attack="pgd", agrees="✗")["flipped"] == 4
    assert set(t2.data.loc[t2.data["attack"] == "pgd", "variant"]) == {"alpha=0.001"}
    fgsm = _row(t2, attack="fgsm", agrees="✓")
    assert (fgsm["flipped"], fgsm["mean_eps"], fgsm["paper_mean_eps"]) == (
        3,
        pytest.approx(0.02),
        0.018,
    )
    assert _row(t2, attack="fgsm", agrees="✗")["mean_eps"] == pytest.approx(0.0015)
    one = _row(t2, attack="onepixel", agrees="✓")
    assert (one["flipped"], one["paper_flipped"]) == (8, 9255)
    assert one["queries_mean"] == pytest.approx(np.mean(np.arange(8)))
    md = t2.markdown
    assert "7/70% [40–89]" in md and "8806/78%" in md and "| LPIPS(Alex) | ✗ | 5 |" in md

    # Table 3: |s0 - s1| is 0.2 on ✓ and 0.05 on ✗ rows; paper 0.169 / 0.024
    t3 = tables["table3_similarity_difference"]
    agree, disagree = _row(t3, agrees="✓"), _row(t3, agrees="✗")
    assert agree["sim_diff_mean"] == pytest.approx(0.2) and disagree[
        "sim_diff_mean"
    ] == pytest.approx(0.05)
    assert (agree["paper_sim_diff_mean"], disagree["paper_sim_diff_mean"]) == (0.169, 0.024)

    # Table 4: PSNR over flipped samples, the infinite value left out
    psnr = _row(tables["table4_psnr"], attack="pgd", agrees="✓")
    assert psnr["psnr_mean"] == pytest.approx(45.0)
    assert psnr["psnr_std"] == pytest.approx(np.std([40, 42, 44, 46, 48, 50], ddof=1))
    assert psnr["paper_psnr_mean"] == 46.82

    # Table 5: 16 accurate of 20, 4 of them flipped; paper stAdv on L2: 77/4%
    t5 = _row(tables["table5_transfer"], metric="l2", source="stAdv")
    assert (t5["source"], t5["accurate"], t5["accurate_pct"], t5["flipped"]) == (
        "stAdv",
        16,
        80.0,
        4,
    )
    assert t5["flipped_pct"] == 25.0
    assert (t5["paper_flipped"], t5["paper_flipped_pct"]) == (77, 4.0)
    assert "4/25% [10–49] (paper 77/4%)" in tables["table5_transfer"].markdown

    assert _row(tables["table5_transfer"], source="PGD(10)")["paper_flipped"] == 101
    assert "crafted on lpips_alex / bapps" in tables["table5_transfer"].markdown

    # Table 10: FGSM at ε ≤ 0.03 next to PGD, each with its published row
    t10 = tables["table10_fgsm_vs_pgd"]
    assert set(t10.data["attack"]) == {"fgsm003", "pgd"}
    f003 = _row(t10, attack="fgsm003", agrees="✓")
    assert (f003["flipped"], f003["paper_flipped"], f003["paper_table"]) == (2, 5620, 10)
    assert "FGSM (ε ≤ 0.03)" in t10.markdown

    # Table 11: both step sizes, each with its own published row
    t11 = tables["table11_pgd_alpha"]
    assert set(t11.data["variant"]) == {"alpha=0.001", "alpha=0.00375"}
    assert _row(t11, variant="alpha=0.00375", agrees="✓")["paper_flipped"] == 9926


def test_no_paper_column_outside_the_papers_settings(tmp_path):
    synthetic = {"_target_": "x", "name": "synthetic", "num_triplets": 15, "seed": 0}
    write_run(tmp_path, "lpips_alex", PGD, triplets(10, 7, 5, 4), dataset=synthetic)
    write_run(tmp_path, "lpips_alex", {**PGD, "eps": 0.01}, triplets(10, 2, 5, 1))
    tables = {t.name: t for t in build_tables(load_runs(tmp_path))}
    rows = tables["attacks_all_runs"].data
    assert rows["paper_table"].isna().all()
    assert not any(c.startswith("paper_flipped") for c in rows.columns)
    headers = [
        line
        for line in tables["table2_attacks"].markdown.splitlines()
        if line.startswith("| Metric")
    ]
    assert headers and all("paper" not in h.lower() for h in headers)
    # the two PGD runs differ in eps only, so that is their label
    assert set(rows["variant"]) == {"eps=0.03", "eps=0.01"}


def test_unfinished_run_is_read_from_its_shards(tmp_path):
    run_dir = write_run(tmp_path, "l2", PGD, triplets(4, 1, 2, 1))
    frame = pd.read_parquet(run_dir / "results.parquet")
    for f in [*run_dir.glob("shard-*"), run_dir / "results.parquet", run_dir / "merged.json"]:
        f.unlink()
    frame.iloc[:3].to_parquet(run_dir / "shard-00000-of-00002.parquet")
    with pytest.warns(UserWarning, match="not all shards"):
        (run,) = load_runs(tmp_path)
    assert not run.complete and len(run.results) == 3


def test_sweep_directory_reports_its_runs(tmp_path, results):
    runs = sorted(p for p in results.rglob("identity.yaml"))
    sweep = tmp_path / "sweep"
    (sweep / ".runs").mkdir(parents=True)
    (sweep / ".runs" / "0.json").write_text(json.dumps({"run_dir": str(runs[0].parent)}))
    (loaded,) = load_runs(sweep)
    assert loaded.run_dir == runs[0].parent.resolve()


# --- figures, report files, W&B, CLI ----------------------------------------------------------------------


def test_report_files_and_figures(results, tmp_path):
    out = tmp_path / "report"
    report = build_report(results, out=out, examples=0, wandb_mode=None)
    for t in report.tables:
        assert (out / "tables" / f"{t.name}.md").read_text().startswith("## ")
        assert len(pd.read_csv(out / "tables" / f"{t.name}.csv")) == len(t.data)
    stems = set(report.figures)
    assert {
        "fig5_accuracy_vs_robustness_bapps_64x64",
        "flip_rate_vs_eps_bapps_64x64",
        "perturbation_histograms_bapps_64x64",
    } <= stems
    import matplotlib.image as mpimg

    for paths in report.figures.values():
        png, svg = paths
        image = mpimg.imread(png)
        assert image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.01  # something is drawn
        assert "<svg" in svg.read_text()[:500]
    index = (out / "report.md").read_text()
    assert "Table 2" in index and "figures/flip_rate_vs_eps_bapps_64x64.png" in index


def test_cli_writes_the_report(results, tmp_path, capsys):
    out = tmp_path / "cli"
    assert report_main([str(results), "--out", str(out), "--examples", "0", "--wandb", "none"]) == 0
    assert (out / "report.md").exists() and (out / "runs.csv").exists()
    assert "tables/table2_attacks.md" in capsys.readouterr().out


def test_wandb_report_run_offline(results, tmp_path):
    report = build_report(results, out=tmp_path / "report", examples=0, wandb_mode=None)
    run_dir = log_to_wandb(report, "offline", tmp_path / "logs")
    assert run_dir is not None and Path(run_dir).name.startswith("offline-run-")
    media = Path(run_dir) / "files" / "media"
    tables = {p.name.split("_")[0] for p in (media / "table" / "tables").glob("*.table.json")}
    assert {"table1", "table2", "table5"} <= tables
    assert len(list((media / "images" / "figures").glob("*.png"))) == len(report.figures)


# --- example grids from a real run -----------------------------------------------------------------------


def test_examples_regenerate_a_real_run(cfg_factory, tmp_path):
    from attackpsm.job.run import run
    from attackpsm.report import examples

    out = run(cfg_factory(["metric=l2", "attack=pgd", "dataset.num_triplets=8"]))
    (loaded,) = load_runs(tmp_path / "results")
    ids = examples.choose_examples(loaded.results, n=3)
    assert len(ids) == min(3, len(loaded.results))
    shown = examples.regenerate(Path(out["run_dir"]), triplet_ids=ids)
    assert [e.triplet_id for e in shown] == ids
    for e in shown:  # PGD on L2 is deterministic: the stored result comes back
        assert e.s_adv == pytest.approx(e.stored_s_adv, rel=1e-4)
        assert e.flipped == e.stored_flipped
        assert float((e.adv - e.prey).abs().max()) <= 0.03 + 1e-6
        assert e.s_other == pytest.approx(
            float(loaded.results.set_index("triplet_id").loc[e.triplet_id, "s_other"]), rel=1e-5
        )
    fig = examples.example_grid(shown, examples.grid_title(loaded))
    assert len(fig.axes) == 5 * len(shown)
    titles = [ax.get_title() for ax in fig.axes[3::5]]
    assert all(("rank flipped" in t) == e.flipped for t, e in zip(titles, shown, strict=True))
