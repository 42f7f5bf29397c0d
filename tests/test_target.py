"""``attack.target``: the reference, or both distortions, as the perturbed image.

Each flip is checked independently of the attack's bookkeeping: the returned images are
scored again with the metric's own ``forward(ref, x)`` (the paper's ``f(I_ref, I_i)``),
and the rule of :func:`attackpsm.protocol.twoafc.target_flipped` is applied by hand.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from attackpsm.attacks import APGD, PGD, ReversePGD, StAdv
from attackpsm.attacks.target import TargetedAttack
from attackpsm.config import compose, normalise_argv
from attackpsm.engine import attack_batch
from attackpsm.job.run import run
from attackpsm.protocol.twoafc import choose_prey, target_flipped
from tests.conftest import synthetic_batch

EPS = 0.03


@pytest.fixture(scope="module")
def triplets(lpips_alex):
    batch = synthetic_batch(8, seed=3, size=32, variant="calibrated")
    prepared = lpips_alex.prepare(batch.ref)
    with torch.no_grad():
        d0, d1 = lpips_alex.score(prepared, batch.p0), lpips_alex.score(prepared, batch.p1)
    chosen = choose_prey(d0, d1)
    return batch, prepared, chosen


def _run(metric, triplets, target):
    batch, prepared, chosen = triplets
    prey, other = chosen.images(batch.p0, batch.p1), chosen.others(batch.p0, batch.p1)
    attack = TargetedAttack(APGD(eps=EPS, max_iterations=20), target)
    out, clean = attack.run_target(
        metric, batch.ref, prepared, prey, other, chosen.s_prey, chosen.s_other
    )
    return batch, prey, other, out, clean


def test_reference_target_flips_as_defined(lpips_alex, triplets):
    batch, prey, other, out, clean = _run(lpips_alex, triplets, "reference")
    assert torch.equal(clean, batch.ref)
    assert (out.adv - batch.ref).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        s_prey = lpips_alex(out.adv, prey)  # f(I_ref', I_prey)
        s_other = lpips_alex(out.adv, other)
    assert torch.equal(out.flipped, s_prey > s_other)
    assert torch.allclose(out.s_adv, s_prey) and torch.allclose(out.columns["s_other_adv"], s_other)
    assert int(out.flipped.sum()) > 0


def test_both_target_flips_as_defined(lpips_alex, triplets):
    batch, prey, other, out, clean = _run(lpips_alex, triplets, "both")
    w = prey.shape[-1]
    assert out.adv.shape[-1] == 2 * w and torch.equal(clean, torch.cat([prey, other], -1))
    new_prey, new_other = out.adv[..., :w], out.adv[..., w:]
    assert (new_prey - prey).abs().max() <= EPS + 1e-6
    assert (new_other - other).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        s_prey, s_other = lpips_alex(batch.ref, new_prey), lpips_alex(batch.ref, new_other)
    assert torch.equal(out.flipped, s_prey > s_other)
    assert int(out.flipped.sum()) > 0


def test_prey_rule_is_the_papers(lpips_alex, triplets):
    s_adv, s_other = torch.tensor([0.3, 0.2, 0.2]), torch.tensor([0.2, 0.3, 0.2])
    for target in ("prey", "reference", "both"):
        assert target_flipped(target, s_adv, s_other).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="attack.target must be one of"):
        target_flipped("image", s_adv, s_other)


def test_engine_names_the_target_and_rechecks_on_8_bit(lpips_alex, triplets):
    batch, _, _ = triplets
    rows, errors = attack_batch(
        lpips_alex, TargetedAttack(PGD(eps=EPS, max_iterations=10), "reference"), batch
    )
    assert len(errors) == 0 and (rows["target"] == "reference").all()
    assert (rows["flipped"] == (rows["s_adv"] > rows["s_other_adv"])).all()
    assert rows["flipped_saved"].isin([True, False]).all()  # the saved image's own decision
    prey_rows, _ = attack_batch(lpips_alex, PGD(eps=EPS, max_iterations=10), batch)
    assert (prey_rows["target"] == "prey").all() and "s_other_adv" not in prey_rows


def test_refusals_name_the_fix(triplets):
    with pytest.raises(ValueError, match="reverse attack"):
        TargetedAttack(ReversePGD(), "reference")
    with pytest.raises(ValueError, match="warp across the seam"):
        TargetedAttack(StAdv(), "both")
    from attackpsm.config import build

    vif = build(compose(["metric=vif"]).metric)
    batch = synthetic_batch(2, seed=3, size=64, variant="calibrated")
    with pytest.raises(ValueError, match="'vif' is not symmetric"):
        attack_batch(vif, TargetedAttack(APGD(max_iterations=1), "reference"), batch)


def test_command_line_sets_the_target_without_plus():
    assert normalise_argv(["attack.target=both"]) == ["++attack.target=both"]
    assert compose(["attack=square", "attack.target=reference"]).attack.target == "reference"


@pytest.mark.parametrize("target", ["reference", "both"])
def test_every_target_runs_end_to_end(cfg_factory, target):
    cfg = cfg_factory(
        [
            "attack=apgd",
            "attack.max_iterations=3",
            f"++attack.target={target}",
            "metric=l2",
            "dataset.num_triplets=3",
            "resolution.size=16",
        ]
    )
    out = run(cfg)
    table = pd.read_parquet(Path(out["run_dir"]) / "results.parquet")
    assert (table["target"] == target).all() and "s_other_adv" in table


def test_leaderboard_and_cards_give_each_target_its_own_rows(cfg_factory, tmp_path):
    import json

    from attackpsm.report.leaderboard import write_leaderboard

    for target in ("prey", "reference"):
        run(
            cfg_factory(
                [
                    "attack=apgd",
                    "attack.max_iterations=3",
                    f"++attack.target={target}",
                    "metric=l2",
                    "dataset.num_triplets=3",
                    "resolution.size=16",
                ]
            )
        )
    md = write_leaderboard(tmp_path / "results", tmp_path / "board").read_text()
    assert "## synthetic · res16 · linf (" in md and "## synthetic · res16 · linf-reference (" in md
    card = json.loads(
        (
            tmp_path / "board" / "cards" / "synthetic-res16" / "l2.linf-reference.card.json"
        ).read_text()
    )
    assert card["threat_model"]["target"] == "reference"
    assert [a["config"]["target"] for a in card["attacks"]] == ["reference"]
