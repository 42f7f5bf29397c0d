"""Decisions that mean what they say: common random numbers and the one 8-bit saving rule.

- A randomised metric compares the images of a triplet under the same draws, so a zero
  perturbation never flips (real weights, every randomised metric).
- ``flipped_saved`` and ``attack.flip_on=saved`` decide on the 8-bit image a user saves;
  the PNG the craft writes, read back from disk and scored again, gives the same decision.
- One rule for "saving" (truncation, :func:`attackpsm.images.saved`) in the flip check,
  the 8-bit RMSE/PSNR and the 8-bit "% pixels" columns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attackpsm.attacks.eot import EoT
from attackpsm.attacks.pgd import PGD
from attackpsm.data.base import Batch
from attackpsm.data.transfer import image_dir
from attackpsm.engine import attack_batch
from attackpsm.images import from_uint8, saved, to_uint8, to_uint8_truncated
from attackpsm.metrics.classic import L2
from attackpsm.protocol.twoafc import rank_flipped
from attackpsm.storage.craft import CraftWriter
from tests.conftest import synthetic_batch
from tests.stand_ins import Shift

# --- common random numbers ----------------------------------------------------------------


def _randomised(name: str):
    if name == "elpips_vgg":
        from attackpsm.metrics.elpips import ELPIPS

        return ELPIPS(ensemble=1, draws=3)
    if name == "watson_dft_shift":
        from attackpsm.metrics.watson import WatsonDFT

        return WatsonDFT(random_shift=True)
    from attackpsm.metrics.smoothed import Smoothed

    return Smoothed("lpips_alex", sigma=0.12, draws=16)


@pytest.mark.parametrize("name", ["elpips_vgg", "watson_dft_shift", "smoothed_lpips_alex"])
def test_a_zero_perturbation_never_flips_a_randomised_metric(name):
    """PGD with ε = 0 (gradient steps drawn afresh, every check at the prey) and its EoT
    version: the clean ranking and every check share the draws, so nothing flips."""
    metric = _randomised(name)
    assert metric.stochastic
    batch = synthetic_batch(num_triplets=3, seed=2, size=64, variant="calibrated")
    for attack in (PGD(eps=0.0, max_iterations=2), EoT(PGD(eps=0.0, max_iterations=2), 2)):
        torch.manual_seed(0)
        rows, errors = attack_batch(metric, attack, batch)
        assert len(errors) == 0 and len(rows) == len(batch)
        assert not rows["flipped"].any(), rows[["d0", "d1", "s_other", "s_adv"]]
        # the prey's score at every check repeats its clean score exactly
        np.testing.assert_array_equal(rows["s_adv"].to_numpy(), rows["s_prey"].to_numpy())


def test_randomised_decisions_repeat_and_gradients_draw_afresh():
    metric = _randomised("smoothed_lpips_alex")
    batch = synthetic_batch(num_triplets=2, seed=2, size=32)
    prepared = metric.prepare(batch.ref)
    with torch.no_grad():
        first, again = metric.score(prepared, batch.p0), metric.score(prepared, batch.p0)
        # the same triplet in another batch (alone) gets the same common draws
        alone = metric.score(metric.prepare(batch.ref[1:]), batch.p0[1:])
    assert torch.equal(first, again)
    torch.testing.assert_close(alone, first[1:])
    x = batch.p0.clone().requires_grad_(True)
    assert not torch.equal(metric.score(prepared, x), metric.score(prepared, x))


# --- flip_on=saved: the saved PNG decides -------------------------------------------------


@pytest.mark.parametrize("metric_name", ["l2", "lpips_alex"])
def test_flip_on_saved_flips_hold_on_the_png_read_back(metric_name, lpips_alex, tmp_path):
    """Every triplet ``flip_on=saved`` calls flipped after saving is flipped when its PNG,
    written by the craft stage, is read back from disk and scored again (real weights)."""
    metric = L2() if metric_name == "l2" else lpips_alex
    batch = synthetic_batch(num_triplets=12, seed=4, size=64, variant="calibrated")
    attack = PGD(flip_on="saved", alpha=0.001 if metric_name == "lpips_alex" else 0.002)
    writer = CraftWriter(tmp_path, {"attack": {"name": "pgd"}})
    rows, errors = attack_batch(metric, attack, batch, sink=writer)
    assert len(errors) == 0
    kept = rows[rows["flipped_saved"]]
    assert len(kept) > 0, "PGD should flip some saved images"
    ref = {t: batch.ref[i] for i, t in enumerate(batch.triplet_id)}
    read = [
        from_uint8(np.asarray(Image.open(image_dir(tmp_path, t) / "adv.png").convert("RGB")))
        for t in kept["triplet_id"]
    ]
    refs = torch.stack([ref[t] for t in kept["triplet_id"]])
    with torch.no_grad():
        s_png = metric.score(metric.prepare(refs), torch.stack(read))
    s_other = torch.tensor(kept["s_other"].to_numpy(), dtype=s_png.dtype)
    assert rank_flipped(s_png, s_other).all(), (s_png, s_other)
    torch.testing.assert_close(
        s_png, torch.tensor(kept["s_adv_saved"].to_numpy()), rtol=1e-4, atol=1e-6
    )
    # the float decision is reported as well, next to it
    assert rows["flipped"].dtype == bool and "flipped_saved" in rows


def test_flip_on_saved_keeps_going_until_the_saved_image_flips(lpips_alex):
    """With ``float`` some flips do not survive saving; ``saved`` trades them for steps."""
    batch = synthetic_batch(num_triplets=12, seed=4, size=64, variant="calibrated")
    plain, _ = attack_batch(lpips_alex, PGD(), batch)
    kept, _ = attack_batch(lpips_alex, PGD(flip_on="saved"), batch)
    assert kept["flipped_saved"].sum() >= plain["flipped_saved"].sum()
    # a triplet stopped by flip_on=saved stopped at a check whose saved image flipped
    stopped = kept["iterations"] < 29
    assert kept.loc[stopped, "flipped_saved"].all()


def test_flip_on_is_validated():
    with pytest.raises(ValueError, match=r"flip_on must be one of \['float', 'saved'\], got 'png'"):
        PGD(flip_on="png")


# --- one saving rule ------------------------------------------------------------------------


def test_one_rule_for_saving_in_the_flip_rmse_and_pixel_columns():
    """Grey levels: ref 100, I_0 = 101 (prey), I_1 = 102 (other), adversarial 102.6.

    Float: |2.6| > |2| flips. Saved by truncation the adversarial image is 102: a tie with
    the other image (no flip after saving), one level from the prey (RMSE 1, every value
    changed by > 0.001 but none by > 0.01 on the [-1, 1] scale). Rounding would have given
    103: a flip, RMSE 2 and every value changed by > 0.01 -- none of which may appear.
    """
    grey = lambda v: torch.full((1, 3, 4, 4), v / 127.5 - 1.0)  # noqa: E731
    batch = Batch(["t/0"], ["t"], torch.tensor([0.0]), grey(100), grey(101), grey(102), [])
    rows, _ = attack_batch(L2(), Shift(1.6 / 127.5), batch)
    r = rows.iloc[0]
    assert r["prey"] == 0 and bool(r["flipped"])
    assert (to_uint8_truncated(grey(102.6)) == 102).all() and (to_uint8(grey(102.6)) == 103).all()
    torch.testing.assert_close(saved(grey(102.6)), grey(102))
    assert not bool(r["flipped_saved"])
    assert r["s_adv_saved"] == pytest.approx(float(L2()(grey(100), grey(102))))
    assert r["rmse_uint8"] == pytest.approx(1.0)
    assert r["psnr_uint8"] == pytest.approx(20 * np.log10(255.0))
    assert r["pct_px_gt_0.001_uint8"] == pytest.approx(100.0)
    assert r["pct_px_gt_0.01_uint8"] == pytest.approx(0.0)


def _stop_rule_attacks():
    from attackpsm.attacks.apgd import APGD
    from attackpsm.attacks.cascade import Cascade
    from attackpsm.attacks.fgsm import FGSM
    from attackpsm.attacks.min_eps import MinEps
    from attackpsm.attacks.onepixel import OnePixel
    from attackpsm.attacks.square import Square
    from attackpsm.attacks.stadv import StAdv

    return {
        "pgd": lambda: PGD(flip_on="saved"),
        "fgsm": lambda: FGSM(max_eps=0.02, flip_on="saved"),
        "apgd": lambda: APGD(max_iterations=10, flip_on="saved"),
        "square": lambda: Square(max_queries=60, flip_on="saved"),
        "onepixel": lambda: OnePixel(population=12, generations=4, flip_on="saved"),
        "stadv": lambda: StAdv(max_iterations=8, flip_on="saved"),
        "cascade": lambda: Cascade([FGSM(max_eps=0.005, flip_on="saved"), PGD(flip_on="saved")]),
        "min_eps": lambda: MinEps(APGD(max_iterations=5, flip_on="saved"), eps_max=0.05, tol=0.01),
    }


@pytest.mark.parametrize("name", sorted(_stop_rule_attacks()))
def test_every_stop_rule_stops_on_the_saved_image(name):
    """With ``flip_on=saved`` every attack with a stop rule reports what stopped it, and
    every triplet it stopped flips once its image is saved; ``flipped`` stays the float
    image's decision."""
    from tests.conftest import select_prey

    metric = L2()
    batch = synthetic_batch(num_triplets=8, seed=5)
    attack = _stop_rule_attacks()[name]()
    assert attack.flip_on == "saved"
    prepared, prey, s_other = select_prey(metric, batch)
    out = attack.run(metric, prepared, prey, s_other)
    assert out.stopped is not None and out.stopped.any(), name
    with torch.no_grad():
        s_saved = metric.score(prepared, saved(out.adv))
        s_float = metric.score(prepared, out.adv)
    assert rank_flipped(s_saved[out.stopped], s_other[out.stopped]).all(), name
    assert torch.equal(out.flipped, rank_flipped(s_float, s_other)), name


def test_flip_on_saved_with_float_inputs_stops_before_any_data():
    from attackpsm.config import compose
    from attackpsm.job.preflight import check_run

    cfg = compose(["attack.flip_on=saved", "dataset.quantize=false", "logger=none"])
    with pytest.raises(ValueError, match="dataset.quantize=true .* or attack.flip_on=float"):
        check_run(cfg)
    check_run(compose(["attack.flip_on=saved", "logger=none"]))  # 8-bit inputs: fine
