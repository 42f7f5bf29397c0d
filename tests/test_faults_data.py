"""Faults in the data a run reads, injected with real files and real runs.

The data fingerprint covers the bytes of every file (an edit during a run, or a same-size
edit with its modification time restored, never mixes or reuses results); a file that
cannot be read *now* fails its batch instead of becoming a recorded skip (a re-run retries
it); the decoded-image cache is checked row by row and rebuilt when damaged; images and
links that would exhaust memory or leave the dataset root are recorded skips; and cache
workers die with their parent.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from attackpsm.data.bapps import BAPPS
from attackpsm.data.base import DataUnavailable
from attackpsm.data.digests import DigestMemo, combine, digest_bytes
from attackpsm.job.run import run
from attackpsm.storage.shards import ShardStore
from tests.conftest import make_cfg
from tests.dataset_fixtures import bapps_path, make_bapps, save_png, smooth_image

REPO = Path(__file__).resolve().parent.parent
SIZE = 32


def bapps_cfg(out: Path, root: Path, *extra: str):
    return make_cfg(
        out,
        [
            "dataset=bapps",
            f"dataset.root={root}",
            "metric=l2",
            "attack=none",
            "resolution='64'",
            f"resolution.size={SIZE}",
            *extra,
        ],
    )


def triplet_digest(root: Path, subset: str, index: int) -> str:
    return combine(
        [digest_bytes(bapps_path(root, subset, k, index).read_bytes()) for k in ("ref", "p0", "p1")]
    )


def after_first_part(monkeypatch, action) -> None:
    """Run ``action`` once, right after the first checkpoint part of a run is written."""
    original = ShardStore.checkpoint
    done = []

    def checkpoint(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not done:
            done.append(True)
            action()

    monkeypatch.setattr(ShardStore, "checkpoint", checkpoint)


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "results").glob("*/*/*/*") if p.is_dir())


# --- content fingerprint -----------------------------------------------------------------


def test_image_rewritten_during_a_run_never_mixes_rows(tmp_path, monkeypatch):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]}, size=SIZE)
    target = bapps_path(root, "cnn", "p0", 5)  # read last (shards are ordered by id)
    new = smooth_image(np.random.default_rng(7), SIZE)
    after_first_part(monkeypatch, lambda: save_png(target, new))
    cfg = bapps_cfg(tmp_path, root, "resolution.batch_size=1")
    with pytest.raises(DataUnavailable, match="changed since this run's data fingerprint"):
        run(cfg)
    (old_dir,) = run_dirs(tmp_path)
    assert not (old_dir / "results.parquet").exists()
    assert not list(old_dir.glob("shard-*-of-*.parquet"))  # the shard never finished
    monkeypatch.undo()

    out = run(cfg)  # the edited data: a run directory of its own, every row of the new data
    assert Path(out["run_dir"]) != old_dir
    table = pd.read_parquet(Path(out["run_dir"]) / "results.parquet")
    assert len(table) == 6
    assert list(table["data_digest"]) == [triplet_digest(root, "cnn", i) for i in range(6)]
    fresh = make_bapps(tmp_path / "copy", {"cnn": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]}, size=SIZE)
    save_png(bapps_path(fresh, "cnn", "p0", 5), new)
    clean = run(bapps_cfg(tmp_path / "clean", fresh, "resolution.batch_size=1"))
    pd.testing.assert_frame_equal(
        table, pd.read_parquet(Path(clean["run_dir"]) / "results.parquet"), check_exact=True
    )


def test_same_size_edit_with_restored_mtime_is_not_reused(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0, 0.0]}, size=SIZE)
    target = bapps_path(root, "cnn", "p1", 2)
    # uncompressed PNGs: the file size depends on the image size only
    Image.fromarray(smooth_image(np.random.default_rng(1), SIZE)).save(target, compress_level=0)
    first = run(bapps_cfg(tmp_path, root))
    before = os.stat(target)
    edited = tmp_path / "edited.png"
    Image.fromarray(smooth_image(np.random.default_rng(2), SIZE)).save(edited, compress_level=0)
    target.write_bytes(edited.read_bytes())  # in place: same inode, same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(target)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )

    second = run(bapps_cfg(tmp_path, root))
    assert second["run_dir"] != first["run_dir"]  # never "already finished"
    old = pd.read_parquet(Path(first["run_dir"]) / "results.parquet").set_index("triplet_id")
    new = pd.read_parquet(Path(second["run_dir"]) / "results.parquet").set_index("triplet_id")
    edited_id = "val/cnn/000002"
    assert new.loc[edited_id, "data_digest"] == triplet_digest(root, "cnn", 2)
    assert new.loc[edited_id, "data_digest"] != old.loc[edited_id, "data_digest"]
    assert new.loc[edited_id, "d1"] != old.loc[edited_id, "d1"]
    others = [t for t in new.index if t != edited_id]
    pd.testing.assert_frame_equal(new.loc[others], old.loc[others], check_exact=True)


def test_digest_memo_reads_only_changed_files(tmp_path):
    files = [tmp_path / f"{i}.bin" for i in range(5)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 1000)
    old = time.time_ns() - 10**10  # older than the racy window: memoised
    for f in files:
        os.utime(f, ns=(old, old))
    time.sleep(2.1)  # the ctime too
    memo = DigestMemo(tmp_path, tmp_path / "memo")
    first = [memo.digest(f, f.name) for f in files]
    assert memo.read == 5 and first == [digest_bytes(f.read_bytes()) for f in files]
    memo.save()
    warm = DigestMemo(tmp_path, tmp_path / "memo")
    assert [warm.digest(f, f.name) for f in files] == first and warm.read == 0
    stat = os.stat(files[3])
    files[3].write_bytes(b"\xff" * 1000)  # same size, mtime restored: the ctime moved
    os.utime(files[3], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = DigestMemo(tmp_path, tmp_path / "memo")
    assert again.digest(files[3], files[3].name) == digest_bytes(b"\xff" * 1000)
    assert again.read == 1


# --- transient is not permanent ----------------------------------------------------------


def test_file_moved_away_during_a_run_is_retried_not_skipped(tmp_path, monkeypatch):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]}, size=SIZE)
    target = bapps_path(root, "cnn", "ref", 4)
    away = tmp_path / "away.png"
    after_first_part(monkeypatch, lambda: target.rename(away))
    cfg = bapps_cfg(tmp_path, root, "resolution.batch_size=2")
    with pytest.raises(DataUnavailable, match=r"could not be read .*re-run retries it"):
        run(cfg)
    (run_dir,) = run_dirs(tmp_path)
    assert not list(run_dir.glob("shard-*-of-*.parquet"))  # unfinished: nothing recorded
    monkeypatch.undo()
    away.rename(target)

    out = run(cfg)
    assert Path(out["run_dir"]) == run_dir and out["samples"] == 6 and out["skipped"] == 0
    assert len(pd.read_parquet(run_dir / "results.parquet")) == 6
    assert len(pd.read_parquet(run_dir / "errors.parquet")) == 0


def test_out_of_memory_is_not_a_data_skip(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0]}, size=SIZE)
    data = BAPPS(size=100_000, root=root)  # 3 x 3 x 100000^2 floats: never allocatable
    with pytest.raises(DataUnavailable, match="out of memory.*Not recorded as a skip"):
        data[0]


def test_zero_usable_triplets_never_look_finished(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0]}, size=SIZE)
    for i in range(2):
        bapps_path(root, "cnn", "ref", i).write_bytes(b"not an image")
    cfg = bapps_cfg(tmp_path, root)
    for _ in range(2):  # the re-run says so too, never "done" with 0 rows
        with pytest.raises(ValueError, match="zero usable triplets: all 2 were skipped"):
            run(cfg)


# --- bounded resources -------------------------------------------------------------------


def huge_png(path: Path, side: int = 12000) -> Path:
    """A valid all-black ``side`` x ``side`` RGB PNG, written without holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


PEAK = """
import resource, sys
from attackpsm.data.bapps import BAPPS
data = BAPPS(size=32, root=sys.argv[1])
data.fingerprint()
item = data[int(sys.argv[2])]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
item = data[int(sys.argv[2])]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("ERROR", item.get("error"))
print("PEAK_KB", after - before)
"""


def test_huge_png_is_refused_before_decoding(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0]}, size=SIZE)
    huge = huge_png(bapps_path(root, "cnn", "p0", 1))
    assert huge.stat().st_size < 1_000_000  # about 420 KB for 432 MB of pixels
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(root), "1"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "12000x12000 = 144000000 pixels, above dataset.max_pixels" in out.stdout
    peak_kb = int(out.stdout.split("PEAK_KB")[1])
    assert peak_kb < 50_000, out.stdout  # no decoding: not the 432 MB of pixels

    result = run(bapps_cfg(tmp_path, root))  # a recorded skip naming the size
    errors = pd.read_parquet(Path(result["run_dir"]) / "errors.parquet")
    assert list(errors["triplet_id"]) == ["val/cnn/000001"] and result["samples"] == 2
    assert "p0 2afc/val/cnn/p0/000001.png: 12000x12000" in errors["reason"][0]


def test_symlink_loop_is_a_recorded_skip_naming_the_file(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0]}, size=SIZE)
    loop = bapps_path(root, "cnn", "p1", 2)
    loop.unlink()
    loop.symlink_to(loop.name)  # points at itself
    result = run(bapps_cfg(tmp_path, root))
    errors = pd.read_parquet(Path(result["run_dir"]) / "errors.parquet")
    assert result["samples"] == 2 and list(errors["triplet_id"]) == ["val/cnn/000002"]
    assert "p1 2afc/val/cnn/p1/000002.png: symlink loop" in errors["reason"][0]


def test_symlinks_leaving_the_root_are_refused_unless_allowed(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0], "deblur": [1.0, 0.0]}, size=SIZE)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # a file link: cnn p0 of triplet 1
    link = bapps_path(root, "cnn", "p0", 1)
    link.rename(outside / "p0.png")
    link.symlink_to(outside / "p0.png")
    # a directory link: deblur's whole ref folder
    ref_dir = bapps_path(root, "deblur", "ref", 0).parent
    ref_dir.rename(outside / "deblur_ref")
    ref_dir.symlink_to(outside / "deblur_ref", target_is_directory=True)
    inside = bapps_path(root, "cnn", "p1", 2)  # a link that stays inside is fine
    inside.rename(root / "kept.png")
    inside.symlink_to(root / "kept.png")

    refused = run(bapps_cfg(tmp_path / "a", root))
    errors = pd.read_parquet(Path(refused["run_dir"]) / "errors.parquet")
    assert sorted(errors["triplet_id"]) == [
        "val/cnn/000001",
        "val/deblur/000000",
        "val/deblur/000001",
    ]
    assert errors["reason"].str.contains("leads outside the dataset root").all()
    assert errors["reason"].str.contains("dataset.follow_symlinks=true").all()
    assert refused["samples"] == 2

    followed = run(bapps_cfg(tmp_path / "b", root, "dataset.follow_symlinks=true"))
    assert followed["samples"] == 5 and followed["skipped"] == 0


def test_bad_reading_options_name_the_value(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0]}, size=SIZE)
    with pytest.raises(ValueError, match="dataset.max_pixels must be a positive integer.*0"):
        BAPPS(root=root, max_pixels=0)
    with pytest.raises(ValueError, match="dataset.follow_symlinks must be true or false.*'yes'"):
        BAPPS(root=root, follow_symlinks="yes")


# --- the decoded-image cache -------------------------------------------------------------


def test_zeroed_cache_bytes_are_detected_and_rebuilt(tmp_path, caplog):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0, 0.0], "deblur": [1.0]}, size=SIZE)
    cache_dir = tmp_path / "cache"
    extra = ("dataset.cache=true", f"paths.cache_dir={cache_dir}", "resolution.batch_size=2")
    first = run(bapps_cfg(tmp_path / "a", root, *extra))
    (images,) = cache_dir.glob("*/images.u8")
    good = images.read_bytes()
    size = len(good)
    with open(images, "r+b") as fh:  # zeros in the middle of the file, same size
        fh.seek(size // 2)
        fh.write(b"\0" * 4096)
    assert images.stat().st_size == size and images.read_bytes() != good

    second = run(bapps_cfg(tmp_path / "b", root, *extra))  # a new results dir: reads the cache
    assert "do not match their checksums" in caplog.text
    (rebuilt,) = cache_dir.glob("*/images.u8")
    assert hashlib.sha256(rebuilt.read_bytes()).digest() == hashlib.sha256(good).digest()
    pd.testing.assert_frame_equal(
        pd.read_parquet(Path(first["run_dir"]) / "results.parquet"),
        pd.read_parquet(Path(second["run_dir"]) / "results.parquet"),
        check_exact=True,
    )


BUILDER = """
import os, sys, time
import attackpsm.data.cache as c
import attackpsm.data.cache_build as b
from attackpsm.data.bapps import BAPPS
fill = b.fill
def slow_fill(*args):
    with open(os.environ["WORKER_PIDS"], "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(30)
    return fill(*args)
if __name__ == "__main__":
    b.fill = slow_fill
    c.ensure_cache(BAPPS(size=16, root=sys.argv[1]), sys.argv[2], workers=2, chunk=1, progress=False)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # exited (a zombie not yet reaped by whoever adopted it)


def test_killed_cache_build_leaves_no_workers(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0, 0.0]}, size=SIZE)
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    pids = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WORKER_PIDS": str(pids)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), str(tmp_path / "cache")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if pids.exists():
            workers = {int(p) for p in pids.read_text().split()}
    assert len(workers) == 2, proc.communicate()
    assert not any(_gone(p) for p in workers)
    os.kill(proc.pid, signal.SIGKILL)  # mid-build
    proc.wait()
    deadline = time.monotonic() + 20
    while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [p for p in workers if not _gone(p)]
    for p in alive:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their killed parent"


def test_rows_of_other_bytes_are_never_merged(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0, 1.0]}, size=SIZE)
    cfg = bapps_cfg(tmp_path, root, "resolution.batch_size=1")
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    part = sorted(run_dir.glob("shard-*.parts/part-*.parquet"))[1]
    frame = pd.read_parquet(part)
    frame["data_digest"] = digest_bytes(b"other bytes")  # a row of some other data
    frame.to_parquet(part, index=False)
    for name in ("results.parquet", "errors.parquet"):
        (run_dir / name).unlink()
    for shard in run_dir.glob("shard-*-of-*.parquet"):
        shard.unlink()
    with pytest.raises(ValueError, match=r"1 rows were computed from other bytes.*val/cnn/000001"):
        run(cfg)


def test_out_of_memory_in_a_run_is_never_recorded(tmp_path):
    """``resolution.size=100000``: refused up front or failing its batch, every time; never
    a table of out-of-memory skips that a re-run then takes as finished."""
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0]}, size=SIZE)
    cfg = bapps_cfg(tmp_path, root, "resolution.size=100000")
    for _ in range(2):
        with pytest.raises((DataUnavailable, ValueError), match="memory|resolution"):
            run(cfg)
    assert not list((tmp_path / "results").rglob("*.parquet"))  # no part, no skip, no table


def test_oversized_file_is_refused_without_reading_it(tmp_path):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0]}, size=SIZE)
    big = bapps_path(root, "cnn", "ref", 1)
    with open(big, "r+b") as fh:  # a sparse 2 GB file: its bytes are never read
        fh.truncate(2 << 30)
    data = BAPPS(size=SIZE, root=root, max_pixels=1_000_000)
    assert "error" not in data[0]
    assert "file of 2147483648 bytes, larger than any image" in data[1]["error"]
