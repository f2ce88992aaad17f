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
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))  # the kernel's
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "8 validation images" in text and "'square', 'disc', 'star', 'l_shape'" in text
    assert "instances per image:" in text and "'segm':" in text
    assert (tmp_path / "model_final.pth").is_file()  # trained, as no weights were found
    assert any("image/png" in output.get("data", {}) for output in outputs)  # the drawing
