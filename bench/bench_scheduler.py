"""Scheduler overhead on the local backend with 2 slots.

200 trivial tasks (``run`` returns at once) from 2 closed-loop clients, then 20 tasks that
each sleep 1 s submitted at once. Prints submit latency and submit→completed latency
(p50/p99), throughput, and the same ``run`` called in-process as the baseline.
Run: ``.venv/bin/python bench/bench_scheduler.py``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import stop_and_clean, wait_port  # noqa: E402

from ai_platform.client import SchedulerClient, status_name  # noqa: E402
from ai_platform.core.ports import free_port  # noqa: E402

TRIVIAL = "def run(input_path, output_path, params):\n    return {'i': params['i']}\n"
SLEEPER = "import time\n\ndef run(input_path, output_path, params):\n    time.sleep(1)\n    return {}\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    (work / "trivial.py").write_text(TRIVIAL)
    (work / "sleeper.py").write_text(SLEEPER)
    addr = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "AIP_HOME": str(work / ".ai_platform"), "PYTHONPATH": str(ROOT), "AIP_LOG_LEVEL": "warning"}
    service = subprocess.Popen([sys.executable, "-m", "scheduler_svc", "--addr", addr, "--max-parallel", "2",
                                "--metrics-addr", f"127.0.0.1:{free_port()}",
                                "--storage-addr", f"127.0.0.1:{free_port()}"], env=env, cwd=work)
    try:
        client = SchedulerClient(addr)
        wait_port(int(addr.rsplit(":", 1)[1]))

        # Baseline: the same run() called in-process.
        namespace: dict = {}
        exec(TRIVIAL, namespace)  # noqa: S102 - the benchmark's own script
        t0 = time.perf_counter()
        for i in range(200):
            namespace["run"]("", "", {"i": i})
        in_process_us = (time.perf_counter() - t0) / 200 * 1e6

        submit_ms: list[float] = []
        e2e_ms: list[float] = []
        lock = threading.Lock()

        def closed_loop(offset: int) -> None:
            own = SchedulerClient(addr)
            for i in range(offset, offset + 100):
                t_start = time.perf_counter()
                task = own.submit("trivial", "trivial.py", params={"i": i})
                t_submitted = time.perf_counter()
                done = own.wait(task.id)
                t_done = time.perf_counter()
                assert status_name(done) == "completed", done.error
                with lock:
                    submit_ms.append((t_submitted - t_start) * 1000)
                    e2e_ms.append((t_done - t_start) * 1000)
            own.close()

        t0 = time.perf_counter()
        threads = [threading.Thread(target=closed_loop, args=(k * 100,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        trivial_wall = time.perf_counter() - t0

        t0 = time.perf_counter()
        ids = [client.submit("sleeper", "sleeper.py").id for _ in range(20)]
        for task_id in ids:
            assert status_name(client.wait(task_id)) == "completed"
        sleepers_wall = time.perf_counter() - t0

        print("local backend, 2 slots")
        print(f"trivial tasks: 200 from 2 closed-loop clients in {trivial_wall:.2f}s "
              f"= {200 / trivial_wall:.1f} tasks/s")
        print(f"  submit latency    p50 {pct(submit_ms, 50):7.1f} ms   p99 {pct(submit_ms, 99):7.1f} ms")
        print(f"  submit->completed p50 {pct(e2e_ms, 50):7.1f} ms   p99 {pct(e2e_ms, 99):7.1f} ms   "
              f"mean {statistics.mean(e2e_ms):.1f} ms")
        print(f"  baseline: run() in-process {in_process_us:.2f} us per call")
        print(f"20 x 1 s sleepers submitted at once: all completed in {sleepers_wall:.2f}s (ideal with 2 slots: 10 s)")
    finally:
        stop_and_clean([service], work)


if __name__ == "__main__":
    main()
