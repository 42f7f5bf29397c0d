"""The paper's measurement protocol: 8-bit inputs, perturbation sizes, ties, the ε grid, flips.

Expected values are built by hand (known pixel differences) or computed with an independent
NumPy transcription of the released code's ``tensor2im`` (``(x + 1) * 255 / 2`` in float32,
cast to ``uint8``), never with the functions under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from attackpsm.attacks import FGSM, PGD, ReversePGD
from attackpsm.data.base import Batch, collate
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.engine import attack_batch
from attackpsm.images import from_uint8, quantize, saved
from attackpsm.metrics.classic import L2
from attackpsm.protocol.stats import perturbation_stats
from attackpsm.protocol.twoafc import (
    agreement,
    choose_prey,
    human_agrees,
    rank_flipped,
    rank_loss,
    reverse_rank_loss,
    twoafc_scores,
)
from attackpsm.summary.accuracy import clean_accuracy
from attackpsm.summary.headline import headline
from attackpsm.summary.results import summarize, summary_markdown
from tests.stand_ins import Shift

CONF = Path(__file__).resolve().parent.parent / "conf"


def levels(values: np.ndarray) -> torch.Tensor:
    """A ``(1, 3, H, W)`` image from 8-bit levels (the package's [-1, 1] convention)."""
    return from_uint8(np.asarray(values, dtype=np.uint8))[None]


def tensor2im(x: torch.Tensor) -> np.ndarray:
    """The released code's conversion, transcribed with NumPy (float32, truncating cast)."""
    a = x[0].numpy().astype(np.float32).transpose(1, 2, 0)
    return ((a + np.float32(1.0)) * np.float32(255.0 / 2.0)).astype(np.uint8)


# --- perturbation sizes ---------------------------------------------------------------------


def test_a_delta_of_exactly_k_levels():
    """Prey at level 128, 6 of its 48 values moved 3 levels up: every column is known."""
    prey_levels = np.full((4, 4, 3), 128)
    adv_levels = prey_levels.copy()
    adv_levels[0, :, 0] = 131
    adv_levels[1, :2, 1] = 131
    prey, adv = levels(prey_levels), levels(adv_levels)
    s = perturbation_stats(adv, prey)
    n, m = 48, 6
    rmse = 3.0 * math.sqrt(m / n)  # 3 grey levels on m of n values
    assert s["rmse_uint8"].item() == pytest.approx(rmse, rel=1e-6)
    assert s["psnr_uint8"].item() == pytest.approx(20 * math.log10(255 / rmse), rel=1e-6)
    assert s["rmse_float"].item() == pytest.approx(rmse, rel=1e-5)
    # 3 levels = 3 / 127.5 = 0.0235 on [-1, 1]: above 0.001 and 0.01, not above 0.03
    for way in ("uint8", "float"):
        assert s[f"pct_px_gt_0.001_{way}"].item() == pytest.approx(100 * m / n)
        assert s[f"pct_px_gt_0.01_{way}"].item() == pytest.approx(100 * m / n)
        assert s[f"pct_px_gt_0.03_{way}"].item() == 0.0
    assert s["linf"].item() == pytest.approx(3 / 127.5, rel=1e-5)


def test_8bit_sizes_truncate_like_the_released_code():
    """0.6 of a level reads as no change (rounding would give 1 level); 1.6 as one level."""
    prey = levels(np.full((2, 2, 3), 200))
    for fraction, truncated, rounded in ((0.6, 0, 1), (1.6, 1, 2)):
        adv = prey.clone()
        adv[0, 0] += fraction / 127.5  # one channel plane: 4 of 12 values
        s = perturbation_stats(adv, prey)
        assert s["rmse_uint8"].item() == pytest.approx(truncated * math.sqrt(4 / 12), abs=1e-6)
        assert s["rmse_uint8"].item() != pytest.approx(rounded * math.sqrt(4 / 12), abs=1e-3)
        assert s["rmse_float"].item() == pytest.approx(fraction * math.sqrt(4 / 12), rel=1e-4)
        assert s["pct_px_gt_0.001_uint8"].item() == pytest.approx(100 * 4 / 12 * (truncated > 0))


def test_8bit_rmse_equals_the_released_tensor2im_rmse():
    """On 8-bit preys with PGD-like ±0.001 steps (dark levels included, where float32 reads
    a level one low), the 8-bit RMSE is the released code's, value for value."""
    rng = np.random.default_rng(0)
    prey = levels(rng.integers(0, 256, size=(32, 32, 3)))
    sign = torch.from_numpy(rng.choice([-1.0, 0.0, 1.0], size=(1, 3, 32, 32)).astype(np.float32))
    adv = (prey + 0.003 * sign).clamp(-1, 1)
    a, b = tensor2im(adv).astype(float), tensor2im(prey).astype(float)
    expected = math.sqrt(((a - b) ** 2).mean())
    s = perturbation_stats(adv, prey)
    assert s["rmse_uint8"].item() == pytest.approx(expected, rel=1e-6)
    assert s["psnr_uint8"].item() == pytest.approx(20 * math.log10(255 / expected), rel=1e-6)
    assert s["rmse_uint8"].item() > s["rmse_float"].item()  # the truncation artefact


def test_percent_pixels_at_exact_multiples_of_the_step_is_a_float32_comparison():
    """``δ = float32(0.001)`` is not above 0.001 in float32; δ after one step of 0.001 on
    8-bit preys reads above or below by round-off: both counted as NumPy float32 does."""
    prey = torch.zeros(1, 3, 2, 2)
    s = perturbation_stats(prey + torch.tensor(0.001), prey)
    assert s["pct_px_gt_0.001_float"].item() == 0.0
    rng = np.random.default_rng(1)
    prey = levels(rng.integers(0, 256, size=(16, 16, 3)))
    adv = prey + 0.001
    delta = np.abs(adv.numpy() - prey.numpy())
    expected = 100.0 * (delta > np.float32(0.001)).mean()
    assert 0.0 < expected < 100.0
    assert perturbation_stats(adv, prey)["pct_px_gt_0.001_float"].item() == pytest.approx(expected)


# --- 8-bit inputs ----------------------------------------------------------------------------


def test_every_dataset_hands_8bit_images_by_default_and_floats_on_request():
    for path in sorted((CONF / "dataset").glob("*.yaml")):
        assert OmegaConf.load(path).quantize is True, path.name
    on = SyntheticTriplets(size=24, num_triplets=3, seed=5)
    off = SyntheticTriplets(size=24, num_triplets=3, seed=5, quantize=False)
    for i in range(3):
        a, b = on[i], off[i]
        for side in ("ref", "p0", "p1"):
            grey = (a[side] + 1.0) * 127.5
            assert torch.allclose(grey, grey.round(), atol=1e-4)  # on the 8-bit grid
            assert torch.equal(a[side], quantize(b[side]))
        assert any(not torch.equal(b[s], quantize(b[s])) for s in ("ref", "p0", "p1"))
    with pytest.raises(ValueError, match="dataset.quantize must be true or false, got 'yes'"):
        SyntheticTriplets(size=24, num_triplets=1, quantize="yes")


@pytest.mark.parametrize("quantized", [True, False])
def test_flip_saved_compares_the_saved_adversarial_with_the_other(quantized):
    """``flipped_saved``: the saved adversarial image's own decision, against the dataset's
    8-bit images as they are, or (float inputs) against the saved reference and other."""
    data = SyntheticTriplets(size=16, num_triplets=8, seed=3, quantize=quantized)
    batch = collate([data[i] for i in range(len(data))])
    metric = L2()
    seen = {}

    def sink(metric, batch, prey_is_p1, adv, rows):
        seen.update(prey_is_p1=prey_is_p1, adv=adv)

    rows, _ = attack_batch(metric, PGD(eps=0.01, alpha=0.001, max_iterations=12), batch, sink)
    clean = (lambda x: x) if quantized else saved  # noqa: E731
    other = torch.where(seen["prey_is_p1"][:, None, None, None], batch.p0, batch.p1)
    with torch.no_grad():
        s_adv = metric(clean(batch.ref), saved(seen["adv"]))
        s_other = metric(clean(batch.ref), clean(other))
    expected = (s_adv > s_other).numpy()
    np.testing.assert_array_equal(rows["flipped_saved"].to_numpy(), expected)
    assert rows["flipped"].any()


def test_flip_saved_on_float_inputs_saves_the_other_image_too():
    """Float inputs, in grey levels: ref 128, I_0 = 129 (prey), I_1 = 129.6 (other), adversarial
    129.8. Float: 1.8 > 1.6 flips. Saved (truncated to 8 bits): I_adv -> 129 and I_1 -> 129,
    a tie, so the flip does not survive (comparing with the unsaved 1.6 would say it does)."""
    grey = lambda v: torch.full((1, 3, 4, 4), v / 127.5 - 1.0)  # noqa: E731
    batch = Batch(["t/0"], ["t"], torch.tensor([0.0]), grey(128), grey(129), grey(129.6), [])
    rows, _ = attack_batch(L2(), Shift(0.8 / 127.5), batch)
    assert rows["prey"].item() == 0 and bool(rows["flipped"].item())
    assert not bool(rows["flipped_saved"].item())


# --- the 2AFC rules ---------------------------------------------------------------------------


def test_prey_and_flip_both_directions():
    d0 = torch.tensor([0.2, 0.5, 0.3])
    d1 = torch.tensor([0.4, 0.1, 0.3])  # the third is a tie
    std = choose_prey(d0, d1)
    assert std.is_p1.tolist() == [False, True, False]  # Alg. 1: rank = int(s0 > s1)
    assert std.s_other.tolist() == pytest.approx([0.4, 0.5, 0.3])
    assert std.s_prey.tolist() == pytest.approx([0.2, 0.1, 0.3])
    rev = choose_prey(d0, d1, reverse=True)  # App. F: the less similar image is the prey
    assert rev.is_p1.tolist() == [True, False, True]
    assert rev.s_other.tolist() == pytest.approx([0.2, 0.1, 0.3])
    p0, p1 = torch.zeros(3, 3, 2, 2), torch.ones(3, 3, 2, 2)
    assert std.images(p0, p1)[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0]
    assert rev.others(p0, p1)[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0]
    s_other = torch.tensor([0.4, 0.4, 0.4])
    s_adv = torch.tensor([0.41, 0.4, 0.39])
    assert rank_flipped(s_adv, s_other).tolist() == [True, False, False]
    assert rank_flipped(s_adv, s_other, reverse=True).tolist() == [False, False, True]


def test_losses_of_eq1_and_eq7_push_opposite_ways():
    s_other = torch.tensor(0.3)
    s_adv = torch.tensor([0.1, 0.3, 0.9], requires_grad=True)
    assert rank_loss(s_other, s_adv.detach()).tolist() == pytest.approx([0.0625, 0.25, 0.5625])
    assert reverse_rank_loss(s_other, s_adv.detach()).tolist() == pytest.approx(
        [0.5625, 0.25, 0.0625]
    )
    (g,) = torch.autograd.grad(rank_loss(s_other, s_adv).sum(), s_adv)
    (g_rev,) = torch.autograd.grad(reverse_rank_loss(s_other, s_adv).sum(), s_adv)
    assert (g > 0).all() and (g_rev < 0).all()


def test_the_engine_attacks_the_prey_of_the_rule_in_both_directions():
    batch = collate([SyntheticTriplets(size=16, num_triplets=6, seed=2)[i] for i in range(6)])
    metric = L2()
    forward, _ = attack_batch(metric, PGD(max_iterations=2), batch)
    reverse, _ = attack_batch(metric, ReversePGD(max_iterations=2), batch)
    expect = (forward["d0"] > forward["d1"]).to_numpy()
    np.testing.assert_array_equal(forward["prey"].to_numpy(), expect)
    np.testing.assert_array_equal(reverse["prey"].to_numpy(), ~expect)
    assert (forward["s_prey"] <= forward["s_other"]).all()
    assert (reverse["s_prey"] >= reverse["s_other"]).all()


def test_one_tie_rule_in_table1_agreement_and_the_split():
    """Unanimous triplets: right, right, wrong, tie -> accuracy (2 + 0.5) / 4 everywhere."""
    results = pd.DataFrame(
        {
            "triplet_id": ["a/0", "a/1", "a/2", "a/3"],
            "subset": ["a"] * 4,
            "judge": [1.0, 0.0, 1.0, 0.0],
            "d0": [0.3, 0.1, 0.1, 0.2],
            "d1": [0.1, 0.3, 0.3, 0.2],
        }
    )
    d0, d1, judge = (results[c].to_numpy() for c in ("d0", "d1", "judge"))
    # the released 2AFC score, written out: (d0<d1)*(1-judge) + (d0>d1)*judge + (d0==d1)*0.5
    released = (d0 < d1) * (1 - judge) + (d0 > d1) * judge + (d0 == d1) * 0.5
    np.testing.assert_allclose(twoafc_scores(d0, d1, judge), released)
    np.testing.assert_allclose(agreement(d0, d1, judge), [1.0, 1.0, 0.0, 0.5])
    agrees = human_agrees(d0, d1, judge)
    assert agrees.tolist()[:3] == [True, True, False] and agrees.isna().tolist()[3]

    table1 = clean_accuracy(results, "m").set_index("subset")
    assert table1.loc["all", "accuracy_pct"] == pytest.approx(62.5)
    assert table1.loc["all", "twoafc_pct"] == pytest.approx(62.5)

    rows = results.assign(
        human_agrees=agrees, flipped=False, flipped_saved=False, **{"rmse_uint8": 0.0}
    )
    assert headline(rows, 0)["accuracy"] == pytest.approx(0.625)
    split = summarize(
        rows.assign(
            psnr_uint8=np.inf,
            rmse_float=0.0,
            psnr_float=np.inf,
            **{f"pct_px_gt_{t}_{w}": 0.0 for t in (0.001, 0.01, 0.03) for w in ("float", "uint8")},
        ),
        "m",
        "none",
    ).set_index("agrees")
    assert split.loc["✓", "samples"] == 2 and split.loc["✗", "samples"] == 1
    assert split.loc["n/a", "samples"] == 1  # the tie is in neither row


def test_summary_header_names_the_paper_definitions():
    text = summary_markdown(pd.DataFrame(columns=["skipped"]))
    assert "RMSE μ (8-bit)" in text and "%px ε>0.001 (float δ)" in text
    assert "truncated to uint8" in text and "float δ = I_adv - I_prey" in text


# --- FGSM's ε grid ----------------------------------------------------------------------------


def test_fgsm_grid_is_algorithm_3_loop():
    """Alg. 3: ε = 0.0001; while ε ≤ max_ε: ...; ε = ε + 0.0001 -- 499 values up to 0.05."""
    grid = FGSM().eps_grid()
    assert len(grid) == 499
    assert grid[0].item() == 0.0001 and grid[-1].item() == pytest.approx(0.0499, abs=1e-12)
    assert len(FGSM(max_eps=0.03).eps_grid()) == 300
