"""``dataset=synthetic``: an embedded 2AFC set built from scikit-image's photographs.

No download: patches are cut from the real photographs that ship inside the scikit-image
wheel. Each triplet is a reference patch and the *same* distortion family at two
severities; ``judge`` points at the milder one (0 = ``p0`` milder, 1 = ``p1`` milder), the
side drawn at random. Labels therefore come from distortion severity, **not from human
raters** -- the set exercises the full pipeline and gives meaningful clean accuracies, but
it is not a substitute for BAPPS.

Two variants:

- ``calibrated`` (default): the "traditional" distortion families of BAPPS (Zhang et al.,
  2018; the paper's Sec. 3, "Dataset"), applied at 64x64 -- the resolution of the paper's
  experiments (Sec. 4) -- with random realisations (noise, colour direction, shift
  direction, sampling phase). Most pairs are clearly separated, the rest are close pairs
  whose order metrics can get wrong, so the clean accuracies and the margins
  ``|s_0 - s_1|`` of the accurate and inaccurate samples resemble the paper's Table 1 and
  Table 3 (``python -m attackpsm calibrate`` prints the comparison).
- ``easy``: the original set: 256x256 patches, two clearly separated mild severities. Every
  learned metric ranks it correctly and with small margins, so attacks flip nearly all of
  it; fast mechanics tests use it.

Everything is a pure function of ``(variant, seed, index)``: the set is deterministic and
each triplet is generated lazily when loaded.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

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
VARIANTS = ("calibrated", "easy")


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


def _to_image(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------
# easy variant: 256x256, two clearly separated mild severities
# --------------------------------------------------------------------------------------
EASY_NATIVE = 256


def _easy_blur(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=level))


def _easy_noise(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32) + rng.normal(
        0.0, level, size=(EASY_NATIVE, EASY_NATIVE, 3)
    )
    return _to_image(a)


def _jpeg(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(round(level)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _easy_contrast(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    return _to_image(a.mean() + (a - a.mean()) * level)


def _color(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    direction = rng.normal(size=3)
    return _to_image(a * (1.0 + level * direction / np.linalg.norm(direction)))


def _easy_downup(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    small = max(8, int(round(EASY_NATIVE / level)))
    return img.resize((small, small), Image.BILINEAR).resize(
        (EASY_NATIVE, EASY_NATIVE), Image.BILINEAR
    )


# family -> (function, mild severity range, strong severity range)
EASY_FAMILIES = {
    "blur": (_easy_blur, (0.5, 0.9), (1.4, 2.2)),
    "noise": (_easy_noise, (3.0, 6.0), (10.0, 16.0)),
    "jpeg": (_jpeg, (70.0, 90.0), (15.0, 30.0)),
    "contrast": (_easy_contrast, (0.88, 0.94), (0.60, 0.75)),
    "color": (_color, (0.04, 0.07), (0.12, 0.18)),
    "downup": (_easy_downup, (1.3, 1.6), (2.5, 3.5)),
}

# families whose level falls as the severity rises: severity = top - level
EASY_DECREASING = {"jpeg": 100.0, "contrast": 1.0}

# --------------------------------------------------------------------------------------
# calibrated variant: BAPPS "traditional" families at 64x64
# --------------------------------------------------------------------------------------
NATIVE = 64
CROP = (96, 256)  # side of the photo crop that is resized to the 64x64 reference


def _noise(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    return _to_image(a + rng.normal(0.0, level, size=a.shape))


def _blur(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    return _to_image(ndimage.gaussian_filter(a, sigma=(level, level, 0), mode="reflect"))


def _contrast(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    # two-sided: lowering by `level` or raising by 2 * `level` count as the same severity
    factor = 1.0 - level if rng.random() < 0.5 else 1.0 + 2.0 * level
    return _to_image(a.mean() + (a - a.mean()) * factor)


def _lightness(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    return _to_image(a + (255.0 * level if rng.random() < 0.5 else -255.0 * level))


def _saturation(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    gray = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    # two-sided: desaturating by `level` or oversaturating by 2 * `level`, same severity
    factor = 1.0 - level if rng.random() < 0.5 else 1.0 + 2.0 * level
    return _to_image(gray[..., None] + (a - gray[..., None]) * factor)


def _shift(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    offset = (level * np.sin(angle), level * np.cos(angle), 0.0)
    return _to_image(ndimage.shift(a, offset, order=3, mode="reflect"))


def _downup(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    small = max(4, int(round(NATIVE / level)))
    method = (Image.NEAREST, Image.BILINEAR, Image.BICUBIC)[int(rng.integers(3))]
    return img.resize((small, small), Image.BILINEAR).resize((NATIVE, NATIVE), method)


@dataclass(frozen=True)
class Family:
    """A distortion family of the calibrated variant.

    ``apply(image, level, rng)`` distorts a 64x64 image; the severity ``u`` in ``[0, 1]``
    maps linearly to ``level = low + (high - low) * u`` (``low > high`` for JPEG, whose
    quality falls as severity rises).
    """

    apply: Callable[[Image.Image, float, np.random.Generator], Image.Image]
    low: float
    high: float

    def level(self, u: float) -> float:
        return self.low + (self.high - self.low) * u


FAMILIES = {
    "noise": Family(_noise, 2.0, 60.0),
    "blur": Family(_blur, 0.3, 3.5),
    "jpeg": Family(_jpeg, 40.0, 2.0),
    "contrast": Family(_contrast, 0.05, 0.7),
    "lightness": Family(_lightness, 0.02, 0.22),
    "saturation": Family(_saturation, 0.1, 1.0),
    "color": Family(_color, 0.03, 0.5),
    "shift": Family(_shift, 0.2, 3.0),
    "downup": Family(_downup, 1.2, 6.0),
}
# How a pair's two severities u are drawn: a clear pair (mild in CLEAR_MILD, strong in
# CLEAR_STRONG) or, with probability CLOSE_FRACTION, a close pair (u and u + gap).
CLOSE_FRACTION = 0.38
# Every distorted image also gets a small photometric jitter drawn independently of its
# severity: a lightness offset N(0, LIGHTNESS_JITTER) on the 0-255 scale and a contrast
# gain N(1, CONTRAST_JITTER). The label ignores it. Pixel-wise metrics are sensitive to such
# global changes, deep-feature metrics much less (the paper's Table 1: L2 and SSIM are the
# least accurate on BAPPS).
LIGHTNESS_JITTER = 6.0
CONTRAST_JITTER = 0.04
CLEAR_MILD = (0.0, 0.3)
CLEAR_STRONG = (0.6, 1.0)
CLOSE_BASE = (0.1, 0.85)
CLOSE_GAP = (0.02, 0.12)


def pair_severities(rng: np.random.Generator) -> tuple[float, float]:
    """The ``(mild, strong)`` severities ``u`` of one pair (calibrated variant)."""
    if rng.random() < CLOSE_FRACTION:
        u = float(rng.uniform(*CLOSE_BASE))
        return u, min(1.0, u + float(rng.uniform(*CLOSE_GAP)))
    return float(rng.uniform(*CLEAR_MILD)), float(rng.uniform(*CLEAR_STRONG))


class SyntheticTriplets(TripletDataset):
    """Severity-labelled triplets from scikit-image photographs (see module docstring).

    Args:
        size: output resolution (``None`` = native: 64 for ``calibrated``, 256 for ``easy``).
        num_triplets: number of triplets (default 512).
        seed: generation seed; the set is a pure function of it.
        families: distortion families to use (default: all of the variant's).
        variant: ``calibrated`` (default) or ``easy``.
    """

    name = "synthetic"

    def __init__(
        self,
        size: int | None = None,
        num_triplets: int = 512,
        seed: int = 0,
        families: list[str] | None = None,
        variant: str = "calibrated",
        quantize: bool = True,
    ):
        super().__init__(size, quantize)
        if variant not in VARIANTS:
            raise ValueError(f"unknown synthetic variant {variant!r}; valid: {list(VARIANTS)}")
        table = FAMILIES if variant == "calibrated" else EASY_FAMILIES
        families = as_names(families, "synthetic families") or list(table)
        unknown = sorted(set(families) - set(table))
        if unknown:
            raise ValueError(
                f"unknown synthetic families {unknown} for variant {variant!r}; valid: {sorted(table)}"
            )
        if num_triplets < 1:
            raise ValueError(f"num_triplets must be >= 1, got {num_triplets}")
        self.seed = seed
        self.variant = variant
        self.families = families
        for i in range(num_triplets):
            family = families[i % len(families)]
            judge = float(self._rng(i).integers(2))  # which side gets the milder distortion
            self.records.append(TripletRecord(f"{family}/{i:06d}", family, judge))

    def _rng(self, index: int) -> np.random.Generator:
        if self.variant == "easy":
            return np.random.default_rng([self.seed, index])
        return np.random.default_rng([self.seed, index, 1])

    def severities(self, record: TripletRecord) -> tuple[float, float]:
        """The severities of ``(p0, p1)`` on the variant's scale (the label's ground truth:
        ``judge`` points at the smaller one)."""
        return self._generate(record)[1]

    def load_images(self, record: TripletRecord) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, _ = self._generate(record)
        return tuple(from_uint8(np.asarray(im.convert("RGB"))) for im in images)

    def _generate(self, record: TripletRecord):
        index = int(record.triplet_id.rsplit("/", 1)[1])
        rng = self._rng(index)
        mild_side = int(rng.integers(2))  # same first draw as the judge in __init__
        photos = _photos()
        photo = photos[int(rng.integers(len(photos)))]
        if self.variant == "easy":
            ref = _crop(photo, EASY_NATIVE, rng)
            fn, mild_range, strong_range = EASY_FAMILIES[record.subset]
            mild = float(rng.uniform(*mild_range))
            mild_img = fn(ref, mild, rng)
            strong = float(rng.uniform(*strong_range))
            strong_img = fn(ref, strong, rng)
            if record.subset in EASY_DECREASING:  # the level falls as severity rises
                mild, strong = (
                    EASY_DECREASING[record.subset] - mild,
                    EASY_DECREASING[record.subset] - strong,
                )
        else:
            side = int(rng.integers(CROP[0], min(CROP[1], *photo.shape[:2]) + 1))
            ref = _crop(photo, side, rng).resize((NATIVE, NATIVE), Image.LANCZOS)
            family = FAMILIES[record.subset]
            mild, strong = pair_severities(rng)
            mild_img = _jitter(family.apply(ref, family.level(mild), rng), rng)
            strong_img = _jitter(family.apply(ref, family.level(strong), rng), rng)
        if mild_side == 1:
            return (ref, strong_img, mild_img), (strong, mild)
        return (ref, mild_img, strong_img), (mild, strong)


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    offset = float(rng.normal(0.0, LIGHTNESS_JITTER))
    gain = float(rng.normal(1.0, CONTRAST_JITTER))
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    return _to_image(a.mean() + (a - a.mean()) * gain + offset)


def _crop(photo: np.ndarray, side: int, rng: np.random.Generator) -> Image.Image:
    y = int(rng.integers(photo.shape[0] - side + 1))
    x = int(rng.integers(photo.shape[1] - side + 1))
    patch = photo[y : y + side, x : x + side]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(patch))
