"""The bench: its per-triplet loops (Algorithms 1 and 3 verbatim) agree with the engine;
its command line (one subcommand per mode, ``engine`` by default) and its one writer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attackpsm.commands.bench.engine import SLOWER, Row, format_table, measure
from attackpsm.commands.bench.workloads import Workload


def test_pgd_engine_matches_algorithm_1_loop(lpips_alex):
    w = Workload("pgd", "lpips_alex", 32, "pgd", {"max_iterations": 10}, triplets=6, batch_size=6)
    row = measure(w, lpips_alex.net.slice1[0].weight.device, reference_limit=6, tol=1e-3)
    assert row.reference_triplets == 6
    assert row.agree + row.disagree_within_tol == 6 and row.disagree == 0
    assert row.engine_per_s > 0 and row.reference_per_s > 0
    assert "pgd" in format_table([row])


def test_fgsm_engine_matches_algorithm_3_scan():
    import torch

    w = Workload("fgsm", "lpips_alex", 32, "fgsm", {"max_eps": 0.004}, triplets=3, batch_size=3)
    row = measure(w, torch.device("cpu"), reference_limit=3, tol=1e-3)
    assert row.agree + row.disagree_within_tol == 3 and row.disagree == 0


def test_warning_row_when_an_engine_is_slower_than_its_loop():
    """A row whose engine is slower than its loop gets a warning row; a faster one none."""

    def row(name: str, ref: float, eng: float) -> Row:
        return Row(name, "cpu", 8, 8, ref, eng, eng / ref, 1.0, 1.0, 8, 0, 0, 0.5)

    table = format_table([row("fast", 1.0, 2.0), row("slow", 2.0, 1.0)])
    warnings = [line for line in table.splitlines() if line.startswith("| WARNING")]
    assert len(warnings) == 1
    assert "slow" in warnings[0] and SLOWER in warnings[0] and "0.50x" in warnings[0]
    assert warnings[0].count("|") == table.splitlines()[0].count("|")  # one table row
    assert not any(
        line.startswith("| WARNING") for line in format_table([row("f", 1, 3)]).splitlines()
    )


def test_stadv_engine_matches_its_loop_over_alternating_passes(lpips_alex, capsys):
    """stAdv: two alternating timed passes per side, same decisions, the note set only
    when the engine is the slower side; ``profile`` prints both sides' profiles."""
    import torch

    w = Workload(
        "stadv", "lpips_alex", 32, "stadv", {"max_iterations": 5}, triplets=3, batch_size=3
    )
    row = measure(w, torch.device("cpu"), reference_limit=3, tol=1e-3, passes=2, profile=5)
    assert row.agree + row.disagree_within_tol == 3 and row.disagree == 0
    assert (SLOWER in row.notes) == (row.engine_per_s < row.reference_per_s)
    out = capsys.readouterr().out
    engine, loop = out.split("profile of the loop")
    assert "profile of the engine" in engine and "function calls" in engine
    assert "function calls" in loop


# --- the command line ------------------------------------------------------------------------


def test_each_mode_takes_only_its_own_flags(capsys):
    """A flag of one mode is refused by another, naming it; without a mode, ``engine``."""
    from attackpsm.commands.bench import DEFAULT_MODE, MODES, main, parser

    assert DEFAULT_MODE == "engine" and set(MODES) == {
        "engine",
        "loading",
        "modes",
        "certify",
        "logging",
    }
    args = parser().parse_args(["engine", "--quick", "--no-loading"])
    assert args.quick and not args.loading and args.out == "bench.json"
    for argv, flag in (
        (["certify", "--quick"], "--quick"),
        (["logging", "--tol", "0.1"], "--tol"),
        (["loading", "--compile"], "--compile"),
        (["--certify", "lpips_alex"], "--certify"),  # `bench --FLAG` is `bench engine --FLAG`
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_engine_is_the_default_mode_and_writes_json_and_markdown(tmp_path, capsys):
    """``bench --workloads X`` runs the engine mode; the one writer puts the table on stdout,
    the rows under the measurement's ``meta`` in ``--out`` and both in ``--markdown``."""
    from attackpsm.commands.bench import main

    out, md = tmp_path / "b.json", tmp_path / "b.md"
    argv = ["--device", "cpu", "--quick", "--workloads", "pgd30_lpips_alex_64", "--passes", "1"]
    assert main([*argv, "--reference-limit", "1", "--out", str(out), "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"meta", "rows", "pipeline"} and result["pipeline"] is None
    (row,) = result["rows"]
    assert row["workload"] == "pgd30_lpips_alex_64" and row["reference_triplets"] == 1
    assert row["agree"] + row["disagree_within_tol"] == 1 and row["disagree"] == 0
    assert result["meta"]["threads"] >= 1 and "torch" in result["meta"]
    table = format_table([Row(**row)])
    assert table in capsys.readouterr().out and table in md.read_text()
    assert md.read_text().startswith(f"device: {result['meta']['device']}; torch: ")


def test_unknown_workload_names_the_valid_ones(tmp_path):
    from attackpsm.commands.bench import main

    with pytest.raises(SystemExit, match=r"unknown workloads \['nope'\]; valid: .*pgd30_lpips"):
        main(["--device", "cpu", "--workloads", "nope", "--out", str(tmp_path / "b.json")])


def test_metrics_and_attacks_are_composed_from_conf():
    """The bench's objects are the conf/ options with their keys overridden, checked as a
    run checks them: a key the option lacks is a clear error naming its keys."""
    from attackpsm.commands.bench.common import build_attack, build_metric
    from attackpsm.config import ConfigError

    pgd = build_attack("pgd", max_iterations=5, compact_every=0, check_every=0)
    assert (pgd.eps, pgd.alpha, pgd.max_iterations) == (0.03, 0.001, 5)  # conf/attack/pgd.yaml
    assert build_attack("onepixel").population == 400
    assert type(build_metric("l2")).__name__ == "L2"
    with pytest.raises(ConfigError, match=r"attack.epsilon=0.1: attack 'pgd' has no key"):
        build_attack("pgd", epsilon=0.1)
    with pytest.raises(ConfigError, match=r"attack='nope' is not an option"):
        build_attack("nope")


def test_the_package_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "attackpsm.commands.bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "engine" in out and "certify" in out and "logging" in out
