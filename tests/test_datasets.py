"""BAPPS, PieAPP and CLIC loaders on fixture data written in their exact on-disk formats:
counts after filtering, label direction, prey choice, sharding, resizing, bad data."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from attackpsm.attacks.none import NoAttack
from attackpsm.data.bapps import BAPPS, SUBSETS
from attackpsm.data.base import collate, shard_records
from attackpsm.data.clic import CLIC
from attackpsm.data.files import DatasetLayoutError, read_rgb
from attackpsm.data.pieapp import PieAPP
from attackpsm.engine import attack_batch
from attackpsm.images import quantize, resize
from attackpsm.metrics.classic import L2
from tests.dataset_fixtures import bapps_path, make_bapps, make_clic, make_pieapp, save_png

# cnn: 4 unanimous of 6; color: 2 of 3 (0.4, 0.6, 0.2 are split votes)
BAPPS_JUDGES = {"cnn": [0.0, 1.0, 0.4, 1.0, 0.6, 0.0], "color": [1.0, 0.0, 0.2]}
# per reference: (A, B, preference for A); labels c* are close to the reference, f* far
PIEAPP_PREFS = {
    1: [
        ("c1", "f1", 0.9),
        ("f1", "c1", 0.1),
        ("c1", "f2", 0.5),
        ("c1", "f1", 0.85),
        ("f1", "c1", 0.15),
    ],
    2: [
        ("c1", "f1", 0.86),
        ("f1", "c1", 0.14),
        ("ref", "f1", 0.95),
        ("f1", "ref", 0.02),
        ("f1", "f2", 0.6),
    ],
}
CLIC_LABELS = [0, 1, 1, 0, 0]


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def by_id(dataset):
    return {it["triplet_id"]: it for it in items(dataset)}


def clean_attack(dataset):
    """Clean L2 on every loadable triplet: (rows, errors) as the run would record them."""
    return attack_batch(L2(), NoAttack(), collate(items(dataset)))


# --- counts, label direction, prey -------------------------------------------------------


@pytest.fixture
def bapps_root(tmp_path):
    return make_bapps(tmp_path / "bapps", BAPPS_JUDGES)


def test_bapps_counts_after_filtering(bapps_root):
    unanimous = BAPPS(root=bapps_root)
    assert unanimous.counts() == {
        "cnn": {"triplets": 4, "errors": 0},
        "color": {"triplets": 2, "errors": 0},
    }
    assert unanimous.dropped == {"cnn": 2, "color": 1}
    assert {r.judge for r in unanimous.records} == {0.0, 1.0}
    assert len(BAPPS(root=bapps_root, filter="all")) == 9
    assert len(BAPPS(root=bapps_root, subsets=["color"])) == 2
    # the 2afc folder itself is accepted as the root
    assert len(BAPPS(root=bapps_root / "2afc")) == 6
    ids = [r.triplet_id for r in unanimous.records]
    assert "val/cnn/000000" in ids and "val/color/000002" not in ids


def test_bapps_train_split(tmp_path):
    root = make_bapps(tmp_path / "b", {"mix": [0.0, 0.5, 1.0]}, split="train")
    ds = BAPPS(root=root, split="train")
    assert [r.triplet_id for r in ds.records] == ["train/mix/000000", "train/mix/000002"]
    with pytest.raises(ValueError, match="unknown bapps train subsets"):
        BAPPS(root=root, split="train", subsets=["superres"])


def test_bapps_label_direction_and_prey(bapps_root):
    ds = BAPPS(root=bapps_root, filter="all")
    rows, errors = clean_attack(ds)
    assert len(rows) == 9 and errors.empty
    labelled = rows[rows["judge"] != 0.5]
    # judge = fraction preferring p1; the preferred image is the close one, so L2 agrees
    assert labelled["human_agrees"].astype(bool).all()
    unanimous = rows[rows["judge"].isin([0.0, 1.0])]
    # prey = the image the metric ranks closer = the one humans preferred
    assert (unanimous["prey"] == unanimous["judge"].astype(int)).all()
    assert ((rows["prey"] == 1) == (rows["d1"] < rows["d0"])).all()


def test_pieapp_counts_label_direction_and_reference_as_distortion(tmp_path):
    root = make_pieapp(tmp_path / "pieapp", PIEAPP_PREFS)
    ds = PieAPP(root=root)
    # > 0.85 or < 0.15: 0.9, 0.1 (ref 1); 0.86, 0.14, 0.95, 0.02 (ref 2); 0.5/0.85/0.15/0.6 dropped
    assert len(ds) == 6 and ds.dropped == 4
    assert ds.counts() == {
        "ref_1": {"triplets": 2, "errors": 0},
        "ref_2": {"triplets": 4, "errors": 0},
    }
    # the reference as A or B is read from reference_images, like the reference itself
    ref_rows = [r for r in ds.records if "reference_images/test/ref_2.png" in r.files[1:]]
    assert (
        len(ref_rows) == 2
        and [r.files[0] for r in ref_rows] == ["reference_images/test/ref_2.png"] * 2
    )
    rows, errors = clean_attack(ds)
    assert errors.empty and len(rows) == 6
    # judge = fraction preferring p1 (= B) = 1 - preference for A
    judges = dict(zip(rows["triplet_id"], rows["judge"], strict=True))
    assert judges["test/ref_1/distort_1_c1_inter_1-vs-distort_1_f1_inter_2"] == pytest.approx(0.1)
    assert judges["test/ref_2/ref_2-vs-distort_2_f1_inter_2"] == pytest.approx(0.05)
    assert rows["human_agrees"].astype(bool).all()
    assert (rows["prey"] == (rows["judge"] > 0.5).astype(int)).all()
    # the reference compared with itself has distance 0: it is the prey
    row = rows[rows["triplet_id"] == "test/ref_2/distort_2_f1_inter_2-vs-ref_2"].iloc[0]
    assert row["prey"] == 1 and row["d1"] == 0.0
    assert len(PieAPP(root=root, threshold=None)) == 10


def test_pieapp_train_uses_processed_preference(tmp_path):
    # the raw column says the opposite; the processed one must be used
    prefs = {5: [("c1", "f1", 0.95), ("f1", "c1", 0.05)]}
    root = make_pieapp(tmp_path / "p", prefs, split="train", raw_prefs={5: [0.05, 0.95]})
    ds = PieAPP(root=root, split="train")
    assert [r.judge for r in ds.records] == pytest.approx([0.05, 0.95])
    rows, _ = clean_attack(ds)
    assert rows["human_agrees"].astype(bool).all()


@pytest.mark.parametrize("with_t", [True, False])
def test_clic_labels_and_unlabelled_csv(tmp_path, with_t):
    root = make_clic(tmp_path / "clic", CLIC_LABELS, with_t=with_t)
    ds = CLIC(root=root)
    assert len(ds) == len(CLIC_LABELS)
    assert ds.csv.name == ("oracle.csv" if with_t else "validation.csv")
    rows, errors = clean_attack(ds)
    assert errors.empty and len(rows) == len(CLIC_LABELS)
    # the metric always picks the close image as prey: B (p1) exactly when T = 1
    t_of = {r.triplet_id: t for r, t in zip(ds.records, CLIC_LABELS, strict=True)}
    assert list(rows["prey"]) == [t_of[i] for i in rows["triplet_id"]]
    if with_t:
        assert list(rows["judge"]) == [float(t_of[i]) for i in rows["triplet_id"]]
        assert rows["human_agrees"].astype(bool).all()
    else:
        assert rows["judge"].isna().all() and rows["human_agrees"].isna().all()


def test_clic_oracle_preferred_and_explicit_csv(tmp_path):
    root = make_clic(tmp_path / "clic", [0, 1], with_t=True, images_dir=".")
    make_clic(root, [1, 1, 0], with_t=False, images_dir="more", seed=1)
    assert CLIC(root=root).csv.name == "oracle.csv" and len(CLIC(root=root)) == 2
    ds = CLIC(root=root, csv="validation.csv")
    assert len(ds) == 3 and all(r.judge is None for r in ds.records)
    assert all(f.startswith("more/") for f in ds.records[0].files)


# --- sharding -----------------------------------------------------------------------------


def _ids(records):
    return [r.triplet_id for r in records]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_disjoint_complete_stable(tmp_path, bapps_root, count):
    ds = BAPPS(root=bapps_root, filter="all")
    # the same data under another path, its files written in another order
    other = tmp_path / "elsewhere"
    make_bapps(other, dict(reversed(list(BAPPS_JUDGES.items()))))
    ds2 = BAPPS(root=other, filter="all")
    ds2.records.reverse()
    shards = [_ids(shard_records(ds.records, i, count)) for i in range(count)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == sorted(_ids(ds.records))  # complete
    assert len(set(flat)) == len(flat)  # disjoint
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    assert shards == [_ids(shard_records(ds2.records, i, count)) for i in range(count)]  # stable
    with pytest.raises(ValueError):
        shard_records(ds.records, count, count)


def test_error_rows_are_sharded_once(tmp_path):
    root = make_bapps(tmp_path / "b", BAPPS_JUDGES)
    bapps_path(root, "cnn", "judge", 1).unlink()
    ds = BAPPS(root=root)
    bad = [r.triplet_id for r in ds.records if r.error]
    assert bad == ["val/cnn/000001"]
    shards = [shard_records(ds.records, i, 2) for i in range(2)]
    assert sum(r.triplet_id in bad for s in shards for r in s) == 1


# --- resolution and streaming -------------------------------------------------------------


def test_resize_is_identical_for_the_three_images(tmp_path):
    root = make_bapps(tmp_path / "b", {"cnn": [0.0, 1.0]}, size=256)
    native = BAPPS(root=root)[0]
    assert native["ref"].shape == (3, 256, 256)
    for size in (64, 512):
        it = BAPPS(root=root, size=size)[0]
        stacked = torch.stack([it["ref"], it["p0"], it["p1"]])
        assert stacked.shape == (3, 3, size, size) and stacked.dtype == torch.float32
        expected = resize(torch.stack([native["ref"], native["p0"], native["p1"]]), size)
        assert torch.equal(stacked, quantize(expected))  # 8-bit after resizing (the default)
        floats = BAPPS(root=root, size=size, quantize=False)[0]
        assert torch.equal(torch.stack([floats["ref"], floats["p0"], floats["p1"]]), expected)
        # antialiased: the 64x64 version of the reference is its local average, not a subsample
        if size == 64:
            pooled = torch.nn.functional.avg_pool2d(native["ref"][None], 4)[0]
            assert (it["ref"] - pooled).abs().mean() < 0.02
        assert stacked.min() >= -1 and stacked.max() <= 1


def test_resolution_group_sizes():
    from hydra import compose, initialize_config_dir

    from attackpsm.commands.app import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        sizes = {
            r: compose("config", overrides=[f"resolution='{r}'", "logger=none"]).resolution
            for r in ("64", "256", "512", "768", "native")
        }
    assert [c.size for c in sizes.values()] == [64, 256, 512, 768, None]
    assert all(c.batch_size >= 1 for c in sizes.values())


def test_streaming_loader_with_workers_holds_no_pixels(tmp_path):
    root = make_clic(tmp_path / "clic", [0, 1] * 6, size=96, n_sources=3)
    ds = CLIC(root=root, size=64)
    ds.fingerprint()  # the files' digests, which every load checks against
    before = len(pickle.dumps(ds))
    loader = DataLoader(ds, batch_size=4, num_workers=2, prefetch_factor=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 12 and all(
        b.ref.shape[1:] == (3, 64, 64) for b in batches
    )
    assert [i for b in batches for i in b.triplet_id] == [r.triplet_id for r in ds.records]
    list(DataLoader(ds, batch_size=4, collate_fn=collate))  # in-process too: nothing cached
    assert len(pickle.dumps(ds)) == before < 50_000


MEMORY_PROBE = """
import resource, sys
from torch.utils.data import DataLoader
from attackpsm.data.base import collate
from attackpsm.data.clic import CLIC
ds = CLIC(root=sys.argv[1])
loader = DataLoader(ds, batch_size=2, num_workers=0, collate_fn=collate)
it = iter(loader); next(it)
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = 2 + sum(len(b) for b in it)
print(n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) * 1024)
"""


def test_memory_bounded_at_768(tmp_path):
    """24 native 768x768 triplets are 510 MB as float tensors; streaming keeps a batch."""
    root = make_clic(tmp_path / "clic", [0, 1] * 12, size=768, n_sources=2)
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(root)], capture_output=True, text=True, check=True
    )
    n, growth = map(int, out.stdout.split())
    all_pixels = n * 3 * 3 * 768 * 768 * 4
    assert n == 24 and growth < all_pixels / 5, (growth, all_pixels)


# --- bad data -----------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken_bapps(tmp_path):
    """cnn triplets 0..9 (all unanimous), each broken in its own way (0 stays good)."""
    root = make_bapps(tmp_path / "bad", {"cnn": [0.0, 1.0] * 5})
    rgb = np.asarray(Image.open(bapps_path(root, "cnn", "ref", 0)))
    bapps_path(root, "cnn", "p1", 1).unlink()  # missing image
    _truncate(bapps_path(root, "cnn", "p0", 2))  # truncated PNG
    bapps_path(root, "cnn", "ref", 3).write_bytes(b"not a png at all")  # unreadable
    save_png(bapps_path(root, "cnn", "p0", 4), rgb[..., 0])  # grey
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    save_png(bapps_path(root, "cnn", "p1", 5), np.dstack([rgb, alpha]))  # RGBA
    save_png(bapps_path(root, "cnn", "p1", 6), rgb[:16])  # mismatched size
    bapps_path(root, "cnn", "judge", 7).unlink()  # missing judge
    np.save(bapps_path(root, "cnn", "judge", 8), np.array([1.5], np.float32))  # judge out of range
    np.save(bapps_path(root, "cnn", "judge", 9), np.array([0.0, 1.0], np.float32))  # wrong shape
    return root


EXPECTED_REASONS = {
    1: ["p1", "FileNotFoundError"],
    2: ["p0", "truncated"],
    3: ["ref", "UnidentifiedImageError"],
    4: ["p0", "mode L"],
    5: ["p1", "mode RGBA"],
    6: ["mismatched image sizes"],
    7: ["missing judge file"],
    8: ["outside [0, 1]"],
    9: ["shape (2,)"],
}


def test_bad_data_becomes_error_rows(broken_bapps):
    ds = BAPPS(root=broken_bapps)
    assert len(ds) == 10  # unfilterable bad judges are kept, as errors
    loaded = by_id(ds)
    assert "error" not in loaded["val/cnn/000000"]
    for i, words in EXPECTED_REASONS.items():
        reason = loaded[f"val/cnn/{i:06d}"].get("error", "")
        assert all(w in reason for w in words), (i, reason)
    rows, errors = clean_attack(ds)
    assert list(rows["triplet_id"]) == ["val/cnn/000000"]
    assert sorted(errors["triplet_id"]) == [f"val/cnn/{i:06d}" for i in range(1, 10)]
    assert list(errors.columns) == ["triplet_id", "subset", "reason"]


def test_read_rgb_refuses_non_rgb(tmp_path):
    grey = save_png(tmp_path / "g.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="mode L"):
        read_rgb(grey)
    colour = save_png(tmp_path / "c.png", np.full((4, 5, 3), 255, np.uint8))
    assert read_rgb(colour).shape == (3, 4, 5)


def test_pieapp_and_clic_bad_labels(tmp_path):
    root = make_pieapp(
        tmp_path / "p", {1: [("c1", "f1", 0.9), ("f1", "c1", 1.3)], 2: [("c1", "f1", 0.95)]}
    )
    (root / "labels" / "test" / "ref_2_pairwise_labels.csv").unlink()
    errors = {r.triplet_id: r.error for r in PieAPP(root=root).records if r.error}
    assert "outside [0, 1]" in errors["test/ref_1/distort_1_f1_inter_2-vs-distort_1_c1_inter_1"]
    assert "missing label file" in errors["test/ref_2"]

    root = make_clic(tmp_path / "c", [0, 1, 0])
    lines = (root / "oracle.csv").read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",2"  # label outside [0, 1]
    lines.append("only,two")
    (root / "oracle.csv").write_text("\n".join(lines) + "\n")
    first = lines[0].split(",")[1]
    next((root / "images").glob(first)).unlink()  # missing image
    recs = CLIC(root=root).records
    reasons = [r.error for r in recs]
    assert "missing image" in reasons[0] and "T='2'" in reasons[1] and reasons[2] is None
    assert "expected O,A,B[,T]" in reasons[3]


def test_missing_root_and_zero_usable_name_the_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"does not exist[\s\S]*2afc/\{val,train\}"):
        BAPPS(root=tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError, match="ATTACKPSM_PIEAPP"):
        PieAPP(root=None)
    (tmp_path / "empty" / "2afc" / "val").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no val subset"):
        BAPPS(root=tmp_path / "empty")
    split_votes = make_bapps(tmp_path / "votes", {"cnn": [0.2, 0.4]})
    with pytest.raises(DatasetLayoutError, match="zero usable triplets"):
        BAPPS(root=split_votes)
    with pytest.raises(DatasetLayoutError, match="labels/<split>"):
        PieAPP(root=tmp_path / "empty")
    with pytest.raises(DatasetLayoutError, match="oracle.csv"):
        CLIC(root=tmp_path / "empty")
    with pytest.raises(DatasetLayoutError, match="subsets \\['color'\\] not found"):
        BAPPS(root=split_votes, subsets=["color"])


# --- download helper ----------------------------------------------------------------------


def test_download_bapps_from_mirror(tmp_path):
    from attackpsm.data.download import download_bapps

    src = make_bapps(tmp_path / "src", {s: [0.0, 1.0] for s in SUBSETS["val"]}, size=8)
    archive = tmp_path / "twoafc_val.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # the official archives hold val/<subset>/...
        tar.add(src / "2afc" / "val", arcname="val")
    shutil.rmtree(src)
    dead = (tmp_path / "missing.tar.gz").as_uri()
    root = download_bapps(tmp_path / "data", ["val"], sources={"val": [dead, archive.as_uri()]})
    assert not (root / ".download").exists()
    assert BAPPS(root=root).counts() == {s: {"triplets": 2, "errors": 0} for s in SUBSETS["val"]}


def test_download_pieapp_unwraps_the_top_folder(tmp_path):
    import zipfile

    from attackpsm.data.download import download_pieapp

    src = make_pieapp(tmp_path / "src" / "PieAPP_dataset_CVPR_2018", {1: [("c1", "f1", 0.9)]})
    archive = tmp_path / "all_data_PieAPP_dataset_CVPR_2018.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(src.parent))
    root = download_pieapp(tmp_path / "data", sources=[archive.as_uri()])
    assert root == tmp_path / "data" and sorted(p.name for p in root.iterdir()) == [
        "distorted_images", "labels", "reference_images", "test_reference_list.txt",
    ]  # fmt: skip
    assert len(PieAPP(root=root)) == 1
