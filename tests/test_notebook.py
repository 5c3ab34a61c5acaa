"""notebooks/quickstart.ipynb executes top to bottom, offline, against a tiny local model."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tiny_folder, fixtures, monkeypatch):
    monkeypatch.setenv("HF_OVSEG_MODEL", str(tiny_folder))
    monkeypatch.setenv("HF_OVSEG_IMAGE", str(fixtures / "voc" / "JPEGImages" / "2007_000033.jpg"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o["data"]]
    assert len(images) == 2  # the overlay and the side-by-side comparison
    assert any("mean score" in o.get("text", "") for o in outputs if o.output_type == "stream")
