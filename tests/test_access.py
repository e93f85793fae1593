"""Every REST route and every gRPC method answers the same with the platform's token as without one: two platforms,
one with AIP_TOKEN set on every service, one open, each given the same valid call of every operation in the OpenAPI
document and every method in the services' descriptors (tests/calls.py), streams read to their end."""

from __future__ import annotations

import time

import grpc
import httpx
import pyarrow as pa
import pytest

from ai_platform.core.wire import bearer
from ai_platform.protos.aiplatform.v1 import access_pb2, pipelines_pb2, scheduler_pb2, storage_pb2
from ai_platform.protos.inference import grpc_service_pb2
from tests.calls import (
    GRPC_CALLS,
    OPEN_DIFFERS,
    REST_CALLS,
    Prepared,
    arrow_body,
    grpc_call,
    prepare,
    prepare_pipelines,
    rest_status,
    start_slow_runs,
)
from tests.conftest import start_platform
from tests.task_scripts import write_scripts

TOKEN = "access-t0ken"
DESCRIPTORS = {"storage": storage_pb2.DESCRIPTOR.services_by_name["StorageService"],
               "scheduler": scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
               "inference": grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
               "access": access_pb2.DESCRIPTOR.services_by_name["AccessService"],
               "pipelines": pipelines_pb2.DESCRIPTOR.services_by_name["PipelineService"]}


def started(tmp_path_factory, name: str, token: str):
    project = tmp_path_factory.mktemp(name)
    write_scripts(project / "scripts")
    prepare(project)
    platform = start_platform(project, token=token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ready = Prepared(arrow=arrow_body(pa.table({"x": [1.0, 2.0, 3.0]})))
    with httpx.Client(base_url=platform.url, headers=headers, timeout=60) as http:
        prepare_pipelines(http, ready)
        for name_, params in (("done", {}), ("sleeper", {"seconds": 600}), ("grpc_sleeper", {"seconds": 600})):
            script = "scripts/trivial.py" if name_ == "done" else "scripts/nap.py"
            task = http.post("/api/v1/tasks", json={"name": name_, "script": script, "params": params}).json()
            ready.names[name_] = task["id"]
        ready.task_id = ready.names["done"]
        deadline = time.time() + 60
        while http.get(f"/api/v1/tasks/{ready.task_id}").json()["status"] != "completed":
            assert time.time() < deadline
            time.sleep(0.2)
        start_slow_runs(http, ready)
    return platform, headers, ready


@pytest.fixture(scope="module")
def platforms(tmp_path_factory):
    running = []
    try:
        for name, token in (("open", ""), ("token", TOKEN)):
            running.append((name, *started(tmp_path_factory, f"access-{name}", token)))
        yield running
    finally:
        for _, platform, _, _ in running:
            platform.stop()


def test_the_call_tables_cover_every_route_and_method(platforms):
    _, platform, headers, _ = platforms[0]
    document = httpx.get(f"{platform.url}/openapi.json", headers=headers, timeout=30).json()
    routes = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert routes == {call.key for call in REST_CALLS}, "a route without a call here, or a call of no route"
    methods = {f"/{d.full_name}/{m.name}" for d in DESCRIPTORS.values() for m in d.methods}
    assert methods == {call.method for call in GRPC_CALLS}


def test_every_route_answers_the_same_with_the_token_as_without(platforms):
    answers: dict[str, list] = {}
    for mode, platform, headers, ready in platforms:
        with httpx.Client(base_url=platform.url, headers=headers, timeout=60) as http:
            for call in REST_CALLS:
                request = call.build(ready)
                status, problem = rest_status(http.request(**request))
                if mode == "open" and OPEN_DIFFERS.get(call.key) == status:
                    status, problem = 201, ""  # as expected: an open platform signs no tokens
                answers.setdefault(f"{request['method']} {request['url']} {request.get('params', '')}", []).append(
                    (mode, status, problem))
    differing = {call: seen for call, seen in answers.items() if len({status for _, status, _ in seen}) > 1
                 or any(status >= 500 or problem.startswith("event: error") for _, status, problem in seen)}
    assert differing == {}, "routes that answer otherwise with the token, or fail"
    failing = {call: seen for call, seen in answers.items() if any(status >= 400 for _, status, _ in seen)}
    assert failing == {}, "every call in the table is a valid one"


def test_every_grpc_method_answers_the_same_with_the_token_as_without(platforms):
    answers: dict[str, list] = {}
    for mode, platform, headers, ready in platforms:
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        addrs = {"storage": platform.storage.addr, "scheduler": platform.scheduler.addr,
                 "inference": platform.inference.addr}
        channels = {name: grpc.insecure_channel(addr) for name, addr in addrs.items()}
        try:
            for call in GRPC_CALLS:
                code, message = grpc_call(channels[call.service], call, ready, bearer(token) or None)
                name = "OK" if mode == "open" and OPEN_DIFFERS.get(call.method) == code.name else code.name
                answers.setdefault(call.method, []).append((mode, name, message[:200]))
        finally:
            for channel in channels.values():
                channel.close()
    differing = {m: seen for m, seen in answers.items() if len({code for _, code, _ in seen}) > 1}
    assert differing == {}
    expected_refusals = {"ReportTask": "PERMISSION_DENIED", **{name: "UNIMPLEMENTED" for name in (
        "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting",
        "LogSettings")}}
    for method, seen in answers.items():
        assert seen[0][1] == expected_refusals.get(method.rsplit("/", 1)[1], "OK"), (method, seen)


def test_without_the_token_only_the_open_routes_answer(platforms):
    _, platform, _, ready = platforms[1]
    open_routes = {("GET", "/healthz"), ("GET", "/metrics")}
    with httpx.Client(base_url=platform.url, timeout=60) as anonymous:
        for call in REST_CALLS:
            status, _ = rest_status(anonymous.request(**call.build(ready)))
            assert status == (200 if call.key in open_routes else 401), call.key
        for path in ("/", "/dashboard.html", "/digits.js", "/vendor/uPlot.iife.min.js", "/vendor/uPlot.min.css",
                     "/docs", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, f"{path} carries no data and loads without the token"
    with grpc.insecure_channel(platform.storage.addr) as channel:
        call = next(c for c in GRPC_CALLS if c.method.endswith("/ListTables"))
        assert grpc_call(channel, call, ready)[0] == grpc.StatusCode.UNAUTHENTICATED
