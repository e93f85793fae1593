"""A soak under faults: mixed load on a whole platform for a while (60 s by default) while faults are injected, then
an audit. Prints requests and errors by code per kind of call, lost writes (an acknowledged write not found at the
version it was answered with) and wedged tasks (a task not ended a grace period after the load stopped); both must
be 0. The baseline is the same load with no faults, run first for a third of the time.

Load: writers (create, append, overwrite racing on a few tables), task submitters (trivial tasks, some cancelled),
predictors (REST predict). Faults, in turn: storage and inference killed (SIGKILL) and restarted, a task's log folder
removed, a dataset deleted while it is written, a stream of garbage bytes at each service.

Run: ``.venv/bin/python bench/bench_faults.py [--seconds 60] [--quick]``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import httpx  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402

from ai_platform.client import StorageClient  # noqa: E402
from ai_platform.sdk.models import save_model  # noqa: E402
from mnist.model import MnistCNN  # noqa: E402
from tests.conftest import start_platform  # noqa: E402

TRIVIAL = "def run(input_path, output_path, params):\n    return {'i': params['i']}\n"
NAP = "import time\n\ndef run(input_path, output_path, params):\n    time.sleep(params['s'])\n    return {}\n"
TABLES = ("soak_a", "soak_b", "soak_c")


class Soak:
    """The load, its counts, and what it must find again at the end."""

    def __init__(self, platform, seed: int) -> None:  # noqa: ANN001 - tests.conftest.Platform
        self.platform, self.rng = platform, random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.calls: Counter = Counter()  # (kind, outcome)
        self.acknowledged: list[tuple[str, str, int, int]] = []  # (table, mode, writer, version)
        self.tasks: list[str] = []
        self.writer = 0

    def count(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.calls[(kind, outcome)] += 1

    def write_loop(self) -> None:
        while not self.stop.is_set():
            lake = StorageClient(self.platform.storage.addr)
            try:
                while not self.stop.is_set():
                    with self.lock:
                        self.writer += 1
                        writer = self.writer
                    table, mode = self.rng.choice(TABLES), self.rng.choice(["create", "append", "append",
                                                                            "overwrite"])
                    data = pa.table({"writer": pa.array([writer] * self.rng.randint(1, 200), pa.int64())})
                    try:
                        version = lake.write(table, data, mode=mode).version
                        self.count("write", "OK")
                        with self.lock:
                            self.acknowledged.append((table, mode, writer, version))
                    except grpc.RpcError as exc:
                        self.count("write", exc.code().name)
                        if exc.code() == grpc.StatusCode.UNAVAILABLE:
                            time.sleep(0.1)  # a client backs off while the service restarts
            finally:
                lake.close()

    def task_loop(self, http: httpx.Client) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            script = "nap.py" if i % 5 == 0 else "trivial.py"
            params = {"s": 2} if script == "nap.py" else {"i": i}
            try:
                answer = http.post("/api/v1/tasks", json={"name": "soak", "script": script, "params": params})
                self.count("submit", str(answer.status_code))
                if answer.status_code == 201:
                    with self.lock:
                        self.tasks.append(answer.json()["id"])
                    if script == "nap.py" and i % 10 == 0:
                        self.count("cancel", str(http.post(f"/api/v1/tasks/{answer.json()['id']}/cancel")
                                                 .status_code))
            except httpx.HTTPError as exc:
                self.count("submit", type(exc).__name__)
            time.sleep(0.05)

    def predict_loop(self, http: httpx.Client) -> None:
        image = {"image": [0.0] * 784}
        while not self.stop.is_set():
            try:
                self.count("predict", str(http.post("/api/v1/models/soak/predict", json=image).status_code))
            except httpx.HTTPError as exc:
                self.count("predict", type(exc).__name__)

    def audit(self, http: httpx.Client, grace_s: float = 60) -> tuple[int, int]:
        """Lost writes and wedged tasks."""
        lost = 0
        lake = StorageClient(self.platform.storage.addr)
        try:
            for table, mode, writer, version in self.acknowledged:
                try:
                    at = lake.read(table, version=version)
                except grpc.RpcError:
                    lost += 1
                    continue
                mine = at.filter(pc.equal(at["writer"], writer)).num_rows
                lost += mine == 0 or (mode != "append" and mine != at.num_rows)
        finally:
            lake.close()
        deadline, open_tasks = time.monotonic() + grace_s, set(self.tasks)
        while open_tasks and time.monotonic() < deadline:
            for task_id in list(open_tasks):
                status = http.get(f"/api/v1/tasks/{task_id}").json().get("status")
                if status in ("completed", "failed", "cancelled"):
                    open_tasks.discard(task_id)
            time.sleep(0.5)
        return lost, len(open_tasks)


def inject_faults(soak: Soak, platform) -> Counter:  # noqa: ANN001
    """One fault after another until the load stops; how many of each."""
    injected: Counter = Counter()
    faults = ["kill storage", "kill inference", "remove logs", "garbage"]
    turn = 0
    while not soak.stop.wait(3.0):
        fault = faults[turn % len(faults)]
        turn += 1
        if fault.startswith("kill"):
            service = getattr(platform, fault.split()[1])
            service.stop(sig=9)
            service.proc = None
            service.start(timeout=60)
        elif fault == "remove logs":
            shutil.rmtree(platform.home / "logs", ignore_errors=True)
        else:
            for service in (platform.storage, platform.scheduler, platform.inference):
                with grpc.insecure_channel(service.addr) as channel:
                    call = channel.unary_unary("/aiplatform.v1.StorageService/GetTable",
                                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
                    try:
                        call(b"\xff\xff\xff\xff\x0f", timeout=5)
                    except grpc.RpcError as exc:
                        soak.count("garbage", exc.code().name)
        injected[fault] += 1
    return injected


def run(seconds: float, faults: bool, seed: int) -> tuple[Soak, Counter, int, int]:
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    (work / "trivial.py").write_text(TRIVIAL)
    (work / "nap.py").write_text(NAP)
    torch.manual_seed(0)
    save_model(MnistCNN().eval(), str(work / ".ai_platform/models/soak.lance"), torch.zeros(1, 1, 28, 28),
               labels=list(range(10)))
    platform = start_platform(work)
    try:
        soak = Soak(platform, seed)
        with httpx.Client(base_url=platform.url, timeout=60) as http:
            workers = [threading.Thread(target=soak.write_loop) for _ in range(3)]
            workers += [threading.Thread(target=soak.task_loop, args=(http,))]
            workers += [threading.Thread(target=soak.predict_loop, args=(http,)) for _ in range(2)]
            for worker in workers:
                worker.start()
            injected: Counter = Counter()
            injector = threading.Thread(target=lambda: injected.update(inject_faults(soak, platform))) \
                if faults else None
            if injector:
                injector.start()
            time.sleep(seconds)
            soak.stop.set()
            for worker in workers:
                worker.join(120)
            if injector:
                injector.join(120)
            lost, wedged = soak.audit(http)
        return soak, injected, lost, wedged
    finally:
        platform.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(title: str, soak: Soak, injected: Counter, lost: int, wedged: int, seconds: float) -> None:
    print(f"{title} ({seconds:g} s)" + (f", faults injected: {dict(injected)}" if injected else ""))
    for kind in sorted({k for k, _ in soak.calls}):
        outcomes = {o: n for (k, o), n in soak.calls.items() if k == kind}
        total = sum(outcomes.values())
        print(f"  {kind:8} {total:6} calls ({total / seconds:7.1f}/s)  {dict(sorted(outcomes.items()))}")
    print(f"  acknowledged writes {len(soak.acknowledged)}, lost writes {lost}; tasks {len(soak.tasks)}, "
          f"wedged tasks {wedged}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs under faults")
    parser.add_argument("--quick", action="store_true", help="a few seconds each (the test suite's check)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seconds = 6.0 if args.quick else args.seconds
    baseline = run(seconds / 3, False, args.seed)
    report("baseline: the same load, no faults", *baseline, seconds / 3)
    soaked = run(seconds, True, args.seed)
    report("under faults", *soaked, seconds)
    if soaked[2] or soaked[3] or baseline[2] or baseline[3]:
        sys.exit(1)


if __name__ == "__main__":
    main()
