"""Attack invariants: budgets, real flips, black-box One-pixel, stAdv mechanics, batching.

Mechanics run on L2 and on LPIPS with a random backbone (fast); the numbers in docs/research.md
come from the real weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from attackpsm.attacks import lbfgs
from attackpsm.attacks.fgsm import FGSM
from attackpsm.attacks.onepixel import (
    CPU_BATCH,
    DEVICE_BATCH,
    OnePixel,
    counter_uniform,
    image_keys,
)
from attackpsm.attacks.pgd import PGD, ReversePGD
from attackpsm.attacks.stadv import StAdv, StAdvPGD, flow_loss, rank_term, warp
from attackpsm.engine import attack_batch
from attackpsm.images import on_grid, quantize, saved
from attackpsm.metrics.base import select
from attackpsm.metrics.classic import L2
from attackpsm.protocol.twoafc import rank_flipped
from tests.conftest import assert_config_runs, select_prey, synthetic_batch


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(num_triplets=10, seed=5)


@pytest.fixture(scope="module")
def metrics(lpips_rand):
    return {"l2": L2(), "lpips_rand": lpips_rand}


# small settings: every attack of the package, fast enough for the quick suite
SMALL = {
    "fgsm": lambda: FGSM(max_eps=0.02),
    "pgd": lambda: PGD(),
    "pgd_alpha": lambda: PGD(alpha=0.006, max_iterations=10),
    "pgd_fixed": lambda: PGD(max_iterations=5, early_stop=False),
    "pgd_reverse": lambda: ReversePGD(max_iterations=10),
    "onepixel": lambda: OnePixel(population=12, generations=4),
    "stadv": lambda: StAdv(max_iterations=8),
    "stadv_official": lambda: StAdv(max_iterations=8, variant="official"),
    "stadv_pgd": lambda: StAdvPGD(max_iterations=6, pgd_steps=3),
}


@pytest.mark.parametrize("metric_name", ["l2", "lpips_rand"])
@pytest.mark.parametrize("attack_name", sorted(SMALL))
def test_reported_flips_are_real(attack_name, metric_name, metrics, batch):
    """Every flip the engine reports holds when the image is re-scored from scratch, and
    every flip after saving holds on the saved image (:func:`attackpsm.images.saved`)."""
    metric, attack = metrics[metric_name], SMALL[attack_name]()
    seen = {}
    rows, errors = attack_batch(
        metric, attack, batch, sink=lambda m, b, p, adv, r: seen.update(adv=adv)
    )
    assert len(errors) == 0 and len(rows) == len(batch)
    for column in attack.columns:
        assert column in rows.columns
    adv = seen["adv"]
    prey_is_p1 = torch.tensor(rows["prey"].to_numpy(), dtype=torch.bool)
    prey = torch.where(prey_is_p1[:, None, None, None], batch.p1, batch.p0)
    assert adv.shape == prey.shape and adv.min() >= -1 and adv.max() <= 1
    prepared = metric.prepare(batch.ref.clone())  # fresh preparation
    with torch.no_grad():
        s_float = metric.score(prepared, adv)
        s_saved = metric.score(prepared, saved(adv))
    s_other = torch.tensor(rows["s_other"].to_numpy())
    flipped = torch.tensor(rows["flipped"].to_numpy())
    flipped_saved = torch.tensor(rows["flipped_saved"].to_numpy())
    torch.testing.assert_close(
        s_float, torch.tensor(rows["s_adv"].to_numpy()), rtol=1e-4, atol=1e-6
    )
    assert torch.equal(flipped, rank_flipped(s_float, s_other, attack.reverse))
    assert all(on_grid(x) for x in (batch.ref, batch.p0, batch.p1))  # the paper's 8-bit inputs
    assert torch.equal(flipped_saved, rank_flipped(s_saved, s_other, attack.reverse))


# --- budgets ---------------------------------------------------------------------------


@pytest.mark.parametrize("attack_name", ["pgd", "pgd_alpha", "pgd_fixed", "pgd_reverse"])
def test_pgd_budget_holds(attack_name, lpips_rand, batch):
    attack = SMALL[attack_name]()
    prepared, prey, s_other = select_prey(lpips_rand, batch, reverse=attack.reverse)
    out = attack.run(lpips_rand, prepared, prey, s_other)
    assert (out.adv - prey).abs().max() <= attack.eps + 1e-6
    assert out.adv.min() >= -1 and out.adv.max() <= 1
    if not attack.early_stop:  # fixed-step PGD(k): every triplet takes exactly k steps
        assert (out.columns["iterations"] == attack.max_iterations).all()


def test_reverse_pgd_attacks_the_less_similar_image(lpips_rand, batch):
    rows, _ = attack_batch(lpips_rand, ReversePGD(max_iterations=10), batch)
    # the prey is the distortion the metric ranks farther from the reference
    assert ((rows["prey"] == 1) == (rows["d1"] >= rows["d0"])).all()
    assert (rows["s_prey"] >= rows["s_other"]).all()
    flipped = rows["flipped"].astype(bool)
    assert (rows.loc[flipped, "s_adv"] < rows.loc[flipped, "s_other"]).all()
    # the sign steps on Eq. 7 make the prey more similar
    assert (rows["s_adv"] <= rows["s_prey"] + 1e-6).all()


def test_fgsm_budget_and_eps_grid(lpips_rand, batch):
    attack = FGSM(max_eps=0.02)
    prepared, prey, s_other = select_prey(lpips_rand, batch)
    out = attack.run(lpips_rand, prepared, prey, s_other)
    eps = out.columns["eps_found"]
    assert torch.equal(out.flipped, ~torch.isnan(eps))
    linf = (out.adv - prey).abs().flatten(1).amax(1)
    assert (linf <= 0.02 + 1e-6).all()
    assert (linf[out.flipped] <= eps[out.flipped].float() + 1e-6).all()
    steps = eps[out.flipped] / attack.eps_step
    torch.testing.assert_close(steps, steps.round(), atol=1e-6, rtol=0)
    assert (out.columns["iterations"][out.flipped] == steps.round().long()).all()


@pytest.mark.parametrize("metric_name", ["l2", "lpips_rand"])
def test_fgsm_equals_the_linear_scan(metric_name, metrics, batch):
    """The batched ε scan returns exactly the first flipping ε of Algorithm 3's loop."""
    metric = metrics[metric_name]
    prepared, prey, s_other = select_prey(metric, batch)
    chunked = FGSM(max_eps=0.005, max_batch=7).run(metric, prepared, prey, s_other)
    wide = FGSM(max_eps=0.005, max_batch=100_000).run(metric, prepared, prey, s_other)
    assert chunked.flipped.any() and (~chunked.flipped).any()  # both outcomes are checked
    direction = FGSM().gradient_sign(metric, prepared, prey, s_other)
    for i in range(prey.shape[0]):  # Algorithm 3, one ε at a time
        found, k = float("nan"), 1
        while k * 0.0001 <= 0.005 + 1e-12:
            x = (prey[i : i + 1] + k * 0.0001 * direction[i : i + 1]).clamp(-1, 1)
            with torch.no_grad():
                s = metric.score(select(prepared, torch.tensor([i])), x)
            if s.item() > s_other[i].item():
                found = k * 0.0001
                break
            k += 1
        for out in (chunked, wide):
            got = out.columns["eps_found"][i].item()
            assert (math.isnan(got) and math.isnan(found)) or got == pytest.approx(found, abs=1e-12)


def test_onepixel_changes_at_most_its_pixels(lpips_rand, batch):
    for pixels in (1, 2):
        attack = OnePixel(pixels=pixels, population=10, generations=3)
        prepared, prey, s_other = select_prey(lpips_rand, batch)
        out = attack.run(lpips_rand, prepared, prey, s_other)
        changed = (out.adv != prey).any(dim=1).flatten(1).sum(1)
        assert (changed <= pixels).all() and (changed >= 1).any()
        # colours are whole 8-bit levels: the changed pixels survive saving as PNG
        moved = (out.adv != prey).any(dim=1, keepdim=True).expand_as(prey)
        assert torch.equal(quantize(out.adv)[moved], out.adv[moved])
        assert torch.equal(out.columns["queries"], 10 * (out.columns["iterations"] + 1))
        assert (out.columns["iterations"] <= 3).all()
        not_flipped = ~out.flipped
        assert (out.columns["iterations"][not_flipped] == 3).all()


# --- One-pixel is black-box ------------------------------------------------------------


def test_onepixel_never_calls_backward(lpips_rand, batch, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("One-pixel called backward")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    grad_modes = []
    original = lpips_rand.score

    def spy(prepared, x):
        grad_modes.append(torch.is_grad_enabled() or x.requires_grad)
        return original(prepared, x)

    monkeypatch.setattr(lpips_rand, "score", spy)
    attack = OnePixel(population=8, generations=2)
    assert not attack.white_box
    prepared, prey, s_other = select_prey(lpips_rand, batch)
    grad_modes.clear()
    out = attack.run(lpips_rand, prepared, prey, s_other)
    assert grad_modes and not any(grad_modes)  # every metric call ran without autograd
    assert not out.adv.requires_grad and not out.s_adv.requires_grad


def test_onepixel_call_size_is_cache_sized_on_cpu_and_whole_elsewhere():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object, no GPU needed
    attack = OnePixel()
    assert attack.max_batch is None
    # on a CPU: calls of at most CPU_BATCH images, equal in size (no small remainder)
    for total in (1, 100, CPU_BATCH, CPU_BATCH + 1, 800, 40_000):
        step = attack.call_size(total, cpu)
        sizes = [min(step, total - i) for i in range(0, total, step)]
        assert max(sizes) <= CPU_BATCH and max(sizes) - min(sizes) <= len(sizes)
        assert len(sizes) == math.ceil(total / CPU_BATCH)
    assert attack.call_size(800, cpu) == 115  # 7 calls: 6 of 115, one of 110
    # on an accelerator the population is scored in the large calls it had before
    assert attack.call_size(40_000, cuda) == DEVICE_BATCH == 2048
    assert OnePixel(max_batch=300).call_size(800, cpu) == 300
    assert OnePixel(max_batch=300).call_size(800, cuda) == 300


def test_onepixel_cpu_calls_change_no_bit(lpips_rand, monkeypatch):
    """Cache-sized calls on a CPU give the per-triplet table of one call per generation
    (``max_batch=2048``: the earlier default) bit for bit."""
    batch = synthetic_batch(num_triplets=6, seed=11, size=32, variant="calibrated")
    sizes: list[int] = []
    original = lpips_rand.score

    def spy(prepared, x):
        sizes.append(x.shape[0])
        return original(prepared, x)

    monkeypatch.setattr(lpips_rand, "score", spy)
    tables, calls = [], []
    for max_batch in (None, 2048):
        sizes.clear()
        attack = OnePixel(population=60, generations=4, max_batch=max_batch)
        tables.append(attack_batch(lpips_rand, attack, batch)[0])
        calls.append(list(sizes))
    chunked, whole = calls
    # d0, d1 (2 calls), the 8-bit re-check (1 or 3 calls) around the population's calls
    assert max(chunked[2:-1]) <= CPU_BATCH < 6 * 60 == whole[2]
    assert len(chunked) > len(whole)
    assert tables[0]["iterations"].max() > 0  # the evolution ran past the first generation
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


# --- stAdv -----------------------------------------------------------------------------


def test_zero_flow_is_identity(batch):
    images = torch.cat([batch.ref, batch.p0])
    out = warp(images, torch.zeros(images.shape[0], 2, *images.shape[2:]))
    assert torch.equal(out, images)


def test_warp_follows_the_flow(batch):
    images = batch.ref[:2]
    flow = torch.zeros(2, 2, *images.shape[2:])
    flow[:, 0] = 1.0  # u = +1: each pixel samples its right neighbour
    out = warp(images, flow)
    assert torch.equal(out[..., :-1], images[..., 1:])
    flow[:, 0], flow[:, 1] = 0.0, 0.5  # half a pixel down: average of the two rows
    torch.testing.assert_close(
        warp(images, flow)[..., :-1, :], 0.5 * (images[..., :-1, :] + images[..., 1:, :])
    )


def test_flow_loss_matches_eq5_by_hand():
    torch.manual_seed(1)
    flow = torch.randn(1, 2, 3, 4)
    padded = torch.zeros(2, 5, 6)
    padded[:, 1:-1, 1:-1] = flow[0]
    paper = official = 0.0
    for i in range(1, 4):
        for j in range(1, 5):
            p = padded[:, i, j]
            for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                paper += torch.sqrt(((p - padded[:, i + di, j + dj]) ** 2).sum() + 1e-8)
            for di, dj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                official += ((p - padded[:, i + di, j + dj]) ** 2).sum() + 1e-8
    torch.testing.assert_close(flow_loss(flow, "paper"), paper.reshape(1))
    torch.testing.assert_close(flow_loss(flow, "official"), official.reshape(1))
    s_other, s_adv = torch.tensor([0.3]), torch.tensor([0.1])
    torch.testing.assert_close(rank_term(s_other, s_adv, "paper"), torch.tensor([0.75**2]))
    torch.testing.assert_close(rank_term(s_other, s_adv, "official"), torch.tensor([0.75]))


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_stadv_loss_decreases(variant, lpips_rand, batch):
    """L-BFGS lowers Eq. 4 at every accepted iteration, down to 0 at a flip."""
    attack = StAdv(max_iterations=6, variant=variant)
    prepared, prey, s_other = select_prey(lpips_rand, batch)
    opt = attack.optimize_flow(lpips_rand, select(prepared, torch.arange(4)), prey[:4], s_other[:4])
    zero = torch.zeros(4, 2, *prey.shape[2:])
    with torch.no_grad():
        initial = attack.loss(
            zero, s_other[:4], lpips_rand.score(select(prepared, torch.arange(4)), prey[:4])
        )
    for i, trace in enumerate(opt.trace):
        trace = torch.tensor(trace)
        assert trace[0].item() == pytest.approx(initial[i].item(), rel=1e-5)
        assert (trace[1:] <= trace[:-1] + 1e-6).all()
        assert trace[-1] < trace[0]
    assert (opt.loss < initial).all()
    assert (opt.iterations >= 1).all()


def test_stadv_stops_each_triplet_at_its_flip(lpips_rand, batch):
    attack = StAdv(max_iterations=10)
    prepared, prey, s_other = select_prey(lpips_rand, batch)
    keep = torch.arange(6)
    prepared, prey, s_other = select(prepared, keep), prey[keep], s_other[keep]
    opt = attack.optimize_flow(lpips_rand, prepared, prey, s_other)
    stopped = opt.status == lbfgs.STOPPED
    assert stopped.any()
    n, _, h, w = prey.shape
    flow = opt.x.view(n, 2, h, w) * attack.flow_unit(h, w)  # the variable's unit, in pixels
    with torch.no_grad():
        s = lpips_rand.score(prepared, warp(prey, flow))
    assert (s[stopped] > s_other[stopped]).all()
    assert (opt.loss[stopped] == 0).all()  # Alg. 2: the loss is 0 once flipped
    # the reported image is the warp of the optimised flow, and its columns describe it
    out = attack.run(lpips_rand, prepared, prey, s_other)
    torch.testing.assert_close(out.adv, warp(prey, flow))
    length = flow.pow(2).sum(1).sqrt().flatten(1)
    torch.testing.assert_close(out.columns["flow_max"], length.amax(1))
    assert torch.equal(out.columns["iterations"], opt.iterations)


def test_stadv_pgd_budget(lpips_rand, batch):
    attack = StAdvPGD(max_iterations=6, pgd_steps=4, pgd_eps=0.01)
    prepared, prey, s_other = select_prey(lpips_rand, batch)
    out = attack.run(lpips_rand, prepared, prey, s_other)
    stadv = StAdv(max_iterations=6).run(lpips_rand, prepared, prey, s_other)
    assert (out.adv - stadv.adv).abs().max() <= 0.01 + 1e-6
    assert torch.equal(out.columns["stadv_flipped"], stadv.flipped)
    assert torch.equal(out.flipped, out.s_adv > s_other)


# --- batching and reproducibility ------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: FGSM(max_eps=0.01),
        lambda: PGD(max_iterations=10),
        lambda: OnePixel(population=10, generations=3),
        lambda: StAdv(max_iterations=10),
        lambda: StAdvPGD(max_iterations=5, pgd_steps=3),
    ],
    ids=["fgsm", "pgd", "onepixel", "stadv", "stadv_pgd"],
)
def test_batched_equals_one_at_a_time(make, batch):
    metric = L2()
    prepared, prey, s_other = select_prey(metric, batch)
    attack = make()
    together = attack.run(metric, prepared, prey, s_other)
    for i in range(prey.shape[0]):
        idx = torch.tensor([i])
        alone = attack.run(metric, select(prepared, idx), prey[idx], s_other[idx])
        torch.testing.assert_close(alone.adv, together.adv[idx], rtol=0, atol=1e-6)
        assert torch.equal(alone.flipped, together.flipped[idx])
        for key, value in alone.columns.items():
            torch.testing.assert_close(value, together.columns[key][idx], equal_nan=True)


def test_batched_equals_one_at_a_time_lpips(lpips_rand, batch):
    """Same on a CNN metric. Convolutions round differently with the batch size, and
    L-BFGS carries those last-digit differences along, so stAdv agrees to a tolerance."""
    for attack, atol in (
        (OnePixel(population=10, generations=3), 1e-6),
        (StAdv(max_iterations=5), 5e-3),
    ):
        prepared, prey, s_other = select_prey(lpips_rand, batch)
        together = attack.run(lpips_rand, prepared, prey, s_other)
        for i in range(3):
            idx = torch.tensor([i])
            alone = attack.run(lpips_rand, select(prepared, idx), prey[idx], s_other[idx])
            torch.testing.assert_close(alone.adv, together.adv[idx], rtol=0, atol=atol)
            assert torch.equal(alone.flipped, together.flipped[idx])


@pytest.mark.parametrize("attack_name", ["fgsm", "onepixel", "stadv", "stadv_pgd"])
def test_fixed_seed_is_reproducible(attack_name, lpips_rand, batch):
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        prepared, prey, s_other = select_prey(lpips_rand, batch)
        results.append(SMALL[attack_name]().run(lpips_rand, prepared, prey, s_other))
    a, b = results
    assert torch.equal(a.adv, b.adv) and torch.equal(a.flipped, b.flipped)
    for key in a.columns:
        assert torch.equal(torch.nan_to_num(a.columns[key]), torch.nan_to_num(b.columns[key]))


def test_onepixel_seed_changes_the_search(lpips_rand, batch):
    prepared, prey, s_other = select_prey(lpips_rand, batch)
    a = OnePixel(population=8, generations=0, seed=0).run(lpips_rand, prepared, prey, s_other)
    b = OnePixel(population=8, generations=0, seed=1).run(lpips_rand, prepared, prey, s_other)
    assert not torch.equal(a.adv, b.adv)


def test_counter_uniform_is_uniform_and_keyed(batch):
    keys = image_keys(batch.ref, seed=0)
    assert keys.unique().numel() == keys.numel()  # distinct images, distinct streams
    u = counter_uniform(keys[:1, None], 0, torch.arange(20_000)[None, :])
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert torch.equal(image_keys(batch.ref, seed=0), keys)
    assert not torch.equal(image_keys(batch.ref, seed=1), keys)


# --- parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FGSM(max_eps=0), "max_eps"),
        (lambda: FGSM(max_eps=0.00005), "smaller than eps_step"),
        (lambda: OnePixel(population=3), "population"),
        (lambda: OnePixel(pixels=0), "pixels"),
        (lambda: StAdv(variant="nope"), "variant"),
        (lambda: StAdv(alpha=0), "alpha"),
        (lambda: StAdvPGD(center="nope"), "center"),
    ],
)
def test_bad_parameters_fail_clearly(make, message):
    with pytest.raises(ValueError, match=message):
        attack = make()
        attack.eps_grid()


def test_repr_shows_hyper_parameters():
    text = repr(StAdv(variant="official"))
    assert "variant='official'" in text and "max_iterations=50" in text
    assert "pgd_steps=5" in repr(StAdvPGD(pgd_steps=5))


# --- every attack option runs from the command-line configuration ------------------------

CHEAP = {
    "fgsm": ["attack.max_eps=0.03"],
    "fgsm003": [],
    "pgd": ["attack.max_iterations=3"],
    "pgd10": ["attack.max_iterations=3"],
    "pgd20": ["attack.max_iterations=3"],
    "pgd_reverse": ["attack.max_iterations=3"],
    "onepixel": ["attack.population=6", "attack.generations=2"],
    "stadv": ["attack.max_iterations=3"],
    "stadv_pgd": ["attack.max_iterations=3", "attack.pgd_steps=2"],
    "stadv_pgd5": ["attack.max_iterations=3"],
    "stadv_pgd10": ["attack.max_iterations=3"],
    "stadv_pgd15": ["attack.max_iterations=3"],
    "stadv_pgd20": ["attack.max_iterations=3"],
}


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_attack_configs_run_end_to_end(name, cfg_factory):
    assert {p.stem for p in Path("conf/attack").glob("*.yaml")} >= set(CHEAP)
    assert_config_runs(cfg_factory, name, CHEAP[name])
