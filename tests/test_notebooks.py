"""Both tutorial notebooks, executed end to end by a real kernel, with small settings as parameters."""

from __future__ import annotations

import json

import nbformat
from nbclient import NotebookClient

from ai_platform.cli import launcher
from tests.conftest import ROOT, free_port


def execute(name: str, tmp_path, **parameters) -> nbformat.NotebookNode:
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "committed without outputs"
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    overrides = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    home = ROOT / parameters["HOME"]
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        launcher.down(home)  # the notebook stops the platform itself; this only runs if it did not get there
    nbformat.write(notebook, tmp_path / name)
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> str:
    text = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") + json.dumps(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def ports() -> dict[str, int]:
    return {name: free_port() for name in ("storage", "scheduler", "inference", "gateway")}


def test_level1_notebook(tmp_path):
    home = tmp_path / "nb1" / ".ai_platform"
    notebook = execute("01_level1_local.ipynb", tmp_path, HOME=str(home), PORTS=ports(), EPOCHS=1,
                       LIMIT=1500)
    text = outputs(notebook)
    assert "platform up at level 1" in text and "accuracy" in text and "test digits right" in text
    assert any(out.get("data", {}).get("image/png") for c in notebook.cells for out in c.get("outputs", [])), \
        "the digits were plotted"
    assert "stopped" in text and launcher.read_state(home) is None


def test_level2_notebook_runs_several_trainings_on_ray(tmp_path):
    home = tmp_path / "nb2" / ".ai_platform"
    notebook = execute("02_level2_distributed.ipynb", tmp_path, HOME=str(home),
                       PORTS=ports(), EPOCHS=1, LIMIT=800, LEARNING_RATES=[1e-3, 3e-3])
    text = outputs(notebook)
    assert "platform up at level 2" in text and "ray: accuracy" in text
    assert "pair(s) of runs overlapped" in text and "'CPU'" in text
    assert "2 RUNNING" in text and "served by 2 replicas:" in text
    assert text.count("final accuracy") == 2, "the runs compared through client.runs"
    assert "batch predictions: " in text and "rows, accuracy" in text
    assert "mnist_e2e on Daft's ray runner: 800 images" in text
    assert launcher.read_state(home) is None
