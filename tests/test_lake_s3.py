"""Level 3's lake: the platform over ``s3://`` on an S3-compatible server (moto's, over HTTP on loopback).

The services get the endpoint and keys only through their storage options (``AIP_STORAGE_OPTIONS``),
with no ``AWS_*`` variables, so the options alone must reach Lance, Arrow's S3 client, the
scheduler's tasks and inference_svc.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from ai_platform.client import InferenceClient, SchedulerClient, StorageClient, status_name, task_result
from ai_platform.protos.aiplatform.v1 import storage_pb2 as storage_pb
from tests.conftest import ServiceProcess, free_port
from tests.s3lake import BUCKET, HOME, start_s3_server, stop, without_aws_variables

SAVE_MODEL_SCRIPT = """
import torch
from ai_platform.sdk import save_model

def run(input_path, output_path, params):
    torch.manual_seed(params["seed"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1)).eval()
    saved = save_model(model, output_path, torch.zeros(1, 4), labels=["a", "b", "c"])
    return {"uri": saved["uri"], "version": saved["version"]}
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server, lake = start_s3_server(tmp_path_factory.mktemp("s3") / "server.log")
    yield lake
    stop(server)


@pytest.fixture(scope="module")
def services(s3, tmp_path_factory):
    """storage, inference and scheduler over the S3 home; only their logs and task records are local."""
    local = tmp_path_factory.mktemp("s3-platform")
    project = local / "project"
    (project / "scripts").mkdir(parents=True)
    (project / "scripts" / "save_model.py").write_text(SAVE_MODEL_SCRIPT.lstrip())
    settings = {"AIP_HOME": HOME, "AIP_STORAGE_OPTIONS": json.dumps(s3.options())}
    started: list[ServiceProcess] = []
    with pytest.MonkeyPatch.context() as env:
        for name in os.environ:
            if name.startswith("AWS_"):
                env.delenv(name)  # the services learn of the S3 server from their storage options alone
        try:
            storage = ServiceProcess("storage_svc", local / "home", env=settings, cwd=project).start(60)
            started.append(storage)
            peers = {**settings, "AIP_STORAGE_ADDR": storage.addr}
            started.append(ServiceProcess("inference_svc", local / "home", env=peers, cwd=project).start(60))
            started.append(
                ServiceProcess(
                    "scheduler_svc", local / "home", ["--state-dir", str(local / "state")],
                    env={**peers, "AIP_INFERENCE_ADDR": started[1].addr}, cwd=project,
                ).start(60)
            )
        except BaseException:
            for service in started:
                service.stop()
            raise
    yield tuple(started)
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="module")
def lake(services):
    client = StorageClient(services[0].addr)
    yield client
    client.close()


def rpc_error(call) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_datasets_live_in_the_bucket_with_versions_and_time_travel(lake, s3):
    first = lake.write("points", pa.table({"x": [1, 2, 3], "name": ["a", "b", "c"]}), metadata={"source": "test"})
    assert first.uri == f"{HOME}/datasets/points.lance" and first.version == 1
    lake.write("points", pa.table({"x": [4], "name": ["d"]}), mode="append")
    assert lake.read("points", filter="x > 1", columns=["x"]).column("x").to_pylist() == [2, 3, 4]
    assert lake.read("points", version=1).num_rows == 3, "the first version is still there"
    info = lake.get("points")
    assert (info.num_rows, info.version, info.num_versions) == (4, 2, 2) and info.size_bytes > 0
    assert [v.version for v in lake.versions("points")] == [1, 2]
    assert "points" in [t.name for t in lake.list()]
    objects = s3.objects("datasets/points.lance")
    assert any(p.endswith(".lance") and "/data/" in p for p in objects), objects
    assert any("/_versions/" in p for p in objects), objects
    resolved = lake.stub.ResolveUri(storage_pb.ResolveUriRequest(kind=storage_pb.DATASET, name="points"))
    assert resolved.uri == f"{HOME}/datasets/points.lance" and resolved.storage_options["aws_endpoint"] == s3.endpoint


def test_bad_input_on_s3_leaves_the_bucket_as_it_was(lake, s3):
    lake.write("kept", pa.table({"x": [1, 2]}))
    before = sorted(s3.objects(""))
    assert rpc_error(lambda: lake.write("../escape", pa.table({"x": [1]}))).code() == grpc.StatusCode.INVALID_ARGUMENT
    error = rpc_error(lambda: lake.write("kept", pa.table({"x": [9]})))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = rpc_error(lambda: lake.write("kept", pa.table({"y": ["not x"]}), mode="append"))
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), error.details()
    assert rpc_error(lambda: lake.get("absent")).code() == grpc.StatusCode.NOT_FOUND
    assert sorted(s3.objects("")) == before, "nothing was written to the bucket"
    assert lake.read("kept").column("x").to_pylist() == [1, 2]


def test_delete_removes_every_object_of_the_table(lake, s3):
    lake.write("doomed", pa.table({"x": list(range(100))}))
    lake.write("doomed", pa.table({"x": [100]}), mode="append")
    assert s3.objects("datasets/doomed.lance")
    lake.delete("doomed")
    assert s3.objects("datasets/doomed.lance") == []
    assert "doomed" not in [t.name for t in lake.list()]


def test_a_task_saves_a_model_in_the_bucket_and_inference_serves_it(services, s3):
    _, inference, scheduler = services
    tasks = SchedulerClient(scheduler.addr)
    task = tasks.submit("save-to-s3", "scripts/save_model.py", output="models/tiny", params={"seed": 3})
    done = tasks.wait(task.id, 120)
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(task.id)).decode()[-2000:])
    assert task_result(done) == {"uri": f"{HOME}/models/tiny.lance", "version": 1}
    assert s3.objects("models/tiny.lance")

    served = InferenceClient(inference.addr)
    served.load("tiny")
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    outputs, version = served.infer("tiny", [x])
    torch.manual_seed(3)
    expected = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1)).eval()(torch.from_numpy(x))
    np.testing.assert_allclose(outputs[0], expected.detach().numpy(), atol=1e-5)
    assert version == "1"


def test_storage_refuses_to_start_on_malformed_storage_options(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "storage_svc", "--home", HOME, "--storage-options", "{not json"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**without_aws_variables(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 2
    assert "--storage-options must be a JSON object" in done.stderr


def test_an_unreachable_lake_is_unavailable_at_start_and_while_serving(tmp_path):
    server, lake = start_s3_server(tmp_path / "s3.log")
    options = json.dumps(lake.options())
    try:
        storage = ServiceProcess("storage_svc", tmp_path / "home", ["--storage-options", options],
                                 env={"AIP_HOME": HOME}).start(60)
        client = StorageClient(storage.addr)
        client.write("points", pa.table({"x": [1]}))
    finally:
        stop(server)
    try:
        for call in (client.list, lambda: client.get("points"), lambda: client.read("points"),
                     lambda: client.write("more", pa.table({"x": [2]}))):
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            assert f"the lake at {HOME} cannot be reached" in error.details()
    finally:
        client.close()
        storage.stop()
    done = subprocess.run(  # the S3 server is gone: the service waits as long as it is told, says so and exits
        [sys.executable, "-m", "storage_svc", "--home", HOME, "--storage-options", options, "--lake-wait-s", "0"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**without_aws_variables(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 1 and f"storage: cannot open the lake at {HOME}" in done.stderr, done.stderr


def test_storage_waits_for_a_store_that_starts_after_it_and_creates_the_bucket(tmp_path):
    """As in a deployment whose containers start together: no store yet, then a store with no bucket."""
    port = free_port()
    options = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_region": "us-east-1",
               "aws_endpoint": f"http://127.0.0.1:{port}", "allow_http": "true"}
    storage = ServiceProcess("storage_svc", tmp_path / "home", env={
        "AIP_HOME": HOME, "AIP_STORAGE_OPTIONS": json.dumps(options), "AIP_CREATE_BUCKET": "true"})
    with pytest.MonkeyPatch.context() as env:
        for name in os.environ:
            if name.startswith("AWS_"):
                env.delenv(name)
        with pytest.raises(TimeoutError):
            storage.start(timeout=3)  # not serving while the lake cannot be reached
        server = None
        try:
            deadline = time.time() + 60
            while "waiting for the lake at s3://lake/platform" not in storage.log():
                assert storage.proc.poll() is None, f"it waits rather than exiting:\n{storage.log()}"
                assert time.time() < deadline, storage.log()
                time.sleep(0.5)
            server, lake = start_s3_server(tmp_path / "s3.log", port=port, bucket=False)
            storage.wait_healthy(30)
            client = StorageClient(storage.addr)
            try:
                assert client.write("points", pa.table({"x": [1]})).version == 1
            finally:
                client.close()
            assert lake.objects("datasets/points.lance"), "the bucket was made and holds the table"
        finally:
            storage.stop()
            if server is not None:
                stop(server)


def test_download_refs_cannot_climb_out_of_an_s3_home(services):
    tasks = SchedulerClient(services[2].addr)
    error = rpc_error(lambda: tasks.submit("climb", "scripts/save_model.py", input="download/../../other"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "leaves the download area" in error.details()


def test_aip_up_keeps_state_locally_and_the_lake_in_the_bucket(s3, tmp_path):
    aip = str(Path(sys.executable).with_name("aip"))
    ports = [arg for name in ("storage", "scheduler", "inference", "gateway")
             for arg in (f"--{name}-port", str(free_port()))]
    env = {**without_aws_variables(), "AIP_STORAGE_OPTIONS": json.dumps(s3.options()),
           "AIP_STATE_DIR": str(tmp_path / "state")}
    home = f"s3://{BUCKET}/via-aip"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([aip, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)

    up = run("up", "--home", home, "--detach", *ports)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert f"lake {home}" in up.stdout
        gateway = next(line.split()[-1] for line in up.stdout.splitlines() if "web page" in line).rstrip("/")
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"x": [1, 2, 3]}), sink)
        request = urllib.request.Request(f"{gateway}/api/v1/datasets/uploaded", data=sink.getvalue().to_pybytes(),
                                         headers={"content-type": "application/vnd.apache.parquet"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 201
        objects = [i.path for i in s3.fs.get_file_info(
            pafs.FileSelector(f"{BUCKET}/via-aip/datasets/uploaded.lance", recursive=True, allow_not_found=True))]
        assert objects, "the upload landed in the bucket"
        assert (tmp_path / "state" / "platform.json").exists() and (tmp_path / "state" / "logs").is_dir()
        assert run("status", "--home", home).returncode == 0
    finally:
        down = run("down", "--home", home)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
