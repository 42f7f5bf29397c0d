"""What the command line says: one-line messages for bad input, --help, Ctrl-C and resuming."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


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


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error a user sees: exit status 2, one line, no traceback before it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


PGD_KEYS = (
    "eps (float), alpha (float), max_iterations (int), checks (int | None), early_stop (bool)"
)
BAD_INPUTS = [
    (["attack.eps=abc"], ["attack.eps='abc'", "expected float", PGD_KEYS]),
    (["attack.epsilon=0.01"], ["attack.epsilon=0.01", "no key 'epsilon'", "attack.eps?", PGD_KEYS]),
    (["+attack.epsilon=0.01"], ["attack.epsilon=0.01", "no key 'epsilon'", PGD_KEYS]),
    (["attack.compile=true"], ["+attack.compile="]),
    (
        ["-m", "attack=pgd,square", "attack.alpha=0.01"],
        ["attack.alpha=0.01", "'square'", "attack=pgd,square", "no key 'alpha'"],
    ),
    (["metric=ms_ssim_iqa"], ["ms_ssim_iqa", "161 px", "resolution=256"]),
    (["attack.eps=-0.1"], ["eps must be >= 0"]),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INPUTS, ids=lambda a: " ".join(a)[:40])
def test_bad_input_is_one_line_naming_key_value_and_valid_keys(tmp_path, args, expected):
    proc = cli(
        *args,
        "logger=none",
        f"paths.results_dir={tmp_path}/r",
        f"paths.log_dir={tmp_path}/l",
        cwd=tmp_path,
    )
    line = one_line_error(proc)
    for part in expected:
        assert part in line, line
    assert not list(tmp_path.glob("r/**/*.parquet"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_says_what_to_use(tmp_path):
    proc = cli("device=cuda", "logger=none", f"paths.results_dir={tmp_path}/r", cwd=tmp_path)
    line = one_line_error(proc)
    assert "device=cuda" in line and "device=cpu" in line


def test_help_lists_groups_options_examples_and_launchers(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("attack:", "lpips_alex*", "pgd*", "stadv", "hydra/launcher", "local", "slurm"):
        assert text in out
    assert "python -m attackpsm -m" in out and "Examples:" in out


def test_any_integer_resolution_runs(tmp_path):
    proc = cli(
        "metric=l2",
        "attack=fgsm",
        "resolution=40",
        "dataset.num_triplets=2",
        "logger=none",
        "progress=false",
        f"paths.results_dir={tmp_path}/r",
        f"paths.log_dir={tmp_path}/l",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = tmp_path.glob("r/synthetic/l2/fgsm/res40-*")
    assert f"-> {run_dir.resolve()}" in proc.stdout  # the absolute path is printed
    from attackpsm.storage import read_identity

    assert read_identity(run_dir)["resolution"] == 40


@pytest.mark.slow
def test_ctrl_c_saves_finished_batches_and_the_same_command_resumes(tmp_path):
    """SIGINT to a real run: one line with what was saved and the resume command; the
    re-run finishes with every triplet exactly once and keeps the saved batches."""
    args = [
        "metric=lpips_alex",
        "attack=pgd",
        "dataset.num_triplets=24",
        "resolution.batch_size=2",
        "logger=none",
        f"paths.results_dir={tmp_path}/r",
        f"paths.log_dir={tmp_path}/l",
    ]
    env = {**os.environ, "WANDB_SILENT": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "attackpsm", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("r/**/part-*.parquet")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no batch finished in 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "metric_calls=" in err  # the bar moved inside the batches, not only between them
    last = err.strip().splitlines()[-1]
    parts = sorted(tmp_path.glob("r/**/part-*.parquet"))
    saved = sum(len(pd.read_parquet(p)) for p in parts)
    assert last.startswith(f"Interrupted: {saved} of 24 triplets saved in /"), last
    assert 0 < saved < 24
    assert "run the same command to resume: python -m attackpsm metric=lpips_alex" in last
    stamps = {p: p.stat().st_mtime_ns for p in parts}

    rerun = cli(*args, "progress=false", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    (results,) = tmp_path.glob("r/**/results.parquet")
    table = pd.read_parquet(results)
    assert len(table) == 24 and table["triplet_id"].is_unique
    assert {p: p.stat().st_mtime_ns for p in parts if p.exists()} == {
        p: s for p, s in stamps.items() if p.exists()
    }  # the saved batches were not computed again


def test_a_sweep_names_the_job_that_cannot_run(tmp_path):
    proc = cli(
        "-m",
        "metric=ms_ssim_iqa",
        "attack=fgsm,pgd",
        "logger=none",
        f"paths.results_dir={tmp_path}/r",
        f"paths.log_dir={tmp_path}/l",
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "Error executing job with overrides:" in proc.stderr
    assert "'metric=ms_ssim_iqa', 'attack=fgsm'" in proc.stderr
    assert "Error: resolution.size=64 is below" in proc.stderr


@pytest.mark.slow
def test_make_notebook_executes_the_analysis_on_a_results_dir(cfg_factory, tmp_path):
    """`make notebook` with what `make install` provides (nbclient's `jupyter execute`)."""
    import shutil

    from attackpsm.job.run import run

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for overrides in (["metric=l2", "attack=pgd"], ["metric=l2", "attack=none"]):
        run(cfg_factory([*overrides, "dataset.num_triplets=8"]))
    results = tmp_path / "results"
    venv = Path(sys.executable).parent.parent
    proc = subprocess.run(
        ["make", "-o", "weights", "notebook", f"VENV={venv}", f"RESULTS={results}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import nbformat

    nb = nbformat.read(results / "analysis.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "2 runs below" in text
    assert f"-> {results}/analysis.ipynb" in proc.stdout


@pytest.mark.slow
def test_local_sweep_shows_its_jobs_and_ends_with_a_summary(tmp_path):
    """hydra/launcher=local: the jobs' log folder and a jobs bar while they run; at the end
    the jobs computed / reused / unfinished and where the tables and logs are, absolute."""
    args = [
        "-m",
        "metric=l2,ssim",
        "attack=fgsm",
        "hydra/launcher=local",
        "dataset.num_triplets=2",
        "logger=none",
        f"paths.results_dir={tmp_path}/r",
        f"paths.log_dir={tmp_path}/l",
    ]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout + first.stderr
    (sweep,) = (tmp_path / "l" / "multiruns").iterdir()
    assert f"2 jobs submitted; their logs: {sweep}/.submitit/<job id>/" in out
    assert "jobs: 100%" in out and "2/2" in out
    assert "Jobs: 2 -- 2 computed, 0 reused (finished before), 0 failed or unfinished" in out
    assert f"Tables: {sweep}/summary.csv (every run's rows), {sweep}/status.md" in out
    assert len(list(sweep.glob(".submitit/*/*_log.err"))) == 2

    time.sleep(1.1)  # a new sweep directory (Hydra names it by the second)
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Jobs: 2 -- 0 computed, 2 reused (finished before), 0 failed or unfinished" in (
        again.stdout + again.stderr
    )


def test_progress_moves_inside_a_batch():
    """The bar shows the metric's evaluations while a batch is attacked (stAdv or One-pixel
    can spend minutes in one batch), at most once a second."""
    import io

    from tqdm import tqdm

    from attackpsm.job.run import MetricCalls
    from attackpsm.metrics.classic import L2

    stream = io.StringIO()
    bar = tqdm(total=1, file=stream, desc="l2 pgd", unit="batch", mininterval=0)
    metric = L2()
    calls = MetricCalls(metric, bar)
    x = torch.zeros(2, 3, 8, 8)
    prepared = metric.prepare(x)
    for _ in range(3):
        metric.score(prepared, x)
        time.sleep(0.6)
    assert calls.calls == 3
    assert "metric_calls=" in stream.getvalue() and bar.n == 0


def test_generated_sizes_take_the_batch_size_of_the_next_file():
    from attackpsm.config import compose

    assert dict(compose(["resolution=128"]).resolution) == {"size": 128, "batch_size": 16}
    assert dict(compose(["resolution=64"]).resolution) == {"size": 64, "batch_size": 64}
    assert dict(compose(["resolution=1024"]).resolution) == {"size": 1024, "batch_size": 2}


def test_missing_data_or_weights_is_one_line_naming_the_fetch(tmp_path):
    common = ["logger=none", f"paths.results_dir={tmp_path}/r", f"paths.log_dir={tmp_path}/l"]
    proc = cli("dataset=bapps", f"dataset.root={tmp_path}/none", *common, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Expected layout" in lines[0] and "make data-bapps" in lines[0]

    env = {
        **os.environ,
        "ATTACKPSM_WEIGHTS": str(tmp_path / "empty"),
        "ATTACKPSM_ALLOW_FETCH": "false",
        "ATTACKPSM_WEIGHTS_MIRROR": "",
    }
    env.pop("ATTACKPSM_WEIGHTS_MIRROR")
    proc = subprocess.run(
        [sys.executable, "-m", "attackpsm", "metric=lpips_alex", *common],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "make weights" in lines[0], proc.stderr[-2000:]


@pytest.mark.slow
def test_report_says_each_stage_and_where_it_wrote(cfg_factory, tmp_path, capsys):
    """The report regenerates example grids (an attack each): it says so, with a bar."""
    from attackpsm.job.run import run
    from attackpsm.report.build import build_report

    run(cfg_factory(["metric=l2", "attack=fgsm", "dataset.num_triplets=4", "resolution.size=32"]))
    capsys.readouterr()
    report = build_report(tmp_path / "results", examples=2, wandb_mode=None)
    err = capsys.readouterr().err
    assert f"report: 1 runs below {(tmp_path / 'results').absolute()}" in err
    assert "report: example grids of 1 runs (2 triplets each, attacked again)" in err
    assert "example grids: 100%" in err
    assert f"report: written to {report.out.absolute()}" in err


def test_flip_rate_grid_of_a_large_sweep_pools_agree_and_disagree_rows():
    from attackpsm.summary.sweep import flip_rate_grid

    table = pd.DataFrame(
        {
            "dataset": ["synthetic"] * 4,
            "resolution": [64] * 4,
            "metric": ["l2", "l2", "l2", "l2"],
            "attack": ["pgd", "pgd", "fgsm", "fgsm"],
            "agrees": ["✓", "✗", "✓", "✗"],
            "samples": [3, 1, 4, 0],
            "flipped": [1, 1, 2, 0],
        }
    )
    grid = flip_rate_grid(table)
    assert grid.loc[("synthetic", 64, "l2"), "pgd"] == 50.0  # (1 + 1) / (3 + 1)
    assert grid.loc[("synthetic", 64, "l2"), "fgsm"] == 50.0  # 2 / 4
