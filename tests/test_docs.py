"""The documentation describes the code as it is: every option, key, module and link.

`make docs` (strict, also in .ci/run) catches broken links and API pages of modules that
no longer exist; these checks catch what a generator cannot: a metric's minimum size or
gradient, an attack's keys and the package tree, as the pages state them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def table_rows(text: str, first_cell: str) -> dict[str, list[str]]:
    """Rows of every Markdown table whose first cell is a code span, keyed by its text."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `") and first_cell not in line:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows[cells[0].strip("`")] = cells
    return rows


def test_metrics_table_states_each_metrics_minimum_size_and_gradient():
    text = (DOCS / "metrics.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| `metric=`"))
    columns = [c.strip() for c in header.strip().split("|")[1:-1]]
    rows = table_rows(text, "`metric=`")
    for name in options("metric"):
        assert name in rows, f"docs/metrics.md has no table row for metric={name}"
        row = dict(zip(columns, rows[name], strict=True))
        spec = yaml.safe_load((CONF / "metric" / f"{name}.yaml").read_text())
        cls = get_class(spec["_target_"])
        params = {k: v for k, v in spec.items() if not k.startswith("_")}
        if name == "smoothed":  # a wrapper: both follow metric.base
            assert "metric.base" in row["min size"] and "metric.base" in row["differentiable"]
            continue
        stated = int(re.match(r"\d+", row["min size"]).group())
        assert stated == cls.minimum_size(**params), f"metric={name}: min size"
        assert row["differentiable"].startswith("yes" if cls.differentiable else "no"), name


def test_every_attack_option_and_key_is_documented():
    text = (DOCS / "attacks.md").read_text()
    parameters = text[text.index("## Parameters") :]
    for name in options("attack"):
        assert f"`{name}`" in text, f"docs/attacks.md does not name attack={name}"
        spec = yaml.safe_load((CONF / "attack" / f"{name}.yaml").read_text())
        for key in spec:
            if key in {"_target_", "_recursive_", "defaults", "name"}:
                continue
            assert f"`{key}`" in parameters, f"attack={name}: key {key} not in Parameters"


@pytest.mark.parametrize("group", ["dataset", "resolution", "experiment"])
def test_every_option_of_the_other_groups_is_named(group):
    text = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    for name in options(group):
        assert f"{group}={name}" in text or f"`{name}`" in text, f"{group}={name} undocumented"


def test_architecture_page_names_every_module_of_the_tree():
    text = (DOCS / "architecture.md").read_text()
    package = ROOT / "attackpsm"
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.name == "__init__.py" or rel.parts[:2] == ("report", "tables"):
            continue  # packages are named by their folder; report tables as one family
        assert path.name in text, f"docs/architecture.md does not name attackpsm/{rel}"
    for folder in [p for p in package.iterdir() if (p / "__init__.py").exists()]:
        assert f"{folder.name}/" in text, f"docs/architecture.md does not name {folder.name}/"


def test_every_page_is_in_the_site_and_every_readme_link_resolves():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert page.relative_to(DOCS).as_posix() in nav, f"{page} is not in mkdocs.yml's nav"
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs/)[^)#]+)(?:#[^)]*)?\)", readme)
    assert links, "README links to no documentation page"
    for link in links:
        assert (ROOT / link).exists(), f"README links to a missing page: {link}"


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for command in (
        "make run",
        "make test",
        "python -m attackpsm attack=stadv metric=lpips_alex -m resolution=64,256",
        "hydra/launcher=slurm",
    ):
        assert command in readme, command


def _message_fragments(node: ast.expr) -> list[tuple[str, bool]]:
    """The literal pieces of an error message, each with whether a value precedes it."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [(node.value, False)]
    if isinstance(node, ast.JoinedStr):
        pieces, after_value = [], False
        for value in node.values:
            if isinstance(value, ast.Constant):
                pieces.append((value.value, after_value))
                after_value = False
            else:
                after_value = True
        return pieces
    if isinstance(node, ast.BinOp):
        return _message_fragments(node.left) + _message_fragments(node.right)
    return []


def _plain(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def test_troubleshooting_quotes_every_error_message_the_package_raises():
    """Each raised message's longest literal piece is quoted on the troubleshooting page."""
    page = _plain((DOCS / "troubleshooting.md").read_text())
    missing = []
    for path in sorted((ROOT / "attackpsm").rglob("*.py")):
        if "bench" in path.parts or path.name == "square_sweep.py":  # developer tools
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            if not node.exc.args:
                continue
            pieces = []
            for text, after_value in _message_fragments(node.exc.args[0]):
                text = _plain(text)
                if after_value and text[:1].isalnum():  # the tail of a value: "600s"
                    text = text.partition(" ")[2]
                pieces.append(text.strip(" :;,.()"))
            longest = max(pieces, key=len, default="")
            quote = longest[:40].strip(" :;,.()")
            if len(quote) >= 8 and quote not in page:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {quote!r}")
    assert not missing, "docs/troubleshooting.md lacks:\n" + "\n".join(missing)
