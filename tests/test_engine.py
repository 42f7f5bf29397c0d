"""The engine's out-of-memory fallback: a batch that does not fit is split, nothing changes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from attackpsm.attacks.pgd import PGD
from attackpsm.engine import FittingBatches, attack_batch
from attackpsm.metrics.classic import L2
from tests.conftest import synthetic_batch


class SmallDevice(L2):
    """L2 on a pretend device that holds at most ``capacity`` images per call."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.largest = 0

    def score(self, prepared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.capacity:
            raise torch.OutOfMemoryError(f"{x.shape[0]} images > {self.capacity}")
        self.largest = max(self.largest, x.shape[0])
        return super().score(prepared, x)


def test_a_batch_that_does_not_fit_is_split_and_gives_the_same_rows():
    batch = synthetic_batch(10, seed=3)
    attack = PGD(max_iterations=5)
    want, _ = attack_batch(L2(), attack, batch)

    metric = SmallDevice(capacity=3)
    fitting = FittingBatches()
    got, errors = fitting(metric, attack, batch)
    assert len(errors) == 0
    assert fitting.limit is not None and fitting.limit <= 3 and metric.largest <= 3
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)

    # the size that fits is remembered: the next batch is cut at once, no new failure
    before = fitting.limit
    again, _ = fitting(metric, attack, batch)
    assert fitting.limit == before
    pd.testing.assert_frame_equal(again, got)


def test_one_triplet_that_does_not_fit_names_the_fix():
    batch = synthetic_batch(2, seed=3)
    with pytest.raises(RuntimeError, match="smaller `resolution`"):
        FittingBatches()(SmallDevice(capacity=0), PGD(max_iterations=2), batch)
