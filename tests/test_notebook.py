"""examples/quickstart.ipynb runs headless from top to bottom (as a new user runs it), and is kept
in git without outputs."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    [parameters] = [cell for cell in notebook.cells
                    if "parameters" in cell.metadata.get("tags", [])]
    # As papermill injects parameters: no trained weights, so it trains briefly, into tmp_path.
    parameters.source += (f"\nWEIGHTS = Path({str(tmp_path / 'none.pth')!r})"
                          f"\nQUICK_TRAIN_ITERATIONS = 4\nOUTPUT_DIR = Path({str(tmp_path)!r})")
    # Started from examples/, as Jupyter starts it, with no DETECTRON2_DATASETS: the data set
    # folder is the repository's datasets/, and a preview set is written under OUTPUT_DIR, not
    # into examples/datasets/ (relative to the notebook) or the real set's folder.
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    real_set = NOTEBOOK.parent.parent / "datasets" / "synthetic_small"
    had_real_set = real_set.exists()
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    assert not (NOTEBOOK.parent / "datasets").exists()
    assert real_set.exists() == had_real_set

    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    if not had_real_set:
        assert "8 validation images" in text
        assert (tmp_path / "data" / "synthetic_small" / "annotations").is_dir()
    assert "'square', 'disc', 'star', 'l_shape'" in text
    assert "instances per image:" in text and "'segm':" in text
    assert (tmp_path / "model_final.pth").is_file()  # trained, as no weights were found
    assert any("image/png" in output.get("data", {}) for output in outputs)  # the drawing
