"""The import layers of the package (docs/architecture.md, "Import layers") hold, and the check can fail.

``make lint`` runs import-linter's ``lint-imports`` over the contract in ``pyproject.toml``;
these tests run the same command on the real tree and on a copy with one back-edge added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (make install adds it)"
)


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_layers_are_kept_with_no_exceptions():
    text = (ROOT / "pyproject.toml").read_text()
    assert "ignore_imports" not in text, "the layer contract must list no exceptions"
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_a_back_edge_breaks_the_contract_and_is_named(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "attackpsm", tree / "attackpsm", ignore=ignore)
    shutil.copytree(ROOT / "hydra_plugins", tree / "hydra_plugins", ignore=ignore)
    # a metric that reaches up into the storage layer, inside a function as such imports hide
    lpips = tree / "attackpsm" / "metrics" / "lpips.py"
    lpips.write_text(
        lpips.read_text() + "\n\ndef _back_edge():\n    from attackpsm.storage import runs\n"
    )
    out = _lint(tree)
    assert out.returncode != 0
    assert "attackpsm.metrics is not allowed to import attackpsm.storage" in out.stdout
    assert "attackpsm.metrics.lpips -> attackpsm.storage" in out.stdout


def test_every_module_of_the_package_is_in_a_layer():
    """A new top-level module cannot escape the contract by being left out of it."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    named = {
        name.strip()
        for contract in config["contracts"]
        for layer in contract["layers"]
        for name in layer.split("|")
    }
    package = ROOT / "attackpsm"
    modules = {f"attackpsm.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"attackpsm.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules - named == set(), f"modules outside every layer: {sorted(modules - named)}"
