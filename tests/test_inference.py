"""inference_svc end to end: models saved with the SDK into the lake, served by a real service process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import lance
import numpy as np
import pyarrow as pa
import pytest
import torch

from ai_platform.core import infer_socket
from ai_platform.core.auth import Authority
from ai_platform.core.errors import InvalidArgument, NotFound, PlatformError, ResourceExhausted, Unavailable
from ai_platform.core.wire import encode_parameters
from ai_platform.protos.inference import grpc_service_pb2 as pb
from ai_platform.protos.inference import grpc_service_pb2_grpc
from ai_platform.sdk.models import load_model, save_model
from mnist.model import MnistCNN
from tests.conftest import ROOT, ServiceProcess, socket_error, socket_exchange


def cnn(seed: int) -> MnistCNN:
    torch.manual_seed(seed)
    return MnistCNN().eval()


def expected(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(images)).numpy()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def lake(lake_home):
    """Models saved the way a training script saves them: cnn v1 and v2, an exported one, broken ones."""
    models = lake_home / "models"
    example = torch.zeros(1, 1, 28, 28)
    save_model(cnn(1), str(models / "cnn.lance"), example, labels=list(range(10)), params={"epochs": 1},
               metrics={"accuracy": 0.5})
    save_model(cnn(2), str(models / "cnn.lance"), example, labels=list(range(10)), metrics={"accuracy": 0.6},
               scores="logits")
    save_model(cnn(3), str(models / "exported.lance"), example, program_format="torch.export")
    lance.write_dataset(pa.table({"weights": [b"\x00"]}), str(models / "no_program.lance"))
    row = lance.dataset(str(models / "cnn.lance")).to_table()
    garbage = row.set_column(row.schema.get_field_index("program"), "program",
                             pa.array([b"not a program"], pa.large_binary()))
    lance.write_dataset(garbage, str(models / "garbage.lance"))
    return {"v1": cnn(1), "v2": cnn(2), "exported": cnn(3)}


@pytest.fixture(scope="module")
def services(lake_home, lake, storage_service):
    inference = ServiceProcess("inference_svc", lake_home, ["--storage-addr", storage_service.addr,
                                                            "--max-message-mb", "1", "--inference-socket",
                                                            str(lake_home.parent / "run" / "inference.sock")])
    inference.start(timeout=60)
    yield inference
    inference.stop()


@pytest.fixture(scope="module")
def stub(services):
    channel = grpc.insecure_channel(services.addr, options=[("grpc.max_send_message_length", 8 << 20)])
    yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def raw_request(model: str, data: np.ndarray, version: str = "", name: str = "input",
                datatype: str = "FP32") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id="req",
                                   raw_input_contents=[data.tobytes()])
    request.inputs.add(name=name, datatype=datatype, shape=list(data.shape))
    return request


def raw_output(response: pb.ModelInferResponse, index: int = 0) -> np.ndarray:
    out = response.outputs[index]
    return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(list(out.shape))


class Hammer:
    """``clients`` threads predicting over gRPC until the block ends; every answer's version and failure is kept."""

    def __init__(self, addr: str, model: str, x: np.ndarray, version: str = "", clients: int = 4) -> None:
        self.addr, self.model, self.x, self.version = addr, model, x, version
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with grpc.insecure_channel(self.addr) as channel:
            own = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                try:
                    answer = own.ModelInfer(raw_request(self.model, self.x, version=self.version), timeout=30)
                    self.versions.append(answer.model_version)
                except grpc.RpcError as exc:
                    self.failures.append(f"{exc.code()}: {exc.details()}")

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# -- tritonclient: the real client, in its own process ---------------------------------------

TRITON_SESSION = """
import json, sys
import numpy as np
import tritonclient.grpc as tc

client = tc.InferenceServerClient(sys.argv[1])
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "server": client.get_server_metadata().name}
out["ready_before"] = client.is_model_ready("cnn")
client.load_model("cnn")
out["ready_after"] = client.is_model_ready("cnn")
meta = client.get_model_metadata("cnn", as_json=True)
out["metadata"] = {"versions": meta["versions"], "inputs": meta["inputs"], "outputs": meta["outputs"]}
out["config_max_batch"] = client.get_model_config("cnn", as_json=True)["config"]["max_batch_size"]
for batch in (1, 8):
    x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
    item = tc.InferInput("input", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    result = client.infer("cnn", [item], outputs=[tc.InferRequestedOutput("output")])
    out[f"batch{batch}"] = result.as_numpy("output").tolist()
    out[f"batch{batch}_version"] = result.get_response().model_version
stats = client.get_inference_statistics("cnn", as_json=True)["model_stats"][0]
out["stats"] = {"inference_count": int(stats["inference_count"]), "execution_count": int(stats["execution_count"])}
out["index"] = [(m["name"], m.get("state", "")) for m in client.get_model_repository_index(as_json=True)["models"]]
client.unload_model("cnn")
out["ready_unloaded"] = client.is_model_ready("cnn")
try:
    client.get_model_metadata("nope")
except tc.InferenceServerException as exc:
    out["missing"] = [exc.status(), exc.message()]
print(json.dumps(out))
"""


def test_tritonclient_drives_the_service(services, lake):
    done = subprocess.run([sys.executable, "-c", TRITON_SESSION, services.addr], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert (out["live"], out["ready"], out["server"]) == (True, True, "ai-platform-inference")
    assert (out["ready_before"], out["ready_after"], out["ready_unloaded"]) == (False, True, False)
    assert out["metadata"] == {
        "versions": ["2"],
        "inputs": [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": ["-1", "10"]}],
    }
    assert out["config_max_batch"] == 32
    for batch in (1, 8):
        x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
        np.testing.assert_allclose(np.array(out[f"batch{batch}"]), expected(lake["v2"], x), atol=1e-4)
        assert out[f"batch{batch}_version"] == "2"
    assert out["stats"]["inference_count"] == 9 and out["stats"]["execution_count"] == 2
    assert ("cnn", "READY") in [tuple(i) for i in out["index"]]
    assert out["missing"][0] == "StatusCode.NOT_FOUND" and "model 'nope' does not exist" in out["missing"][1]


# -- the project's own stubs ------------------------------------------------------------------

def test_raw_in_raw_out_and_typed_in_typed_out(stub, lake):
    x = images(3, seed=5)
    raw = stub.ModelInfer(raw_request("cnn", x))
    assert raw.model_version == "2" and raw.id == "req" and len(raw.raw_output_contents) == 1
    np.testing.assert_allclose(raw_output(raw), expected(lake["v2"], x), atol=1e-4)
    typed = pb.ModelInferRequest(model_name="cnn")
    typed.inputs.add(name="input", datatype="FP32", shape=[3, 1, 28, 28]).contents.fp32_contents.extend(
        x.ravel().tolist())
    answer = stub.ModelInfer(typed)
    assert not answer.raw_output_contents
    values = np.array(answer.outputs[0].contents.fp32_contents, np.float32).reshape(3, 10)
    np.testing.assert_allclose(values, expected(lake["v2"], x), atol=1e-4)


def test_versions_select_lance_versions(stub, lake):
    x = images(2, seed=6)
    v1 = stub.ModelInfer(raw_request("cnn", x, version="1"))
    assert v1.model_version == "1"
    np.testing.assert_allclose(raw_output(v1), expected(lake["v1"], x), atol=1e-4)
    newest = stub.ModelInfer(raw_request("cnn", x))
    np.testing.assert_allclose(raw_output(newest), expected(lake["v2"], x), atol=1e-4)
    assert stub.ModelReady(pb.ModelReadyRequest(name="cnn", version="1")).ready
    error = rpc_error(lambda: stub.ModelInfer(raw_request("cnn", x, version="9")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no version 9" in error.details()


def test_torch_export_programs_serve_too(stub, lake):
    x = images(4, seed=7)
    np.testing.assert_allclose(raw_output(stub.ModelInfer(raw_request("exported", x))),
                               expected(lake["exported"], x), atol=1e-4)


def test_stream_infer_answers_each_request(stub, lake):
    xs = [images(1, seed=s) for s in range(5)]
    requests = [raw_request("cnn", x) for x in xs]
    for i, r in enumerate(requests):
        r.id = f"r{i}"
    requests.append(raw_request("cnn", xs[0], name="wrong"))
    requests[-1].id = "bad"
    answers = {a.infer_response.id: a for a in stub.ModelStreamInfer(iter(requests))}
    assert set(answers) == {"r0", "r1", "r2", "r3", "r4", "bad"}
    for i, x in enumerate(xs):
        np.testing.assert_allclose(raw_output(answers[f"r{i}"].infer_response), expected(lake["v2"], x), atol=1e-4)
    assert "unknown input 'wrong'" in answers["bad"].error_message


def test_concurrent_requests_are_batched_and_each_caller_gets_its_rows(services, stub, lake):
    load = pb.RepositoryModelLoadRequest(model_name="cnn", parameters={
        "max_queue_delay_us": pb.ModelRepositoryParameter(int64_param=50_000),
        "max_batch_size": pb.ModelRepositoryParameter(int64_param=16)})
    stub.RepositoryModelLoad(load)
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cnn")).model_stats[0]
    inputs = [images(1 + i % 3, seed=100 + i) for i in range(12)]

    async def fire() -> list[pb.ModelInferResponse]:
        async with grpc.aio.insecure_channel(services.addr) as channel:
            aio_stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            return await asyncio.gather(*(aio_stub.ModelInfer(raw_request("cnn", x)) for x in inputs))

    answers = asyncio.run(fire())
    for x, answer in zip(inputs, answers, strict=True):
        assert raw_output(answer).shape == (x.shape[0], 10)
        np.testing.assert_allclose(raw_output(answer), expected(lake["v2"], x), atol=1e-4)
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cnn")).model_stats[0]
    rows = after.inference_count - before.inference_count
    passes = after.execution_count - before.execution_count
    assert rows == sum(x.shape[0] for x in inputs)
    assert passes < len(inputs), f"{len(inputs)} requests took {passes} forward passes: nothing was merged"
    assert max(b.batch_size for b in after.batch_stats) > 1
    assert after.inference_stats.queue.count >= len(inputs)
    config = stub.ModelConfig(pb.ModelConfigRequest(name="cnn")).config
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds == 50_000


def test_hot_swap_under_load_loses_no_request(services, stub, lake, lake_home):
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cnn"))
    x = images(1, seed=9)
    with Hammer(services.addr, "cnn", x) as hammer:
        time.sleep(0.5)
        save_model(cnn(4), str(lake_home / "models/cnn.lance"), torch.zeros(1, 1, 28, 28), labels=list(range(10)))
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cnn"))
        time.sleep(0.5)
    assert not hammer.failures, hammer.failures[:3]
    versions = hammer.versions
    assert "2" in versions and versions[-1] == "3" and len(versions) > 20
    np.testing.assert_allclose(raw_output(stub.ModelInfer(raw_request("cnn", x))), expected(cnn(4), x), atol=1e-4)


def test_an_alias_serves_its_version_and_moving_it_swaps_without_failures(services, stub, lake, storage_service):
    from ai_platform.protos.aiplatform.v1 import storage_pb2, storage_pb2_grpc

    with grpc.insecure_channel(storage_service.addr) as channel:
        lake_stub = storage_pb2_grpc.StorageServiceStub(channel)

        def point(version: int) -> None:
            lake_stub.SetAlias(storage_pb2.SetAliasRequest(kind=storage_pb2.MODEL, name="cnn", alias="production",
                                                           version=version))

        point(1)
        x = images(1, seed=11)
        answer = stub.ModelInfer(raw_request("cnn", x, version="production"))
        assert answer.model_version == "1"
        np.testing.assert_allclose(raw_output(answer), expected(lake["v1"], x), atol=1e-4)
        with Hammer(services.addr, "cnn", x, version="production", clients=16) as hammer:
            time.sleep(0.5)
            point(2)
            deadline = time.time() + 20
            while time.time() < deadline and (not hammer.versions or hammer.versions[-1] != "2"):
                time.sleep(0.1)
            time.sleep(0.3)
        assert not hammer.failures, hammer.failures[:3]
        versions = hammer.versions
        assert versions[0] == "1" and versions[-1] == "2", "moving the alias swapped what it serves"
        late = versions[versions.index("2"):].count("1")
        assert late <= 16, f"after the swap only requests already in flight answer from version 1 ({late})"
        time.sleep(1.2)  # past the alias's lookup age: readiness still answers for what it points to
        assert stub.ModelReady(pb.ModelReadyRequest(name="cnn", version="production")).ready
        lake_stub.DeleteAlias(storage_pb2.DeleteAliasRequest(kind=storage_pb2.MODEL, name="cnn", alias="production"))
    unknown = rpc_error(lambda: stub.ModelInfer(raw_request("cnn", x, version="staging")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "has no alias 'staging'" in unknown.details()


def test_model_metadata_says_what_the_output_means(stub, lake):
    """Labels and the kind of scores travel with the metadata (OIP tensor parameters): no trip to storage."""
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="cnn", version="2"))
    output = meta.outputs[0]
    assert json.loads(output.parameters["labels"].string_param) == [str(i) for i in range(10)]
    assert output.parameters["scores"].string_param == "logits"
    assert not meta.inputs[0].parameters
    v1 = stub.ModelMetadata(pb.ModelMetadataRequest(name="cnn", version="1")).outputs[0]
    assert "labels" in v1.parameters and "scores" not in v1.parameters
    assert not stub.ModelMetadata(pb.ModelMetadataRequest(name="exported")).outputs[0].parameters


def test_repository_index_lists_lake_models_with_state(stub):
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert {"cnn", "exported", "no_program", "garbage"} <= set(index)
    assert index["cnn"].state == "READY"
    ready = [m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models]
    assert "cnn" in ready and "no_program" not in ready


def test_unload_then_first_request_loads_again(stub, lake):
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="exported"))
    assert not stub.ModelReady(pb.ModelReadyRequest(name="exported")).ready
    x = images(1, seed=11)
    np.testing.assert_allclose(raw_output(stub.ModelInfer(raw_request("exported", x))),
                               expected(lake["exported"], x), atol=1e-4)
    assert stub.ModelReady(pb.ModelReadyRequest(name="exported")).ready


# -- bad input ----------------------------------------------------------------------------------

def test_unknown_and_unloadable_models(stub):
    error = rpc_error(lambda: stub.ModelInfer(raw_request("nope", images(1))))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "model 'nope' does not exist" in error.details()
    for name, words in (("no_program", "missing column(s) ['program'"), ("garbage", "cannot load the program")):
        error = rpc_error(lambda name=name: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and words in error.details(), error.details()
        error = rpc_error(lambda name=name: stub.ModelInfer(raw_request(name, images(1))))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    states = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert states["garbage"].state == "UNAVAILABLE" and "cannot load" in states["garbage"].reason
    assert stub.ModelInfer(raw_request("cnn", images(1))).model_name == "cnn", "other models keep serving"
    error = rpc_error(lambda: stub.ModelInfer(raw_request("../etc", images(1))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_load_parameters_are_checked_and_unknown_ones_refused(stub):
    def load(**parameters):  # noqa: ANN003, ANN202
        return lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(
            model_name="cnn", parameters=encode_parameters(parameters)))

    replicas = rpc_error(load(replicas=2))
    assert replicas.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "['replicas'] need Ray Serve (--serving ray)" in replicas.details(), replicas.details()
    unknown = rpc_error(load(warp_speed=9))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown load parameter(s) ['warp_speed']" in (
        unknown.details())
    for bad, words in (({"max_batch_size": 0}, "max_batch_size must be a finite number >= 1"),
                       ({"max_batch_size": "lots"}, "max_batch_size must be an integer"),
                       ({"batch_wait_timeout_s": -1.0}, "batch_wait_timeout_s must be a finite number >= 0"),
                       ({"max_queue_delay_us": 5, "batch_wait_timeout_s": 0.1}, "not both"),
                       ({"version": "x"}, "version must be an integer"),
                       ({"device": "tpu"}, "device must be cpu, cuda or cuda:N"),
                       ({"config": "{oops"}, "config is not JSON")):
        error = rpc_error(load(**bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), (bad, error.details())
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cnn", parameters=encode_parameters(
        {"batch_wait_timeout_s": 0.001, "max_batch_size": 8})))
    config = stub.ModelConfig(pb.ModelConfigRequest(name="cnn")).config
    assert config.max_batch_size == 8 and config.dynamic_batching.max_queue_delay_microseconds == 1000


def test_bad_tensors_are_invalid_argument_saying_expected_vs_got(stub):
    x = images(2)
    cases = []
    cases.append((raw_request("cnn", x, name="pixels"), "unknown input 'pixels'"))
    cases.append((raw_request("cnn", x.astype(np.float64), datatype="FP64"), "expected datatype FP32, got FP64"))
    cases.append((raw_request("cnn", x.reshape(2, 784)), "expected shape [-1, 1, 28, 28], got [2, 784]"))
    short = raw_request("cnn", x)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    cases.append((short, "raw contents have 6268 bytes, expected 6272"))
    both = raw_request("cnn", x)
    both.inputs[0].contents.fp32_contents.extend([0.0] * x.size)
    cases.append((both, "not both"))
    cases.append((raw_request("cnn", np.zeros((0, 1, 28, 28), np.float32)), "empty batch"))
    extra = raw_request("cnn", x)
    extra.inputs.add(name="second", datatype="FP32", shape=list(x.shape))
    extra.raw_input_contents.append(x.tobytes())
    cases.append((extra, "takes 1 input(s)"))
    cases.append((pb.ModelInferRequest(model_name="cnn"), "no inputs"))
    typed_short = pb.ModelInferRequest(model_name="cnn")
    typed_short.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28]).contents.fp32_contents.extend([1.0])
    cases.append((typed_short, "1 values in contents, expected 784"))
    cases.append((raw_request("cnn", images(40)), "exceeds max_batch_size"))
    for request, words in cases:
        error = rpc_error(lambda request=request: stub.ModelInfer(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (words, error.details())
        assert words in error.details(), (words, error.details())
    assert stub.ModelInfer(raw_request("cnn", x)).outputs[0].shape == [2, 10]


def test_requests_over_the_message_limit_are_resource_exhausted(stub):
    error = rpc_error(lambda: stub.ModelInfer(raw_request("cnn", images(400))))  # ~1.25 MB > 1 MiB
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(1024 * 1024) in error.details()


def test_unimplemented_rpcs_say_so(stub):
    error = rpc_error(lambda: stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


# -- the Unix socket (the gateway's hop on one host) ------------------------------------------

def socket_path(services: ServiceProcess) -> str:
    return str(services.home.parent / "run" / "inference.sock")


def test_the_socket_answers_as_grpc_does(services, stub, lake):
    path = socket_path(services)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, "only this user may connect"

    async def calls() -> list:
        client = infer_socket.InferSocketClient(path, "", 1 << 20)
        try:
            # Concurrent calls share the connection (and batch together); each gets its own rows back.
            answers = await asyncio.gather(*(client.infer(raw_request("cnn", images(1 + i % 3, seed=i)), 30)
                                             for i in range(24)))
            failures = []
            for request in (raw_request("nope", images(1)), raw_request("cnn", images(1), name="pixels")):
                with pytest.raises(PlatformError) as caught:
                    await client.infer(request, 30)
                failures.append(caught.value)
            return [answers, failures]
        finally:
            await client.close()

    answers, (missing, wrong) = asyncio.run(calls())
    for i, answer in enumerate(answers):
        x = images(1 + i % 3, seed=i)
        over_grpc = stub.ModelInfer(raw_request("cnn", x))
        assert answer.id == "req" and answer.model_version == over_grpc.model_version
        np.testing.assert_allclose(raw_output(answer), raw_output(over_grpc), atol=1e-5)  # batched or not
    grpc_missing = rpc_error(lambda: stub.ModelInfer(raw_request("nope", images(1))))
    assert isinstance(missing, NotFound) and missing.message == grpc_missing.details()
    assert isinstance(wrong, InvalidArgument) and "unknown input 'pixels'" in wrong.message
    metrics = urllib.request.urlopen(f"http://{services.metrics_addr}/metrics", timeout=10).read().decode()
    assert 'aip_socket_requests_total{code="OK",method="ModelInfer"} 24.0' in metrics
    assert 'aip_socket_requests_total{code="NOT_FOUND",method="ModelInfer"}' in metrics


def test_the_socket_refuses_bad_frames_precisely(services):
    path = socket_path(services)
    hello = (infer_socket.HELLO, 0, b"")
    good = raw_request("cnn", images(1)).SerializeToString()
    unknown_field = good + b"\xf8\x06\x01"  # field 111, varint 1: not in ModelInferRequest
    # A malformed or unknown-field request gets its own error; the connection goes on serving.
    frames = socket_exchange(path, hello, (infer_socket.CALL, 1, b"\xff\xff\xff"),
                             (infer_socket.CALL, 2, unknown_field), (infer_socket.CALL, 3, good))
    by_call = {call: (kind, payload) for kind, call, payload in frames}
    assert socket_error((by_call[1][0], 1, by_call[1][1]))[0] == "INVALID_ARGUMENT"
    assert "not a ModelInferRequest" in socket_error((by_call[1][0], 1, by_call[1][1]))[1]
    code, message = socket_error((by_call[2][0], 2, by_call[2][1]))
    assert code == "INVALID_ARGUMENT" and "field number(s) [111]" in message
    assert by_call[3][0] == infer_socket.REPLY and pb.ModelInferResponse.FromString(by_call[3][1]).outputs
    # What breaks the framing itself is answered on call 0 and ends the connection.
    for frames, words in [([(infer_socket.CALL, 1, good)], "starts with HELLO"),
                          ([hello, (9, 1, b"")], "unknown frame kind 9"),
                          ([hello, (infer_socket.CALL, 0, good)], "numbered from 1"),
                          ([hello, infer_socket.HEADER.pack(infer_socket.CALL, 1, 2 << 20)],
                           "a frame of 2097152 bytes is over the 1048576 byte limit")]:
        answer = socket_exchange(path, *frames)
        assert len(answer) == 1 and answer[0][1] == 0, (words, answer)
        code, message = socket_error(answer[0])
        assert words in message and code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), message


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced(services, lake_home, storage_service, tmp_path):
    taken = ServiceProcess("inference_svc", lake_home, ["--storage-addr", storage_service.addr, "--inference-socket",
                                                        socket_path(services)])
    try:
        with pytest.raises(RuntimeError, match="another server is listening on"):
            taken.start(timeout=60)
    finally:
        taken.stop()
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as left_behind:  # a socket file whose server died
        left_behind.bind(str(stale))
    second = ServiceProcess("inference_svc", lake_home, ["--storage-addr", storage_service.addr,
                                                         "--inference-socket", str(stale)]).start(timeout=60)
    try:
        frames = socket_exchange(str(stale), (infer_socket.HELLO, 0, b""),
                          (infer_socket.CALL, 7, raw_request("cnn", images(1)).SerializeToString()))
        assert [(kind, call) for kind, call, _ in frames] == [(infer_socket.REPLY, 7)]
    finally:
        assert second.stop() == 0
    assert not stale.exists(), "the socket file goes with its server"


def test_a_stopping_socket_finishes_calls_in_flight_and_refuses_new_ones(tmp_path):
    path = str(tmp_path / "run" / "stopping.sock")
    release = asyncio.Event()

    async def slow(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        await release.wait()
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id)

    async def scenario() -> tuple:
        server = infer_socket.InferSocketServer(path, slow, Authority(), 1 << 20)
        await server.start()
        client = infer_socket.InferSocketClient(path, "", 1 << 20)
        first = asyncio.ensure_future(client.infer(pb.ModelInferRequest(model_name="m", id="1"), 30))
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(server.stop(30))
        await asyncio.sleep(0.1)
        with pytest.raises(Unavailable, match="shutting down"):
            await client.infer(pb.ModelInferRequest(model_name="m", id="2"), 30)
        release.set()
        answer = await first
        await stopping
        await client.close()
        return answer, os.path.exists(path)

    answer, left = asyncio.run(scenario())
    assert answer.id == "1" and not left


def test_a_response_over_the_message_limit_is_refused_and_the_connection_stays(tmp_path):
    path = str(tmp_path / "big.sock")

    async def echo_size(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return pb.ModelInferResponse(id=request.id, raw_output_contents=[bytes(int(request.id))])

    async def scenario() -> tuple:
        server = infer_socket.InferSocketServer(path, echo_size, Authority(), 1 << 20)
        await server.start()
        client = infer_socket.InferSocketClient(path, "", 1 << 20)
        try:
            with pytest.raises(ResourceExhausted, match="over the 1048576 byte message limit"):
                await client.infer(pb.ModelInferRequest(id=str(2 << 20)), 30)
            return (await client.infer(pb.ModelInferRequest(id="10"), 30)).raw_output_contents[0]
        finally:
            await client.close()
            await server.stop(1)

    assert asyncio.run(scenario()) == bytes(10)


# -- the SDK ---------------------------------------------------------------------------------

LOAD_WITHOUT_CLASS = """
import json, sys
import numpy as np, torch
from ai_platform.sdk import load_model
model = load_model(sys.argv[1])
x = torch.from_numpy(np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
print(json.dumps({"out": model(x).tolist(), "labels": model.labels, "metrics": model.metrics,
                  "version": model.version, "has_class": "mnist" in sys.modules}))
"""


def test_saved_models_load_without_the_training_class(lake_home, lake, tmp_path):
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_CLASS, str(lake_home / "models/cnn.lance")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["has_class"] is False and out["labels"] == [str(i) for i in range(10)]
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    latest = load_model(str(lake_home / "models/cnn.lance"))
    np.testing.assert_allclose(np.array(out["out"]), expected(latest, x), atol=1e-5)


def test_save_model_versions_and_metadata(tmp_path):
    uri = str(tmp_path / "m.lance")
    first = save_model(cnn(5), uri, torch.zeros(2, 1, 28, 28), labels=list("abcdefghij"), params={"lr": 0.1},
                       metrics={"accuracy": 0.9})
    second = save_model(cnn(6), uri, torch.zeros(2, 1, 28, 28))
    assert (first["version"], second["version"]) == (1, 2)
    table = lance.dataset(uri, version=1).to_table()
    assert table.num_rows == 1
    columns = {"weights", "program", "signature", "params", "metrics", "framework", "created_at"}
    assert columns <= set(table.column_names)
    assert json.loads(table.column("params")[0].as_py()) == {"lr": 0.1}
    state = torch.load(__import__("io").BytesIO(table.column("weights")[0].as_py()))
    assert set(state) == set(cnn(5).state_dict())
    assert load_model(uri, version=1).labels == list("abcdefghij") and load_model(uri).labels is None
    with pytest.raises(Exception, match="labels"):
        save_model(cnn(5), uri, torch.zeros(1, 1, 28, 28), labels=["only one"])
