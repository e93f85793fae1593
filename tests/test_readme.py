"""Every Python block of the README runs as written (the way a doctest would) against a platform the demo filled,
with the token set, from the directory a user runs them in; and together they harm nothing of the demo's."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ai_platform.client import Client
from tests.conftest import DEMO_TOKEN, ROOT, Demo

SKIP = re.compile(r"<!-- readme-test: skip \((?P<why>[^)]+)\) -->\s*$")
DEFAULT_ADDRS = {"storage": "127.0.0.1:50051", "scheduler": "127.0.0.1:50052", "inference": "127.0.0.1:50053",
                 "gateway": "127.0.0.1:8000"}


def python_blocks() -> list[tuple[int, str, str]]:
    """(line, code, why it is skipped or '') for each ```python block of the README."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks, at = [], 0
    while at < len(lines):
        if lines[at].strip() == "```python":
            end = lines.index("```", at + 1)
            skipped = SKIP.match(lines[at - 1]) if at else None
            blocks.append((at + 1, "\n".join(lines[at + 1:end]), skipped["why"] if skipped else ""))
            at = end
        at += 1
    return blocks


BLOCKS = python_blocks()


@pytest.fixture(scope="module", autouse=True)
def token():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIP_TOKEN", DEMO_TOKEN)
        yield DEMO_TOKEN


def test_the_readme_has_the_snippets_this_file_runs():
    assert len(BLOCKS) >= 5
    skipped = [why for _, _, why in BLOCKS if why]
    assert skipped == ["it needs a deployment with TLS and the certificates in deploy/certs"], "each skip says why"


@pytest.fixture(scope="module")
def before(demo: Demo) -> dict[str, int]:
    with Client(*(demo.addrs[n] for n in ("storage", "scheduler", "inference"))) as client:
        return {"datasets/mnist_clean": client.get_dataset("mnist_clean")["version"],
                "models/mnist_cnn": client.get_model("mnist_cnn")["version"]}


@pytest.mark.parametrize(("line", "code"), [(line, code) for line, code, why in BLOCKS if not why],
                         ids=[f"README.md:{line}" for line, _, why in BLOCKS if not why])
def test_a_python_block_runs_as_written(demo: Demo, before: dict[str, int], line: int, code: str):
    for name, default in DEFAULT_ADDRS.items():  # the README speaks of the default ports; the demo has its own
        code = code.replace(default, demo.addrs[name])
    done = subprocess.run([sys.executable, "-c", code], cwd=demo.project, env=demo.env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"README.md:{line} failed:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr


def test_the_snippets_left_the_demo_as_it_was(demo: Demo, before: dict[str, int]):
    """Runs after the blocks: the demo's dataset and model (the one the page serves) were only read."""
    with Client(*(demo.addrs[n] for n in ("storage", "scheduler", "inference"))) as client:
        assert client.get_dataset("mnist_clean")["version"] == before["datasets/mnist_clean"]
        assert client.get_model("mnist_cnn")["version"] == before["models/mnist_cnn"]
        served = {m["name"]: m for m in client.inference.index()}
        assert served["mnist_cnn"]["state"] == "READY"
