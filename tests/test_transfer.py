"""Transfer benchmark: craft on LPIPS(Alex) (real weights) with the craft command, then
evaluate L2 and SSIM from the files."""

from __future__ import annotations

import shlex

import numpy as np
import pandas as pd
import pytest
import torch

from attackpsm.attacks.base import Attack, AttackResult, Triplets
from attackpsm.attacks.cascade import Cascade
from attackpsm.attacks.eot import EoT
from attackpsm.attacks.none import NoAttack
from attackpsm.attacks.saved import SavedAdversarial
from attackpsm.commands import craft as craft_stage
from attackpsm.commands.transfer import main as table5_main
from attackpsm.commands.transfer import table5
from attackpsm.data.base import collate
from attackpsm.data.transfer import (
    MANIFEST,
    CraftMissing,
    TransferTriplets,
    load_png,
    read_manifest,
    selected_ids,
)
from attackpsm.engine import attack_batch
from attackpsm.job.run import run
from attackpsm.metrics.classic import L2
from attackpsm.protocol.stats import perturbation_stats

SOURCE = ["dataset.num_triplets=6", "attack.max_iterations=20"]


def _overrides(metric: str, column: str = "stadv", *extra: str) -> list[str]:
    return [
        "experiment=table5",
        f"metric={metric}",
        f"dataset.column={column}",
        "dataset.source_overrides=[" + ",".join(f"'{o}'" for o in SOURCE) + "]",
        "dataset.max_rmse=null",
        "resolution.size=32",
        "resolution.batch_size=4",
        *extra,
    ]


def _craft_command(error: CraftMissing) -> list[str]:
    """The arguments of the ``python -m attackpsm craft`` line an error names."""
    line = next(x.strip() for x in str(error).splitlines() if "python -m attackpsm craft" in x)
    words = shlex.split(line)
    assert words[:4] == ["python", "-m", "attackpsm", "craft"], line
    return words[4:]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Evaluate L2 before any craft (fails, naming the craft command), run that exact
    command (stAdv on LPIPS(Alex)), then evaluate L2 and SSIM on the saved images."""
    from tests.conftest import make_cfg

    tmp = tmp_path_factory.mktemp("transfer")
    with pytest.raises(CraftMissing) as missing:
        run(make_cfg(tmp, _overrides("l2")))
    assert not (tmp / "results" / "transfer").exists()  # refused before any work
    craft_stage.main(_craft_command(missing.value))
    out = {}
    for metric in ("l2", "ssim"):
        cfg = make_cfg(tmp, _overrides(metric))
        out[metric] = (cfg, run(cfg))
    return tmp, out, str(missing.value)


def test_a_missing_craft_names_the_craft_command_and_the_directory(tmp_path):
    from tests.conftest import make_cfg

    cfg = make_cfg(tmp_path, _overrides("l2", "pgd10"))
    with pytest.raises(CraftMissing) as missing:
        run(cfg)
    message = str(missing.value)
    store = tmp_path / "results" / "crafted"
    for column in ("stadv", "pgd10"):  # the selection craft and the column's, both missing
        assert f"{store}/synthetic-" in message and f"/lpips_alex/res32/{column}" in message
    args = _craft_command(missing.value)
    assert args[0] == "pgd10" and "dataset.select=stadv" in args
    assert f"dataset.store={store}" in args and "resolution.size=32" in args
    assert not (tmp_path / "results").exists()  # nothing written, nothing crafted
    # a selection named by hand that is not there: no command can make it, none is named
    hand = tmp_path / "by_hand"
    cfg = make_cfg(tmp_path, _overrides("l2", "pgd10", f"dataset.select_manifest={hand}"))
    with pytest.raises(CraftMissing, match=f"crafted at {hand}, ") as missing:
        run(cfg)
    assert "python -m attackpsm craft" not in str(missing.value)


def test_the_craft_command_makes_the_evaluation_work(evaluated):
    tmp, out, message = evaluated
    args = _craft_command(CraftMissing(message))
    crafted = _dataset(out["l2"][0]).select_dir / MANIFEST
    stamp = crafted.stat().st_mtime_ns
    assert craft_stage.craft(args) == [crafted.parent]  # already crafted: left as it is
    assert crafted.stat().st_mtime_ns == stamp
    for metric in ("l2", "ssim"):
        assert out[metric][1]["samples"] > 0


def test_the_craft_command_refuses_bad_input_before_any_work(tmp_path):
    store = f"dataset.store={tmp_path}"
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['pgd1000'\].*'pgd10'"):
        craft_stage.craft(["pgd1000", store])
    with pytest.raises(ValueError, match="sweep 'seed=0,1' is not allowed"):
        craft_stage.craft(["stadv", "seed=0,1", store])
    with pytest.raises(ValueError, match="dataset.source=<dataset>"):
        craft_stage.craft(["stadv", "dataset=bapps", store])
    # the experiment's sweep names the columns; a metric sweep (the targets) is ignored
    _, crafts = craft_stage.plan(["experiment=table5", "metric=l2,ssim", store])
    assert [c for c, _ in crafts] == [
        "stadv",
        "pgd10",
        "pgd20",
        "stadv_pgd5",
        "stadv_pgd10",
        "stadv_pgd15",
        "stadv_pgd20",
    ]
    _, crafts = craft_stage.plan(["experiment=table5", "dataset.column=pgd20,pgd10", store])
    assert [c for c, _ in crafts] == ["stadv", "pgd20", "pgd10"]
    assert not any(tmp_path.iterdir())


def _dataset(cfg) -> TransferTriplets:
    from attackpsm.storage import build_dataset

    return build_dataset(cfg)


def test_craft_saves_pngs_and_a_manifest(evaluated, lpips_alex):
    _, out, _ = evaluated
    cfg, _ = out["l2"]
    data = _dataset(cfg)
    manifest = read_manifest(data.column_dir)
    assert len(manifest) == 6
    assert set(manifest["source_metric"]) == {"lpips_alex"} and set(manifest["attack"]) == {"stadv"}
    assert '"max_iterations": 20' in manifest["params"].iloc[0]
    assert (data.column_dir / "source.yaml").exists()
    # the flip is re-checked on the saved 8-bit files, and the RMSE is that of the files
    for row in manifest.itertuples():
        folder = data.column_dir / row.dir
        ref, p0, p1, adv = (load_png(folder / f"{s}.png")[None] for s in ("ref", "p0", "p1", "adv"))
        prey, other = (p1, p0) if row.prey == 1 else (p0, p1)
        with torch.no_grad():
            prepared = lpips_alex.prepare(ref)
            s_adv, s_other, s_prey = (
                lpips_alex.score(prepared, x).item() for x in (adv, other, prey)
            )
        assert row.flipped_saved == (s_adv > s_other and not s_prey > s_other)
        assert row.rmse_saved == pytest.approx(
            perturbation_stats(adv, prey)["rmse_uint8"].item(), abs=1e-4
        )
        changed = (adv != prey).any().item()
        assert changed or not row.flipped_saved
    assert manifest["flipped_saved"].any()


def test_evaluation_counts_flips_of_the_target_from_the_files(evaluated):
    _, out, _ = evaluated
    for metric in ("l2", "ssim"):
        cfg, headline = out[metric]
        data = _dataset(cfg)
        chosen = selected_ids(read_manifest(data.select_dir), max_rmse=None)
        results = pd.read_parquet(f"{headline['run_dir']}/results.parquet")
        assert set(results["triplet_id"]) == chosen and len(chosen) > 0
        accurate = results["human_agrees"].fillna(False).astype(bool)
        # where source and target both agree with humans they attack the same prey
        assert results.loc[accurate, "transferred"].all()
        if metric != "l2":
            continue
        # re-score L2 from the PNGs: a flip is s_adv > s_other on the target
        batch = collate([data[i] for i in range(len(data))])
        prey_is_p1 = torch.tensor(results["prey"].to_numpy(), dtype=torch.bool)
        advs = torch.stack(
            [load_png(data.column_dir / data._dirs[t] / "adv.png") for t in results["triplet_id"]]
        )
        other = torch.where(prey_is_p1[:, None, None, None], batch.p0, batch.p1)
        l2 = L2()
        s_adv, s_other = l2(batch.ref, advs), l2(batch.ref, other)
        transferred = torch.tensor(results["transferred"].to_numpy())
        expected = (s_adv > s_other) & transferred
        assert torch.equal(torch.tensor(results["flipped"].to_numpy()), expected)


def test_table5_layout(evaluated, capsys):
    tmp, out, _ = evaluated
    frame = table5(tmp / "results").data
    assert set(frame["metric"]) == {"l2", "ssim"}
    assert set(frame["source"]) == {"stAdv"}
    for metric in ("l2", "ssim"):
        results = pd.read_parquet(f"{out[metric][1]['run_dir']}/results.parquet")
        accurate = results["human_agrees"].fillna(False).astype(bool)
        row = frame[frame["metric"] == metric].iloc[0]
        assert row["accurate"] == accurate.sum()
        assert row["flipped"] == (results["flipped"].astype(bool) & accurate).sum()
    assert table5_main([str(tmp / "results")]) == 0  # python -m attackpsm transfer results
    saved = pd.read_csv(tmp / "results" / "transfer" / "table5.csv")
    assert saved["flipped"].tolist() == frame["flipped"].tolist()
    assert "Table 5" in capsys.readouterr().out


def test_every_column_uses_the_stadv_selection(evaluated):
    """PGD(10) is evaluated on the triplets stAdv selected (the paper's 2,726), not its own;
    a craft made by a plain run with ``craft=<dir>`` is evaluated through ``dataset.manifest``."""
    tmp, out, _ = evaluated
    from tests.conftest import make_cfg

    pgd_dir = tmp / "pgd10"
    source = ["metric=lpips_alex", "attack=pgd10", "dataset.num_triplets=6", "resolution.size=32"]
    run(make_cfg(tmp, [*source, "resolution.batch_size=4", f"++craft={pgd_dir}"]))
    stadv_dir = _dataset(out["l2"][0]).select_dir
    cfg = make_cfg(
        tmp,
        _overrides(
            "l2", "pgd10", f"dataset.manifest={pgd_dir}", f"dataset.select_manifest={stadv_dir}"
        ),
    )
    headline = run(cfg)
    results = pd.read_parquet(f"{headline['run_dir']}/results.parquet")
    stadv = pd.read_parquet(f"{out['l2'][1]['run_dir']}/results.parquet")
    assert set(results["triplet_id"]) == set(stadv["triplet_id"])
    pgd10 = read_manifest(pgd_dir)
    assert set(pgd10["attack"]) == {"pgd10"} and len(pgd10) == 6
    linf = pgd10["linf_saved"].to_numpy()
    assert (linf <= 0.03 + 1 / 127.5 + 1e-6).all()  # ε = 0.03, then 8-bit rounding
    frame = table5(tmp / "results").data
    assert {"PGD(10)", "stAdv"} <= set(frame["source"])
    pgd_l2 = frame[(frame["source"] == "PGD(10)") & (frame["metric"] == "l2")].iloc[0]
    accurate = results["human_agrees"].fillna(False).astype(bool)
    assert pgd_l2["flipped"] == (results["flipped"].astype(bool) & accurate).sum()


def test_rmse_filter_and_prey_mismatch(evaluated):
    _, out, _ = evaluated
    cfg, _ = out["l2"]
    data = _dataset(cfg)
    manifest = read_manifest(data.select_dir)
    everything = selected_ids(manifest, max_rmse=None, accurate_only=False)
    strict = selected_ids(
        manifest, max_rmse=float(np.median(manifest["rmse_saved"])), accurate_only=False
    )
    assert strict < everything or len(everything) <= 1
    assert all(
        manifest.set_index("triplet_id").loc[list(strict), "rmse_saved"]
        <= np.median(manifest["rmse_saved"])
    )

    attack = SavedAdversarial(craft_dir=str(data.column_dir))
    batch = collate([data[i] for i in range(2)])
    saved_prey = torch.tensor(
        read_manifest(data.column_dir)
        .set_index("triplet_id")
        .loc[batch.triplet_id, "prey"]
        .to_numpy()
        == 1
    )
    l2 = L2()
    prepared = l2.prepare(batch.ref)
    for prey_is_p1, expect in ((saved_prey, True), (~saved_prey, False)):
        prey = torch.where(prey_is_p1[:, None, None, None], batch.p1, batch.p0)
        other = torch.where(prey_is_p1[:, None, None, None], batch.p0, batch.p1)
        triplets = Triplets(list(batch.triplet_id), prey_is_p1)
        result = attack.run(l2, prepared, prey, l2(batch.ref, other), triplets=triplets)
        assert (result.columns["transferred"] == expect).all()
        if not expect:  # a target that picks the other prey gets no saved image
            assert torch.equal(result.adv, prey) and not result.flipped.any()

    with pytest.raises(ValueError, match="needs the triplet id of each of the 2 preys"):
        attack.run(l2, prepared, batch.p0, l2(batch.ref, batch.p1))  # no ids: no guess


def test_missing_manifest_fails_clearly(tmp_path):
    with pytest.raises(CraftMissing, match=f"no transfer set crafted at {tmp_path / 'nothing'}"):
        TransferTriplets(size=32, manifest=str(tmp_path / "nothing"))


class _Recorder(Attack):
    """Flips the triplets named in ``flip``; records the ids each call was given."""

    name = "recorder"
    white_box = False
    needs_triplets = True

    def __init__(self, flip: set[str] = frozenset()):
        self.flip, self.calls = set(flip), []

    def run(self, metric, prepared_ref, prey, s_other, triplets=None):
        self.calls.append((list(triplets.triplet_id), triplets.prey_is_p1.tolist()))
        with torch.no_grad():
            s_adv = metric.score(prepared_ref, prey)
        flipped = torch.tensor([t in self.flip for t in triplets.triplet_id])
        return AttackResult(prey, s_adv, flipped)


def test_triplet_ids_reach_the_attack_through_the_engine_a_cascade_and_eot():
    """The ids are an input of ``run`` (``needs_triplets``), also inside a cascade (only the
    triplets still unflipped, in order) and EoT; attacks that need none get none."""
    from tests.conftest import synthetic_batch

    batch = synthetic_batch(5, seed=3)
    ids = list(batch.triplet_id)
    first, second = _Recorder(flip={ids[1], ids[3]}), _Recorder()
    rows, _ = attack_batch(L2(), Cascade([NoAttack(), EoT(first, 2), second]), batch)
    prey = rows["prey"].astype(bool).tolist()
    assert first.calls == [(ids, prey)]
    keep = [0, 2, 4]
    assert second.calls == [([ids[i] for i in keep], [prey[i] for i in keep])]
    assert rows["flipped"].tolist() == [False, True, False, True, False]
    assert not NoAttack().needs_triplets and Cascade([NoAttack()]).needs_triplets is False


def test_a_craft_whose_manifest_was_lost_is_rebuilt_from_its_parts_without_recomputing(
    evaluated,
):
    """A craft interrupted after its run finished but before the manifest was merged (here:
    the manifest deleted) is finished by the craft command from the saved parts."""
    _, out, message = evaluated
    craft_dir = _dataset(out["l2"][0]).select_dir
    before = read_manifest(craft_dir)
    pngs = {p: p.stat().st_mtime_ns for p in craft_dir.rglob("*.png")}
    (craft_dir / MANIFEST).unlink()
    with pytest.raises(CraftMissing, match=str(craft_dir)):
        _dataset(out["l2"][0])
    craft_stage.main(_craft_command(CraftMissing(message)))
    pd.testing.assert_frame_equal(read_manifest(craft_dir), before)
    assert {p: p.stat().st_mtime_ns for p in craft_dir.rglob("*.png")} == pngs  # no PNG rewritten
    assert len(_dataset(out["l2"][0])) == out["l2"][1]["samples"]  # the same transfer set


def test_report_examples_regenerate_a_transfer_evaluation(evaluated):
    """The report's example grids re-run ``attack=saved`` through the engine (the ids reach it
    through the report's recording wrapper) and reproduce the stored flips and scores."""
    from pathlib import Path

    from attackpsm.report import examples

    _, out, _ = evaluated
    shown = examples.regenerate(Path(out["l2"][1]["run_dir"]), n=3)
    assert shown
    for ex in shown:
        assert ex.flipped == ex.stored_flipped
        assert ex.s_adv == pytest.approx(ex.stored_s_adv, rel=1e-5)
