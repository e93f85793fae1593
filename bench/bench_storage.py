"""Storage throughput: write and read 70,000 Fashion-MNIST-shaped rows through storage_svc vs. Lance directly.

Prints MB/s both ways for each path, their ratio, and the service's peak RSS.
Run: ``.venv/bin/python bench/bench_storage.py [--rows 70000] [--repeat 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import stop_and_clean, wait_port  # noqa: E402

from ai_platform.client import StorageClient  # noqa: E402
from ai_platform.core.ports import free_port  # noqa: E402


def make_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    images = pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, 256, rows * 784, dtype=np.uint8)), 784)
    labels = pa.array(rng.integers(0, 10, rows), pa.int64())
    split = pa.array(np.where(np.arange(rows) < rows * 6 // 7, "train", "test"))
    return pa.table({"image": images, "label": labels, "split": split})


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=70_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 rows, once (the test suite's check)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeat = 2_000, 1

    table = make_table(args.rows)
    mb = table.nbytes / 1e6
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    port = free_port()
    env = {**os.environ, "AIP_HOME": str(work / "svc"), "PYTHONPATH": str(ROOT), "AIP_LOG_LEVEL": "warning"}
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "storage_svc",
            "--addr",
            f"127.0.0.1:{port}",
            "--metrics-addr",
            f"127.0.0.1:{free_port()}",
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        client = StorageClient(f"127.0.0.1:{port}")
        wait_port(port)

        idle_rss = rss_mb(service.pid, "VmRSS")
        direct_uri = str(work / "direct.lance")
        direct_write = best_of(args.repeat, lambda: lance.write_dataset(table, direct_uri, mode="overwrite"))
        direct_read = best_of(args.repeat, lambda: lance.dataset(direct_uri).to_table())
        service_write = best_of(args.repeat, lambda: client.write("bench", table, mode="overwrite"))
        service_read = best_of(args.repeat, lambda: client.read("bench"))
        assert client.read("bench").num_rows == args.rows

        print(f"table: {args.rows} rows, {mb:.1f} MB in memory (best of {args.repeat})")
        print(f"{'path':<22}{'write MB/s':>12}{'read MB/s':>12}{'read s':>9}")
        for name, w, r in (
            ("lance in-process", direct_write, direct_read),
            ("storage_svc gRPC", service_write, service_read),
        ):
            print(f"{name:<22}{mb / w:>12.0f}{mb / r:>12.0f}{r:>9.3f}")
        print(f"service/direct ratio: write {direct_write / service_write:.2f}, read {direct_read / service_read:.2f}")
        print(f"storage_svc RSS: {idle_rss:.0f} MB idle, {rss_mb(service.pid):.0f} MB peak")
    finally:
        stop_and_clean([service], work)


if __name__ == "__main__":
    main()
