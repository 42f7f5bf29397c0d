"""Writers of small datasets in the exact on-disk formats of BAPPS, PieAPP and CLIC.

Every triplet is built so that the human label is *right* for a pixel metric: the
distortion the raters preferred is the reference plus faint noise, the other one the
reference plus strong noise. L2 therefore agrees with every label, and its prey (the
image it ranks closer) is the preferred one -- which pins down the label direction.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

PIEAPP_TRAIN_HEADER = [
    "ref. image",
    " distorted image A",
    " distorted image B",
    " raw preference for A",
    " processed preference for A",
]
PIEAPP_TEST_HEADER = ["ref. image", " distorted image A", " distorted image B", " preference for A"]


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random smooth RGB image (compresses well, so large fixtures stay small on disk)."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))


def noisy(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    out = image.astype(np.float32) + rng.normal(0.0, sigma, size=image.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def close_far(ref: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(the preferred distortion, the other one)."""
    return noisy(ref, 2.0, rng), noisy(ref, 40.0, rng)


def make_bapps(
    root: Path, judges: dict[str, list[float]], split: str = "val", size: int = 32, seed: int = 0
) -> Path:
    """``<root>/2afc/<split>/<subset>/{ref,p0,p1}/NNNNNN.png`` + ``judge/NNNNNN.npy`` of shape (1,).

    ``judges[subset][i]`` is triplet ``i``'s fraction preferring ``p1``; ``p1`` is the
    close one when it is above 0.5.
    """
    rng = np.random.default_rng(seed)
    for subset, values in judges.items():
        folder = root / "2afc" / split / subset
        (folder / "judge").mkdir(parents=True, exist_ok=True)
        for i, judge in enumerate(values):
            stem = f"{i:06d}"
            ref = smooth_image(rng, size)
            close, far = close_far(ref, rng)
            p0, p1 = (far, close) if judge > 0.5 else (close, far)
            for name, img in (("ref", ref), ("p0", p0), ("p1", p1)):
                save_png(folder / name / f"{stem}.png", img)
            np.save(folder / "judge" / f"{stem}.npy", np.array([judge], dtype=np.float32))
    return root


def bapps_path(root: Path, subset: str, kind: str, index: int, split: str = "val") -> Path:
    suffix = ".npy" if kind == "judge" else ".png"
    return root / "2afc" / split / subset / kind / f"{index:06d}{suffix}"


def make_pieapp(
    root: Path,
    prefs: dict[int, list[tuple[str, str, float]]],
    split: str = "test",
    size: int = 32,
    seed: int = 0,
    raw_prefs: dict[int, list[float]] | None = None,
) -> Path:
    """PieAPP tree for references ``ref_<n>``; ``prefs[n]`` lists ``(A, B, preference for A)``.

    ``A``/``B`` are distortion labels (``"d0"``, ``"d1"``, ...) or ``"ref"`` for the reference
    itself. Every distortion is a fresh noisy copy; the preferred side of each row is made
    close by giving the preferred distortion label a low noise level. Labels must therefore
    be chosen consistently (a label is close or far for all its rows): labels starting
    with ``c`` are close, with ``f`` far.
    ``raw_prefs`` (train/val) fills the raw column; the loader must use the processed one.
    """
    rng = np.random.default_rng(seed)
    listing = []
    for n, rows in prefs.items():
        ref_name = f"ref_{n}"
        ref = smooth_image(rng, size)
        save_png(root / "reference_images" / split / f"{ref_name}.png", ref)
        listing.append(f"{ref_name}.png")
        names = {"ref": f"{ref_name}.png"}
        for label in sorted({x for a, b, _ in rows for x in (a, b)} - {"ref"}):
            sigma = 2.0 if label.startswith("c") else 40.0
            name = f"distort_{n}_{label}_inter_{len(names)}.png"
            save_png(root / "distorted_images" / split / ref_name / name, noisy(ref, sigma, rng))
            names[label] = name
        header = PIEAPP_TEST_HEADER if split == "test" else PIEAPP_TRAIN_HEADER
        path = root / "labels" / split / f"{ref_name}_pairwise_labels.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i, (a, b, pref) in enumerate(rows):
                extra = (
                    [pref]
                    if split == "test"
                    else [(raw_prefs or {}).get(n, [pref] * len(rows))[i], pref]
                )
                w.writerow([f"{ref_name}.png", names[a], names[b], *extra])
    (root / f"{split}_reference_list.txt").write_text("\n".join(listing) + "\n")
    return root


def make_clic(
    root: Path,
    labels: list[int | None],
    with_t: bool = True,
    size: int = 48,
    images_dir: str = "images",
    n_sources: int | None = None,
    seed: int = 0,
) -> Path:
    """CLIC devkit layout: header-less ``oracle.csv`` (O,A,B,T) or ``validation.csv`` (O,A,B).

    Triplet ``i`` has label ``labels[i]`` (T = 0: A is closer to O); with ``with_t=False`` the
    labels only decide which side is close and the CSV has three columns. ``n_sources``
    reuses that many originals (with their close/far versions) across triplets, so a long
    CSV needs only a few files.
    """
    rng = np.random.default_rng(seed)
    n_sources = n_sources or len(labels)
    sources = []
    for _ in range(n_sources):
        names = [
            f"{int(rng.integers(1 << 62)):016x}{int(rng.integers(1 << 62)):016x}.png"
            for _ in range(3)
        ]
        ref = smooth_image(rng, size)
        close, far = close_far(ref, rng)
        for name, img in zip(names, (ref, close, far), strict=True):
            save_png(root / images_dir / name, img)
        sources.append(names)
    rows = []
    for i, t in enumerate(labels):
        o, close, far = sources[i % n_sources]
        a, b = (far, close) if t == 1 else (close, far)
        rows.append([o, a, b, t] if with_t else [o, a, b])
    name = "oracle.csv" if with_t else "validation.csv"
    with open(root / name, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root
