"""What fuzzing, fault injection and careless use found, each reproduced: hostile filters and integers, truncated
exports, non-finite input, the protocol's own error shape on /v2,
tasks whose background children held their slot, and inputs the seed passes through as given."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ai_platform.client import SchedulerClient, StorageClient, status_name, task_result
from ai_platform.core.ports import bindable
from ai_platform.sdk.models import save_model
from mnist.model import MnistCNN
from tests.conftest import ROOT, start_platform
from tests.task_scripts import write_scripts

INT64_OVERFLOW = str(2**63)
ORPHANS = """
import os, subprocess, time
def run(input_path, output_path, params):
    kept = subprocess.Popen(["sleep", "300"])
    escaped = subprocess.Popen(["sleep", "301"], env={}, start_new_session=True)
    with open(params["pidfile"], "w") as f:
        f.write(f"{kept.pid} {escaped.pid}")
    return {"started": 2}
"""
ECHO = """
def run(input_path, output_path, params):
    return {"input": input_path, "output": output_path}
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("hardening")
    write_scripts(project / "scripts")
    (project / "scripts" / "orphans.py").write_text(ORPHANS)
    (project / "scripts" / "echo.py").write_text(ECHO)
    venv_script = project / ".venv" / "lib" / "site-packages" / "evil.py"
    venv_script.parent.mkdir(parents=True)
    venv_script.write_text(ECHO)
    torch.manual_seed(0)
    save_model(MnistCNN().eval(), str(project / ".ai_platform/models/cnn.lance"), torch.zeros(1, 1, 28, 28),
               labels=list(range(10)))
    running = start_platform(project)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(platform):
    with httpx.Client(base_url=platform.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def lake(platform):
    client = StorageClient(platform.storage.addr)
    yield client
    client.close()


@pytest.fixture(scope="module")
def tasks(platform):
    client = SchedulerClient(platform.scheduler.addr)
    yield client
    client.close()


def test_a_huge_filter_is_refused_and_the_lake_stays_up(platform, lake):
    lake.write("filtered", pa.table({"x": [1, 2, 3]}))
    monster = " OR ".join(["x = 1"] * 45_000)
    with pytest.raises(grpc.RpcError) as refused:
        lake.read("filtered", filter=monster)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter" in refused.value.details() and len(refused.value.details()) < 500
    deep = "(" * 200 + "x = 1" + ")" * 200
    with pytest.raises(grpc.RpcError) as nested:
        lake.read("filtered", filter=deep)
    assert nested.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nest" in nested.value.details()
    with grpc.insecure_channel(platform.storage.addr) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert lake.read("filtered", filter="x > 1").num_rows == 2


def test_integers_out_of_range_are_400_not_500(http, lake):
    lake.write("numbers", pa.table({"x": [1]}))
    for url in (f"/api/v1/datasets/numbers?version={INT64_OVERFLOW}",
                f"/api/v1/datasets/numbers/rows?offset={INT64_OVERFLOW}",
                "/api/v1/datasets/numbers/rows?version=-1",
                f"/api/v1/tasks/x/logs?tail_bytes={INT64_OVERFLOW}"):
        answer = http.get(url)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "INVALID_REQUEST", (url, answer.text)
    big = http.post("/api/v1/tasks", json={"name": "x", "script": "scripts/echo.py",
                                           "resources": {"memory_mb": 2**64}})
    assert big.status_code == 400, big.text
    with pytest.raises(grpc.RpcError) as negative:
        lake.read("numbers", version=-1)
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "version" in negative.value.details()


def test_a_datatype_that_is_not_a_string_is_refused_in_the_protocol_shape(http):
    answer = http.post("/v2/models/cnn/infer", json={"inputs": [{"name": "input", "shape": [1], "datatype": [],
                                                                 "data": [1]}]})
    assert answer.status_code == 400 and set(answer.json()) == {"error"}
    assert isinstance(answer.json()["error"], str) and "datatype" in answer.json()["error"]


def test_v2_errors_and_readiness_follow_the_open_inference_protocol(http):
    missing = http.get("/v2/models/nope")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
    assert http.get("/v2/models/nope/ready").status_code == 404
    assert http.post("/v2/repository/models/cnn/unload").status_code == 200
    not_ready = http.get("/v2/models/cnn/ready")
    assert not_ready.status_code == 503 and isinstance(not_ready.json()["error"], str)
    assert http.post("/v2/repository/models/cnn/load").status_code == 200
    assert http.get("/v2/models/cnn/ready").json() == {"name": "cnn", "ready": True}
    assert http.get("/api/v1/models/nope").json()["error"]["code"] == "MODEL_NOT_FOUND", "/api/v1 keeps its shape"


def test_v2_statistics_and_config_over_rest(http):
    http.post("/api/v1/models/cnn/predict", json={"image": [0.0] * 784})
    stats = http.get("/v2/models/cnn/stats").json()
    (entry,) = stats["model_stats"]
    assert entry["name"] == "cnn" and int(entry["inference_count"]) >= 1
    assert http.get(f"/v2/models/cnn/versions/{entry['version']}/stats").status_code == 200
    config = http.get("/v2/models/cnn/config").json()
    assert config["name"] == "cnn" and config["max_batch_size"] == 32 and config["input"][0]["dims"] == ["1", "28",
                                                                                                           "28"]
    assert http.get("/v2/models/nope/stats").status_code == 404


def test_a_csv_export_of_an_image_column_is_refused_before_any_byte(http, lake):
    images = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * 784, np.uint8)), 784)
    lake.write("digits", pa.table({"image": images, "label": [1, 2]}))
    answer = http.get("/api/v1/datasets/digits/export?format=csv")
    assert answer.status_code == 400 and "image" in answer.json()["error"]["message"]
    assert http.get("/api/v1/datasets/digits/export?format=csv&columns=label").text.splitlines() == [
        '"label"', "1", "2"]


def test_predict_refuses_non_finite_input_and_scores(http):
    answer = http.post("/api/v1/models/cnn/predict", content=b'{"image": [1e999' + b", 0" * 783 + b"]}",
                       headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "infinity" in answer.json()["error"]["message"]
    huge = http.post("/api/v1/models/cnn/predict", json={"image": [3.4e38] * 784})  # finite, but overflows the CNN
    assert huge.status_code == 400, huge.text
    assert "not finite" in huge.json()["error"]["message"] and "3.4e+38" in huge.json()["error"]["message"]


def alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_background_children_end_with_the_task_and_free_its_slot(tasks, platform, tmp_path):
    pidfile = tmp_path / "pids"
    started = time.time()
    done = tasks.wait(tasks.submit("orphans", "scripts/orphans.py", params={"pidfile": str(pidfile)}).id, 60)
    assert status_name(done) == "completed" and time.time() - started < 30
    kept, escaped = (int(p) for p in pidfile.read_text().split())
    deadline = time.time() + 10
    while (alive(kept) or alive(escaped)) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(kept) and not alive(escaped), "every process the task started has ended"
    after = tasks.wait(tasks.submit("after", "scripts/echo.py").id, 30)
    assert status_name(after) == "completed", "the slot was free again"


def test_submit_answers_running_when_the_task_started(tasks):
    task = tasks.submit("started", "scripts/progress.py", params={"steps": 2, "pause": 0.5})
    assert status_name(task) == "running"
    tasks.wait(task.id, 30)


def test_inputs_that_are_not_lake_references_pass_through_as_given(tasks):
    done = tasks.wait(tasks.submit("seed-style", "scripts/echo.py", "/in", "/out").id, 30)
    assert task_result(done) == {"input": "/in", "output": "/out"}
    with pytest.raises(grpc.RpcError) as escaped:
        tasks.submit("escape", "scripts/echo.py", "download/../../etc", "")
    assert escaped.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_scripts_in_hidden_directories_or_virtualenvs_are_refused(tasks):
    with pytest.raises(grpc.RpcError) as refused:
        tasks.submit("evil", ".venv/lib/site-packages/evil.py")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hidden directory" in refused.value.details() or "virtual environment" in refused.value.details()


def test_a_port_in_time_wait_is_bindable_as_the_servers_bind_it():
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
        client.close()
    time.sleep(0.2)
    assert bindable(port), "a TIME_WAIT socket does not stop a server that binds with SO_REUSEADDR"


def test_storage_filter_and_names_hold_for_any_input():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ai_platform.core.errors import InvalidArgument
    from ai_platform.core.names import NAME_PATTERN, validate_name
    from storage_svc.filters import MAX_FILTER_CHARS, check_filter

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=300))
    def names(text: str) -> None:
        try:
            assert validate_name(text) == text
        except InvalidArgument as exc:
            assert len(exc.message) < 300
            return
        assert NAME_PATTERN.fullmatch(text) and ".." not in text and "/" not in text

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=2000))
    def filters(text: str) -> None:
        try:
            check_filter(text)
        except InvalidArgument as exc:
            assert len(exc.message) < 300
            return
        assert len(text) <= MAX_FILTER_CHARS

    names()
    filters()


TRITON_HTTP = """
import json, sys, numpy as np, tritonclient.http as th
client = th.InferenceServerClient(sys.argv[1].removeprefix("http://"))
x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
out = {"extensions": client.get_server_metadata()["extensions"]}
for binary in (True, False):
    item = th.InferInput("input", list(x.shape), "FP32")
    item.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("cnn", [item], outputs=[th.InferRequestedOutput("output", binary_data=binary)])
    out[f"binary={binary}"] = result.as_numpy("output").tolist()
default = th.InferInput("input", list(x.shape), "FP32")
default.set_data_from_numpy(x)
out["default"] = client.infer("cnn", [default]).as_numpy("output").tolist()
try:
    client.infer("nope", [default])
except th.InferenceServerException as exc:
    out["missing"] = exc.message()
print(json.dumps(out))
"""


def test_open_inference_openapi_client_reads_metadata_and_infers(platform, http):
    """The protocol's own generated OpenAPI client (open-inference-openapi), as a user would call it."""
    from open_inference.openapi.client import ApiError as OipApiError
    from open_inference.openapi.client import (
        InferenceRequest,
        NotFoundError,
        OpenInferenceClient,
    )

    client = OpenInferenceClient(base_url=platform.url)
    client.check_server_liveness()
    client.check_server_readiness()
    server = client.read_server_metadata()
    assert server.name and "binary_tensor_data" in server.extensions
    http.post("/v2/repository/models/cnn/load").raise_for_status()
    client.check_model_readiness("cnn")
    client.check_model_version_readiness("cnn", "1")
    metadata = client.read_model_metadata("cnn")
    assert (metadata.name, metadata.inputs[0].datatype, metadata.inputs[0].shape) == ("cnn", "FP32", [-1, 1, 28, 28])
    assert client.read_model_version_metadata("cnn", "1").versions == ["1"]
    image = np.linspace(0, 1, 784, dtype=np.float32)
    request = InferenceRequest(inputs=[{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                        "data": image.tolist()}])
    answer = client.model_infer("cnn", request=request)
    same = client.model_version_infer("cnn", "1", request=request)
    scores = answer.outputs[0].data.__root__
    assert answer.model_name == "cnn" and len(scores) == 10
    np.testing.assert_allclose(scores, same.outputs[0].data.__root__, atol=1e-6)
    with pytest.raises(NotFoundError):
        client.check_model_readiness("absent")
    with pytest.raises(OipApiError) as refused:
        client.model_infer("cnn", request=InferenceRequest(inputs=[{
            "name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 10}]))
    assert refused.value.status_code == 400
    assert refused.value.body == {"error": "input 'input': 10 values for shape [1, 1, 28, 28]"}, "the protocol's shape"


def test_load_over_rest_refuses_unknown_parameters(http):
    refused = http.post("/v2/repository/models/cnn/load", json={"parameters": {"replicas": 2}})
    assert refused.status_code == 400 and "need Ray Serve" in refused.json()["error"], refused.text
    odd = http.post("/v2/repository/models/cnn/load", json={"parameters": {"speed": "max"}})
    assert odd.status_code == 400 and "unknown load parameter(s) ['speed']" in odd.json()["error"], odd.text
    assert http.post("/v2/repository/models/cnn/load", json={"parameters": {"max_batch_size": 8}}).status_code == 200


def test_tritonclient_http_with_binary_tensors_and_the_protocol_errors(platform, http):
    done = subprocess.run([sys.executable, "-c", TRITON_HTTP, platform.url], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert "binary_tensor_data" in out["extensions"]
    np.testing.assert_allclose(out["binary=True"], out["binary=False"], atol=1e-5)
    np.testing.assert_allclose(out["default"], out["binary=True"], atol=1e-5)
    assert "does not exist" in out["missing"]
    odd = http.post("/v2/models/cnn/infer", json={"inputs": [{"name": "input", "shape": [1, 1, 28, 28],
                                                              "datatype": "FP32", "data": [0.0] * 784}],
                                                  "priority": 1})
    assert odd.status_code == 400 and "priority" in odd.json()["error"], "unknown fields are refused"
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 3136}}]}).encode()
    short = http.post("/v2/models/cnn/infer", content=header + b"\x00" * 100,
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"], short.text
