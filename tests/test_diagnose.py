"""Gradient-masking diagnostics (``python -m attackpsm diagnose``): the two controls.

Negative control: DISTS called as the ``DISTS_pytorch`` package calls it by default
(``metric.require_grad=false``: VGG stages under ``no_grad``) gives attacks the gradient
of its pixel-level stage only; the diagnostics must flag it. Positive control: LPIPS(Alex)
and DISTS with its full gradient must pass. Real pretrained weights throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attackpsm.commands.diagnose import allowed_drop, diagnose, main
from attackpsm.config import compose

ROOT = Path(__file__).resolve().parent.parent
# a small configuration of the checks that runs on a CPU in about a minute per metric
SMALL = [
    "device=cpu",
    "resolution.size=32",
    "diagnose.num_triplets=12",
    "diagnose.unbounded_steps=60",
    "diagnose.steps=[10,30,60]",
    "diagnose.square_queries=300",
]


def _cfg(tmp_path, *overrides):
    return compose(
        [
            "+diagnose=default",
            "logger=none",
            f"paths.results_dir={tmp_path}",
            *SMALL,
            *overrides,
        ]
    )


def test_allowed_drop_is_one_triplet_or_the_stated_fraction():
    assert allowed_drop(24, 0.02) == 1
    assert allowed_drop(100, 0.02) == 2
    assert allowed_drop(101, 0.02) == 3


@pytest.mark.slow
def test_gradient_check_flags_the_masked_dists_call_and_passes_lpips(tmp_path):
    masked = diagnose(_cfg(tmp_path, "metric=dists", "metric.require_grad=false"), ["gradient"])
    full = diagnose(_cfg(tmp_path, "metric=dists"), ["gradient"])
    lpips = diagnose(_cfg(tmp_path, "metric=lpips_alex"), ["gradient"])
    cos = {
        name: r["checks"][0]["numbers"]["median_cosine"]
        for name, r in (("masked", masked), ("full", full), ("lpips", lpips))
    }
    print("median cosine(gradient, finite differences):", cos)
    assert masked["flags"] == ["gradient"], cos
    assert full["passed"] and lpips["passed"], cos
    assert cos["masked"] < 0.9 <= min(cos["full"], cos["lpips"])


def test_unknown_check_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid: \\['gradient'"):
        diagnose(_cfg(tmp_path, "metric=l2"), ["gradients"])


def test_an_error_exits_2_never_1(tmp_path, capsys):
    """1 means "flagged": a run that could not diagnose anything must not read as one."""
    code = main(["metric=l2", "diagnose.checks=[gradients]", f"paths.results_dir={tmp_path}"])
    assert code == 2
    assert "unknown diagnostic(s) ['gradients']" in capsys.readouterr().err
    assert main(["metric=no_such_metric", f"paths.results_dir={tmp_path}"]) == 2


@pytest.mark.slow
def test_masked_dists_is_flagged_and_lpips_passes_every_check(tmp_path):
    masked = main(
        [*SMALL, "metric=dists", "metric.require_grad=false", f"paths.results_dir={tmp_path}"]
    )
    assert masked == 1
    (report,) = (tmp_path / "diagnostics" / "synthetic-res32").glob("dists-*.json")
    data = json.loads(report.read_text())
    assert not data["passed"] and "gradient" in data["flags"]
    assert data["metric_config"]["require_grad"] is False
    assert main([*SMALL, "metric=lpips_alex", f"paths.results_dir={tmp_path}"]) == 0


@pytest.mark.slow
def test_the_command_exits_0_when_every_check_passes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "attackpsm.commands.diagnose",
            "metric=lpips_alex",
            *SMALL,
            f"paths.results_dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("gradient", "unbounded", "monotone", "blackbox", "randomness"):
        assert f"{name}" in out.stdout and "PASSED" in out.stdout
    assert "all checks passed" in out.stdout
