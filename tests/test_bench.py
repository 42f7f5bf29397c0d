"""The benchmark's per-triplet loops (Algorithms 1 and 3 verbatim) agree with the engine."""

from __future__ import annotations

from attackpsm.commands.bench import Workload, format_table, measure


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
    from attackpsm.commands.bench import SLOWER, Row

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

    from attackpsm.commands.bench import SLOWER

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
