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


MAX_MODULE_LINES = 650
MAX_FUNCTION_LINES = 80


def _package_sources() -> list[Path]:
    return sorted((ROOT / "attackpsm").rglob("*.py"))


def test_no_module_is_over_650_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _package_sources()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_80_lines():
    import ast

    long = {}
    for path in _package_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_layers_are_folders_or_one_module_and_the_docs_draw_the_same_tree():
    """Each layer of the contract is a package folder (or one module), and the architecture
    page's tree lists exactly what ``ls attackpsm`` shows."""
    import re

    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    package = ROOT / "attackpsm"
    loose = []
    for layer in contract["layers"]:
        for name in (n.strip() for n in layer.split("|")):
            if not name.startswith("attackpsm."):
                continue
            path = package / name.removeprefix("attackpsm.")
            if not (path / "__init__.py").exists():
                loose.append(name)
    assert len(contract["layers"]) <= 12, contract["layers"]
    # the modules that are a layer of their own: entry points, the engine, the bottom layer
    assert set(loose) <= {
        "attackpsm.__main__",
        "attackpsm.api",
        "attackpsm.engine",
        "attackpsm.images",
        "attackpsm.config",
        "attackpsm.locks",
    }, loose
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = text.split("```\nattackpsm/\n", 1)[1].split("```", 1)[0]
    drawn = set(re.findall(r"^    ([\w.]+/?)", tree, re.M))
    shown = {
        p.name + ("/" if p.is_dir() else "")
        for p in package.iterdir()
        if p.name != "__pycache__" and (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    assert drawn == shown, (
        f"drawn but absent: {drawn - shown}; present but not drawn: {shown - drawn}"
    )
