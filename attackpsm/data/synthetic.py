"""``dataset=synthetic``: an embedded 2AFC set built from scikit-image's photographs.

No download: 256x256 patches are cut from the real photographs that ship inside the
scikit-image wheel. Each triplet is a reference patch and the *same* distortion family at
two clearly separated severities; ``judge`` points at the milder one (0 = ``p0`` milder,
1 = ``p1`` milder), the side drawn at random. Labels therefore come from distortion
severity, **not from human raters** -- the set exercises the full pipeline and gives
meaningful clean accuracies, but it is not a substitute for BAPPS.

Everything is a pure function of ``(seed, index)``: the set is deterministic and each
triplet is generated lazily when loaded.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageFilter

from attackpsm.data.base import TripletDataset, TripletRecord, as_names
from attackpsm.images import from_uint8

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "brick",
    "grass",
    "gravel",
    "coins",
    "moon",
    "clock",
)
NATIVE = 256


def _blur(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=level))


def _noise(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32) + rng.normal(0.0, level, size=(NATIVE, NATIVE, 3))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(round(level)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _contrast(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    a = a.mean() + (a - a.mean()) * level
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _color(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    direction = rng.normal(size=3)
    gains = 1.0 + level * direction / np.linalg.norm(direction)
    return Image.fromarray(np.clip(np.rint(a * gains), 0, 255).astype(np.uint8))


def _downup(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    small = max(8, int(round(NATIVE / level)))
    return img.resize((small, small), Image.BILINEAR).resize((NATIVE, NATIVE), Image.BILINEAR)


# family -> (function, mild severity range, strong severity range)
FAMILIES = {
    "blur": (_blur, (0.5, 0.9), (1.4, 2.2)),
    "noise": (_noise, (3.0, 6.0), (10.0, 16.0)),
    "jpeg": (_jpeg, (70.0, 90.0), (15.0, 30.0)),
    "contrast": (_contrast, (0.88, 0.94), (0.60, 0.75)),
    "color": (_color, (0.04, 0.07), (0.12, 0.18)),
    "downup": (_downup, (1.3, 1.6), (2.5, 3.5)),
}


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data

    out = []
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(a[..., :3]))
    return tuple(out)


class SyntheticTriplets(TripletDataset):
    """Severity-labelled triplets from scikit-image photographs (see module docstring).

    Args:
        size: output resolution (``None`` = native 256).
        num_triplets: number of triplets (default 512).
        seed: generation seed; the set is a pure function of it.
        families: distortion families to use (default: all of :data:`FAMILIES`).
    """

    name = "synthetic"

    def __init__(
        self,
        size: int | None = None,
        num_triplets: int = 512,
        seed: int = 0,
        families: list[str] | None = None,
        quantize: bool = True,
    ):
        super().__init__(size, quantize)
        families = as_names(families, "synthetic families") or list(FAMILIES)
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown synthetic families {unknown}; valid: {sorted(FAMILIES)}")
        if num_triplets < 1:
            raise ValueError(f"num_triplets must be >= 1, got {num_triplets}")
        self.seed = seed
        self.families = families
        for i in range(num_triplets):
            family = families[i % len(families)]
            judge = float(self._rng(i).integers(2))  # which side gets the milder distortion
            self.records.append(TripletRecord(f"{family}/{i:06d}", family, judge))

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def load_images(self, record: TripletRecord) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = int(record.triplet_id.rsplit("/", 1)[1])
        rng = self._rng(index)
        mild_side = int(rng.integers(2))  # same first draw as the judge in __init__
        photos = _photos()
        photo = photos[int(rng.integers(len(photos)))]
        y = int(rng.integers(photo.shape[0] - NATIVE + 1))
        x = int(rng.integers(photo.shape[1] - NATIVE + 1))
        patch = photo[y : y + NATIVE, x : x + NATIVE]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        ref = Image.fromarray(np.ascontiguousarray(patch))
        fn, mild, strong = FAMILIES[record.subset]
        mild_img = fn(ref, float(rng.uniform(*mild)), rng)
        strong_img = fn(ref, float(rng.uniform(*strong)), rng)
        p0, p1 = (strong_img, mild_img) if mild_side == 1 else (mild_img, strong_img)
        return tuple(from_uint8(np.asarray(im.convert("RGB"))) for im in (ref, p0, p1))
