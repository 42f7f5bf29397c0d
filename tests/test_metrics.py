"""The metric zoo: one interface, real weights, properties, and agreement with references.

Every offline metric is built from its Hydra config (``conf/metric/<name>.yaml``) with its
real pretrained weights and checked for: identity, growth under increasing blur and
noise, finite input gradients, batched = one-at-a-time (also through ``select``), and the
interface contract (shape, dtype, device, eval mode, frozen weights). Learned metrics are
compared with their authors' own code where it can be run here (``lpips`` package, the
``dists-pytorch`` and ``stlpips-pytorch`` wheels' modules) and MS-SSIM with piq where piq
accepts the size.
"""

from __future__ import annotations

import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from skimage import data as skdata

from attackpsm.commands.weights import main as fetch_weights
from attackpsm.images import from_uint8, resize
from attackpsm.job.run import build
from attackpsm.metrics.base import Metric, select
from attackpsm.metrics.weights.registry import DISTS_WHEEL, SPECS, STLPIPS_WHEEL
from attackpsm.metrics.weights.safeload import WeightsUnavailable
from attackpsm.metrics.weights.sources import download_wheel
from attackpsm.metrics.weights.store import cache_path, content_sha256, fetch, load
from attackpsm.protocol.twoafc import twoafc_scores
from attackpsm.summary.accuracy import clean_accuracy, clean_accuracy_markdown

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
OFFLINE = [
    "l2", "ssim", "ms_ssim", "cw_ssim", "fsimc", "gmsd", "vif", "haarpsi", "mdsi",
    "lpips_alex", "lpips_vgg", "dists", "stlpips_alex", "stlpips_vgg", "elpips_vgg",
    "watson_dft", "adists",
]  # fmt: skip
OFFLINE += ["ssim_piq"]  # piq's standard SSIM, next to the released one (`ssim`)
# MS-SSIM as released needs >= 161 px, so it is not in the 64x64 checks here (see
# test_metrics_fidelity.py)
LARGE_ONLY = ["ms_ssim_iqa"]
ONLINE_ONLY = {"lpips_squeeze": "squeezenet1_1", "pieapp": "pieapp"}
# wraps another metric option (Gaussian smoothing, tests/test_certify.py)
WRAPPERS = ["smoothed"]
# smaller ensembles keep the stochastic metric fast in tests
OVERRIDES = {"elpips_vgg": ["metric.ensemble=2", "metric.draws=2"]}
# Watson-DFT's released formula adds 1e-10 stabilisers inside powers and acos: d(x, x) is
# about 0.012 on a 64x64 image, where visible distortions score in the hundreds
IDENTITY_TOLERANCE = {"watson_dft": 0.05}


def compose_metric(name: str, extra: list[str] | None = None):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(
            config_name="config",
            overrides=[f"metric={name}", *OVERRIDES.get(name, []), *(extra or [])],
        )
    return cfg.metric


_CACHE: dict[str, Metric] = {}


def get_metric(name: str) -> Metric:
    if name not in _CACHE:
        _CACHE[name] = build(compose_metric(name))
    return _CACHE[name]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real photographs (scikit-image) at 64x64 in [-1, 1]."""
    return torch.stack(
        [resize(from_uint8(getattr(skdata, n)()), 64) for n in ("astronaut", "chelsea")]
    )


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = int(2 * round(3 * sigma) + 1)
    c = torch.arange(k, dtype=x.dtype) - k // 2
    g = torch.exp(-(c**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(x, (k // 2,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, g.view(1, 1, k, 1).repeat(3, 1, 1, 1), groups=3)


def distortion_ladder(photos: torch.Tensor) -> list[torch.Tensor]:
    """Identity, three blur levels, three noise levels (each a batch like ``photos``)."""
    noise = torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))
    blurs = [gaussian_blur(photos, s) for s in (0.6, 1.2, 2.4)]
    noisy = [(photos + s * noise).clamp(-1, 1) for s in (0.03, 0.1, 0.3)]
    return [photos, *blurs, *noisy]


# --- properties of every offline metric ------------------------------------------------------


@pytest.mark.parametrize("name", OFFLINE)
def test_identity_and_growth_under_blur_and_noise(name, photos):
    metric = get_metric(name)
    ladder = distortion_ladder(photos)
    torch.manual_seed(0)
    with torch.no_grad():
        d = metric(photos.repeat(len(ladder), 1, 1, 1), torch.cat(ladder)).view(len(ladder), -1)
    identity, blur, noise = d[0], d[1:4], d[4:7]
    assert torch.all(identity.abs() < IDENTITY_TOLERANCE.get(name, 1e-4)), (
        f"{name}: d(x, x) = {identity}"
    )
    for severity in (blur, noise):
        assert torch.all(severity[0] > identity), f"{name}: mild distortion not above identity"
        assert torch.all(severity[1:] > severity[:-1]), (
            f"{name}: not increasing with severity: {severity}"
        )


@pytest.mark.parametrize("name", OFFLINE)
def test_interface_contract(name, photos):
    metric = get_metric(name)
    assert isinstance(metric, Metric) and not metric.training
    assert all(not p.requires_grad for p in metric.parameters())
    assert isinstance(metric.differentiable, bool) and isinstance(metric.stochastic, bool)
    d = metric(photos, gaussian_blur(photos, 1.0))
    assert d.shape == (2,) and d.dtype == torch.float32 and d.device == photos.device


@pytest.mark.parametrize("name", OFFLINE)
def test_finite_input_gradients(name, photos):
    metric = get_metric(name)
    assert metric.differentiable
    # includes flat (saturated) regions, where some formulas have no derivative
    x = gaussian_blur(photos, 1.0).requires_grad_(True)
    torch.manual_seed(0)
    (grad,) = torch.autograd.grad(metric(photos, x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())


@pytest.mark.parametrize("name", [n for n in OFFLINE if n != "elpips_vgg"])
def test_batched_equals_one_at_a_time(name, photos):
    metric = get_metric(name)
    x = torch.cat([gaussian_blur(photos[:1], 1.0), (photos[1:] + 0.05).clamp(-1, 1)])
    prepared = metric.prepare(photos)
    with torch.no_grad():
        batched = metric.score(prepared, x)
        single = torch.cat([metric(photos[i : i + 1], x[i : i + 1]) for i in range(2)])
        # the attacks' active-set indexing of a prepared reference
        picked = metric.score(select(prepared, torch.tensor([1])), x[1:])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(picked, batched[1:], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("name", OFFLINE)
def test_same_result_on_cuda(name, photos):
    metric = get_metric(name)
    x = gaussian_blur(photos, 1.0)
    with torch.no_grad():
        torch.manual_seed(0)
        cpu = metric(photos, x)
        gpu_metric = build(compose_metric(name)).cuda()
        torch.manual_seed(0)
        gpu = gpu_metric(photos.cuda(), x.cuda())
    assert gpu.device.type == "cuda"
    if not metric.stochastic:
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-5)


# --- agreement with reference implementations ------------------------------------------------


def test_lpips_vgg_equals_the_lpips_package(photos):
    """Our split LPIPS-VGG == the lpips package's own forward with the same VGG16 weights."""
    from attackpsm.metrics.lpips import build_reference_lpips

    reference = build_reference_lpips("vgg", load("vgg16"))
    x = gaussian_blur(photos, 1.2)
    with torch.no_grad():
        torch.testing.assert_close(
            get_metric("lpips_vgg")(photos, x), reference(photos, x).flatten(), rtol=1e-5, atol=1e-6
        )


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The pinned DISTS and ST-LPIPS wheels (sha256-checked), fetched once per module."""
    dest = tmp_path_factory.mktemp("wheels")
    try:
        return {
            "dists": download_wheel(DISTS_WHEEL, dest),
            "stlpips": download_wheel(STLPIPS_WHEEL, dest),
        }
    except WeightsUnavailable as exc:
        pytest.skip(f"package index unreachable: {exc}")


@pytest.fixture
def authors_dists(wheels, monkeypatch):
    """``DISTS_pt.DISTS`` from the dists-pytorch wheel (the authors' code), with our VGG16
    and alpha/beta tensors."""
    import torchvision

    monkeypatch.syspath_prepend(str(wheels["dists"]))  # a pure-Python wheel imports as a zip
    monkeypatch.delitem(sys.modules, "DISTS_pytorch", raising=False)
    from DISTS_pytorch import DISTS_pt

    vgg = load("vgg16")
    vgg16 = torchvision.models.vgg16

    def vgg16_with_our_weights(*args, **kwargs):
        model = vgg16(weights=None)
        model.features.load_state_dict({k.removeprefix("features."): v for k, v in vgg.items()})
        return model

    monkeypatch.setattr(DISTS_pt.models, "vgg16", vgg16_with_our_weights)
    reference = DISTS_pt.DISTS(load_weights=False)
    params = load("dists")
    reference.alpha.data, reference.beta.data = params["alpha"], params["beta"]
    return reference


def test_dists_equals_the_authors_module(photos, authors_dists):
    """Our DISTS == ``DISTS_pt.DISTS`` from the dists-pytorch wheel (the authors' code),
    given the same VGG16 and alpha/beta tensors."""
    x = torch.cat([gaussian_blur(photos[:1], 1.2), (photos[1:] + 0.1).clamp(-1, 1)])
    with torch.no_grad():
        theirs = authors_dists((x + 1) / 2, (photos + 1) / 2)
        ours = get_metric("dists")(photos, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("require_grad", [True, False])
def test_dists_input_gradient_equals_the_authors_module(require_grad, photos, authors_dists):
    """The attack direction: ``metric.require_grad`` reproduces the input gradient of the
    authors' ``forward(x, y, require_grad=...)``. With ``False`` (the package's default call)
    only the pixel-level stage carries a gradient -- nonzero, but not the full one."""
    x = torch.cat([gaussian_blur(photos[:1], 1.2), (photos[1:] + 0.1).clamp(-1, 1)])
    theirs_x = ((x + 1) / 2).requires_grad_(True)
    authors_dists((photos + 1) / 2, theirs_x, require_grad=require_grad).sum().backward()
    metric = build(compose_metric("dists", [f"metric.require_grad={require_grad}"]))
    ours_x = x.clone().requires_grad_(True)
    ours_d = metric(photos, ours_x)
    ours_d.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(ours_d, get_metric("dists")(photos, x))  # same distances
    # d/dx on [-1, 1] = d/dx' on [0, 1] / 2
    torch.testing.assert_close(ours_x.grad, theirs_x.grad / 2, rtol=1e-4, atol=1e-9)
    assert ours_x.grad.abs().max() > 0
    full_x = x.clone().requires_grad_(True)
    get_metric("dists")(photos, full_x).sum().backward()
    same_sign = (ours_x.grad.sign() == full_x.grad.sign()).float().mean().item()
    assert (same_sign == 1.0) == require_grad


def test_dists_refuses_a_non_boolean_require_grad():
    from attackpsm.metrics.dists import DISTS

    with pytest.raises(ValueError, match="require_grad must be true or false, got 'no'"):
        DISTS(require_grad="no")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_stlpips_equals_the_authors_module(net, photos, wheels, tmp_path, monkeypatch):
    """Our ST-LPIPS == ``stlpips.LPIPS(variant="shift_tolerant")`` from the stlpips-pytorch
    wheel (the authors' code, which loads its own weight file)."""
    with zipfile.ZipFile(wheels["stlpips"]) as zf:
        zf.extractall(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # imported by the wheel for debugging helpers only (network summaries, breakpoints)
    for unused in ("torchsummary", "IPython"):
        try:
            __import__(unused)
        except ImportError:
            monkeypatch.setitem(
                sys.modules, unused, types.SimpleNamespace(summary=None, embed=None)
            )
    from stlpips_pytorch import stlpips

    reference = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False)
    x = torch.cat([gaussian_blur(photos[:1], 1.2), (photos[1:] + 0.1).clamp(-1, 1)])
    with torch.no_grad():
        theirs = reference(x, photos).flatten()
        ours = get_metric(f"stlpips_{net}")(photos, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_ms_ssim_equals_piq_where_piq_accepts_the_size():
    """At >= 161 px no window is truncated: our MS-SSIM must equal piq's (independent code)."""
    import piq

    from attackpsm.metrics.classic import ms_ssim

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 176, 176, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    torch.testing.assert_close(
        ms_ssim(y, x), piq.multi_scale_ssim(y, x, data_range=1.0, reduction="none")
    )


def test_ms_ssim_windows_shrink_only_where_the_scale_is_small(photos):
    from attackpsm.metrics.classic import MSSSIM

    with pytest.raises(ValueError, match="161"):
        import piq

        piq.multi_scale_ssim(photos.add(1).div(2), photos.add(1).div(2))
    assert MSSSIM()(photos, gaussian_blur(photos, 1.0)).min() > 0  # runs at 64x64


def test_elpips_is_stochastic_and_averages_draws(photos):
    """Gradients draw afresh and average ``ensemble`` draws per call; decisions repeat."""
    metric = get_metric("elpips_vgg")
    assert metric.stochastic
    x = gaussian_blur(photos[:1], 1.2)
    prepared = metric.prepare(photos[:1])
    with torch.no_grad():  # a decision: the common draws, the same at every call
        torch.testing.assert_close(metric.score(prepared, x), metric.score(prepared, x))
        torch.manual_seed(3)
        draws = torch.stack([metric.draw_distance(photos[:1], x) for _ in range(4)])
    g = x.clone().requires_grad_(True)
    a, b = metric.score(prepared, g), metric.score(prepared, g)
    assert not torch.equal(a, b)  # with a gradient: fresh draws at every call
    torch.manual_seed(3)
    mean = metric.expected_score(prepared, g, draws=2)  # 2 calls x ensemble 2 = 4 draws
    torch.testing.assert_close(mean.detach(), draws.mean(0))


def test_elpips_transformation_is_shared_by_reference_and_candidate(photos):
    """Same draw for both images: identical inputs stay identical under any transformation."""
    metric = get_metric("elpips_vgg")
    torch.manual_seed(0)
    for _ in range(5):
        draw = metric.sample(2, photos.device)
        out = metric.apply(draw, torch.cat([photos, photos]).add(1).div(2))
        torch.testing.assert_close(out[:2], out[2:])


def test_cw_ssim_pyramid_is_a_tight_frame():
    """The complex steerable pyramid's masks partition the spectrum's energy exactly."""
    from attackpsm.metrics.cw_ssim import SteerablePyramid

    hi0, lo0, bands, lows = SteerablePyramid((64, 64), levels=4, orientations=8).masks()

    def at_minus_f(t):  # value at -f on a centred grid of even size
        return torch.roll(torch.flip(t, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))

    total = torch.ones_like(lows[-1])
    for level in reversed(range(4)):
        energy = sum(b**2 for b in bands[level])
        full = torch.zeros_like(energy)
        q = energy.shape[-1] // 4
        full[q : 3 * q, q : 3 * q] = lows[level] ** 2 * total
        total = (energy + at_minus_f(energy)) / 4 + full  # analytic bands: half the energy each
    torch.testing.assert_close(hi0**2 + lo0**2 * total, torch.ones_like(hi0), atol=1e-5, rtol=0)


# --- configs, weights and online-only metrics ------------------------------------------------


def test_every_metric_config_is_listed_here():
    names = {p.stem for p in Path(CONF_DIR, "metric").glob("*.yaml")}
    assert names == set(OFFLINE) | set(ONLINE_ONLY) | set(LARGE_ONLY) | set(WRAPPERS)


@pytest.mark.parametrize("name", sorted(ONLINE_ONLY))
def test_online_only_metrics_fail_clearly_without_their_weights(name, tmp_path):
    node = compose_metric(name, [f"paths.weights_dir={tmp_path}", "paths.allow_fetch=false"])
    with pytest.raises(Exception) as info:  # Hydra wraps the error of the constructor
        build(node)
    assert isinstance(info.value.__cause__ or info.value, WeightsUnavailable)
    assert "make weights" in str(info.value)
    try:  # where the web is unreachable, fetching says the weights are online-only
        fetch(ONLINE_ONLY[name], tmp_path, verbose=False)
    except WeightsUnavailable as exc:
        assert "online-only" in str(exc)
    assert SPECS[ONLINE_ONLY[name]].online_only


@pytest.mark.parametrize("name", ["dists", "stlpips_alex", "stlpips_vgg"])
def test_metric_parameters_pass_their_checksums(name, tmp_path):
    state = load(name)
    assert content_sha256(state) == SPECS[name].sha256
    tampered = {k: v.clone() for k, v in state.items()}
    key = sorted(tampered)[-1]
    tampered[key].view(-1)[0] += 1.0
    torch.save(tampered, cache_path(name, tmp_path))
    with pytest.raises(WeightsUnavailable, match="checksum"):
        load(name, tmp_path, allow_fetch=False)


# --- Table 1 ------------------------------------------------------------------------------------


def test_twoafc_scores_follow_the_raters_fraction():
    d0 = np.array([0.1, 0.3, 0.2, 0.5])
    d1 = np.array([0.2, 0.1, 0.2, 0.4])
    judge = np.array([0.2, 0.6, 1.0, 0.0])  # fraction preferring p1
    np.testing.assert_allclose(twoafc_scores(d0, d1, judge), [0.8, 0.6, 0.5, 0.0])


def test_clean_accuracy_per_subset_and_overall():
    results = pd.DataFrame({
        "subset": ["a", "a", "a", "b", "b"],
        "judge": [0.0, 1.0, 0.6, 1.0, np.nan],
        "d0": [0.1, 0.1, 0.3, 0.5, 0.1],
        "d1": [0.2, 0.3, 0.1, 0.2, 0.2],
    })  # fmt: skip
    table = clean_accuracy(results, "m").set_index("subset")
    # a: correct, wrong, (not unanimous; 2AFC 0.6) -> accuracy 1/2, 2AFC (1 + 0 + 0.6) / 3
    assert table.loc["a", "unanimous"] == 2 and table.loc["a", "accuracy_pct"] == pytest.approx(
        50.0
    )
    assert table.loc["a", "twoafc_pct"] == pytest.approx(100 * 1.6 / 3)
    assert table.loc["b", "triplets"] == 1 and table.loc["b", "accuracy_pct"] == pytest.approx(
        100.0
    )
    assert table.loc["all", "unanimous"] == 3 and table.loc["all", "accuracy_pct"] == pytest.approx(
        200 / 3
    )
    assert "| m | **all** |" in clean_accuracy_markdown(table.reset_index())


def test_attack_none_writes_the_table1_layout(cfg_factory):
    from attackpsm.job.run import run

    cfg = cfg_factory(["metric=ms_ssim", "attack=none", "dataset.num_triplets=12"])
    out = run(cfg)
    table1 = pd.read_csv(Path(out["run_dir"]) / "table1.csv")
    assert table1["subset"].iloc[-1] == "all" and table1["unanimous"].iloc[-1] == 12
    assert (Path(out["run_dir"]) / "table1.md").read_text().startswith("| Metric | Subset |")


def test_make_weights_reports_online_only_weights_without_failing(tmp_path, capsys):
    status = fetch_weights(["pieapp", "--cache-dir", str(tmp_path)])
    assert status == 0
    if not cache_path("pieapp", tmp_path).exists():  # the web was unreachable
        assert "online-only" in capsys.readouterr().err


# --- online-only metrics where their weights exist ---------------------------------------------
# Mechanics only: stand-in weight files (random parameters, never used for any reported
# number) placed in a temporary cache exercise the loading and scoring code that runs
# wherever the real downloads are reachable.


def test_lpips_squeeze_runs_from_a_cached_backbone(tmp_path, photos):
    import torchvision

    from attackpsm.metrics.lpips import LPIPS, build_reference_lpips

    state = {
        k: v
        for k, v in torchvision.models.squeezenet1_1(weights=None).state_dict().items()
        if k.startswith("features.")
    }
    torch.save(state, cache_path("squeezenet1_1", tmp_path))
    metric = LPIPS("squeeze", weights_dir=str(tmp_path), allow_fetch=False)
    x = gaussian_blur(photos, 1.2)
    with torch.no_grad():
        torch.testing.assert_close(
            metric(photos, x), build_reference_lpips("squeeze", state)(photos, x).flatten()
        )


def test_pieapp_scores_patches_per_image(tmp_path, photos):
    from piq.pieapp import PieAPPModel

    from attackpsm.metrics.pieapp import PieAPP

    torch.manual_seed(0)
    torch.save(PieAPPModel().state_dict(), cache_path("pieapp", tmp_path))
    metric = PieAPP(stride=32, weights_dir=str(tmp_path), allow_fetch=False)
    big = torch.stack(
        [resize(from_uint8(getattr(skdata, n)()), 96) for n in ("astronaut", "chelsea")]
    )
    x = gaussian_blur(big, 1.2)
    prepared = metric.prepare(big)
    assert prepared[0].shape[:2] == (2, 4)  # 2 images x 4 patches of 64 px at stride 32
    with torch.no_grad():
        batched = metric.score(prepared, x)
        picked = metric.score(select(prepared, torch.tensor([1])), x[1:])
        single = metric(big[1:], x[1:])
    torch.testing.assert_close(picked, batched[1:])
    torch.testing.assert_close(single, batched[1:])
