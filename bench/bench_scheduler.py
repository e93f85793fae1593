"""Task overhead: the local backend (warm start, and a new interpreter per task) against the seed's way, side by side.

- 200 trivial tasks (``run`` returns at once) from 2 closed-loop clients, 2 slots: submit and submit->completed
  latency (p50/p99) and tasks/s. Goals for the warm start: p50 <= 10 ms and >= 200 tasks/s.
- 20 tasks that each sleep 1 s, submitted at once on 2 slots: the wall time against the ideal 10 s (goal: within 3%).
- The seed's way, same load over HTTP: its runner calls the script's ``run`` in a thread of the server (no process
  of its own, so no cancel, timeout, memory limit or isolation), and clients poll the task.
- Where a trivial task's CPU goes (from /proc, over the same 200 tasks): the scheduler, the fork server, the task
  processes, the clients, and the time both cores sat idle; at 200 tasks/s, 2 cores give 10 ms per task in all.
- With ``--ray``: a Ray head on this machine (2 CPUs) and the Ray backend: a Ray Job per task (10 trivial tasks,
  4 sleepers), then the same load as above on 2 warm runners (AIP_RAY_WARM_RUNNERS: a fork per task).

Run: ``.venv/bin/python bench/bench_scheduler.py [--quick] [--ray]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import pct, stop, stop_and_clean, wait_port  # noqa: E402

from ai_platform.client import SchedulerClient, status_name  # noqa: E402
from ai_platform.core.ports import free_port  # noqa: E402

TRIVIAL = "def run(input_path, output_path, params):\n    return {'i': params['i']}\n"
SLEEPER = "import time\n\ndef run(input_path, output_path, params):\n    time.sleep(params['s'])\n    return {}\n"

SEED_APP = '''
"""The seed's task runner, as its README describes it: POST a task, a thread runs the script's run(), GET polls."""
import importlib.util, sys, threading, uuid
from fastapi import FastAPI

app, tasks = FastAPI(), {}

def execute(task_id, spec):
    try:
        loader = importlib.util.spec_from_file_location("task_script", spec["script"])
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        tasks[task_id].update(status="completed", result=module.run(spec.get("input", ""), spec.get("output", ""),
                                                                     spec.get("params", {})))
    except Exception as exc:
        tasks[task_id].update(status="failed", error=str(exc))

@app.post("/api/v1/tasks", status_code=201)
def submit(spec: dict):
    task_id = uuid.uuid4().hex
    tasks[task_id] = {"id": task_id, "status": "running"}
    threading.Thread(target=execute, args=(task_id, spec), daemon=True).start()
    return tasks[task_id]

@app.get("/api/v1/tasks/{task_id}")
def get(task_id: str):
    return tasks[task_id]
'''


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> tuple[float, float]:
    """Seconds of CPU of ``pid`` itself, and of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, (int(fields[13]) + int(fields[14])) / CLOCK_TICKS


def machine_cpu() -> tuple[float, float]:
    """Seconds this machine's CPUs sat idle, and seconds of CPU time passed (all CPUs together)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return ticks[3] / CLOCK_TICKS, sum(ticks) / CLOCK_TICKS


def fork_server_of(pid: int) -> int | None:
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
                    and b"ai_platform.sdk.forkserver" in (entry / "cmdline").read_bytes()):
                return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


class CpuShares:
    """CPU per task by process over a stretch of the run: the scheduler, its fork server, the task processes
    (reaped by the fork server, or by the scheduler without one), this process (the clients), and idle."""

    def __init__(self, scheduler: int, name: str = "scheduler") -> None:
        self.scheduler, self.fork_server, self.name = scheduler, fork_server_of(scheduler), name
        self.start = self._now()

    def _now(self) -> list[float]:
        scheduler, reaped = process_cpu(self.scheduler)
        server, tasks = process_cpu(self.fork_server) if self.fork_server else (0.0, reaped)
        clients = os.times()
        idle, total = machine_cpu()
        return [scheduler, server, tasks, clients.user + clients.system, idle, total]

    def per_task_ms(self, tasks: int) -> dict[str, float]:
        names = [self.name, "fork server", "task processes", "clients", "idle", "all"]
        shares = {n: (b - a) * 1000 / tasks for n, a, b in zip(names, self.start, self._now(), strict=True)}
        if not self.fork_server:
            del shares["fork server"]
        return shares


class Figures:
    def __init__(self) -> None:
        self.submit_ms: list[float] = []
        self.done_ms: list[float] = []
        self.lock = threading.Lock()

    def add(self, submit: float, done: float) -> None:
        with self.lock:
            self.submit_ms.append(submit * 1000)
            self.done_ms.append(done * 1000)


def closed_loops(clients: int, per_client: int,
                 one: Callable[[int, dict], tuple[float, float]]) -> tuple[Figures, float]:
    """``clients`` threads each running ``one(i)`` ``per_client`` times back to back; figures and wall time."""
    figures = Figures()

    def loop(offset: int) -> None:
        state = {}
        for i in range(offset, offset + per_client):
            figures.add(*one(i, state))
        if "close" in state:
            state["close"]()

    threads = [threading.Thread(target=loop, args=(k * per_client,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return figures, time.perf_counter() - started


def ours(work: Path, env: dict[str, str], trivial: int, sleepers: int, sleep_s: float, backend: list[str]) \
        -> dict:
    addr = f"127.0.0.1:{free_port()}"
    service = subprocess.Popen([sys.executable, "-m", "scheduler_svc", "--addr", addr, "--max-parallel", "2",
                                "--metrics-addr", f"127.0.0.1:{free_port()}",
                                "--storage-addr", f"127.0.0.1:{free_port()}", *backend], env=env, cwd=work)
    try:
        wait_port(int(addr.rsplit(":", 1)[1]))
        client = SchedulerClient(addr)
        client.wait(client.submit("warm-up", "trivial.py", params={"i": -1}).id, 120)
        shares = CpuShares(service.pid)

        def one(i: int, state: dict) -> tuple[float, float]:
            if "client" not in state:
                state["client"] = SchedulerClient(addr)
                state["close"] = state["client"].close
            started = time.perf_counter()
            task = state["client"].submit("trivial", "trivial.py", params={"i": i})
            submitted = time.perf_counter()
            done = state["client"].wait(task.id, 120)
            assert status_name(done) == "completed", (status_name(done), done.error.message)
            return submitted - started, time.perf_counter() - started

        figures, wall = closed_loops(2, trivial // 2, one)
        cpu = shares.per_task_ms(trivial)
        started = time.perf_counter()
        ids = [client.submit("sleeper", "sleeper.py", params={"s": sleep_s}).id for _ in range(sleepers)]
        for task_id in ids:
            done = client.wait(task_id, 600)
            assert status_name(done) == "completed", (status_name(done), done.error.message)
        client.close()
        return {"figures": figures, "wall": wall, "sleepers": time.perf_counter() - started, "cpu": cpu}
    finally:
        stop([service])


def seed_style(work: Path, trivial: int, sleepers: int, sleep_s: float) -> dict:
    import httpx

    (work / "seed_app.py").write_text(SEED_APP)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "seed_app:app", "--port", str(port),
                               "--log-level", "warning"], cwd=work)
    url = f"http://127.0.0.1:{port}/api/v1/tasks"
    try:
        wait_port(port)

        def run_one(http: httpx.Client, script: str, params: dict) -> tuple[float, float]:
            started = time.perf_counter()
            task = http.post(url, json={"script": str(work / script), "params": params}).json()
            submitted = time.perf_counter()
            while (task := http.get(f"{url}/{task['id']}").json())["status"] == "running":
                pass  # the seed's clients poll
            assert task["status"] == "completed", task
            return submitted - started, time.perf_counter() - started

        def one(i: int, state: dict) -> tuple[float, float]:
            if "http" not in state:
                state["http"] = httpx.Client(timeout=60)
                state["close"] = state["http"].close
            return run_one(state["http"], "trivial.py", {"i": i})

        shares = CpuShares(server.pid, "server (runs the tasks)")
        figures, wall = closed_loops(2, trivial // 2, one)
        cpu = shares.per_task_ms(trivial)
        with httpx.Client(timeout=60) as http:
            started = time.perf_counter()
            ids = [http.post(url, json={"script": str(work / "sleeper.py"), "params": {"s": sleep_s}}).json()["id"]
                   for _ in range(sleepers)]
            for task_id in ids:
                while http.get(f"{url}/{task_id}").json()["status"] == "running":
                    time.sleep(0.01)
        return {"figures": figures, "wall": wall, "sleepers": time.perf_counter() - started, "cpu": cpu}
    finally:
        stop([server])


def show(title: str, result: dict, trivial: int, sleepers: int, sleep_s: float, ideal: float) -> None:
    figures = result["figures"]
    print(f"{title}")
    print(f"  {trivial} trivial tasks, 2 closed-loop clients: {trivial / result['wall']:7.1f} tasks/s   "
          f"submit p50 {pct(figures.submit_ms, 50):6.1f} ms   submit->completed p50 "
          f"{pct(figures.done_ms, 50):6.1f} ms  p99 {pct(figures.done_ms, 99):6.1f} ms  "
          f"mean {statistics.mean(figures.done_ms):6.1f} ms")
    print(f"  {sleepers} x {sleep_s:g} s sleepers at once: {result['sleepers']:6.2f} s "
          f"({(result['sleepers'] / ideal - 1) * 100:+.1f}% over the ideal {ideal:g} s with 2 slots)")
    if "cpu" in result:
        print("  CPU per trivial task, ms: " + ", ".join(f"{name} {ms:.2f}" for name, ms in result["cpu"].items())
              + f" (of {os.cpu_count()} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few tasks of each kind (the test suite's check)")
    parser.add_argument("--ray", action="store_true", help="also the Ray backend (a Ray head on this machine)")
    args = parser.parse_args()
    trivial, sleepers, sleep_s = (20, 4, 0.2) if args.quick else (200, 20, 1.0)
    ideal = sleepers * sleep_s / 2
    work = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    (work / "trivial.py").write_text(TRIVIAL)
    (work / "sleeper.py").write_text(SLEEPER)
    env = {**os.environ, "AIP_HOME": str(work / ".ai_platform"), "PYTHONPATH": str(ROOT), "AIP_LOG_LEVEL": "warning"}
    env.pop("AIP_TOKEN", None)
    try:
        warm = ours(work, env, trivial, sleepers, sleep_s, [])
        cold = ours(work, {**env, "AIP_WARM_START": "false"}, trivial, sleepers, sleep_s, [])
        seed = seed_style(work, trivial, sleepers, sleep_s)
        print("tasks on 2 slots, side by side (this machine: "
              f"{os.cpu_count()} CPUs)")
        show("ours, local backend, warm start (a fork per task)", warm, trivial, sleepers, sleep_s, ideal)
        show("ours, local backend, a new interpreter per task", cold, trivial, sleepers, sleep_s, ideal)
        show("the seed's way: run() in a thread of the server, clients poll", seed, trivial, sleepers, sleep_s, ideal)
        p50, rate = pct(warm["figures"].done_ms, 50), trivial / warm["wall"]
        over = (warm["sleepers"] / ideal - 1) * 100
        print(f"goals (warm start): submit->completed p50 {p50:.1f} ms (<= 10: {'met' if p50 <= 10 else 'NOT met'}), "
              f"{rate:.0f} tasks/s (>= 200: {'met' if rate >= 200 else 'NOT met'}), sleepers {over:+.1f}% "
              f"(<= 3%: {'met' if over <= 3 else 'NOT met'})")
        if args.ray:
            ray_figures(work, env, trivial, sleepers, sleep_s, args.quick)
    finally:
        stop_and_clean([], work)


def ray_figures(work: Path, env: dict[str, str], trivial: int, sleepers: int, sleep_s: float, quick: bool) -> None:
    from ai_platform.cli.ray_cluster import start_local_head

    # Ray's session folder lies outside the scripts' folder, which each job ships as its working_dir.
    state = Path(tempfile.mkdtemp(prefix="bench-scheduler-ray-"))
    head = start_local_head(num_cpus=2, temp_dir=str(state))
    ray_env = {**env, "RAY_ADDRESS": head.dashboard_url}
    backend = ["--backend", "ray", "--ray-address", head.dashboard_url]
    try:
        jobs, job_sleepers = (4, 2) if quick else (10, 4)
        result = ours(work, ray_env, jobs, job_sleepers, sleep_s, backend)
        result.pop("cpu")  # the tasks run in Ray's processes, not the scheduler's children
        show("ours, Ray backend, a Ray Job per task", result, jobs, job_sleepers, sleep_s, job_sleepers * sleep_s / 2)
        # Last: the runners hold the cluster's 2 CPUs until the head stops.
        warm = ours(work, ray_env, trivial, sleepers, sleep_s,
                    [*backend, "--ray-warm-runners", "2", "--ray-cluster-address", head.gcs_address])
        warm.pop("cpu")
        show("ours, Ray backend, 2 warm runners (a fork per task)", warm, trivial, sleepers, sleep_s,
             sleepers * sleep_s / 2)
        print(f"Ray, warm runners against a Job per task: {(trivial / warm['wall']) / (jobs / result['wall']):.0f}x "
              f"the tasks/s")
    finally:
        head.stop()
        stop_and_clean([], state)

if __name__ == "__main__":
    main()
