"""The embedded synthetic dataset: deterministic, labelled by severity, lazily loaded."""

from __future__ import annotations

import pytest
import torch

from attackpsm.data.base import shard_records
from attackpsm.data.synthetic import FAMILIES, SyntheticTriplets
from attackpsm.metrics.classic import L2


def test_deterministic_for_a_seed():
    a, b = (
        SyntheticTriplets(size=64, num_triplets=12, seed=5),
        SyntheticTriplets(size=64, num_triplets=12, seed=5),
    )
    c = SyntheticTriplets(size=64, num_triplets=12, seed=6)
    assert [r.triplet_id for r in a.records] == [r.triplet_id for r in b.records]
    for i in (0, 7, 11):
        x, y, z = a[i], b[i], c[i]
        assert x["judge"] == y["judge"]
        for key in ("ref", "p0", "p1"):
            assert torch.equal(x[key], y[key])
        assert not torch.equal(x["ref"], z["ref"]) or not torch.equal(x["p0"], z["p0"])


def test_families_sizes_and_range():
    data = SyntheticTriplets(size=None, num_triplets=len(FAMILIES) * 2)
    assert len(FAMILIES) >= 6
    assert {r.subset for r in data.records} == set(FAMILIES)
    item = data[0]
    assert item["ref"].shape == (3, 256, 256)
    assert item["ref"].min() >= -1 and item["ref"].max() <= 1
    assert SyntheticTriplets(size=64, num_triplets=1)[0]["p1"].shape == (3, 64, 64)


def test_judge_points_at_the_milder_distortion():
    """The milder distortion is closer to the reference in pixel error, for every family,
    and the side is randomised (both judge values occur)."""
    data = SyntheticTriplets(size=None, num_triplets=60, seed=0)
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


def test_sharding_is_disjoint_complete_and_stable():
    data = SyntheticTriplets(size=64, num_triplets=50)
    shards = [shard_records(data.records, i, 3) for i in range(3)]
    ids = [r.triplet_id for s in shards for r in s]
    assert len(ids) == len(set(ids)) == 50
    assert shard_records(list(reversed(data.records)), 1, 3) == shards[1]
    with pytest.raises(ValueError, match="shard.index"):
        shard_records(data.records, 3, 3)


def test_bad_parameters():
    with pytest.raises(ValueError, match="unknown synthetic families"):
        SyntheticTriplets(families=["blur", "nope"])
    with pytest.raises(ValueError, match="num_triplets"):
        SyntheticTriplets(num_triplets=0)
