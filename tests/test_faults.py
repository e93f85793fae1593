"""Faults against real processes, each a way the platform could lose data or wedge: writers that race, full disks,
plumbing that breaks under a task, streams fed garbage, hostile sizes, paging under load, slow clients. Every case
asserts both the answer (a precise status naming the problem) and that nothing committed is lost."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from ai_platform.client import SchedulerClient, StorageClient
from ai_platform.core import arrow_ipc
from ai_platform.protos.aiplatform.v1 import storage_pb2 as storage_pb
from ai_platform.sdk.models import save_model
from mnist.model import MnistCNN
from tests.calls import arrow_body
from tests.conftest import ServiceProcess, start_platform
from tests.task_scripts import write_scripts


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("faults")
    write_scripts(project / "scripts")
    running = start_platform(project, gateway_env={"AIP_HEADER_TIMEOUT_S": "2", "AIP_KEEP_ALIVE_S": "2",
                                                   "AIP_MAX_STREAMS_PER_CLIENT": "3"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def lake(platform):
    client = StorageClient(platform.storage.addr)
    yield client
    client.close()


def rows_of(writer: int, count: int) -> pa.Table:
    return pa.table({"writer": [writer] * count, "n": list(range(count))})


@pytest.mark.parametrize("round_", range(3))
def test_racing_writers_get_exact_answers_and_every_acknowledged_write_is_there(lake, round_):
    """Creates race creates; then appends and overwrites race each other. Each outcome is counted; none may be an
    error but a create's ALREADY_EXISTS, and each acknowledged write is found at the version it was answered with."""
    rng = random.Random(round_)
    name = f"raced{round_}"
    outcomes: list[tuple[str, int, int | str]] = []
    lock = threading.Lock()

    def write(mode: str, writer: int, gate: threading.Barrier) -> None:
        data = rows_of(writer, rng.randint(1, 50))
        gate.wait()
        try:
            version: int | str = lake.write(name, data, mode=mode).version
        except grpc.RpcError as exc:
            version = exc.code().name
        with lock:
            outcomes.append((mode, writer, version))

    def race(modes: list[str], first_writer: int) -> None:
        gate = threading.Barrier(len(modes))
        threads = [threading.Thread(target=write, args=(mode, first_writer + i, gate)) for i, mode in enumerate(modes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    race(["create"] * 6, 0)
    creates = Counter(str(v) if isinstance(v, str) else "ok" for m, _, v in outcomes if m == "create")
    assert creates == {"ok": 1, "ALREADY_EXISTS": 5}, creates
    mixed = ["append"] * 8 + ["overwrite"] * 4
    rng.shuffle(mixed)
    race(mixed, 100)
    counted = Counter((mode, "ok" if isinstance(v, int) else v) for mode, _, v in outcomes)
    assert counted == {("create", "ok"): 1, ("create", "ALREADY_EXISTS"): 5, ("append", "ok"): 8,
                       ("overwrite", "ok"): 4}, counted
    acknowledged = [(mode, writer, v) for mode, writer, v in outcomes if isinstance(v, int)]
    versions = [v for _, _, v in acknowledged]
    assert len(versions) == len(set(versions)) == 13, f"each commit has its own version: {sorted(versions)}"
    for mode, writer, version in acknowledged:
        at = lake.read(name, version=version)
        mine = at.filter(pc.equal(at["writer"], writer)).num_rows
        assert mine > 0, f"{mode} by {writer} answered version {version}, which lacks its rows"
        if mode in ("create", "overwrite"):
            assert mine == at.num_rows, f"{mode} version {version} holds only its own rows"


# -- limits said up front --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http(platform):
    with httpx.Client(base_url=platform.url, timeout=60) as client:
        yield client


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"in": value}
    return value


@pytest.mark.parametrize(("body", "said"), [
    ({"params": {"blob": "x" * (300 * 1024)}}, "the limit is 262,144"),
    ({"params": nested(34)}, "deeper than 32 levels"),
    ({"script": "scripts/" + "a" * 5000 + ".py"}, "the limit is 1,024"),
    ({"script": "scripts/" + "a" * 300 + ".py"}, "path component of 303 bytes"),
    ({"input": "x" * 5000}, "input is 5,000 characters"),
    ({"timeout_s": 1e9}, "over the limit"),
    ({"name": "n" * 129}, "1-128 characters"),
])
def test_sizes_past_a_limit_are_refused_at_submit_naming_it(http, platform, body, said):
    answer = http.post("/api/v1/tasks", json={"name": "big", "script": "scripts/trivial.py", **body})
    assert answer.status_code == 400 and said in answer.json()["error"]["message"], answer.text
    tasks = SchedulerClient(platform.scheduler.addr)
    try:
        with pytest.raises(grpc.RpcError) as refused:  # the same over gRPC, for clients that skip the gateway
            tasks.submit(body.get("name", "big"), body.get("script", "scripts/trivial.py"), body.get("input", ""),
                         params=body.get("params", {}), timeout_s=body.get("timeout_s", 0))
    finally:
        tasks.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()


def test_params_under_the_limit_of_any_size_reach_the_script(http):
    params = {"blob": "x" * (200 * 1024), "deep": nested(30)}
    task = http.post("/api/v1/tasks", json={"name": "big", "script": "scripts/trivial.py", "params": params})
    assert task.status_code == 201, task.text
    done = wait_task(http, task.json()["id"])
    assert done["status"] == "completed", done["error"]
    assert done["result"]["params"] == params, "a spec far past the 128 KiB an environment variable holds arrives"


@pytest.mark.parametrize("pixels", [[True] * 784, ["0.5"] * 784, [None] * 784, [0.0] * 783 + [False]])
def test_predict_refuses_anything_but_numbers(http, pixels):
    answer = http.post("/api/v1/models/any/predict", json={"image": pixels})
    assert answer.status_code == 400 and "numbers only" in answer.json()["error"]["message"]
    infer = http.post("/v2/models/any/infer", json={"inputs": [{"name": "input", "shape": [1, 784],
                                                                 "datatype": "FP32", "data": pixels}]})
    assert infer.status_code == 400 and "numbers only" in infer.json()["error"]


def wait_task(http: httpx.Client, task_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = http.get(f"/api/v1/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return task
        time.sleep(0.1)


# -- paging ----------------------------------------------------------------------------------------------------------

def test_paging_while_tasks_are_submitted_never_repeats_or_skips(http, platform):
    for _ in range(60):
        assert http.post("/api/v1/tasks", json={"name": "paged", "script": "scripts/trivial.py"}).status_code == 201
    before = {t["id"] for t in list_all(http)}
    stop = threading.Event()

    def submit_more() -> None:
        while not stop.is_set():
            http.post("/api/v1/tasks", json={"name": "paged", "script": "scripts/trivial.py"})

    submitter = threading.Thread(target=submit_more)
    submitter.start()
    try:
        seen = [t["id"] for t in list_all(http, limit=7, pause=0.05)]
    finally:
        stop.set()
        submitter.join(60)
    assert len(seen) == len(set(seen)), "no task twice"
    assert before <= set(seen), "every task that existed when paging began is on some page"
    bad = http.get("/api/v1/tasks", params={"page_token": "b2Zmc2V0OjEw"})  # an old offset token
    assert bad.status_code == 400 and "page_token" in bad.json()["error"]["message"]


def list_all(http: httpx.Client, limit: int = 1000, pause: float = 0.0) -> list[dict]:
    rows, token = [], ""
    while True:
        answer = http.get("/api/v1/tasks", params={"limit": limit, **({"page_token": token} if token else {})})
        assert answer.status_code == 200, answer.text
        rows += answer.json()
        token = answer.headers.get("X-Next-Page-Token", "")
        if not token:
            return rows
        time.sleep(pause)


# -- malformed gRPC, and streams that end ----------------------------------------------------------------------------

GARBAGE = b"\xff\xff\xff\xff\x0f"  # no protobuf message decodes from this


def raw_call(addr: str, method: str, payload: bytes, kind: str = "unary_unary", timeout: float = 20):
    with grpc.insecure_channel(addr) as channel:
        call = getattr(channel, kind)(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        if kind == "stream_stream":
            return list(call(iter(payload), timeout=timeout))
        if kind == "stream_unary":
            return call(iter(payload), timeout=timeout)
        return call(payload, timeout=timeout)


@pytest.mark.parametrize(("service", "method", "message"), [
    ("storage", "/aiplatform.v1.StorageService/GetTable", "aiplatform.v1.GetTableRequest"),
    ("scheduler", "/aiplatform.v1.SchedulerService/SubmitTask", "aiplatform.v1.SubmitTaskRequest"),
    ("inference", "/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
])
def test_undecodable_requests_are_invalid_argument_naming_the_message(platform, service, method, message):
    with pytest.raises(grpc.RpcError) as refused:
        raw_call(getattr(platform, service).addr, method, GARBAGE)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the request is not a valid {message}" in refused.value.details()


def test_storage_refuses_unknown_fields_in_calls_and_in_write_streams(platform):
    known = storage_pb.GetTableRequest(kind=storage_pb.DATASET, name="x").SerializeToString()
    with pytest.raises(grpc.RpcError) as refused:
        raw_call(platform.storage.addr, "/aiplatform.v1.StorageService/GetTable", known + b"\xa0\x06\x01")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "[100]" in refused.value.details()
    header = storage_pb.WriteTableRequest(header=storage_pb.WriteHeader(kind=storage_pb.DATASET, name="unknown"))
    chunk = storage_pb.WriteTableRequest(chunk=storage_pb.ArrowChunk(arrow_ipc=arrow_ipc.encode(
        pa.schema([("x", pa.int64())]), [])))
    for second, said in ((chunk.SerializeToString() + b"\xa0\x06\x01", "message 2 of the stream"),
                         (GARBAGE, "message 2 of the stream is not a valid aiplatform.v1.WriteTableRequest")):
        with pytest.raises(grpc.RpcError) as refused:
            raw_call(platform.storage.addr, "/aiplatform.v1.StorageService/WriteTable",
                     [header.SerializeToString(), second], "stream_unary")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and said in refused.value.details()
    lake = StorageClient(platform.storage.addr)
    try:
        assert "unknown" not in [t.name for t in lake.list()], "nothing was written"
    finally:
        lake.close()


def test_a_model_stream_with_an_undecodable_message_ends_at_once(platform):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        raw_call(platform.inference.addr, "/inference.GRPCInferenceService/ModelStreamInfer", [GARBAGE],
                 "stream_stream", timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 1 of the stream is not a valid inference.ModelInferRequest" in refused.value.details()
    assert time.monotonic() - started < 10, "it ends, rather than waiting for the client's deadline"


def test_read_and_follow_streams_end_with_a_status_on_bad_input(platform):
    lake = StorageClient(platform.storage.addr)
    tasks = SchedulerClient(platform.scheduler.addr)
    try:
        for stream in (lambda: list(lake.read_batches("nope")), lambda: list(tasks.watch("nope")),
                       lambda: list(tasks.metrics("nope", follow=True)), lambda: list(tasks.logs("nope", follow=True))):
            with pytest.raises(grpc.RpcError) as refused:
                stream()
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        lake.close()
        tasks.close()


def test_followed_streams_end_when_the_scheduler_stops(tmp_path_factory, platform):
    project = tmp_path_factory.mktemp("stopping")
    write_scripts(project / "scripts")
    scheduler = ServiceProcess("scheduler_svc", project / ".ai_platform", cwd=project,
                               env={"AIP_STORAGE_ADDR": platform.storage.addr, "AIP_GRACE_S": "2"}).start()
    tasks = SchedulerClient(scheduler.addr)
    try:
        task = tasks.submit("long", "scripts/nap.py", params={"seconds": 300})
        ended: dict[str, object] = {}

        def follow(kind: str, stream) -> None:  # noqa: ANN001 - a call that iterates a server stream
            try:
                for _ in stream():
                    pass
                ended[kind] = "OK"
            except grpc.RpcError as exc:
                ended[kind] = exc.code().name

        followers = [threading.Thread(target=follow, args=(kind, stream)) for kind, stream in (
            ("logs", lambda: tasks.logs(task.id, follow=True)), ("watch", lambda: tasks.watch(task.id)),
            ("metrics", lambda: tasks.metrics(task.id, follow=True)))]
        for thread in followers:
            thread.start()
        time.sleep(1)
        stopped = time.monotonic()
        assert scheduler.stop(timeout=30) == 0
        for thread in followers:
            thread.join(30)
        assert time.monotonic() - stopped < 15, "it stopped within its grace period"
        assert set(ended) == {"logs", "watch", "metrics"}, f"every follower ended: {ended}"
    finally:
        tasks.close()
        scheduler.stop()


# -- connections with limits -----------------------------------------------------------------------------------------

def test_idle_slow_header_and_kept_alive_connections_are_closed(platform):
    host, port = platform.gateway.addr.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    slow = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    for conn in slow:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    kept = socket.create_connection((host, int(port)), timeout=10)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200"), "a whole request is answered"
    started = time.monotonic()
    for _ in range(8):  # the slow ones keep trickling header lines
        time.sleep(0.5)
        for conn in slow:
            with contextlib.suppress(OSError):
                conn.sendall(b"X-Slow: 1\r\n")
    closed = []
    for conn in [*idle, *slow, kept]:
        conn.settimeout(max(10 - (time.monotonic() - started), 0.1))
        try:
            while conn.recv(65536):  # the rest of a response already sent, then the end of the connection
                pass
            closed.append(True)
        except (TimeoutError, ConnectionResetError) as exc:
            closed.append(isinstance(exc, ConnectionResetError))
        conn.close()
    assert all(closed), f"{closed.count(False)} of {len(closed)} connections still open"
    assert httpx.get(f"{platform.url}/healthz", timeout=10).status_code == 200, "the gateway serves on"


def test_a_client_follows_at_most_its_share_of_streams(http, platform):
    task = http.post("/api/v1/tasks", json={"name": "followed", "script": "scripts/nap.py",
                                            "params": {"seconds": 60}}).json()
    with contextlib.ExitStack() as streams:
        for _ in range(3):
            response = streams.enter_context(http.stream("GET", f"/api/v1/tasks/{task['id']}/logs",
                                                         params={"follow": "true"}))
            assert response.status_code == 200
        refused = http.get(f"/api/v1/tasks/{task['id']}/metrics", params={"follow": "true"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "TOO_MANY_REQUESTS"
        polled = http.get(f"/api/v1/tasks/{task['id']}", params={"wait_s": 5})
        assert polled.status_code == 429 and "long polls" in polled.json()["error"]["message"], "a long poll counts"
        assert http.get(f"/api/v1/tasks/{task['id']}").json()["status"] == "running", "a plain read does not"
    time.sleep(0.5)
    with http.stream("GET", f"/api/v1/tasks/{task['id']}/logs", params={"follow": "true"}) as again:
        assert again.status_code == 200, "closed streams are given back"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # three long polls hold the share, as three streams do
        polls = [pool.submit(http.get, f"/api/v1/tasks/{task['id']}", params={"wait_s": 3}) for _ in range(3)]
        time.sleep(1)
        refused = http.get(f"/api/v1/tasks/{task['id']}/logs", params={"follow": "true"})
        assert refused.status_code == 429, refused.text
        assert [p.result().json()["status"] for p in polls] == ["running"] * 3, "each waited, then answered"
    with http.stream("GET", f"/api/v1/tasks/{task['id']}/logs", params={"follow": "true"}) as again:
        assert again.status_code == 200, "ended long polls are given back"
    http.post(f"/api/v1/tasks/{task['id']}/cancel")


# -- full disks, and a task's plumbing breaking under it -------------------------------------------------------------

def mount_tmpfs(path, size: str) -> None:  # noqa: ANN001 - a pathlib.Path
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def fill(directory) -> Path:  # noqa: ANN001 - a pathlib.Path
    """Fill the filesystem under ``directory`` to the last byte; the filler file, to free the space again."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(bytes(size))
    return filler


@pytest.fixture
def small_disks(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk, spool = tmp_path / "disk", tmp_path / "spool"
    mount_tmpfs(disk, "24m")
    mount_tmpfs(spool, "4m")
    yield disk, spool
    for path in (disk, spool):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_507_naming_the_service_reads_go_on_and_it_recovers_without_restarts(small_disks):
    disk, spool = small_disks
    project = disk / "project"
    write_scripts(project / "scripts")
    running = start_platform(project, gateway_env={"TMPDIR": str(spool)})
    try:
        with httpx.Client(base_url=running.url, timeout=60) as api:
            arrow = {"Content-Type": "application/vnd.apache.arrow.stream"}
            body = arrow_body(pa.table({"x": list(range(1000))}))
            assert api.post("/api/v1/datasets/before", content=body, headers=arrow).status_code == 201
            napping = api.post("/api/v1/tasks", json={"name": "nap", "script": "scripts/nap.py",
                                                      "params": {"seconds": 300}}).json()
            # A task whose own output fills the disk: its log stops being written, never the task.
            chatty = api.post("/api/v1/tasks", json={"name": "chatty", "script": "scripts/chatty.py",
                                                     "params": {"mb": 40}}).json()
            done = wait_task(api, chatty["id"], 120)
            assert done["status"] == "completed" and done["result"]["lines"] == 400_000, done
            filler = fill(disk)

            upload = api.post("/api/v1/datasets/after", content=body, headers=arrow)
            assert upload.status_code == 507, upload.text
            assert upload.json()["error"]["code"] == "INSUFFICIENT_STORAGE"
            assert "storage_svc: no space left on device" in upload.json()["error"]["message"]
            submit = api.post("/api/v1/tasks", json={"name": "more", "script": "scripts/trivial.py"})
            assert submit.status_code == 507 and "scheduler_svc: no space left" in submit.json()["error"]["message"]
            cancelled = api.post(f"/api/v1/tasks/{napping['id']}/cancel")
            assert cancelled.status_code == 200 and cancelled.json() == {"status": "cancelled"}, cancelled.text
            for read in ("/api/v1/datasets", "/api/v1/datasets/before/rows", f"/api/v1/tasks/{chatty['id']}",
                         "/api/v1/tasks", f"/api/v1/tasks/{chatty['id']}/logs"):
                assert api.get(read).status_code == 200, read
            assert api.get(f"/api/v1/tasks/{napping['id']}").json()["status"] == "cancelled"
            spool_filler = fill(spool)
            spooled = api.post("/api/v1/datasets/after", content=body, headers=arrow)
            assert spooled.status_code == 507 and "gateway: no space left" in spooled.json()["error"]["message"]

            filler.unlink()
            spool_filler.unlink()
            time.sleep(1.5)  # records the disk refused are saved again within a second
            again = api.post("/api/v1/tasks", json={"name": "more", "script": "scripts/trivial.py"})
            assert again.status_code == 201 and wait_task(api, again.json()["id"])["status"] == "completed"
            assert api.post("/api/v1/datasets/after", content=body, headers=arrow).status_code == 201
            assert api.get("/api/v1/datasets/before").json()["num_rows"] == 1000, "nothing committed was lost"
        running.scheduler.stop()
        running.scheduler.proc = None
        running.scheduler.start()
        with httpx.Client(base_url=running.url, timeout=60) as api:
            for task, status in ((chatty, "completed"), (napping, "cancelled")):
                assert api.get(f"/api/v1/tasks/{task['id']}").json()["status"] == status, "saved once there was room"
    finally:
        running.stop()


def test_a_task_ends_when_its_log_folder_is_removed_under_it(platform, http):
    task = http.post("/api/v1/tasks", json={"name": "chatter", "script": "scripts/chatty.py",
                                            "params": {"mb": 30}}).json()
    logs = platform.home / "logs"
    deadline = time.monotonic() + 10
    while not list(logs.glob(f"{task['id']}.log*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    shutil.rmtree(logs, ignore_errors=True)
    done = wait_task(http, task["id"], 120)
    assert done["status"] == "completed", (done["status"], done.get("error"))
    assert http.post("/api/v1/tasks", json={"name": "next", "script": "scripts/trivial.py"}).status_code == 201


# -- deleted and newer models ----------------------------------------------------------------------------------------

def save_digits_model(platform, name: str, seed: int) -> int:  # noqa: ANN001 - the Platform
    torch.manual_seed(seed)
    return save_model(MnistCNN().eval(), str(platform.home / f"models/{name}.lance"), torch.zeros(1, 1, 28, 28),
                      labels=list(range(10)))["version"]


def test_unversioned_follows_new_versions_and_a_deleted_model_stops_being_served(platform, http):
    image = {"image": [0.0] * 784}
    save_digits_model(platform, "follow", 1)
    assert http.post("/v2/repository/models/follow/load").status_code == 200
    assert http.post("/api/v1/models/follow/predict", json=image).json()["model_version"] == "1"
    newer = save_digits_model(platform, "follow", 2)
    seen, failed, deadline = set(), 0, time.monotonic() + 20
    while "2" not in seen and time.monotonic() < deadline:  # swapped in with no failed request
        answer = http.post("/api/v1/models/follow/predict", json=image)
        failed += answer.status_code != 200
        seen.add(answer.json().get("model_version"))
    assert newer == 2 and "2" in seen and failed == 0, (seen, failed)
    assert http.get("/v2/models/follow/ready").status_code == 200
    assert http.delete("/api/v1/models/follow").status_code == 200
    deadline = time.monotonic() + 5
    while http.get("/v2/models/follow/ready").status_code != 404:
        assert time.monotonic() < deadline, "a deleted model is still ready after the polling interval"
        time.sleep(0.2)
    answer = http.post("/api/v1/models/follow/predict", json=image)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "MODEL_NOT_FOUND"
    assert "follow" not in [m["name"] for m in http.get("/v2/repository/index").json()]


def test_a_log_whose_folder_was_removed_says_what_it_lost_once_it_is_written_again(tmp_path):
    from types import SimpleNamespace

    from scheduler_svc.backends import RunContext
    from scheduler_svc.logs import TaskLog

    folder = tmp_path / "logs"
    context = RunContext(task=SimpleNamespace(id="t"), credential="", log=TaskLog(folder / "t.log", 1000),
                         on_running=print, on_progress=print, on_submitted=print)
    context.write_log(b"first\n")
    shutil.rmtree(folder)
    context.write_log(b"x" * 600 + b"\n")  # past half the cap: the log turns over, in a folder that is gone
    assert context.log_lost == 601
    context.write_log(b"last\n")
    written = (folder / "t.log").read_bytes()
    assert written.startswith(b"last\n")
    assert b"601 bytes of this task's output were lost: LogWriteFailed: no such file or directory" in written
