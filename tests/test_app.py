"""The Hydra application end to end: results schema, summary, CLI, W&B offline files."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from attackpsm.__main__ import normalise_argv
from attackpsm.job.run import run
from attackpsm.summary.results import BASE_COLUMNS
from tests import wandb_offline

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = [
    "triplet_id",
    "subset",
    "judge",
    "d0",
    "d1",
    "human_agrees",
    "prey",
    "s_other",
    "s_prey",
    "s_adv",
    "flipped",
    "flipped_saved",
    "iterations",
    "linf",
    "rmse_uint8",
    "psnr_uint8",
    "rmse_float",
    "psnr_float",
    "pct_px_gt_0.001_float",
    "pct_px_gt_0.01_float",
    "pct_px_gt_0.03_float",
    "pct_px_gt_0.001_uint8",
    "pct_px_gt_0.01_uint8",
    "pct_px_gt_0.03_uint8",
]


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "attackpsm", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_results_schema_and_summary(cfg_factory):
    cfg = cfg_factory(
        ["metric=lpips_alex", "attack=pgd", "dataset.num_triplets=12", "resolution='64'"]
    )
    out = run(cfg)
    run_dir = Path(out["run_dir"])
    table = pd.read_parquet(run_dir / "results.parquet")
    assert set(REQUIRED) <= set(table.columns)
    assert set(REQUIRED) <= set(BASE_COLUMNS)
    assert len(table) == 12 and table["triplet_id"].is_unique
    # the prey is the distortion the metric ranks closer to the reference
    prey_d = table["d1"].where(table["prey"] == 1, table["d0"])
    other_d = table["d0"].where(table["prey"] == 1, table["d1"])
    assert (prey_d == table["s_prey"]).all() and (other_d == table["s_other"]).all()
    assert (table["s_prey"] <= table["s_other"]).all()
    assert (table["flipped"] == (table["s_adv"] > table["s_other"])).all()
    assert (table["linf"] <= 0.03 + 1e-6).all()
    assert (~table["flipped_saved"] | table["flipped"]).all()
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary["agrees"]) == ["✓", "✗"]
    assert summary["samples"].sum() == 12
    assert summary["flipped"].sum() == table["flipped"].sum()
    md = (run_dir / "summary.md").read_text()
    assert "RMSE μ" in md and "| lpips_alex | pgd | ✓ | " in md
    assert out["flip_rate"] == pytest.approx(table["flipped"].mean())


def test_rerun_reuses_finished_results(cfg_factory):
    cfg = cfg_factory(["metric=l2", "dataset.num_triplets=6"])
    first = run(cfg)
    stamp = (Path(first["run_dir"]) / "shard-00000-of-00001.parquet").stat().st_mtime_ns
    second = run(cfg)
    assert first == second
    assert (Path(first["run_dir"]) / "shard-00000-of-00001.parquet").stat().st_mtime_ns == stamp


def test_multirun_flag_anywhere():
    assert normalise_argv(["attack=pgd", "metric=lpips_alex", "-m", "resolution=64,256"]) == [
        "--multirun",
        "attack=pgd",
        "metric=lpips_alex",
        "resolution='64','256'",
    ]
    assert normalise_argv(["metric=l2", "resolution=native", "resolution.batch_size=8"]) == [
        "metric=l2",
        "resolution=native",
        "resolution.batch_size=8",
    ]


def test_documented_sweep_command_runs_two_jobs(tmp_path):
    """`python -m attackpsm attack=pgd metric=lpips_alex -m resolution=64,256` as written
    (plus size and output settings appended)."""
    proc = cli(
        "attack=pgd",
        "metric=lpips_alex",
        "-m",
        "resolution=64,256",
        "dataset.num_triplets=4",
        "logger=none",
        "progress=false",
        f"paths.results_dir={tmp_path}/results",
        f"paths.log_dir={tmp_path}/logs",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = sorted(glob.glob(f"{tmp_path}/results/synthetic/lpips_alex/pgd/*/summary.csv"))
    assert [Path(s).parent.name.split("-")[0] for s in summaries] == ["res256", "res64"]
    log = proc.stdout + proc.stderr
    assert "Launching 2 jobs" in log
    assert "resolution='64'" in log and "resolution='256'" in log


def test_help_lists_every_group(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for group in (
        "dataset:",
        "metric:",
        "attack:",
        "resolution:",
        "logger:",
        "paths:",
        "experiment:",
    ):
        assert group in proc.stdout
    assert "lpips_alex" in proc.stdout and "pgd" in proc.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("metric=nope", "lpips_alex"),
        ("attack=nope", "pgd"),
        ("dataset=nope", "synthetic"),
        ("attack.eps=-0.1", "eps must be >= 0"),
        ("attack.alpha=0", "alpha must be > 0"),
        ("attack.max_iterations=-1", "max_iterations"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(tmp_path, override, expected):
    proc = cli(
        override,
        "logger=none",
        f"paths.results_dir={tmp_path}/r",
        f"paths.log_dir={tmp_path}/l",
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert expected in proc.stderr + proc.stdout
    assert not list(Path(tmp_path).glob("r/**/*.parquet"))


def test_wandb_offline_run_files_hold_the_summary(cfg_factory, tmp_path):
    cfg = cfg_factory(
        ["logger=wandb", "logger.mode=offline", "metric=l2", "dataset.num_triplets=6"]
    )
    out = run(cfg)
    files = glob.glob(f"{tmp_path}/logs/wandb/offline-run-*/run-*.wandb")
    assert len(files) == 1
    summary = wandb_offline.wait_for_summary(files[0], "samples")
    assert summary["samples"] == 6
    assert summary["flip_rate"] == pytest.approx(out["flip_rate"])
    info = wandb_offline.run_info(files[0])
    assert info["group"] == str(Path(out["run_dir"]).relative_to(tmp_path / "results"))
    assert info["config"]["metric"]["name"] == "l2"


def test_wandb_unreachable_never_fails_the_run(cfg_factory, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = cfg_factory(
        [
            "logger=wandb",
            "logger.mode=online",
            "+logger.init_timeout=5",
            "metric=l2",
            "dataset.num_triplets=4",
        ]
    )
    out = run(cfg)
    assert out["samples"] == 4


def test_attack_columns_survive_when_empty(cfg_factory):
    """FGSM records eps_found only for flips; a run without flips still has the column,
    and the summary names the attack by its config name."""
    cfg = cfg_factory(
        ["metric=l2", "attack=fgsm003", "attack.max_eps=0.0002", "dataset.num_triplets=4"]
    )
    out = run(cfg)
    table = pd.read_parquet(Path(out["run_dir"]) / "results.parquet")
    assert "eps_found" in table.columns and table["eps_found"].isna().all()
    assert not table["flipped"].any()
    summary = pd.read_csv(Path(out["run_dir"]) / "summary.csv")
    assert set(summary["attack"]) == {"fgsm003"}


def test_an_experiment_sweep_without_multirun_stops_with_the_command(tmp_path):
    """`python -m attackpsm experiment=table2` would run one default job: it stops instead,
    printing the `-m` command; with `-m` (or a non-sweep experiment) nothing is said."""
    from attackpsm.config import sweep_without_multirun

    proc = cli("experiment=table2", "dataset.num_triplets=4", cwd=ROOT)
    assert proc.returncode == 1
    assert "python -m attackpsm -m experiment=table2 dataset.num_triplets=4" in proc.stderr
    assert "attack: fgsm,pgd,onepixel" in proc.stderr
    assert not list(tmp_path.iterdir())  # and no job ran anywhere it could write
    assert sweep_without_multirun(["-m", "experiment=table2"]) is None
    assert sweep_without_multirun(["experiment=table2_pgd"]) is None  # one job, no sweep
    assert sweep_without_multirun(["attack=pgd"]) is None


def test_a_seed_that_leaves_the_data_unchanged_says_so():
    from attackpsm.config import compose
    from attackpsm.job.run import seed_note

    assert seed_note(compose(["seed=0"])) is None
    note = seed_note(compose(["seed=1"]))
    assert "dataset.seed=0" in note and "add dataset.seed=1 for other triplets" in note
    assert seed_note(compose(["seed=1", "dataset.seed=1"])) is None


def test_a_shard_is_read_through_a_view_and_the_dataset_is_left_unchanged(cfg_factory, monkeypatch):
    """A job on shard 1 of 3 attacks exactly that shard's triplets (``shard_records``),
    read through a view of the dataset: the dataset index the job built keeps all of its
    records, in their order."""
    import attackpsm.job.run as job
    from attackpsm.data.base import shard_records
    from attackpsm.storage import ShardStore

    built = []

    def build_dataset(cfg):
        dataset = job_build_dataset(cfg)
        built.append((dataset, list(dataset.records)))
        return dataset

    job_build_dataset = job.build_dataset
    monkeypatch.setattr(job, "build_dataset", build_dataset)
    cfg = cfg_factory(
        [
            "attack=fgsm",
            "metric=l2",
            "dataset.num_triplets=10",
            "resolution.size=16",
            "shard.count=3",
            "shard.index=1",
        ]
    )
    out = run(cfg)
    [(dataset, records)] = built
    assert len(records) == 10 and dataset.records == records
    results, errors, _ = ShardStore(Path(out["run_dir"]), 1, 3).load()
    expected = [r.triplet_id for r in shard_records(records, 1, 3)]
    assert sorted([*results["triplet_id"], *errors["triplet_id"]]) == sorted(expected)
    assert len(expected) == 3 and out["samples"] == len(results)
