"""The benchmark's per-triplet loops (Algorithms 1 and 3 verbatim) agree with the engine."""

from __future__ import annotations

from attackpsm.bench import Workload, format_table, measure


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
