"""The embedded synthetic dataset: deterministic, labelled by severity, lazily loaded."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from attackpsm.data import synthetic
from attackpsm.data.base import shard_records
from attackpsm.data.synthetic import EASY_FAMILIES, FAMILIES, SyntheticTriplets
from attackpsm.images import from_uint8
from attackpsm.metrics.classic import L2


@pytest.mark.parametrize("variant", ["calibrated", "easy"])
def test_deterministic_for_a_seed(variant):
    a, b = (
        SyntheticTriplets(size=64, num_triplets=12, seed=5, variant=variant),
        SyntheticTriplets(size=64, num_triplets=12, seed=5, variant=variant),
    )
    c = SyntheticTriplets(size=64, num_triplets=12, seed=6, variant=variant)
    assert [r.triplet_id for r in a.records] == [r.triplet_id for r in b.records]
    for i in (0, 7, 11):
        x, y, z = a[i], b[i], c[i]
        assert x["judge"] == y["judge"]
        for key in ("ref", "p0", "p1"):
            assert torch.equal(x[key], y[key])
        assert not torch.equal(x["ref"], z["ref"]) or not torch.equal(x["p0"], z["p0"])


def test_variants_differ_and_default_is_calibrated():
    default, easy = (
        SyntheticTriplets(num_triplets=1),
        SyntheticTriplets(num_triplets=1, variant="easy"),
    )
    assert default.variant == "calibrated"
    assert default[0]["ref"].shape == (3, 64, 64)  # distorted at the paper's 64x64
    assert easy[0]["ref"].shape == (3, 256, 256)


@pytest.mark.parametrize(("variant", "table"), [("calibrated", FAMILIES), ("easy", EASY_FAMILIES)])
def test_families_sizes_and_range(variant, table):
    data = SyntheticTriplets(size=None, num_triplets=len(table) * 2, variant=variant)
    assert len(table) >= 6
    assert {r.subset for r in data.records} == set(table)
    for i in (0, len(table)):
        item = data[i]
        assert item["ref"].min() >= -1 and item["ref"].max() <= 1
        # 8-bit images: rounding them to 8 bits changes nothing
        assert torch.allclose(((item["p0"] + 1) * 127.5).round() / 127.5 - 1, item["p0"], atol=1e-6)
    assert SyntheticTriplets(size=32, num_triplets=1, variant=variant)[0]["p1"].shape == (3, 32, 32)


def test_easy_judge_points_at_the_milder_distortion():
    """Easy variant: the milder distortion is also closer in pixel error, for every family,
    and the side is randomised (both judge values occur)."""
    data = SyntheticTriplets(size=None, num_triplets=60, seed=0, variant="easy")
    l2 = L2()
    judges = []
    for i in range(len(data)):
        it = data[i]
        d0 = l2(it["ref"][None], it["p0"][None]).item()
        d1 = l2(it["ref"][None], it["p1"][None]).item()
        milder = 1.0 if d1 < d0 else 0.0
        assert it["judge"] == milder, (it["triplet_id"], d0, d1)
        judges.append(it["judge"])
    assert set(judges) == {0.0, 1.0}


CLEAR_GAP = synthetic.CLEAR_STRONG[0] - synthetic.CLEAR_MILD[1]


@pytest.mark.parametrize("variant", ["calibrated", "easy"])
def test_labels_come_from_severity(variant):
    """The judge points at the smaller severity (never at a metric's opinion); the side is
    random; the calibrated variant mixes clearly separated and close pairs."""
    data = SyntheticTriplets(size=64, num_triplets=90, seed=2, variant=variant)
    gaps = []
    for record in data.records:
        s0, s1 = data.severities(record)
        assert s0 != s1
        assert record.judge == (1.0 if s1 < s0 else 0.0), (record.triplet_id, s0, s1)
        gaps.append(abs(s0 - s1))
    assert {r.judge for r in data.records} == {0.0, 1.0}
    assert data[3]["judge"] == data.records[3].judge
    if variant == "calibrated":
        close = sum(g <= synthetic.CLOSE_GAP[1] for g in gaps) / len(gaps)
        clear = sum(g >= CLEAR_GAP for g in gaps) / len(gaps)
        assert 0.15 < close < 0.6 and 0.4 < clear < 0.85, (close, clear)


def test_calibrated_severity_is_monotone_in_pixels_for_a_deterministic_family():
    """The severity scale means what it says: a stronger blur is farther from the reference."""
    family = FAMILIES["blur"]
    data = SyntheticTriplets(size=None, num_triplets=1, variant="calibrated")
    ref = data._generate(data.records[0])[0][0]
    l2 = L2()
    rng = np.random.default_rng(0)
    dists = [
        l2(
            from_uint8(np.asarray(ref))[None],
            from_uint8(np.asarray(family.apply(ref, family.level(u), rng)))[None],
        ).item()
        for u in (0.0, 0.3, 0.6, 1.0)
    ]
    assert dists == sorted(dists) and dists[0] < dists[-1]


def test_lazy_generation(monkeypatch):
    """Building the index generates no pixels; each load generates exactly its triplet."""
    calls = []
    original = SyntheticTriplets._generate

    def counting(self, record):
        calls.append(record.triplet_id)
        return original(self, record)

    monkeypatch.setattr(SyntheticTriplets, "_generate", counting)
    start = time.perf_counter()
    data = SyntheticTriplets(size=64, num_triplets=20_000)
    assert time.perf_counter() - start < 5.0
    assert calls == [] and len(data) == 20_000
    item = data[12_345]
    assert calls == [data.records[12_345].triplet_id] == [item["triplet_id"]]


def test_sharding_is_disjoint_complete_and_stable():
    data = SyntheticTriplets(size=64, num_triplets=50)
    shards = [shard_records(data.records, i, 3) for i in range(3)]
    ids = [r.triplet_id for s in shards for r in s]
    assert len(ids) == len(set(ids)) == 50
    assert shard_records(list(reversed(data.records)), 1, 3) == shards[1]
    with pytest.raises(ValueError, match="shard.index"):
        shard_records(data.records, 3, 3)


def test_bad_parameters():
    with pytest.raises(ValueError, match="unknown synthetic families.*valid"):
        SyntheticTriplets(families=["blur", "nope"])
    with pytest.raises(ValueError, match="unknown synthetic families"):
        SyntheticTriplets(families=["saturation"], variant="easy")
    with pytest.raises(ValueError, match=r"unknown synthetic variant 'hard'.*calibrated.*easy"):
        SyntheticTriplets(variant="hard")
    with pytest.raises(ValueError, match="num_triplets"):
        SyntheticTriplets(num_triplets=0)


def test_calibration_table_against_the_paper(capsys):
    """`python -m attackpsm calibrate` prints synthetic vs paper per metric; the
    summary's numbers follow from the per-triplet rows."""
    import pandas as pd

    from attackpsm.commands.calibrate import main, summarize

    rows = pd.DataFrame(
        {
            "margin": [0.04, 0.03, 0.02, 0.001],
            "human_agrees": [True, True, True, False],
            "agreement": [1.0, 1.0, 1.0, 0.0],
        }
    )
    s = summarize("l2", rows)
    assert s["accuracy"] == 75.0 and s["n_ok"] == 3 and s["n_bad"] == 1
    assert s["margin_ok"] == pytest.approx(0.03) and s["margin_bad"] == pytest.approx(0.001)
    assert s["accuracy_holds"]  # |75 - 79.7| <= 8
    assert s["margin_ok_holds"]  # 0.03 within 30% of 0.036
    assert not summarize("lpips_alex", rows)["margin_ok_holds"]  # 0.03 vs 0.169

    assert main(["--num-triplets", "9", "--size", "32", "--metrics", "l2", "ssim"]) == 0
    out = capsys.readouterr().out
    assert "synthetic (calibrated), 9 triplets at 32x32" in out
    assert "| l2 |" in out and "| 79.7% |" in out and "| 0.036 |" in out
    assert "| ssim |" in out and "| 80.8% |" in out and "| 0.114 |" in out
    with pytest.raises(SystemExit):
        main(["--metrics", "nope"])


def test_calibration_metrics_are_the_conf_options():
    """``calibrate`` builds each metric from ``conf/metric/<name>.yaml``, as a run does."""
    from attackpsm.commands.calibrate import build_metric
    from attackpsm.config import build, compose_option

    ssim = build_metric("ssim")
    assert type(ssim) is type(build(compose_option("metric", "ssim").metric))
    assert type(ssim).__name__ == "SSIM"
    with pytest.raises(ValueError, match=r"unknown metric 'nope'; valid: \['dists', 'l2'"):
        build_metric("nope")
