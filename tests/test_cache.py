"""The decoded-triplet cache (``dataset.cache=true``): built once, verified before use,
rebuilt when the data changes or the cache is partial, one builder among concurrent
processes, and a run that gives the same per-triplet table bit for bit as the PNG path."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from attackpsm.data.bapps import BAPPS
from attackpsm.data.base import collate
from attackpsm.data.cache import ensure_cache
from attackpsm.data.cache_batches import LEVELS, CachedBatches
from attackpsm.data.cache_format import CacheError, TripletCache, index_fingerprint
from attackpsm.images import from_levels, to_uint8
from tests.conftest import make_cfg
from tests.dataset_fixtures import bapps_path, make_bapps

REPO = Path(__file__).resolve().parent.parent
SIZE = 16
JUDGES = {"cnn": [0.0, 1.0, 1.0, 0.0, 1.0], "deblur": [1.0, 0.0, 0.0]}

# a builder in its own process: prints "BUILT" if it built, then the digest of what it reads
BUILDER = """
import hashlib, sys, time
import attackpsm.data.cache as c
import attackpsm.data.cache_build as b
from attackpsm.data.bapps import BAPPS
root, cache_root, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
fill, build = b.fill, b.build
def slow_fill(*args):
    time.sleep(delay)
    return fill(*args)
def loud_build(*args, **kwargs):
    print("BUILT", flush=True)
    return build(*args, **kwargs)
b.fill, b.build = slow_fill, loud_build
print("START", flush=True)
got = c.ensure_cache(BAPPS(size=int(sys.argv[4]), root=root), cache_root, workers=1, chunk=2, progress=False)
print("DIGEST", hashlib.sha256(got.images.tobytes()).hexdigest(), flush=True)
"""


@pytest.fixture
def bapps_root(tmp_path):
    return make_bapps(tmp_path / "bapps", JUDGES, size=32)


def expected_rows(dataset) -> np.ndarray:
    """The 8-bit images of the PNG path, triplet by triplet."""
    rows = []
    for i in range(len(dataset)):
        it = dataset[i]
        rows.append(to_uint8(torch.stack([it["ref"], it["p0"], it["p1"]])).numpy())
    return np.stack(rows)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_build_verify_reuse(bapps_root, tmp_path):
    ds = BAPPS(size=SIZE, root=bapps_root)
    cache = ensure_cache(ds, tmp_path / "c", workers=1, chunk=3, progress=False)
    assert cache.images.shape == (len(ds), 3, 3, SIZE, SIZE) and cache.images.dtype == np.uint8
    np.testing.assert_array_equal(cache.images, expected_rows(ds))
    assert list(cache.row_of) == [r.triplet_id for r in ds.records] and not cache.errors
    marker = cache.path / "COMPLETE"
    stamp = marker.stat().st_mtime_ns
    again = ensure_cache(BAPPS(size=SIZE, root=bapps_root), tmp_path / "c", progress=False)
    assert again.path == cache.path and marker.stat().st_mtime_ns == stamp  # reused, not rebuilt
    # another resolution is another cache
    other = ensure_cache(BAPPS(size=8, root=bapps_root), tmp_path / "c", workers=1, progress=False)
    assert other.path != cache.path and other.images.shape[-1] == 8


def test_parallel_build_matches_serial(bapps_root, tmp_path):
    ds = BAPPS(size=SIZE, root=bapps_root)
    serial = ensure_cache(ds, tmp_path / "a", workers=1, progress=False)
    pooled = ensure_cache(ds, tmp_path / "b", workers=2, chunk=2, progress=False)
    np.testing.assert_array_equal(serial.images, pooled.images)


def test_changed_data_is_rebuilt(bapps_root, tmp_path):
    ds = BAPPS(size=SIZE, root=bapps_root)
    first = ensure_cache(ds, tmp_path / "c", workers=1, progress=False)
    before, old_print = np.array(first.images), first.fingerprint
    # touched only: the fingerprint covers the bytes, so the cache is still the data's
    png = bapps_path(bapps_root, "cnn", "p0", 1)
    os.utime(png, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    touched = BAPPS(size=SIZE, root=bapps_root)
    assert index_fingerprint(touched) == old_print
    second = ensure_cache(touched, tmp_path / "c", workers=1, progress=False)
    assert second.path == first.path
    np.testing.assert_array_equal(second.images, before)
    with pytest.raises(CacheError, match="fingerprint"):
        TripletCache.open(first.path, "another dataset's fingerprint")
    # rewritten: a new fingerprint, the new pixels are served
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(png)
    changed = BAPPS(size=SIZE, root=bapps_root)
    third = ensure_cache(changed, tmp_path / "c", workers=1, progress=False)
    row = third.row_of["val/cnn/000001"]
    assert (third.images[row, 1] == 200).all() and not (before[row, 1] == 200).all()
    np.testing.assert_array_equal(third.images, expected_rows(changed))


def test_truncated_or_unmarked_cache_is_rebuilt(bapps_root, tmp_path):
    ds = BAPPS(size=SIZE, root=bapps_root)
    good = np.array(ensure_cache(ds, tmp_path / "c", workers=1, progress=False).images)
    path = ensure_cache(ds, tmp_path / "c", progress=False).path
    with open(path / "images.u8", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(CacheError, match="100 bytes"):
        TripletCache.open(path, index_fingerprint(ds))
    np.testing.assert_array_equal(
        ensure_cache(ds, tmp_path / "c", workers=1, progress=False).images, good
    )
    (path / "COMPLETE").unlink()  # a build that never finished
    with pytest.raises(CacheError, match="no completion marker"):
        TripletCache.open(path, index_fingerprint(ds))
    rebuilt = ensure_cache(ds, tmp_path / "c", workers=1, progress=False)
    np.testing.assert_array_equal(rebuilt.images, good)
    assert (rebuilt.path / "COMPLETE").exists()


def _spawn(root: Path, cache_root: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(root), str(cache_root), str(delay), str(SIZE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_killed_builder_is_detected_and_rebuilt(bapps_root, tmp_path):
    ds = BAPPS(size=SIZE, root=bapps_root)
    cache_root = tmp_path / "c"
    proc = _spawn(bapps_root, cache_root, delay=1.0)
    deadline = time.monotonic() + 60
    while not list(cache_root.glob(".*.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)  # mid-build: lock and partial directory left behind
    proc.wait()
    assert list(cache_root.glob("*.lock")) and list(cache_root.glob(".*.tmp-*"))
    assert not any(p.is_dir() and not p.name.startswith(".") for p in cache_root.iterdir())
    cache = ensure_cache(ds, cache_root, workers=1, progress=False, stale_after=600)
    np.testing.assert_array_equal(cache.images, expected_rows(ds))
    assert not list(cache_root.glob("*.lock")) and not list(cache_root.glob(".*.tmp-*"))


def test_two_processes_at_once_build_one_cache(bapps_root, tmp_path):
    cache_root = tmp_path / "c"
    procs = [_spawn(bapps_root, cache_root, delay=0.3) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    built = sum(out.count("BUILT") for out, _ in outs)
    assert built == 1, outs  # one builder; the other waited for it
    digests = {line.split()[1] for out, _ in outs for line in out.splitlines() if "DIGEST" in line}
    assert digests == {digest(expected_rows(BAPPS(size=SIZE, root=bapps_root)))}
    assert len([p for p in cache_root.iterdir()]) == 1  # one cache, no lock, no leftovers


SHARDS = {
    "every other row": lambda records: records[1::2],  # rows gathered (a copy)
    "consecutive rows": lambda records: records[2:7],  # a view of the memmap, no copy
    "reversed": lambda records: records[::-1],
}


@pytest.mark.parametrize("chunk_bytes", [1 << 19, 2 * 3 * SIZE * SIZE * 4])  # whole, 2 images
@pytest.mark.parametrize("pick", list(SHARDS))
def test_cached_batches_equal_the_png_batches(bapps_root, tmp_path, monkeypatch, pick, chunk_bytes):
    """Same ids, errors and bit-identical images as ``collate`` over the PNG path, whether
    a batch's rows are consecutive in the cache or gathered, converted in one piece or in
    chunks; on the CPU and through the table a GPU uses."""
    import attackpsm.data.cache_batches as reader_module

    monkeypatch.setattr(reader_module, "_CHUNK_BYTES", chunk_bytes)
    Path(bapps_path(bapps_root, "deblur", "p1", 2)).write_bytes(b"not a png")  # an error row
    ds = BAPPS(size=SIZE, root=bapps_root)
    cache = ensure_cache(ds, tmp_path / "c", workers=1, progress=False)
    assert list(cache.errors.values()) and "p1" in next(iter(cache.errors.values()))
    shard = SHARDS[pick](ds.records)  # a shard reads only its own rows
    batches = list(CachedBatches(cache, shard, batch_size=3))
    # the path of a GPU: uint8 rows through the 256-entry table (here on the CPU)
    tabled = CachedBatches(cache, shard, batch_size=3)
    tabled.table = LEVELS
    view = BAPPS(size=SIZE, root=bapps_root)
    view.records = shard
    starts = range(0, len(shard), 3)
    png = [collate([view[i] for i in range(s, min(s + 3, len(shard)))]) for s in starts]
    assert len(batches) == len(png) >= 2
    for a, b in [*zip(batches, png, strict=True), *zip(tabled, png, strict=True)]:
        assert a.triplet_id == b.triplet_id and a.errors == b.errors
        for k in ("ref", "p0", "p1", "judge"):
            ta, tb = getattr(a, k), getattr(b, k)
            assert ta.dtype == tb.dtype and ta.shape == tb.shape
            assert torch.equal(ta, tb) or (k == "judge" and torch.equal(ta.isnan(), tb.isnan()))


def test_unconverted_batches_are_the_cached_levels(bapps_root, tmp_path):
    """``convert=False``: the ``uint8`` rows as stored, which convert to the float batches."""
    ds = BAPPS(size=SIZE, root=bapps_root)
    cache = ensure_cache(ds, tmp_path / "c", workers=1, progress=False)
    shard = ds.records[1:6]
    raw = list(CachedBatches(cache, shard, batch_size=2, convert=False))
    converted = list(CachedBatches(cache, shard, batch_size=2))
    assert [b.triplet_id for b in raw] == [b.triplet_id for b in converted]
    for r, c in zip(raw, converted, strict=True):
        for i, k in enumerate(("ref", "p0", "p1")):
            levels = getattr(r, k)
            assert levels.dtype == torch.uint8
            rows = [cache.images[cache.row_of[t]][i] for t in r.triplet_id]
            assert np.array_equal(levels.numpy(), np.stack(rows))
            assert torch.equal(from_levels(levels), getattr(c, k))


def test_bad_settings_are_refused(bapps_root, tmp_path):
    with pytest.raises(ValueError, match="resolution=native"):
        ensure_cache(BAPPS(size=None, root=bapps_root), tmp_path / "c")
    with pytest.raises(ValueError, match="quantize=true"):
        ensure_cache(BAPPS(size=SIZE, root=bapps_root, quantize=False), tmp_path / "c")


def test_run_with_cache_gives_the_same_table_bit_for_bit(bapps_root, tmp_path):
    from attackpsm.job.run import run

    Path(bapps_path(bapps_root, "cnn", "ref", 3)).write_bytes(b"broken")  # recorded, skipped
    tables = {}
    for cached in ("false", "true"):
        out = tmp_path / cached
        cfg = make_cfg(
            out,
            [
                "dataset=bapps",
                f"dataset.root={bapps_root}",
                f"dataset.cache={cached}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "metric=lpips_alex",
                "attack=pgd",
                "attack.max_iterations=5",
                "resolution='64'",
                "resolution.size=32",
                "resolution.batch_size=3",
            ],
        )
        run_dir = Path(run(cfg)["run_dir"])
        tables[cached] = (
            pd.read_parquet(run_dir / "results.parquet"),
            pd.read_parquet(run_dir / "errors.parquet"),
        )
    (png, png_err), (cache, cache_err) = tables["false"], tables["true"]
    assert len(png) == 7 and len(png_err) == 1
    pd.testing.assert_frame_equal(png, cache, check_exact=True)
    pd.testing.assert_frame_equal(png_err, cache_err, check_exact=True)
    assert (tmp_path / "cache").is_dir()


def test_bench_loading_rows(tmp_path):
    from attackpsm.commands.bench.loading import format_pipeline, loading, make_bapps_layout

    root = make_bapps_layout(tmp_path / "bapps", triplets=5, unique=2)
    ds = BAPPS(size=SIZE, root=root, filter="all")
    assert [r.triplet_id for r in ds.records] == [f"val/cnn/{i:06d}" for i in range(5)]
    rows, build_s = loading(root, tmp_path / "c", SIZE, 2, torch.device("cpu"))
    assert [r["path"] for r in rows] == ["png", "cache", "cache, uint8 rows only"]
    assert build_s > 0 and all(r["triplets"] == 5 and r["triplets_per_s"] > 0 for r in rows)
    assert "| cache, uint8 rows only | 5 |" in format_pipeline(
        {"device": "cpu", "loading": rows, "cache_build_s": build_s, "runs": []}
    )
    cache = ensure_cache(ds, tmp_path / "c", progress=False)
    np.testing.assert_array_equal(cache.images[3], cache.images[1])  # linked copies of 1
    np.testing.assert_array_equal(cache.images, expected_rows(ds))


def test_cache_option_is_not_part_of_the_run_identity(tmp_path):
    from attackpsm.storage import run_dir_for

    cfgs = [make_cfg(tmp_path, ["dataset=bapps", f"dataset.cache={c}"]) for c in ("true", "false")]
    assert cfgs[0].dataset.cache is True and cfgs[1].dataset.cache is False
    assert run_dir_for(cfgs[0], "fp") == run_dir_for(cfgs[1], "fp")


def test_cli_builds_the_cache_a_run_then_uses(bapps_root, tmp_path, capsys):
    from attackpsm.commands.data import main

    args = ["cache", "bapps", f"dataset.root={bapps_root}", f"paths.cache_dir={tmp_path / 'c'}"]
    assert main([*args, "resolution=64", "resolution.size=16", "--workers", "1"]) == 0
    assert "cache ready" in capsys.readouterr().out
    (marker,) = (tmp_path / "c").glob("bapps-res16-*/COMPLETE")
    stamp = marker.stat().st_mtime_ns
    ds = BAPPS(size=SIZE, root=bapps_root)
    built = ensure_cache(ds, tmp_path / "c", progress=False)
    assert built.path == marker.parent and marker.stat().st_mtime_ns == stamp  # not rebuilt
    np.testing.assert_array_equal(built.images, expected_rows(ds))
    assert main([*args, "dataset.root=/nonexistent/bapps"]) == 2  # a clear layout error


def test_reused_buffers_never_change_a_kept_batch(bapps_root, tmp_path):
    """Converted images go into reused buffers only when no batch refers to them any more:
    batches kept in a list (more than the pool holds) equal those read one at a time, and
    a reader that drops each batch reuses a few buffers rather than allocating new ones."""
    ds = BAPPS(size=SIZE, root=bapps_root)
    cache = ensure_cache(ds, tmp_path / "c", workers=1, progress=False)
    reader = CachedBatches(cache, ds.records, batch_size=1)
    kept = list(reader)
    assert len(kept) * 3 > reader.pool.keep  # more images than the pool keeps buffers for
    streamed = CachedBatches(cache, ds.records, batch_size=1)
    seen = 0
    for a, b in zip(kept, streamed, strict=True):
        assert a.triplet_id == b.triplet_id
        for k in ("ref", "p0", "p1"):
            assert torch.equal(getattr(a, k), getattr(b, k))
        expected = from_uint8_rows(cache, a.triplet_id[0])
        assert all(
            torch.equal(getattr(a, k)[0], expected[i]) for i, k in enumerate(("ref", "p0", "p1"))
        )
        seen += 1
    assert seen == len(kept)
    assert reader.pool.allocated == 3 * len(kept)  # every kept batch has its own buffers
    reused = CachedBatches(cache, ds.records, batch_size=1)
    for batch in reused:
        del batch  # dropped before the next is read, as a run does
    # the batch in use, those read ahead and one being converted: a few sets, then reuse
    assert reused.pool.allocated <= reused.pool.keep < 3 * len(kept)


def test_a_kept_view_keeps_its_buffer(bapps_root, tmp_path):
    """A slice of a batch's image outlives the batch: its buffer is not lent again while
    the slice exists, and is once the slice is gone."""
    ds = BAPPS(size=SIZE, root=bapps_root)
    cache = ensure_cache(ds, tmp_path / "c", workers=1, progress=False)
    reader = CachedBatches(cache, ds.records, batch_size=1)
    views = [batch.ref[0, :1] for batch in reader]  # the batches themselves are dropped
    for view, tid in zip(views, [r.triplet_id for r in ds.records], strict=True):
        assert torch.equal(view, from_uint8_rows(cache, tid)[0][:1])
    assert reader.pool.allocated >= len(views)  # none of their buffers was lent again
    before = reader.pool.allocated
    del views, view
    for batch in reader:
        del batch  # dropped before the next is read, as a run does
    assert reader.pool.allocated == before  # given back: read again without allocating


def from_uint8_rows(cache, triplet_id: str) -> list[torch.Tensor]:
    """The three images of a cached triplet, converted the way the PNG path rounds them."""
    row = cache.images[cache.row_of[triplet_id]]
    return [torch.from_numpy(row[k].astype(np.float32)) / 127.5 - 1.0 for k in range(3)]
