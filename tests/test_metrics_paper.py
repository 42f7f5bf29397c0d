"""Three more of the paper's metrics (Watson-DFT, A-DISTS, E-LPIPS) and the weights mirror.

Reference values for ``watson_dft`` and ``adists`` were computed once with the authors' own
code, outside this repository, on the fixed image pairs of :func:`pairs` (crops of
scikit-image's ``astronaut`` and ``chelsea``, converted with ``ToTensor`` to ``[0, 1]``):

- Watson-DFT: ``watson_fft.py``, ``rfft2d.py`` and ``color_wrapper.py`` of
  github.com/SteffenCzolbe/PerceptualSimilarity (``src/loss``, commit 6974fc9c), transcribed
  unchanged except ``torch.rfft`` (removed from PyTorch) -> ``view_as_real(torch.fft.rfft2)``;
  ``ColorWrapper(WatsonDistanceFft, (), {"reduction": "none"})`` with
  ``load_state_dict(rgb_watson_fft_trial0.pth)`` (the deterministic RGB model of the
  release's ``LossProvider``), called as ``loss(distorted, reference)``, one pair per batch.
- A-DISTS: ``ADISTS_pt.py`` of github.com/dingkeyan93/A-DISTS (commit 86db9755) unchanged
  except that its ``models.vgg16(pretrained=True)`` received the same ImageNet weights from
  a local file (no web there); called as ``model(reference, distorted, as_loss=False)``.

E-LPIPS' release is TensorFlow 1.x code that cannot run here; E-LPIPS is checked against an
independent reimplementation of its network (torchvision's VGG16 with average pooling and
the release's linear layers) with the random transformations switched off, and for the
properties of its ensemble.

The official weight files are read from the weights cache (after ``make weights``) or the
mirror named by ``$ATTACKPSM_WEIGHTS_MIRROR``; tests that need them skip, saying so, where
neither has them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from skimage import data as skdata

from attackpsm.commands.weights import main as fetch_weights
from attackpsm.images import from_uint8
from attackpsm.job.run import build
from attackpsm.metrics.weights.registry import OFFICIAL, SPECS
from attackpsm.metrics.weights.safeload import WeightsUnavailable, read_npy_object_dict
from attackpsm.metrics.weights.sources import ENV_MIRROR, mirror_dir
from attackpsm.metrics.weights.store import (
    cache_path,
    content_sha256,
    fetch_official,
    load,
    load_official,
)
from attackpsm.storage import run_identity

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")
OFFICIAL_NAMES = ("watson_dft_rgb", "watson_dft_gray", "elpips_vgg")

# Values of the authors' code (see the module docstring), per pair of :func:`pairs`.
WATSON_REFERENCE = {
    "shifted": 1300.827515,
    "other_image": 3229.589355,
    "posterized": 1499.185303,
    "posterized_96x128": 7954.481445,
}
ADISTS_REFERENCE = {
    "shifted": 0.192956,
    "other_image": 0.734039,
    "posterized": 0.310581,
    "posterized_96x128": 0.344378,
}


def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed (reference, distorted) uint8 pairs: a 2/1 px shift, another image, posterized."""
    a, c = skdata.astronaut(), skdata.chelsea()
    ref = a[80:144, 180:244]
    ref2 = a[200:296, 200:328]
    return {
        "shifted": (ref, a[82:146, 181:245]),
        "other_image": (ref, c[100:164, 150:214]),
        "posterized": (ref, (ref // 32) * 32 + 16),
        "posterized_96x128": (ref2, (ref2 // 32) * 32 + 16),
    }


def as_batch(image: np.ndarray) -> torch.Tensor:
    return from_uint8(np.ascontiguousarray(image))[None]


def mirror_or_skip() -> Path:
    root = mirror_dir()
    if root is None or not all((root / OFFICIAL[n].filename).is_file() for n in OFFICIAL_NAMES):
        pytest.skip(
            f"no weights mirror with the official files: set {ENV_MIRROR} to a directory "
            f"holding {[OFFICIAL[n].filename for n in OFFICIAL_NAMES]}"
        )
    return root


def official_or_skip(name: str) -> None:
    try:
        load_official(name)
    except WeightsUnavailable as exc:
        pytest.skip(
            f"official weights '{name}' unavailable (run `make weights`, with "
            f"{ENV_MIRROR} set where the web is unreachable): {str(exc)[:200]}"
        )


_METRICS: dict[str, torch.nn.Module] = {}


def metric(name: str, *overrides: str):
    """A metric built from its config (cached per name and overrides)."""
    key = " ".join((name, *overrides))
    if key not in _METRICS:
        official_or_skip(
            {"watson_dft": "watson_dft_rgb", "elpips_vgg": "elpips_vgg"}.get(name, "vgg16")
        )
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose(config_name="config", overrides=[f"metric={name}", *overrides])
        _METRICS[key] = build(cfg.metric)
    return _METRICS[key]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two 64x64 crops in [-1, 1]."""
    p = pairs()
    return torch.cat([as_batch(p["shifted"][0]), as_batch(p["other_image"][1])])


def noise_ladder(photos: torch.Tensor, sigmas=(0.0, 0.02, 0.05, 0.1, 0.2)) -> torch.Tensor:
    noise = torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))
    return torch.stack([(photos + s * noise).clamp(-1, 1) for s in sigmas])  # (S, N, 3, H, W)


def ladder_distances(m, photos: torch.Tensor) -> torch.Tensor:
    ladder = noise_ladder(photos)
    s, n = ladder.shape[:2]
    with torch.no_grad():
        return m(photos.repeat(s, 1, 1, 1), ladder.flatten(0, 1)).view(s, n)


# --- reference values of the authors' code ----------------------------------------------------


@pytest.mark.parametrize("name", ["watson_dft", "adists"])
def test_equals_the_authors_code_on_fixed_pairs(name):
    m = metric(name)
    reference = {"watson_dft": WATSON_REFERENCE, "adists": ADISTS_REFERENCE}[name]
    with torch.no_grad():
        ours = {k: m(as_batch(r), as_batch(d)).item() for k, (r, d) in pairs().items()}
    for key, expected in reference.items():
        assert ours[key] == pytest.approx(expected, rel=1e-4, abs=1e-5), (key, ours[key])


# --- properties -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["watson_dft", "adists", "elpips_vgg"])
def test_identity_and_monotone_in_noise_strength(name, photos):
    m = metric(name, *(["metric.ensemble=2", "metric.draws=2"] if name == "elpips_vgg" else []))
    torch.manual_seed(0)  # E-LPIPS: one seeded set of draws, shared by every ladder entry
    d = ladder_distances(m, photos)
    # Watson-DFT: the release's 1e-10 stabilisers leave ~0.012 at d(x, x), against hundreds
    tolerance = {"watson_dft": 0.05}.get(name, 1e-6)
    assert torch.all(d[0].abs() < tolerance), d[0]
    assert torch.all(d[1:] > d[:-1]), f"{name} not increasing with noise strength: {d.T}"


@pytest.mark.parametrize("name", ["watson_dft", "adists"])
def test_the_reference_decides_so_not_symmetric(name, photos):
    """Both use the reference alone for masking / dispersion, as their papers define."""
    m = metric(name)
    a, b = photos[:1], photos[1:]
    with torch.no_grad():
        forward, backward = m(a, b).item(), m(b, a).item()
    assert forward > 0 and backward > 0 and forward != pytest.approx(backward, rel=1e-3)


def test_elpips_is_symmetric_under_shared_draws(photos):
    m = metric("elpips_vgg", "metric.ensemble=2", "metric.draws=2")
    a, b = photos[:1], photos[1:]
    with torch.no_grad():
        torch.manual_seed(1)
        forward = m(a, b)
        torch.manual_seed(1)
        backward = m(b, a)
    torch.testing.assert_close(forward, backward, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["watson_dft", "adists", "elpips_vgg"])
def test_finite_nonzero_gradient_even_at_the_reference(name, photos):
    m = metric(name, *(["metric.ensemble=1"] if name == "elpips_vgg" else []))
    for x in (photos.clone(), (photos + 0.02).clamp(-1, 1)):  # at identity: acos/sqrt edges
        x.requires_grad_(True)
        torch.manual_seed(0)
        (grad,) = torch.autograd.grad(m(photos, x).sum(), x)
        assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_watson_needs_sides_multiple_of_8(photos):
    with pytest.raises(ValueError, match=r"multiples of 8, got 60x64"):
        metric("watson_dft")(photos[..., :60, :], photos[..., :60, :])


def test_watson_random_shift_is_the_stochastic_release_default(photos):
    m = metric("watson_dft", "metric.random_shift=true")
    assert m.stochastic and not metric("watson_dft").stochastic
    x = (photos + 0.05).clamp(-1, 1)
    g = x.clone().requires_grad_(True)  # a differentiated score: one random shift per call
    torch.manual_seed(0)
    draws = torch.stack([m(photos, g).detach() for _ in range(6)])
    with torch.no_grad():
        plain = metric("watson_dft")(photos, x)
        decision = m(photos, x)  # a decision: the exact mean over the 64 shifts
    assert len({round(v, 3) for v in draws[:, 0].tolist()}) > 1  # the shift changes blocks
    assert torch.allclose(draws.mean(0), plain, rtol=0.2)  # same model, other block grid
    assert torch.allclose(decision, plain, rtol=0.2) and torch.equal(decision, m(photos, x))


def test_adists_on_maps_smaller_than_the_window_uses_global_statistics(photos):
    """16x16: every stage is below 21 px, so A-DISTS is the global (DISTS-like) formula."""
    m = metric("adists")
    small = F.avg_pool2d(photos, 4)
    with torch.no_grad():
        d = m(small, (small + 0.1).clamp(-1, 1))
        feats_ref, feats_x = m.features(small), m.features((small + 0.1).clamp(-1, 1))
    assert all(min(f.shape[-2:]) < m.window_size for f in feats_ref)
    # by hand: global texture/structure terms weighed by the reference's dispersion index
    total = 0.0
    theta = [(1.0, 0.29), (1.0, 0.29), (2.0, 0.52), (2.95, 0.56), (0.97, 0.25), (0.21, 0.10)]
    for k, (fr, fx) in enumerate(zip(feats_ref, feats_x, strict=True)):
        mr, mx = fr.mean((2, 3)), fx.mean((2, 3))
        vr, vx = fr.var((2, 3), unbiased=False), fx.var((2, 3), unbiased=False)
        cov = (fr * fx).mean((2, 3)) - mr * mx
        src = feats_ref[max(k, 1)]
        ratio = (src.var((2, 3), unbiased=False) / (src.mean((2, 3)) + 1e-12)).mean(1, keepdim=True)
        p_s = torch.sigmoid((ratio - theta[k][0]) / theta[k][1])
        t = (2 * mr * mx + 1e-6) / (mr**2 + mx**2 + 1e-6)
        s = (2 * cov + 1e-6) / (vr + vx + 1e-6)
        total = total + ((1 - p_s) * t + p_s * s).sum(1)
    torch.testing.assert_close(d, 1 - total / 1475, rtol=1e-4, atol=1e-6)


# --- E-LPIPS: its own network and linear layers ---------------------------------------------


def test_elpips_network_equals_an_independent_average_pooling_vgg(photos):
    """Transformations and dropout off: the release's 14-layer average-pooling VGG16 LPIPS."""
    import torchvision

    from attackpsm.metrics.elpips import ELPIPS

    official_or_skip("elpips_vgg")
    plain = ELPIPS(ensemble=1, transforms=False, dropout_keep=1.0)
    assert not plain.stochastic
    vgg = torchvision.models.vgg16()
    vgg.load_state_dict(load("vgg16"), strict=False)
    layers = [
        torch.nn.AvgPool2d(2) if isinstance(m, torch.nn.MaxPool2d) else m for m in vgg.features
    ]
    lin = load("elpips_vgg")

    def taps(img):  # [-1, 1] -> the LPIPS-scaled input and every ReLU output
        h = (img - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]
        ).view(1, 3, 1, 1)
        out = [h]
        for layer in layers[:30]:
            h = layer(h)
            if isinstance(layer, torch.nn.ReLU):
                out.append(h)
        return [o / (o.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for o in out]

    x = (
        photos + 0.1 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(2))
    ).clamp(-1, 1)
    with torch.no_grad():
        expected = sum(
            ((a - b) ** 2).mean((2, 3)) @ lin[f"lin{i}.model.1.weight"].reshape(-1, 1)
            for i, (a, b) in enumerate(zip(taps(photos), taps(x), strict=True))
        ).flatten()
        torch.testing.assert_close(plain(photos, x), expected, rtol=1e-4, atol=1e-7)
    assert len(taps(photos)) == 14


def test_elpips_draws_differ_and_average(photos):
    """Differentiated scores draw afresh; decisions differ only with another draw seed."""
    m = metric("elpips_vgg", "metric.ensemble=2", "metric.draws=2")
    x = (photos + 0.05).clamp(-1, 1).requires_grad_(True)
    torch.manual_seed(0)
    a, b = m(photos, x), m(photos, x)
    assert m.stochastic and not torch.equal(a, b)
    other = metric("elpips_vgg", "metric.draws=2", "seed=1")
    with torch.no_grad():
        assert not torch.equal(m(photos, x), other(photos, x))


# --- the weights mirror: real files, real processes ----------------------------------------


def unreachable_web(monkeypatch) -> None:
    """No mirror variable, and HTTPS through a proxy port nothing listens on."""
    import urllib.request

    monkeypatch.delenv(ENV_MIRROR, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setattr(urllib.request, "_opener", None)  # rebuilt with the proxy above


def _fetch_process(
    cache: Path, env_mirror: Path | None, *names: str
) -> subprocess.CompletedProcess:
    """``python -m attackpsm weights`` with the web made unreachable (a dead proxy)."""
    env = {k: v for k, v in os.environ.items() if k != ENV_MIRROR}
    env.update(
        HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", PYTHONPATH=str(ROOT)
    )
    if env_mirror is not None:
        env[ENV_MIRROR] = str(env_mirror)
    cmd = [
        sys.executable,
        "-m",
        "attackpsm.commands.weights",
        *names,
        "--cache-dir",
        str(cache),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_make_weights_fills_the_cache_from_the_mirror(tmp_path):
    root = mirror_or_skip()
    mirror = tmp_path / "mirror"
    shutil.copytree(root, mirror)
    proc = _fetch_process(tmp_path / "cache", mirror, *OFFICIAL_NAMES)
    assert proc.returncode == 0, proc.stderr
    for name in OFFICIAL_NAMES:
        assert f"{name}: fetched via mirror" in proc.stderr
        state = load(name, tmp_path / "cache", allow_fetch=False)
        assert content_sha256(state) == SPECS[name].sha256


def test_a_mirror_file_with_the_wrong_sha256_is_refused(tmp_path, monkeypatch, capsys):
    root = mirror_or_skip()
    unreachable_web(monkeypatch)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    blob = bytearray((root / "rgb_watson_fft_trial0.pth").read_bytes())
    blob[-10] ^= 0xFF  # one flipped byte
    (mirror / "rgb_watson_fft_trial0.pth").write_bytes(bytes(blob))
    # through --mirror, as `make weights MIRROR=dir` passes it: reported, nothing cached
    assert (
        fetch_weights(["watson_dft_rgb", "--cache-dir", str(tmp_path), "--mirror", str(mirror)])
        == 0
    )
    err = capsys.readouterr().err
    assert "refusing" in err and "does not match the pinned sha256" in err
    assert hashlib.sha256(bytes(blob)).hexdigest() in err
    assert not cache_path("watson_dft_rgb", tmp_path).exists()
    with pytest.raises(WeightsUnavailable, match="does not match the pinned sha256"):
        load_official("watson_dft_rgb", tmp_path, mirror)
    # the intact file from the same option is taken
    shutil.copy(root / "rgb_watson_fft_trial0.pth", mirror)
    state = load_official("watson_dft_rgb", tmp_path, mirror)
    assert content_sha256(state) == SPECS["watson_dft_rgb"].sha256


def test_offline_without_a_mirror_names_the_mirror_option(tmp_path, monkeypatch):
    unreachable_web(monkeypatch)
    with pytest.raises(WeightsUnavailable) as info:
        fetch_official("elpips_vgg", tmp_path, verbose=False)
    assert ENV_MIRROR in str(info.value) and "paths.weights_mirror" in str(info.value)
    assert not cache_path("elpips_vgg", tmp_path).exists()
    # and a metric built from its config on a compute node fails fast, naming the fix
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(
            config_name="config",
            overrides=[
                "metric=watson_dft",
                f"paths.weights_dir={tmp_path}",
                "paths.allow_fetch=false",
            ],
        )
    with pytest.raises(Exception, match="make weights") as info:
        build(cfg.metric)
    assert "paths.weights_mirror" in str(info.value)


def test_npy_reader_admits_numpy_arrays_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.npy"
    np.save(path, np.array({"lin0.model.1.weight": Payload()}, dtype=object), allow_pickle=True)
    with pytest.raises(Exception, match="refusing to unpickle"):
        read_npy_object_dict(path.read_bytes())
    assert not (tmp_path / "pwned").exists()
    good = tmp_path / "good.npy"
    np.save(
        good, np.array({"lin0": np.arange(3, dtype=np.float32)}, dtype=object), allow_pickle=True
    )
    torch.testing.assert_close(read_npy_object_dict(good.read_bytes())["lin0"], torch.arange(3.0))


def test_mirror_option_reaches_the_metric_but_not_the_run_identity(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(
            config_name="config",
            overrides=["metric=elpips_vgg", f"paths.weights_mirror={tmp_path}"],
        )
    assert cfg.metric.weights_mirror == str(tmp_path)
    assert "weights_mirror" not in run_identity(cfg, fingerprint="")["metric"]
