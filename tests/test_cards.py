"""Robustness cards: written per leaderboard entry, valid against their schema, and the
leaderboard rebuilt from the cards alone equals the one built from the runs."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from attackpsm.job.run import run
from attackpsm.report.cards import CARD_SCHEMA, CardError, explicit_check, read_cards, validate
from attackpsm.report.leaderboard import (
    build_leaderboard,
    leaderboard_from_cards,
    leaderboard_markdown,
    write_leaderboard,
)
from attackpsm.report.load import load_runs

CHEAP = {
    "none": [],
    "pgd": ["attack.max_iterations=5"],
    "square": ["attack.max_queries=10"],
    "fmn": ["attack.steps=10"],
}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """LPIPS(Alex) (real weights) and L2 under four attacks on 6 triplets at 32 px, with
    the diagnostics of LPIPS(Alex); then the leaderboard and its cards."""
    from attackpsm.commands.diagnose import main as diagnose
    from tests.conftest import make_cfg

    tmp = tmp_path_factory.mktemp("cards")
    tables = {}
    for metric in ("lpips_alex", "l2"):
        for name, extra in CHEAP.items():
            cfg = make_cfg(
                tmp,
                [
                    f"attack={name}",
                    f"metric={metric}",
                    "dataset.num_triplets=6",
                    "resolution.size=32",
                    *extra,
                ],
            )
            out = run(cfg)
            tables[metric, name] = pd.read_parquet(f"{out['run_dir']}/results.parquet")
    code = diagnose(
        [
            "metric=lpips_alex",
            "device=cpu",
            "resolution.size=32",
            "diagnose.num_triplets=6",
            "diagnose.checks=[gradient,randomness]",
            f"paths.results_dir={tmp / 'results'}",
        ]
    )
    assert code == 0
    md = write_leaderboard(tmp / "results", tmp / "board")
    return tmp, tables, md


def test_every_entry_has_a_valid_card_that_round_trips(board):
    tmp, _, md = board
    entries = build_leaderboard(load_runs(tmp / "results"))
    cards = read_cards(tmp / "board" / "cards")  # validates each
    assert len(cards) == len(entries) >= 4
    for card in cards:
        folder = tmp / "board" / f"{card['data']['dataset']}-{card['data']['resolution']}"
        entry = json.loads(
            (folder / f"{card['metric']['name']}.{card['threat_model']['name']}.json").read_text()
        )
        from attackpsm.report.cards import entry_from_card

        assert entry_from_card(card) == entry
    assert leaderboard_from_cards(tmp / "board" / "cards") == leaderboard_markdown(entries)
    assert md.read_text().startswith(leaderboard_markdown(entries))


def test_card_states_the_evaluation(board):
    tmp, tables, _ = board
    path = tmp / "board" / "cards" / "synthetic-res32" / "lpips_alex.linf.card.json"
    card = json.loads(path.read_text())
    assert card["metric"]["config"]["net"] == "alex"
    assert len(card["metric"]["weights_sha256"]) == 64
    assert card["data"] == {
        "dataset": "synthetic",
        "split": "seed=0, variant=calibrated",
        "resolution": "res32",
        "triplets": 6,
        "fingerprint": card["data"]["fingerprint"],
    }
    assert card["threat_model"] == {
        "name": "linf",
        "norm": "linf",
        "access": "white-box",
        "target": "prey",
    }
    assert card["eps"] == 0.03
    clean = tables["lpips_alex", "none"]
    assert card["clean_accuracy"] == pytest.approx(clean["human_agrees"].astype(bool).mean())
    # robust: ranked as humans did and flipped by no attack at ε = 0.03 (pgd, square)
    both = pd.concat([tables["lpips_alex", a] for a in ("pgd", "square")])
    per = both.groupby("triplet_id").agg(a=("human_agrees", "first"), f=("flipped", "any"))
    assert card["robust_accuracy"] == pytest.approx((per["a"].astype(bool) & ~per["f"]).mean())
    by_name = {a["name"]: a for a in card["attacks"]}
    assert set(by_name) == {"pgd", "square", "fmn"}
    pgd = tables["lpips_alex", "pgd"]
    assert by_name["pgd"]["forward_passes"] == pytest.approx(pgd["iterations"].mean() + 1)
    assert by_name["square"]["backward_passes"] == 0.0
    assert by_name["fmn"]["forward_passes"] == 11 and by_name["fmn"]["backward_passes"] == 10
    assert card["diagnostics"]["passed"] is True
    assert card["diagnostics"]["checks"] == {"gradient": "passed", "randomness": "passed"}
    assert card["certified_radius"] is None
    assert card["tool"]["name"] == "attackpsm"
    # FMN's ε* distribution next to PGD's flip rate
    radii = tables["lpips_alex", "fmn"]["eps_star"].to_numpy()
    eps_star = card["results"]["eps_star"]["fmn"]
    assert eps_star["median"] in (pytest.approx(float(np.median(radii))), "inf")
    assert eps_star["found"] == int(np.isfinite(radii).sum())


def test_leaderboard_shows_eps_star_and_diagnostics(board):
    _, _, md = board
    text = md.read_text()
    assert "ε* median [25%, 75%]" in text and "fmn: " in text
    assert "## Gradient-masking diagnostics" in text
    assert (md.parent / "synthetic-res32" / "robustness-linf.png").stat().st_size > 0
    row = next(
        line for line in text.splitlines() if line.startswith("| synthetic·res32 | lpips_alex")
    )
    assert "| passed |" in row


@pytest.mark.parametrize("check", [validate, explicit_check])
@pytest.mark.parametrize(
    "break_it, field",
    [
        (lambda c: c.pop("robust_accuracy"), "robust_accuracy"),
        (lambda c: c["threat_model"].update(norm="l1"), "norm"),
        (lambda c: c.update(clean_accuracy=1.5), "clean_accuracy"),
        (lambda c: c["metric"].update(weights_sha256="abc"), "weights_sha256"),
    ],
)
def test_a_broken_card_is_refused_naming_the_field(board, check, break_it, field):
    tmp, _, _ = board
    card = read_cards(tmp / "board" / "cards")[0]
    check(card)  # valid as written
    bad = copy.deepcopy(card)
    break_it(bad)
    with pytest.raises(CardError, match=field):
        check(bad)


def test_schema_is_valid_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(CARD_SCHEMA)
