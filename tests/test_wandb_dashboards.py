"""What a W&B run of a shard shows, read back from its offline run files.

Live history (one record per batch, step = triplets done), histograms, example images,
per-subset and ✓/✗ summary keys, a resumed shard continuing its run, the aggregate run,
the dashboard specification, and a W&B that raises on every call changing nothing.
"""

from __future__ import annotations

import glob
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attackpsm.commands import dashboard
from attackpsm.job.run import run
from attackpsm.report.dashboard import build_workspace
from tests import wandb_offline

# l2 at 64x64: seconds per run; a budget where about half of the triplets flip
ARGS = [
    "logger=wandb",
    "logger.mode=offline",
    "metric=l2",
    "attack.eps=0.02",
    "attack.alpha=0.002",
    "attack.max_iterations=10",
    "dataset.num_triplets=12",
    "resolution.batch_size=4",
]
LIVE_KEYS = {
    "progress/triplets",
    "progress/flip_rate",
    "progress/flip_rate_agree",
    "progress/flip_rate_disagree",
    "progress/flip_rate_saved",
    "progress/triplets_per_s",
    "progress/iterations_mean",
    "progress/skipped",
}


def run_files(log_dir: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(f"{log_dir}/wandb/offline-run-*/run-*.wandb"))


def run_info(path: Path, timeout: float = 60.0) -> dict:
    """The run record, once the W&B service has flushed it to the file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return wandb_offline.run_info(path)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def live_records(history: list[dict]) -> list[dict]:
    return [h for h in history if "progress/triplets" in h]


def end_record(history: list[dict], key: str) -> dict:
    rows = [h for h in history if key in h]
    assert len(rows) == 1, f"{key} in {len(rows)} records"
    return rows[0]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """One finished single-shard run logged offline: (results table, run file)."""
    from tests.conftest import make_cfg

    tmp = tmp_path_factory.mktemp("shard")
    out = run(make_cfg(tmp, ARGS))
    files = run_files(tmp / "logs")
    assert len(files) == 1
    wandb_offline.wait_for_summary(files[0], "dist/rmse/_type")
    return pd.read_parquet(Path(out["run_dir"]) / "results.parquet"), files[0]


def test_history_has_one_record_per_batch_at_step_triplets_done(shard):
    table, path = shard
    history = wandb_offline.history(path)
    live = live_records(history)
    assert [h["_step"] for h in live] == [4, 8, 12]
    assert [h["progress/triplets"] for h in live] == [4, 8, 12]
    for h in live:
        assert set(h) >= LIVE_KEYS, LIVE_KEYS - set(h)
        assert h["progress/skipped"] == 0 and h["progress/triplets_per_s"] > 0
    # running rates, checked against the results table batch by batch (a shard attacks its
    # triplets in the order of their ids, the order of the results table)
    flipped = table["flipped"].astype(bool).to_numpy()
    uint8 = table["flipped_saved"].astype(bool).to_numpy()
    for k, h in enumerate(live, start=1):
        assert h["progress/flip_rate"] == pytest.approx(flipped[: 4 * k].mean())
        assert h["progress/flip_rate_saved"] == pytest.approx(uint8[: 4 * k].mean())
        assert h["progress/iterations_mean"] == pytest.approx(table["iterations"][: 4 * k].mean())
    assert 0 < flipped.mean() < 1  # the test sees both outcomes
    # define_metric: the curves are drawn against triplets done, the summary is the last value
    defs = wandb_offline.metric_definitions(path)
    assert defs["progress/*"] == {"step_metric": "progress/triplets", "summary_last": True}
    summary = wandb_offline.summary(path)  # W&B keeps a defined aggregation as {"last": value}
    assert summary["progress/flip_rate"] == {"last": pytest.approx(flipped.mean())}
    assert summary["progress/triplets"] == {"last": 12}
    # the end of the shard is one more record, after the last batch
    assert end_record(history, "dist/rmse/_type")["_step"] == 13


def test_histograms_and_example_images(shard):
    table, path = shard
    end = end_record(wandb_offline.history(path), "dist/rmse/_type")
    margin = (table["s_adv"] - table["s_other"]).to_numpy()
    for key, values in {
        "rmse": table["rmse_uint8"],
        "linf": table["linf"],
        "margin": margin,
        "iterations": table["iterations"],
    }.items():
        assert end[f"dist/{key}/_type"] == "histogram"
        assert sum(end[f"dist/{key}/values"]) == len(table)
        bins = end[f"dist/{key}/bins"]
        assert bins[0] <= float(np.min(values)) + 1e-6 and bins[-1] >= float(np.max(values)) - 1e-6
    # flipped triplets: their margin is positive (the prey is now the farther image, Sec. 3)
    assert (margin[table["flipped"].astype(bool).to_numpy()] > 0).all()
    images = end["examples/agree/_type"], end["examples/agree/count"]
    assert images == ("images/separated", 2)
    folder = path.parent / "files"
    pngs = sorted(folder.glob("media/images/examples/agree_*.png"))
    assert len(pngs) == 2
    from PIL import Image

    with Image.open(pngs[0]) as im:  # reference | other | prey | adv | perturbation
        assert im.size == (5 * 64, 64)
    captions = end["examples/agree/captions"]
    assert all("s_other" in c and "s_adv" in c for c in captions)
    shown = [c.split(" ")[0] for c in captions]
    assert set(shown) <= set(table.loc[table["flipped"].astype(bool), "triplet_id"])


def test_summary_splits_every_headline_number(shard):
    table, path = shard
    summary = wandb_offline.summary(path)
    agrees = table["human_agrees"].astype("boolean")
    flipped = table["flipped"].astype(bool)
    for subset, part in table.groupby("subset"):
        assert summary[f"flip_rate/{subset}"] == pytest.approx(part["flipped"].astype(bool).mean())
        assert summary[f"samples/{subset}"] == len(part)
        labelled = part["human_agrees"].astype("boolean")
        assert summary[f"accuracy/{subset}"] == pytest.approx(labelled.astype(float).mean())
    agree = table[agrees.fillna(False).astype(bool)]
    assert summary["samples/agree"] == len(agree)
    assert summary["flip_rate/agree"] == pytest.approx(agree["flipped"].astype(bool).mean())
    assert summary["rmse_flipped_mean/agree"] == pytest.approx(
        agree.loc[agree["flipped"].astype(bool), "rmse_uint8"].mean()
    )
    for key in ("flip_rate_saved/agree", "samples/disagree", "flip_rate/disagree"):
        assert key in summary
    assert summary["flip_rate"] == pytest.approx(flipped.mean())


def test_single_shard_run_is_complete_and_logs_its_curves(shard):
    """A configuration of one shard: its run is the whole run, complete once finished, with
    the flat keys and its robustness curves (read by W&B's own reader)."""
    from attackpsm.job.loggers import RUN_KEYS

    table, path = shard
    state = wandb_offline.leet(path, summary=True)
    config = wandb_offline.flat(state["config"])
    assert set(RUN_KEYS) <= set(config) and (config["complete"], config["finished"]) == (True, True)
    assert (config["eps"], config["threat_model"], config["metric.name"]) == (0.02, "linf", "l2")
    good = agree(table)
    curve = table_file(path, state["summary"], "curves/eps_table")
    assert curve[["eps", "flip_rate"]].values.tolist() == [
        [0.02, pytest.approx(good["flipped"].astype(bool).mean())]
    ]
    assert "curves/iterations_table" in state["summary"]


def test_resumed_shard_continues_its_run_without_duplicated_steps(
    cfg_factory, tmp_path, monkeypatch
):
    """A shard that fails after two batches and is re-run: the second attempt logs to the
    same run id, at the steps after those already logged, with running totals of both."""
    import attackpsm.job.run as runner
    from attackpsm.engine import FittingBatches

    cfg = cfg_factory([*ARGS, "dataset.num_triplets=16"])
    calls = {"n": 0}

    class FailsOnThirdBatch(FittingBatches):
        def __call__(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("node lost")
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(runner, "FittingBatches", FailsOnThirdBatch)
    with pytest.raises(RuntimeError, match="node lost"):
        run(cfg)
    monkeypatch.setattr(runner, "FittingBatches", FittingBatches)
    out = run(cfg)
    files = run_files(tmp_path / "logs")
    assert len(files) == 2
    ids = {run_info(f)["id"] for f in files}
    assert len(ids) == 1
    histories = [wandb_offline.history(f) for f in files]
    steps = [h["_step"] for hist in histories for h in hist]
    assert len(steps) == len(set(steps)), steps
    first, second = (live_records(h) for h in histories)
    if first and first[0]["_step"] > second[0]["_step"]:
        first, second = second, first
    assert [h["_step"] for h in first] == [4, 8]
    assert [h["_step"] for h in second] == [12, 16]
    table = pd.read_parquet(Path(out["run_dir"]) / "results.parquet")
    assert second[-1]["progress/flip_rate"] == pytest.approx(table["flipped"].astype(bool).mean())


@pytest.mark.parametrize("where", ["every_call", "init"])
def test_a_wandb_that_raises_on_every_call_changes_nothing(
    cfg_factory, tmp_path, monkeypatch, where
):
    import wandb
    from wandb.sdk.wandb_run import Run
    from wandb.sdk.wandb_summary import Summary

    plain = run(cfg_factory([*ARGS[2:], "logger=none"]))
    reference = pd.read_parquet(Path(plain["run_dir"]) / "results.parquet")
    reference_summary = (Path(plain["run_dir"]) / "summary.csv").read_text()
    for f in Path(plain["run_dir"]).glob("*"):
        if f.is_file():
            f.unlink()

    def broken(*args, **kwargs):
        raise ConnectionError("W&B is down")

    if where == "init":
        monkeypatch.setattr(wandb, "init", broken)
    else:
        for name in ("log", "define_metric", "save", "finish"):
            monkeypatch.setattr(Run, name, broken)
        monkeypatch.setattr(Summary, "__setitem__", broken)
        monkeypatch.setattr(Summary, "update", broken)
        for name in ("Image", "Histogram", "Table"):
            monkeypatch.setattr(wandb, name, broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run(cfg_factory(ARGS))
    monkeypatch.undo()
    if wandb.run is not None:
        wandb.run.finish()
    assert any("W&B is down" in str(w.message) for w in caught)
    assert out["run_dir"] == plain["run_dir"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(Path(out["run_dir"]) / "results.parquet"), reference
    )
    assert (Path(out["run_dir"]) / "summary.csv").read_text() == reference_summary


def test_sweep_aggregate_runs_and_dashboard_specification(cfg_factory, tmp_path, capsys):
    """Two configurations x two shards: the aggregate runs carry histograms, subset keys
    and the report's figures; the dashboard specification names the sweep's runs."""
    from attackpsm.cluster.aggregate import log_aggregate

    results = tmp_path / "results"
    run_dirs = []
    for metric in ("l2", "ssim"):
        for index in (0, 1):
            args = [*ARGS, f"metric={metric}", "shard.count=2", f"shard.index={index}"]
            out = run(cfg_factory(args))
        run_dirs.append(Path(out["run_dir"]))
        spec = dict(cfg_factory(ARGS).logger)
        assert log_aggregate(run_dirs[-1], spec, results)
    aggregates = [f for f in run_files(tmp_path / "logs") if run_info(f)["job_type"] == "aggregate"]
    assert len(aggregates) == 2
    for f in aggregates:
        summary = wandb_offline.wait_for_summary(f, "dist/linf/_type")
        assert summary["dist/rmse/_type"] == "histogram"
        assert (
            summary["samples"] == 12 and "flip_rate/agree" in summary and "accuracy/blur" in summary
        )
        figures = [k for k in summary if k.startswith("figures/") and k.endswith("/_type")]
        assert figures and all(summary[k] == "image-file" for k in figures)

    spec_file = tmp_path / "dashboard.json"
    args = ["--entity", "team", "--project", "p", "--sweep", str(results), "--out", str(spec_file)]
    assert dashboard.main([*args, "--offline"]) == 0
    assert "--apply" in capsys.readouterr().out
    spec = json.loads(spec_file.read_text())
    from attackpsm.job.loggers import sweep_group

    runs = sorted("/".join(d.parts[-4:]) for d in run_dirs)
    assert spec["groups"] == sorted([*runs, sweep_group(runs)])
    panels = {p["title"]: p for s in spec["sections"] for p in s["panels"]}
    assert panels["flip_rate by metric × attack × resolution"]["metrics"] == [
        "flip_rate",
        "flip_rate/agree",
        "flip_rate/disagree",
    ]
    assert {"examples/agree"} <= {k for p in panels.values() for k in p.get("keys", [])}
    assert "flip_rate per subset" in panels and "histogram of margin" in panels
    pytest.importorskip("wandb_workspaces")
    workspace = build_workspace(spec)  # the same specification, as W&B's objects
    assert [s.name for s in workspace.sections] == [s["name"] for s in spec["sections"]]
    assert workspace._to_model() is not None


def test_examples_keep_both_rows_within_a_bound():
    """The kept examples: ✓ and ✗ rows, at most ``examples`` each over many batches, 8-bit
    on the CPU; the strip shows reference, other, prey, adversarial image, perturbation."""
    import torch

    from attackpsm.images import to_uint8
    from attackpsm.job.examples import example_strip
    from attackpsm.job.loggers import NullLogger
    from attackpsm.job.progress import ShardProgress
    from tests.conftest import synthetic_batch

    class Capture(NullLogger):
        run = object()  # a logger with a run: the progress is active
        examples = 2

        def __init__(self):
            self.media = {}

        def log_media(self, values):
            self.media.update({k: make for k, make in values.items()})

    logger = Capture()
    progress = ShardProgress(logger, None, torch.device("cpu"))
    keep = progress.sink()
    for seed in range(3):
        batch = synthetic_batch(6, seed=seed, size=16)
        prey_is_p1 = torch.tensor([True, False] * 3)
        adv = (torch.where(prey_is_p1[:, None, None, None], batch.p1, batch.p0) + 0.01).clamp(-1, 1)
        rows = pd.DataFrame(
            {
                "triplet_id": batch.triplet_id,
                "subset": batch.subset,
                "human_agrees": pd.array([True, False, True, False, True, None], dtype="boolean"),
                "flipped": [True, True, True, True, False, True],
                "s_adv": [0.2] * 6,
            }
        )
        keep(None, batch, prey_is_p1, adv, rows)
    kept = progress.examples.kept
    assert [len(kept["agree"]), len(kept["disagree"])] == [2, 2]
    first = synthetic_batch(6, seed=0, size=16)
    assert kept["agree"][0]["row"]["triplet_id"] == first.triplet_id[0]
    assert kept["disagree"][0]["row"]["triplet_id"] == first.triplet_id[1]
    example = kept["disagree"][0]  # prey is p0 there: other = p1
    assert example["images"].dtype == torch.uint8 and example["images"].device.type == "cpu"
    assert torch.equal(example["images"][1], to_uint8(first.p1[1]))
    assert torch.equal(example["images"][2], to_uint8(first.p0[1]))
    strip, gain = example_strip(example["images"], example["delta"])
    assert strip.shape == (16, 5 * 16, 3)
    delta = example["delta"]
    assert gain == pytest.approx(1.0 / float(delta.abs().max()))
    perturbation = strip[:, 4 * 16 :, :]
    assert np.array_equal(perturbation, to_uint8(delta * gain).permute(1, 2, 0).numpy())


def test_distributions_of_min_eps_leave_out_the_unflipped():
    """``attack=min_eps``: ε = inf marks a triplet never flipped (Sec. 3.3's search up to
    ``eps_max``); the histogram holds the finite minimal ε, the summary counts the rest."""
    from attackpsm.summary.headline import distributions

    table = pd.DataFrame(
        {
            "rmse_uint8": [1.0, 2.0, 3.0],
            "linf": [0.01, 0.02, 0.03],
            "s_adv": [0.5, 0.4, 0.1],
            "s_other": [0.3, 0.3, 0.3],
            "iterations": [3, 5, 30],
            "queries": [10, 20, 90],
            "min_eps": [0.004, 0.012, np.inf],
        }
    )
    d = distributions(table)
    assert sorted(d) == ["iterations", "linf", "margin", "min_eps", "queries", "rmse"]
    np.testing.assert_allclose(d["min_eps"], [0.004, 0.012])
    np.testing.assert_allclose(d["margin"], [0.2, 0.1, -0.2])
    assert "min_eps" not in distributions(table.drop(columns="min_eps"))


def test_dashboard_without_network_writes_the_specification(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    out = tmp_path / "spec" / "dashboard.json"
    assert dashboard.main(["--entity", "e", "--project", "p", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not reachable" in printed and f"--apply {out}" in printed
    spec = json.loads(out.read_text())
    assert (spec["entity"], spec["project"], spec["groups"]) == ("e", "p", [])
    assert dashboard.main(["--apply", str(out)]) == 0  # still offline: says so, sends nothing
    assert "not reachable" in capsys.readouterr().out
    # no --entity: W&B's own default when applied; the file lands in the results directory
    monkeypatch.setenv("ATTACKPSM_RESULTS", str(tmp_path / "results"))
    assert dashboard.main(["--project", "p"]) == 0
    spec = json.loads((tmp_path / "results" / "dashboard.json").read_text())
    assert spec["entity"] is None and spec["filters"] == {"complete": True}
    assert dashboard.main(["--include-partial", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["filters"] == {}
    with pytest.raises(SystemExit):
        dashboard.main(["--sweep", str(tmp_path / "missing")])  # names the missing directory
    assert "missing: no such directory" in capsys.readouterr().err


def test_bench_measures_the_logging_overhead(tmp_path):
    from attackpsm.commands.bench import main as bench

    out = tmp_path / "bench-logging.json"
    args = ["dataset.num_triplets=4", "metric=l2", "attack.max_iterations=2", "resolution=64"]
    assert bench(["logging", *args, "--device", "cpu", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [len(result["seconds"][k]) for k in ("none", "wandb_offline")] == [1, 1]
    ratio = result["median_wandb_offline_s"] / result["median_none_s"]
    assert result["ratio"] == pytest.approx(ratio) and result["ratio"] > 0


# --- robustness curves, flat keys, the sweep run and its workspace ---------------------------

SWEEP_EPS = (0.005, 0.02)


def agree(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["human_agrees"].astype("boolean").fillna(False).astype(bool)]


def table_file(path: Path, summary: dict, key: str) -> pd.DataFrame:
    """A table a run logged, from the file its summary entry names."""
    entry = summary[key]
    assert entry["_type"] == "table-file", entry
    data = json.loads((path.parent / "files" / entry["path"]).read_text())
    return pd.DataFrame(data["data"], columns=data["columns"])


@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory):
    """``python -m attackpsm -m``: two metrics x two ε, two shards each, logged offline;
    every run file read by W&B's own reader: {path: (records, summary)}."""
    import os
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    for var in ("ATTACKPSM_RESULTS", "ATTACKPSM_LOGS"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "attackpsm",
        "-m",
        *ARGS[:2],
        "metric=l2,ssim",
        f"attack.eps={','.join(map(str, SWEEP_EPS))}",
        *ARGS[4:6],  # alpha, iterations
        "dataset.num_triplets=8",
        "shard.count=2",
        "resolution.batch_size=4",
        "device=cpu",
        "progress=false",
        f"paths.results_dir={tmp / 'results'}",
        f"paths.log_dir={tmp / 'logs'}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    runs = {
        f: (wandb_offline.leet(f), wandb_offline.leet(f, summary=True))
        for f in run_files(tmp / "logs")
    }
    (sweep_dir,) = (tmp / "logs" / "multiruns").iterdir()
    return tmp, sweep_dir, runs


def run_record(records: list[dict]) -> dict:
    return next(r["run"] for r in records if r["type"] == "run")


@pytest.mark.slow
def test_offline_sweep_curves_keys_and_workspace(offline_sweep, capsys):
    """Read back from W&B's own run files: every finished run logs its robustness curves
    (flip rate of ✓ triplets against ε and against PGD's iterations), aggregate runs carry
    the shards' flat keys and ``complete``, the sweep run overlays one curve per metric and
    ranks the metrics, and the workspace's first panel plots that curve table."""
    from attackpsm.job.loggers import RUN_KEYS

    tmp, sweep_dir, runs = offline_sweep
    by_type: dict[str, list] = {}
    for path, (records, _) in runs.items():
        by_type.setdefault(run_record(records).get("job_type"), []).append(path)
    assert {k: len(v) for k, v in by_type.items()} == {"shard": 8, "aggregate": 4, "sweep": 1}

    results = {}  # W&B group (the run directory) -> merged results table
    for run_dir in sorted(p.parent for p in (tmp / "results").rglob("identity.yaml")):
        results["/".join(run_dir.parts[-4:])] = pd.read_parquet(run_dir / "results.parquet")
    assert len(results) == 4

    # flat keys: the aggregate run of a configuration carries its shards' values
    keys_of = {}
    for path in by_type["shard"]:
        records, summary = runs[path]
        config = wandb_offline.flat(summary["config"])
        assert set(RUN_KEYS) <= set(config), set(RUN_KEYS) - set(config)
        assert config["complete"] is False  # one shard of two: partial
        assert config["finished"] is True  # its shard did finish
        started = run_record(records)["config"]["update"]  # the config it started with
        assert (started["complete"], started["finished"]) == (False, False)
        group = run_record(records)["run_group"]
        keys_of.setdefault(group, []).append({k: config[k] for k in RUN_KEYS if k != "complete"})
    for path in by_type["aggregate"]:
        records, summary = runs[path]
        config = wandb_offline.flat(summary["config"])
        group = run_record(records)["run_group"]
        shard_keys = keys_of[group]
        assert len(shard_keys) == 2 and shard_keys[0] == shard_keys[1]
        assert {k: config[k] for k in RUN_KEYS if k != "complete"} == shard_keys[0]
        assert config["complete"] is True
        assert config["threat_model"] == "linf" and config["eps"] in SWEEP_EPS
        assert config["version"] == config["identity.version"]

        # its curves: one point against ε, the PGD check index of each flip otherwise
        good = agree(results[group])
        flipped = good["flipped"].astype(bool).to_numpy()
        eps_curve = table_file(path, summary["summary"], "curves/eps_table")
        assert eps_curve[["eps", "flip_rate", "samples"]].values.tolist() == [
            [config["eps"], pytest.approx(flipped.mean()), len(good)]
        ]
        it = table_file(path, summary["summary"], "curves/iterations_table")
        iterations = good["iterations"].to_numpy()
        assert it["iterations"].iloc[0] == 0 and it["iterations"].iloc[-1] == iterations.max()
        assert set(iterations[flipped]) <= set(it["iterations"])
        for k, rate in zip(it["iterations"], it["flip_rate"], strict=True):
            assert rate == pytest.approx((flipped & (iterations <= k)).mean())
        # the chart preset W&B draws it with
        visualize = [
            r["config"]["update"]
            for r in records
            if r["type"] == "config" and "_wandb.visualize.curves/eps" in r["config"]["update"]
        ]
        chart = visualize[0]["_wandb.visualize.curves/eps"]["panel_config"]
        assert chart["panelDefId"] == "wandb/line/v0"

    # the sweep run: one curve per metric through both ε, and the leaderboard
    (path,) = by_type["sweep"]
    records, summary = runs[path]
    sweep_group = run_record(records)["run_group"]
    assert wandb_offline.flat(summary["config"])["complete"] is True
    curves = table_file(path, summary["summary"], "sweep/curves/eps_table")
    expected = {}
    for group, table in results.items():
        metric = group.split("/")[1]
        eps = next(
            wandb_offline.flat(runs[p][1]["config"])["eps"]
            for p in by_type["aggregate"]
            if run_record(runs[p][0])["run_group"] == group
        )
        expected.setdefault(metric, []).append((eps, agree(table)["flipped"].astype(bool).mean()))
    assert sorted(curves["curve"].unique()) == ["l2", "ssim"]
    for metric, points in expected.items():
        line = curves[curves["curve"] == metric]
        assert line["eps"].tolist() == list(SWEEP_EPS)
        assert line["flip_rate"].tolist() == pytest.approx([r for _, r in sorted(points)])
    board = table_file(path, summary["summary"], "sweep/leaderboard")
    assert len(board) == 4 and set(board["metric"]) == {"l2", "ssim"}
    for _, row in board.iterrows():
        assert row["flip_rate_ci_low"] <= row["flip_rate"] <= row["flip_rate_ci_high"]
        same = board[board["eps"] == row["eps"]]
        assert row["rank"] == 1 + (same["flip_rate"] < row["flip_rate"]).sum()
        point = curves[(curves["curve"] == row["metric"]) & (curves["eps"] == row["eps"])]
        assert point["flip_rate"].tolist() == [pytest.approx(row["flip_rate"])]
    chart = next(
        r["config"]["update"]["_wandb.visualize.sweep/curves/eps"]["panel_config"]
        for r in records
        if r["type"] == "config" and "_wandb.visualize.sweep/curves/eps" in r["config"]["update"]
    )

    # the workspace: written into the sweep directory, no entity needed offline
    assert dashboard.main(["--sweep", str(sweep_dir), "--offline"]) == 0
    assert "--apply" in capsys.readouterr().out
    spec = json.loads((sweep_dir / "dashboard.json").read_text())
    assert spec["entity"] is None and spec["filters"] == {"complete": True}
    first = spec["sections"][0]["panels"]
    assert first[0]["type"] == "curve" and first[0]["table"] == "sweep/curves/eps_table"
    assert {k: first[0][k] for k in ("x", "y", "stroke")} == chart["fieldSettings"]
    assert first[0]["table"] in summary["summary"]  # the table it plots is the sweep run's
    assert {first[0]["x"], first[0]["y"], first[0]["stroke"]} <= set(curves.columns)
    assert first[1]["type"] == "table" and first[1]["table"] == "sweep/leaderboard"
    # the runs it shows: the aggregates and the sweep run, no shard run (all partial here)
    shown = [
        p
        for p, (recs, s) in runs.items()
        if run_record(recs)["run_group"] in spec["groups"]
        and all(wandb_offline.flat(s["config"]).get(k) == v for k, v in spec["filters"].items())
    ]
    assert sorted(shown) == sorted(by_type["aggregate"] + by_type["sweep"])
    assert sweep_group in spec["groups"]
    names = [s["name"] for s in spec["sections"]]
    assert names[1:4] == ["Live progress (x: triplets done)", "Distributions", "Example images"]

    pytest.importorskip("wandb_workspaces")
    import wandb_workspaces.reports.v2 as wr

    workspace = build_workspace({**spec, "entity": "team"})
    panel = workspace.sections[0].panels[0]
    assert isinstance(panel, wr.CustomChart) and panel.chart_name == "wandb/line/v0"
    assert panel.query == {"summaryTable": {"tableKey": "sweep/curves/eps_table"}}
    assert isinstance(workspace.sections[0].panels[1], wr.WeavePanelSummaryTable)
    assert workspace._to_model() is not None


def test_curves_take_any_minimal_eps_column():
    """A per-triplet minimal ε (``eps_star``, ``min_eps``, FGSM's ``eps_found``; NaN or inf:
    never flipped) gives the flip rate of the ✓ triplets at every ε where it changes."""
    from attackpsm.summary.curves import robustness_curves
    from attackpsm.summary.sweep import leaderboard, leaderboard_row

    table = pd.DataFrame(
        {
            "human_agrees": pd.array([True, True, True, True, False], dtype="boolean"),
            "flipped": [True, True, False, True, True],
            "flipped_saved": [True, False, False, False, True],
            "iterations": [3, 5, 30, 8, 1],
            "rmse_uint8": [1.0, 2.0, 9.0, 3.0, 9.0],
            "psnr_uint8": [40.0] * 5,
            "linf": [0.01] * 5,
            **{f"pct_px_gt_{t}_float": [0.0] * 5 for t in ("0.001", "0.01", "0.03")},
        }
    )
    keys = {"metric.name": "lpips_alex", "attack.name": "min_eps", "eps": 0.1}
    # ✓ rows: minimal ε 0.004, 0.012, never, 0.012; the ✗ row (0.001) is not counted
    for column, never in (("min_eps", np.inf), ("eps_star", np.inf), ("eps_found", np.nan)):
        curves = robustness_curves(
            table.assign(**{column: [0.004, 0.012, never, 0.012, 0.001]}), keys
        )
        assert list(curves) == ["eps"]  # its iterations are a search's, not a curve
        eps = curves["eps"]
        assert eps["eps"].tolist() == [0.0, 0.004, 0.012, 0.1]
        assert eps["flip_rate"].tolist() == [0.0, 0.25, 0.75, 0.75]
        assert set(eps["source"]) == {column}
    both = table.assign(min_eps=[0.5] * 5, eps_star=[0.004, 0.012, np.inf, 0.012, 0.001])
    assert set(robustness_curves(both, keys)["eps"]["source"]) == {"eps_star"}
    # without one: the flip rate at the run's ε, and against the iterations
    fixed = robustness_curves(table, {**keys, "attack.name": "pgd", "eps": 0.03})
    assert fixed["eps"][["eps", "flip_rate"]].values.tolist() == [[0.03, 0.75]]
    it = fixed["iterations"]
    assert it["iterations"].tolist() == [0, 3, 5, 8, 30]
    assert it["flip_rate"].tolist() == [0.0, 0.25, 0.5, 0.75, 0.75]
    assert set(it["curve"]) == {"lpips_alex · pgd · ε=0.03"}
    # the leaderboard row: ✓ triplets, Wilson interval, RMSE of the flips, median radius
    row = leaderboard_row(
        table.assign(min_eps=[0.004, 0.012, np.inf, 0.012, 0.001]),
        {**keys, "dataset.name": "bapps", "resolution.size": 64},
    )
    assert (row["samples"], row["flipped"], row["flip_rate"]) == (4, 3, 0.75)
    assert row["flip_rate_ci_low"] < 0.75 < row["flip_rate_ci_high"]
    assert row["rmse_flipped_mean"] == pytest.approx(2.0)
    assert row["median_min_eps"] == pytest.approx(0.012)
    worse = {**row, "metric": "l2", "flip_rate": 0.9}
    other = {**row, "metric": "l2", "attack": "onepixel", "eps": None, "resolution": None}
    ranked = leaderboard([worse, other, row])  # ranked within attack × ε (None is one too)
    assert ranked[["rank", "metric", "attack"]].values.tolist() == [
        [1, "lpips_alex", "min_eps"],
        [2, "l2", "min_eps"],
        [1, "l2", "onepixel"],
    ]


@pytest.mark.slow
def test_fgsm_scan_curve_through_merge_and_its_sweep_run(cfg_factory, tmp_path, capsys):
    """FGSM's scan (Alg. 3) measures each triplet's first flipping ε: its run's curve has a
    point at every such ε. ``python -m attackpsm cluster merge --wandb-dir`` logs the
    aggregate and the sweep run once; the dashboard of that results directory shows both."""
    from attackpsm.commands.cluster import main as merge

    args = ["logger=wandb", "logger.mode=offline", "metric=l2", "attack=fgsm"]
    out = run(cfg_factory([*args, "attack.max_eps=0.02", "dataset.num_triplets=12"]))
    table = pd.read_parquet(Path(out["run_dir"]) / "results.parquet")
    good = agree(table)
    found = good["eps_found"].to_numpy(dtype=float)
    assert np.isfinite(found).any() and np.isnan(found).any()  # flips and survivors

    def expected(curve: pd.DataFrame) -> None:
        xs = sorted({0.0, 0.02, *found[np.isfinite(found)].tolist()})
        assert curve["eps"].tolist() == pytest.approx(xs)
        for x, rate in zip(curve["eps"], curve["flip_rate"], strict=True):
            assert rate == pytest.approx((found <= x + 1e-12).mean())
        assert set(curve["source"]) == {"eps_found"}

    (shard_file,) = run_files(tmp_path / "logs")
    state = wandb_offline.leet(shard_file, summary=True)
    expected(table_file(shard_file, state["summary"], "curves/eps_table"))
    assert "curves/iterations_table" not in state["summary"]  # the scan's steps are ε

    results, logs = tmp_path / "results", tmp_path / "logs"
    assert merge(["merge", str(results), "--wandb-dir", str(logs)]) == 0
    files = run_files(logs)
    kinds = {f: run_record(wandb_offline.leet(f))["job_type"] for f in files}
    assert sorted(kinds.values()) == ["aggregate", "shard", "sweep"]
    (sweep_file,) = [f for f, k in kinds.items() if k == "sweep"]
    state = wandb_offline.leet(sweep_file, summary=True)
    curve = table_file(sweep_file, state["summary"], "sweep/curves/eps_table")
    expected(curve)
    assert set(curve["curve"]) == {"l2"}
    board = table_file(sweep_file, state["summary"], "sweep/leaderboard")
    assert board["median_min_eps"].tolist() == [
        pytest.approx(float(np.median(np.nan_to_num(found, nan=np.inf))))
    ]
    assert merge(["merge", str(results), "--wandb-dir", str(logs)]) == 0
    assert run_files(logs) == files  # merged and logged already: nothing new

    assert dashboard.main(["--sweep", str(results), "--offline"]) == 0
    spec = json.loads((results / "dashboard.json").read_text())
    assert run_record(wandb_offline.leet(sweep_file))["run_group"] in spec["groups"]
    capsys.readouterr()
