"""notebooks/analysis.ipynb: stored without outputs, and executes on a fresh small run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code"
    assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_executes_on_a_fresh_run(cfg_factory, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    from attackpsm.job.run import run

    for overrides in (
        ["metric=l2", "attack=pgd"],
        ["metric=lpips_alex", "attack=pgd"],
        ["metric=l2", "attack=none"],
    ):
        run(cfg_factory([*overrides, "dataset.num_triplets=16"]))
    monkeypatch.setenv("ATTACKPSM_RESULTS", str(tmp_path / "results"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "3 runs below" in text
    markdown = "\n".join(o.data.get("text/markdown", "") for o in outputs if "data" in o)
    assert "Table 2" in markdown and "LPIPS(Alex)" in markdown and "[95% CI]" in markdown
    images = [o for o in outputs if "data" in o and "image/png" in o.data]
    # accuracy vs robustness, flip rate vs ε, histograms, one example grid
    assert len(images) >= 4
