"""Every benchmark imports, and runs end to end at a tiny size (``--quick``) printing its figures: a benchmark that
breaks at run time is caught here, not on the day someone needs its numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCHMARKS = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
# A figure: a number followed by its unit (12.3 ms, 450 req/s, 1234 images/s, 91 MB, 0.8 s, 2.05x, 41%).
FIGURE = re.compile(r"\d\s*(?:ms|s|MB|x|%|[A-Za-z]*/s)(?![A-Za-z])")


def test_every_benchmark_imports():
    assert BENCHMARKS, "bench/ holds benchmarks"
    code = "import sys; sys.path[:0] = ['bench', '.']\n" + "".join(f"import {name}\n" for name in BENCHMARKS)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


def test_figure_pattern():
    for line in ("    torchscript   batch  1:     4307 images/s", "read 0.019 s", "1.5x the baseline", "at 41%",
                 "p50 1.86 ms", "2.0 MB", "ratio 2.05x"):
        assert FIGURE.search(line), line
    for line in ("3 epochs", "2 slots", "32 clients", "step 1"):
        assert not FIGURE.search(line), line


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_quick(name: str):
    env = {k: v for k, v in os.environ.items() if k != "AIP_TOKEN"}
    extra = ["--ray"] if name == "bench_scheduler" else []  # its Ray figures too: a Job per task, warm runners
    done = subprocess.run([sys.executable, f"bench/{name}.py", "--quick", *extra], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    tail = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{name} --quick exited {done.returncode}\n{tail}"
    assert FIGURE.search(done.stdout), f"{name} --quick printed no figure\n{tail}"
    if name == "bench_scheduler":  # where a trivial task's CPU goes, for each of the three ways
        shares = re.findall(r"CPU per trivial task, ms: (.*) \(of", done.stdout)
        assert len(shares) == 3 and "fork server" in shares[0] and "fork server" not in shares[1], tail
        assert re.search(r"Ray, warm runners against a Job per task: \d+x", done.stdout), tail
