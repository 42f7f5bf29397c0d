"""The Python API (attackpsm/api.py): its documented examples run, with real weights, and
its answers agree with the command line's."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import attackpsm
from attackpsm.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "api.md"


def _doctest(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"no examples in {module.__name__}"
    assert result.failed == 0, f"{result.failed} example(s) of {module.__name__} failed"


def test_api_docstring_examples_run(tmp_path, monkeypatch):
    import attackpsm.api

    monkeypatch.chdir(tmp_path)  # attackpsm.run's example writes ./results
    _doctest(attackpsm.api)
    assert list(tmp_path.glob("results/synthetic/l2/fgsm/*/results.parquet"))


def api_page_blocks() -> list[str]:
    """The ```python blocks of the docs' Python API page, in order."""
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)


def test_api_page_examples_run(tmp_path, monkeypatch):
    """Every example of the documentation page runs as written, in one session."""
    monkeypatch.chdir(tmp_path)
    blocks = api_page_blocks()
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)  # noqa: S102 - the docs' examples
    assert isinstance(namespace["table"], pd.DataFrame)


def test_evaluate_matches_the_command_line(tmp_path, monkeypatch):
    """Same conf/ files, same engine: the API's table of a dataset is the run's table."""
    monkeypatch.chdir(tmp_path)
    overrides = ["metric=l2", "attack=pgd", "dataset.num_triplets=6", "resolution=32"]
    cli = attackpsm.run([*overrides, "logger=none", "progress=false"])
    data = attackpsm.dataset("synthetic", resolution=32, num_triplets=6)
    api = attackpsm.evaluate("l2", "pgd", dataset=data, batch_size=4)
    cols = ["triplet_id", "prey", "s_adv", "flipped", "iterations", "linf"]
    key = "triplet_id"
    pd.testing.assert_frame_equal(
        cli[cols].sort_values(key).reset_index(drop=True),
        api[cols].sort_values(key).reset_index(drop=True),
    )
    assert Path(cli.attrs["run_dir"]).is_absolute()


def test_evaluate_tensors_returns_images_within_budget(lpips_alex):
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    p0 = (ref + 0.05 * torch.randn(3, 3, 32, 32, generator=g)).clamp(-1, 1)
    p1 = (ref + 0.3 * torch.randn(3, 3, 32, 32, generator=g)).clamp(-1, 1)
    pgd = attackpsm.attack("pgd", eps=0.02, max_iterations=10)
    table, adv = attackpsm.evaluate(lpips_alex, pgd, ref, p0, p1, images=True, batch_size=2)
    assert list(table["triplet_id"]) == ["0", "1", "2"]
    prey = torch.where(torch.tensor(table["prey"].to_numpy()).bool()[:, None, None, None], p1, p0)
    assert (adv - prey).abs().amax().item() <= 0.02 + 1e-6
    # the table's scores are those of the returned images
    s = lpips_alex.score(lpips_alex.prepare(ref), adv).detach().numpy()
    assert abs(s - table["s_adv"].to_numpy()).max() < 1e-4


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: attackpsm.attack("pgd", epsilon=0.01), "has no key 'epsilon'. Did you mean attack.eps?"),
        (lambda: attackpsm.attack("pgd", eps="abc"), "attack.eps='abc': expected float"),
        (lambda: attackpsm.metric("lpips"), "options of metric: adists"),
        (
            lambda: attackpsm.evaluate("l2", "fgsm", torch.ones(1, 3, 8, 8) * 2, torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)),
            "[-1, 1] scale",
        ),
        (lambda: attackpsm.run(["-m", "metric=l2,ssim"]), "runs one job"),
    ],
)  # fmt: skip
def test_api_errors_name_the_fix(call, expected):
    with pytest.raises(ConfigError) as info:
        call()
    assert expected in str(info.value)


def test_import_stays_light():
    """`import attackpsm` does not import torch or Hydra (the API loads on first use)."""
    import subprocess
    import sys

    code = "import sys, attackpsm; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
