"""Fetch the public datasets from their official sources (needs internet).

* BAPPS 2AFC: the archives of the LPIPS project's ``scripts/download_dataset.sh``
  (Zhang et al., 2018), extracted to ``<root>/2afc/{val,train}``.
* PieAPP: the zip on the PieAPP project page (Prashnani et al., 2018), extracted to
  ``<root>``; the folder holding ``labels/`` is reported as the dataset root.

CLIC 2022 has no stable direct link; docs/datasets.md, "Getting the data", says where it comes from.
Each archive is streamed to ``<root>/.download/`` and renamed once complete, so an
interrupted download restarts cleanly; extraction refuses paths that leave the root.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from attackpsm.locks import write_atomic

log = logging.getLogger("attackpsm")

# name -> mirrors, tried in order (the current host first, then the original one)
BAPPS_ARCHIVES = {
    "val": (
        "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/twoafc_val.tar.gz",
        "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/twoafc_val.tar.gz",
    ),
    "train": (
        "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/twoafc_train.tar.gz",
        "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/twoafc_train.tar.gz",
    ),
}
PIEAPP_ARCHIVE = (
    "https://web.ece.ucsb.edu/~ekta/projects/PieAPPv0.1/all_data_PieAPP_dataset_CVPR_2018.zip",
)
CHUNK = 1 << 20


def fetch(urls: Sequence[str], dest: Path) -> Path:
    """Download the first reachable of ``urls`` to ``dest`` (skipped if ``dest`` exists)."""
    if dest.is_file():
        log.info("using %s (already downloaded)", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:

        def stream(part: Path, url: str = url) -> None:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                print(
                    f"downloading {url} -> {dest}" + (f" ({total / 1e6:.0f} MB)" if total else ""),
                    flush=True,
                )
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
            if total and done != total:
                raise OSError(f"incomplete download: {done} of {total} bytes")

        try:
            return write_atomic(dest, stream)
        except Exception as exc:  # try the next mirror (the partial file is gone)
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
    raise OSError("could not download from any source:\n  " + "\n  ".join(failures))


def _extract(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")  # refuses absolute paths, links out, ..
    elif archive.suffix == ".zip":
        root = target.resolve()
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise OSError(f"unsafe path in {archive.name}: {member}")
            zf.extractall(target)
    else:
        raise ValueError(f"unknown archive type: {archive}")


def download_bapps(
    root: Path,
    splits: Sequence[str] = ("val",),
    sources: dict[str, Sequence[str]] | None = None,
    keep_archives: bool = False,
) -> Path:
    """Fetch BAPPS 2AFC ``splits`` into ``root/2afc``; returns ``root`` (the ``dataset.root``)."""
    from attackpsm.data.bapps import SUBSETS

    sources = sources or BAPPS_ARCHIVES
    root = Path(root)
    for split in splits:
        if split not in sources:
            raise ValueError(f"bapps split must be one of {sorted(sources)}, got {split!r}")
        if all((root / "2afc" / split / s / "judge").is_dir() for s in SUBSETS[split]):
            print(f"bapps {split}: already present under {root / '2afc' / split}")
            continue
        archive = fetch(sources[split], root / ".download" / f"twoafc_{split}.tar.gz")
        print(f"extracting {archive.name} -> {root / '2afc'}", flush=True)
        _extract(archive, root / "2afc")  # the archives hold <split>/<subset>/...
        missing = [s for s in SUBSETS[split] if not (root / "2afc" / split / s / "judge").is_dir()]
        if missing:
            raise OSError(f"{archive.name} did not contain the {split} subsets {missing}")
        if not keep_archives:
            archive.unlink()
    if not keep_archives:
        shutil.rmtree(root / ".download", ignore_errors=True)
    return root


def download_pieapp(
    root: Path, sources: Sequence[str] = PIEAPP_ARCHIVE, keep_archives: bool = False
) -> Path:
    """Fetch PieAPP and lay it out with ``labels/`` etc. directly under ``root``; returns ``root``."""
    root = Path(root)
    if (root / "labels" / "test").is_dir():
        print(f"pieapp: already present under {root}")
        return root
    archive = fetch(sources, root / ".download" / Path(sources[0]).name)
    staging = root / ".extract"
    print(f"extracting {archive.name} -> {root}", flush=True)
    _extract(archive, staging)
    found = sorted(p.parent.parent for p in staging.glob("**/labels/test") if p.is_dir())
    if not found:
        raise OSError(f"{archive.name} holds no labels/test folder")
    for child in found[0].iterdir():  # the zip wraps everything in one top folder
        child.replace(root / child.name)
    shutil.rmtree(staging)
    if not keep_archives:
        shutil.rmtree(root / ".download", ignore_errors=True)
    return root
