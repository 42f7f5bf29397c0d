"""Faults and hostile inputs: determinism under load and across batch sizes, the metric
contract, files that try to run code or read outside their root, and bad values.

Fast mechanics on L2 and on LPIPS with a random backbone; every fault is injected for real
(busy processes, planted files, a local package index).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from attackpsm.attacks.none import NoAttack
from attackpsm.attacks.pgd import PGD
from attackpsm.engine import FittingBatches, attack_batch, contract_violations
from attackpsm.metrics.classic import L2
from attackpsm.run import build
from tests.conftest import synthetic_batch

ROOT = Path(__file__).resolve().parent.parent
ATTACKS = sorted(p.stem for p in (ROOT / "conf" / "attack").glob("*.yaml") if p.stem != "saved")
# the smallest settings that still exercise each attack's mechanics (restarts included)
SMALL = {
    "max_iterations": 4,
    "max_queries": 30,
    "generations": 2,
    "population": 8,
    "pgd_steps": 2,
    "restarts": 1,
}


def shrink(node) -> None:
    """Cut every iteration/query budget of a composed attack node (nested attacks too)."""
    if isinstance(node, dict) or hasattr(node, "items"):
        for key in list(node.keys()):
            if key in SMALL and (node[key] is None or isinstance(node[key], int)):
                node[key] = SMALL[key] if key == "restarts" else min(node[key] or 99, SMALL[key])
            else:
                shrink(node[key])
    elif isinstance(node, (list, tuple)) or hasattr(node, "__len__") and not isinstance(node, str):
        for item in node:
            shrink(item)


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_identical_at_any_batch_size(name, cfg_factory):
    """Same seed, one batch of 5 triplets vs batches of 2 and of 1: identical tables."""
    cfg = cfg_factory([f"attack={name}", "metric=l2"])
    with open_dict(cfg):
        shrink(cfg.attack)
    batch = synthetic_batch(num_triplets=5, seed=11, size=16)
    tables = []
    for limit in (None, 2, 1):
        attack = build(cfg.attack)
        rows, errors = FittingBatches(limit)(L2(), attack, batch)
        assert len(errors) == 0 and len(rows) == 5
        tables.append(rows)
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], other, check_exact=True)


# one process, as a user runs it: stAdv on a CNN metric ends its L-BFGS with one-triplet
# metric calls, whose backward pass is where a multi-threaded BLAS used to vary
_LOAD_SCRIPT = """
import hashlib, sys
import attackpsm  # first, as in a run: fixes the BLAS reduction order
import torch
from attackpsm.attacks.pgd import PGD
from attackpsm.attacks.stadv import StAdv
from attackpsm.metrics.lpips import LPIPS
from tests.conftest import select_prey, synthetic_batch

if torch.get_num_threads() < 2:
    print("single-threaded")
    sys.exit(0)
torch.manual_seed(0)
metric = LPIPS("alex", random_backbone=True)
batch = synthetic_batch(num_triplets=4, seed=5)
prepared, prey, s_other = select_prey(metric, batch)
one = [p[:1] for p in prepared]
gradients = set()
for _ in range(20):  # the kernel itself: a one-triplet backward pass
    x = prey[:1].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(metric.score(one, x).sum(), x)
    gradients.add(hashlib.sha256(grad.numpy().tobytes()).hexdigest())
digest = [str(len(gradients))]
for _ in range(2):
    for attack, n in ((StAdv(max_iterations=5), 4), (PGD(max_iterations=3), 1)):
        out = attack.run(metric, [p[:n] for p in prepared], prey[:n], s_other[:n])
        digest.append(hashlib.sha256(out.adv.numpy().tobytes()).hexdigest())
print(" ".join(digest))
"""


def _attack_digests(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    if out == ["single-threaded"]:
        pytest.skip("needs more than one CPU thread")
    return out


@pytest.mark.slow
def test_gradient_attacks_are_identical_under_cpu_load():
    """stAdv and PGD on one triplet: bit-identical with the cores busy or idle."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_CBWR")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    quiet = _attack_digests(env)
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        loaded = _attack_digests(env)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert quiet[0] == loaded[0] == "1", "one-triplet gradients differ from call to call"
    assert quiet[1:3] == quiet[3:], "two runs in one idle process differ"
    assert loaded[1:3] == loaded[3:], "two runs in one busy process differ"
    assert quiet == loaded, "the busy machine changed the result"


# --- the metric contract -----------------------------------------------------------------


class _FlatIsNegative(L2):
    """L2, except that a flat candidate scores -100 (CW-SSIM's old bug on flat images)."""

    def score(self, prepared, x):
        d = super().score(prepared, x)
        flat = x.flatten(1).std(1) < 1e-6
        return torch.where(flat, torch.full_like(d, -100.0), d)


class _NegativeWhenAttacked(L2):
    """L2 on the clean images; triplet 1's adversarial images score -5 (a broken metric)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, prepared, x):
        self.calls += 1
        d = super().score(prepared, x)
        if self.calls > 2 and len(d) > 1:
            d = d.clone()
            d[1] = -5.0
        return d


def test_negative_clean_distance_is_a_recorded_skip_not_a_flip():
    batch = synthetic_batch(num_triplets=4, seed=3, size=16)
    batch.p0[2] = 0.25  # a flat distortion
    rows, errors = attack_batch(_FlatIsNegative(), PGD(max_iterations=3), batch)
    assert batch.triplet_id[2] not in set(rows["triplet_id"])
    assert len(rows) == 3
    (reason,) = errors.loc[errors["triplet_id"] == batch.triplet_id[2], "reason"]
    assert reason == "metric contract: negative distance d0=-100"


def test_negative_distance_during_attack_is_a_recorded_skip():
    batch = synthetic_batch(num_triplets=3, seed=4, size=16)
    rows, errors = attack_batch(_NegativeWhenAttacked(), NoAttack(), batch)
    assert list(rows["triplet_id"]) == [batch.triplet_id[0], batch.triplet_id[2]]
    assert list(errors["triplet_id"]) == [batch.triplet_id[1]]
    assert errors["reason"].iloc[0].startswith("metric contract: negative distance s_adv")


def test_tiny_negative_rounding_keeps_the_contract():
    assert contract_violations(d=torch.tensor([-5e-7, 0.0, 1.0])) == [None, None, None]
    assert contract_violations(d=torch.tensor([float("nan"), -1e-3])) == [
        "metric contract: non-finite distance d=nan",
        "metric contract: negative distance d=-0.001",
    ]


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(2, 3, 8, 8) * 255, r"got values in \[0"),
        (torch.rand(2, 1, 8, 8), r"got shape \(2, 1, 8, 8\)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "got dtype torch.uint8"),
        (torch.rand(3, 8, 8), r"got shape \(3, 8, 8\)"),
    ],
)
def test_metric_refuses_images_off_the_package_convention(images, message):
    good = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=message):
        L2().score(L2().prepare(good), images)
    with pytest.raises(ValueError, match=message):
        L2().prepare(images)
    with pytest.raises(ValueError, match="expects the candidate as"):
        _FlatIsNegative().score(good, images)  # a subclass's own score is checked too
