"""The three on-disk datasets through the app: ``python -m attackpsm dataset=<name>
dataset.root=<path>``, bad data recorded and counted while the run goes on, roots from
the environment, and ``python -m attackpsm data count``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from attackpsm.commands.app import CONFIG_DIR
from attackpsm.data.files import DatasetLayoutError
from attackpsm.job.run import run
from tests.dataset_fixtures import bapps_path, make_bapps, make_clic, make_pieapp

REPO = Path(__file__).resolve().parent.parent
FAST = ["metric=l2", "attack=pgd", "resolution='64'", "logger=none", "device=cpu", "progress=false"]


def compose_cfg(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(
            config_name="config",
            overrides=[
                *FAST,
                f"paths.results_dir={tmp_path / 'results'}",
                f"paths.log_dir={tmp_path / 'logs'}",
                *overrides,
            ],
        )


def fixture_root(name: str, tmp_path: Path) -> Path:
    if name == "bapps":
        return make_bapps(tmp_path / name, {"cnn": [0.0, 1.0, 0.6, 1.0], "deblur": [0.0, 1.0]})
    if name == "pieapp":
        return make_pieapp(tmp_path / name, {3: [("c1", "f1", 0.9), ("f1", "c1", 0.05)]})
    return make_clic(tmp_path / name, [0, 1, 1])


@pytest.mark.parametrize("name, expected", [("bapps", 5), ("pieapp", 2), ("clic", 3)])
def test_cli_runs_each_dataset(tmp_path, name, expected):
    root = fixture_root(name, tmp_path)
    cmd = [
        sys.executable, "-m", "attackpsm", f"dataset={name}", f"dataset.root={root}", *FAST,
        f"paths.results_dir={tmp_path / 'results'}", f"paths.log_dir={tmp_path / 'logs'}",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = list((tmp_path / "results" / name).glob("*/*/*/results.parquet"))
    assert len(results) == 1
    table = pd.read_parquet(results[0])
    assert len(table) == expected and table["triplet_id"].is_unique
    assert "Skipped triplets" in out.stdout
    if name != "bapps":  # every fixture label is right for L2 (see dataset_fixtures)
        assert table["human_agrees"].astype(bool).all()


def test_bad_triplets_are_skipped_counted_and_recorded(tmp_path, capsys):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0, 0.0, 1.0]})
    bapps_path(root, "cnn", "p0", 1).unlink()
    bapps_path(root, "cnn", "ref", 2).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    np.save(bapps_path(root, "cnn", "judge", 3), np.array([-0.5], np.float32))
    cfg = compose_cfg(tmp_path, ["dataset=bapps", f"dataset.root={root}", "shard.count=2"])
    for index in (0, 1):  # both shards; the summary is written once they are complete
        cfg.shard.index = index
        headline = run(cfg)
    assert headline["samples"] == 2 and headline["skipped"] == 3
    run_dir = Path(headline["run_dir"])
    errors = pd.read_parquet(run_dir / "errors.parquet")
    assert sorted(errors["triplet_id"]) == ["val/cnn/000001", "val/cnn/000002", "val/cnn/000003"]
    assert errors["reason"].str.len().gt(0).all()
    assert (
        "Skipped triplets (unreadable or invalid, see errors.parquet): 3" in capsys.readouterr().out
    )
    assert "Skipped triplets" in (run_dir / "summary.md").read_text()


def test_root_from_environment_and_missing_root(tmp_path, monkeypatch):
    root = make_clic(tmp_path / "clic", [0, 1])
    monkeypatch.setenv("ATTACKPSM_CLIC", str(root))
    cfg = compose_cfg(tmp_path, ["dataset=clic", "attack=none"])
    assert cfg.dataset.root == str(root)
    assert run(cfg)["samples"] == 2
    cfg = compose_cfg(tmp_path, ["dataset=bapps", f"dataset.root={tmp_path / 'absent'}"])
    with pytest.raises(Exception, match="does not exist[\\s\\S]*Expected layout") as failure:
        run(cfg)  # hydra's instantiate wraps the loader's error, keeping its message
    assert isinstance(failure.value.__cause__ or failure.value, DatasetLayoutError)


def test_count_command(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 0.4, 1.0], "color": [1.0]})
    cmd = [
        sys.executable,
        "-m",
        "attackpsm.commands.data",
        "count",
        "bapps",
        f"dataset.root={root}",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.stdout.splitlines() if ln.strip()}
    assert (
        lines["cnn"] == ["2", "0"] and lines["color"] == ["1", "0"] and lines["total"] == ["3", "0"]
    )
    missing = [
        sys.executable,
        "-m",
        "attackpsm.commands.data",
        "count",
        "clic",
        f"dataset.root={root}/no",
    ]
    out = subprocess.run(missing, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Expected layout" in out.stderr and "oracle.csv" in out.stderr


def test_all_triplets_unusable_is_an_error_after_recording_them(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0]})
    for i in range(3):
        bapps_path(root, "cnn", "p1", i).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = compose_cfg(tmp_path, ["dataset=bapps", f"dataset.root={root}"])
    with pytest.raises(ValueError, match="zero usable triplets: all 3 were skipped"):
        run(cfg)
    errors = list((tmp_path / "results").glob("**/errors.parquet"))
    assert len(errors) == 1 and len(pd.read_parquet(errors[0])) == 3
