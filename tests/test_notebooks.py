"""Both tutorial notebooks, executed end to end by a real kernel, with small settings as parameters."""

from __future__ import annotations

import json

import nbformat
from nbclient import NotebookClient

from ai_platform.cli import launcher
from ai_platform.core.ports import free_port_block
from tests.conftest import ROOT


def execute(name: str, tmp_path, stop: bool = True, **parameters) -> nbformat.NotebookNode:
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
        if stop:
            launcher.down(home)  # the notebook stops a platform it started itself; this is for one that failed
    nbformat.write(notebook, tmp_path / name)
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> str:
    text = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") + json.dumps(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def progress_bars(notebook: nbformat.NotebookNode) -> int:
    """How many progress bars rendered as widgets (rich's live display in Jupyter)."""
    return sum("application/vnd.jupyter.widget-view+json" in out.get("data", {})
               for cell in notebook.cells for out in cell.get("outputs", []))


def test_level1_notebook_uses_the_platform_the_demo_left_running(tmp_path, demo, monkeypatch):
    monkeypatch.setenv("AIP_TOKEN", demo.token)
    home = demo.project / ".ai_platform"
    before = launcher.read_state(home)
    notebook = execute("01_level1_local.ipynb", tmp_path, HOME=str(home), PORTS={}, EPOCHS=3, LIMIT=0, stop=False)
    text = outputs(notebook)
    assert "platform up at level 1 (already running)" in text and demo.url in text
    assert "accuracy" in text and "test digits right" in text
    assert any(out.get("data", {}).get("image/png") for c in notebook.cells for out in c.get("outputs", [])), \
        "the digits were plotted"
    assert progress_bars(notebook) >= 2 and 'install "ipywidgets"' not in text, "progress bars render"
    assert "left running, as it was before" in text
    assert launcher.read_state(home).pids == before.pids, "the demo's platform keeps running"


def test_level2_notebook_runs_several_trainings_on_ray(tmp_path):
    home = tmp_path / "nb2" / ".ai_platform"
    notebook = execute("02_level2_distributed.ipynb", tmp_path, HOME=str(home),
                       PORT=free_port_block(7), EPOCHS=1, LIMIT=800, LEARNING_RATES=[1e-3, 3e-3])
    text = outputs(notebook)
    assert "platform up at level 2 (started here)" in text and "ray: accuracy" in text
    assert "pair(s) of runs overlapped" in text and "'CPU'" in text
    assert "2 RUNNING" in text and "served by 2 replicas:" in text
    assert text.count("final accuracy") == 2, "the runs compared through client.runs"
    assert "batch predictions: " in text and "rows, accuracy" in text
    assert "mnist_e2e on Daft's ray runner: 800 images" in text
    assert launcher.read_state(home) is None
