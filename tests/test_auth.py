"""Service authentication: with AIP_TOKEN set every gRPC service and the gateway want the bearer token (health and
reflection excepted), the services pass it on to each other, task workers use it for their reports, and the
clients send it. Unknown fields are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ai_platform.client import Client
from ai_platform.core import infer_socket
from ai_platform.protos.aiplatform.v1 import scheduler_pb2, scheduler_pb2_grpc, storage_pb2, storage_pb2_grpc
from ai_platform.protos.inference import grpc_service_pb2 as inference_pb
from ai_platform.protos.inference import grpc_service_pb2_grpc
from ai_platform.sdk.models import save_model
from mnist.model import MnistCNN
from tests.conftest import ROOT, ServiceProcess, free_port, socket_error, socket_exchange
from tests.task_scripts import write_scripts

TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("auth-project")
    write_scripts(project / "scripts")
    home = project / ".ai_platform"
    torch.manual_seed(0)
    save_model(MnistCNN().eval(), str(home / "models/cnn.lance"), torch.zeros(1, 1, 28, 28), labels=list(range(10)))
    addrs = {name: f"127.0.0.1:{free_port()}" for name in ("storage", "scheduler", "inference", "gateway")}
    env = {"AIP_TOKEN": TOKEN, "AIP_INFERENCE_SOCKET": str(home / "run" / "inference.sock"),
           **{f"AIP_{n.upper()}_ADDR": a for n, a in addrs.items()}}
    started = []
    try:
        for module, name in (("storage_svc", "storage"), ("scheduler_svc", "scheduler"),
                             ("inference_svc", "inference"), ("gateway", "gateway")):
            extra = {"AIP_METRICS_TOKEN": "m3trics"} if name == "inference" else {}
            started.append(ServiceProcess(module, home, env={**env, **extra}, cwd=project, addr=addrs[name]).start())
        yield {"project": project, "home": home, "env": env, **dict(zip(("storage", "scheduler", "inference",
                                                                         "gateway"), started, strict=True))}
    finally:
        for service in reversed(started):
            service.stop()


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


@pytest.mark.parametrize("metadata", [None, [("authorization", "Bearer wrong")], [("authorization", TOKEN)]])
def test_every_service_refuses_calls_without_the_token(platform, metadata):
    with grpc.insecure_channel(platform["storage"].addr) as channel:
        storage = storage_pb2_grpc.StorageServiceStub(channel)
        code, details = code_of(lambda: storage.DeleteTable(
            storage_pb2.DeleteTableRequest(kind=storage_pb2.MODEL, name="cnn"), metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
    with grpc.insecure_channel(platform["scheduler"].addr) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        code, _ = code_of(lambda: scheduler.SubmitTask(
            scheduler_pb2.SubmitTaskRequest(name="x", script="scripts/trivial.py"), metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(platform["inference"].addr) as channel:
        inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        code, _ = code_of(lambda: inference.RepositoryIndex(inference_pb.RepositoryIndexRequest(), metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert (platform["home"] / "models/cnn.lance").exists(), "the refused delete deleted nothing"


def test_health_and_reflection_stay_open(platform):
    for name in ("storage", "scheduler", "inference"):
        with grpc.insecure_channel(platform[name].addr) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    listing = subprocess.run([sys.executable, "-c", REFLECTION, platform["storage"].addr], capture_output=True,
                             text=True, cwd=ROOT, timeout=60, check=True)
    assert "aiplatform.v1.StorageService" in listing.stdout


REFLECTION = """
import sys, grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    for answer in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
        print([s.name for s in answer.list_services_response.service])
"""


def test_with_the_token_everything_works_and_services_pass_it_on(platform, monkeypatch):
    for key, value in platform["env"].items():
        monkeypatch.setenv(key, value)
    with Client() as client:
        client.write_dataset("points", pa.table({"x": [1.0, 2.0, 3.0]}))
        # The scheduler resolves the input through storage (passing the token); the worker reports with it.
        task = client.submit("auth-progress", "scripts/progress.py", "datasets/points", "",
                             {"steps": 2, "pause": 0.1})
        done = client.wait(task["id"], timeout=60)
        assert done["status"] == "completed", done["error"]
        assert done["progress"]["fraction"] == 1.0
        client.deploy("cnn")  # inference reads the model's URI from storage with the token
        scores = client.predict("cnn", np.zeros((2, 1, 28, 28), np.float32))
        assert scores.shape == (2, 10)
    url = f"http://{platform['gateway'].addr}"
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        answer = http.post("/api/v1/models/cnn/predict", json={"image": [0.0] * 784})
        assert answer.status_code == 200 and answer.json()["label"] in [str(i) for i in range(10)]
        assert [d["id"] for d in http.get("/api/v1/datasets").json()] == ["points"]


def test_tritonclient_sends_the_token_as_a_header(platform):
    session = """
import json, sys, numpy as np, tritonclient.grpc as tc
client = tc.InferenceServerClient(sys.argv[1])
x = np.zeros((1, 1, 28, 28), np.float32)
item = tc.InferInput("input", list(x.shape), "FP32"); item.set_data_from_numpy(x)
out = {"with": client.infer("cnn", [item], headers={"authorization": "Bearer " + sys.argv[2]}).as_numpy("output").shape}
try:
    client.infer("cnn", [item])
except tc.InferenceServerException as exc:
    out["without"] = exc.status()
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", session, platform["inference"].addr, TOKEN], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"with": [1, 10], "without": "StatusCode.UNAUTHENTICATED"}


def test_a_peer_with_another_token_is_named_and_nothing_hangs(platform, tmp_path):
    """A scheduler started without the token, against a storage that wants it: a clear refusal naming storage."""
    scheduler = ServiceProcess("scheduler_svc", tmp_path / "state", ["--storage-addr", platform["storage"].addr],
                               cwd=platform["project"]).start()
    try:
        with grpc.insecure_channel(scheduler.addr) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            code, details = code_of(lambda: stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(
                name="x", script="scripts/trivial.py", input="datasets/points"), timeout=20))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert f"storage_svc at {platform['storage'].addr} refused the call" in details
    finally:
        scheduler.stop()


def test_metrics_are_open_unless_they_have_a_token_of_their_own(platform):
    storage_metrics = f"http://{platform['storage'].metrics_addr}/metrics"
    with urllib.request.urlopen(storage_metrics, timeout=5) as response:
        assert b"aip_grpc_requests_total" in response.read()
    inference_metrics = f"http://{platform['inference'].metrics_addr}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(inference_metrics, timeout=5)
    assert refused.value.code == 401
    request = urllib.request.Request(inference_metrics, headers={"Authorization": "Bearer m3trics"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert b"aip_grpc_requests_total" in response.read()
    with httpx.Client(base_url=f"http://{platform['gateway'].addr}", timeout=30) as http:
        assert http.get("/metrics").status_code == 200  # the gateway's, with no metrics token: open


def test_the_inference_socket_wants_the_token_once_per_connection(platform):
    path = platform["env"]["AIP_INFERENCE_SOCKET"]
    call = (infer_socket.CALL, 1, inference_pb.ModelInferRequest(model_name="cnn").SerializeToString())
    for hello in (b"", b"wrong", f"Bearer {TOKEN}".encode()):
        frames = socket_exchange(path, (infer_socket.HELLO, 0, hello), call)
        assert len(frames) == 1 and frames[0][1] == 0, frames
        code, message = socket_error(frames[0])
        assert code == "UNAUTHENTICATED" and "token" in message
    frames = socket_exchange(path, (infer_socket.HELLO, 0, TOKEN.encode()), call)
    assert frames[0][1] == 1 and socket_error(frames[0]) == ("INVALID_ARGUMENT", "the request has no inputs")
    # The gateway's predict goes over the socket with the token.
    url = f"http://{platform['gateway'].addr}"
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert http.post("/api/v1/models/cnn/predict", json={"image": [0.0] * 784}).status_code == 200
    request = urllib.request.Request(f"http://{platform['inference'].metrics_addr}/metrics",
                                     headers={"Authorization": "Bearer m3trics"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert b'aip_socket_requests_total{code="OK",method="ModelInfer"}' in response.read()


def test_unknown_fields_are_refused_over_grpc_and_rest(platform):
    known = scheduler_pb2.SubmitTaskRequest(name="x", script="scripts/trivial.py").SerializeToString()
    with grpc.insecure_channel(platform["scheduler"].addr) as channel:
        submit = channel.unary_unary("/aiplatform.v1.SchedulerService/SubmitTask",
                                     request_serializer=lambda raw: raw,
                                     response_deserializer=scheduler_pb2.Task.FromString)
        code, details = code_of(lambda: submit(known + b"\xa0\x06\x01", metadata=[("authorization",
                                                                                  f"Bearer {TOKEN}")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "field number(s) [100]" in details
    nested = scheduler_pb2.SubmitTaskRequest(name="x", script="scripts/trivial.py")
    nested.resources.ParseFromString(scheduler_pb2.Resources(num_cpus=1).SerializeToString() + b"\xa0\x06\x01")
    with grpc.insecure_channel(platform["scheduler"].addr) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        code, details = code_of(lambda: stub.SubmitTask(nested, metadata=[("authorization", f"Bearer {TOKEN}")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "SubmitTaskRequest.resources carries" in details
    infer = inference_pb.ModelInferRequest(model_name="cnn").SerializeToString() + b"\xa0\x06\x01"
    with grpc.insecure_channel(platform["inference"].addr) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda raw: raw,
                                   response_deserializer=inference_pb.ModelInferResponse.FromString)
        code, details = code_of(lambda: call(infer, metadata=[("authorization", f"Bearer {TOKEN}")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ModelInferRequest carries" in details
    with httpx.Client(base_url=f"http://{platform['gateway'].addr}", timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for body, words in (
            ({"name": "x", "script": "scripts/trivial.py", "priority": 1}, "priority: Extra inputs"),
            ({"name": "x", "script": "scripts/trivial.py", "resources": {"gpus": 1}}, "resources.gpus"),
            ({"name": "x", "script": "scripts/trivial.py", "resources": {"custom": {"pool": 1}}},
             "the local backend has no custom resources (pool)"),
            ({"name": "x", "script": "scripts/trivial.py", "resources": {"custom": {"pool": 0}}}, "greater than 0"),
        ):
            answer = http.post("/api/v1/tasks", json=body)
            assert answer.status_code == 400 and words in answer.json()["error"]["message"], answer.text
        assert http.get("/api/v1/tasks").json() == [t for t in http.get("/api/v1/tasks").json() if t["name"] != "x"]


def test_the_cli_sends_the_token(platform):
    env = {**os.environ, **platform["env"]}
    done = subprocess.run([str(ROOT / ".venv/bin/aip"), "datasets", "ls", "--json"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    refused = subprocess.run([str(ROOT / ".venv/bin/aip"), "datasets", "ls"], capture_output=True, text=True,
                             env={**env, "AIP_TOKEN": "wrong"}, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


def test_the_inference_socket_takes_a_small_hello_and_only_for_a_while(platform):
    path = platform["env"]["AIP_INFERENCE_SOCKET"]
    frames = socket_exchange(path, infer_socket.HEADER.pack(infer_socket.HELLO, 0, 64 << 20))  # a 64 MiB "HELLO"
    assert len(frames) == 1 and socket_error(frames[0])[0] == "RESOURCE_EXHAUSTED", "refused before reading it"
    assert "8192 byte limit" in socket_error(frames[0])[1]
    started = time.monotonic()
    frames = socket_exchange(path)  # connects, says nothing
    assert socket_error(frames[0]) == ("UNAUTHENTICATED", f"no HELLO within {infer_socket.HELLO_TIMEOUT_S:g} s")
    assert time.monotonic() - started < infer_socket.HELLO_TIMEOUT_S + 3
