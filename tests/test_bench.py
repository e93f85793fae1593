"""The benchmarks are not run by the tests (they take minutes), but each must at least import."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

BENCHMARKS = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))


def test_every_benchmark_imports():
    assert BENCHMARKS, "bench/ holds benchmarks"
    code = "import sys; sys.path[:0] = ['bench', '.']\n" + "".join(f"import {name}\n" for name in BENCHMARKS)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
