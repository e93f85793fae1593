"""Serving on Ray Serve (``--serving ray``): model versions as Ray Serve applications on a real local Ray cluster,
behind the same Open Inference Protocol. One cluster and one inference_svc for the module; stopped by PID."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import grpc
import lance
import numpy as np
import pyarrow as pa
import pytest
import torch

from ai_platform.cli.ray_cluster import start_local_head
from ai_platform.core.wire import encode_parameters
from ai_platform.protos.inference import grpc_service_pb2 as pb
from ai_platform.protos.inference import grpc_service_pb2_grpc
from ai_platform.sdk.models import save_model
from tests.conftest import ServiceProcess, free_port
from tests.test_inference import Hammer, cnn, expected, images

CLIENTS = 16


def infer_request(model: str, x: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    return request


def scores(response: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))


def load(stub, name: str, timeout: float = 240, **parameters) -> None:  # noqa: ANN001
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name, parameters=encode_parameters(parameters)),
                             timeout=timeout)


def rpc_error(call: Callable) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def save(home, name: str, model: torch.nn.Module) -> None:  # noqa: ANN001
    save_model(model, str(home / "models" / f"{name}.lance"), torch.zeros(1, 1, 28, 28), labels=list(range(10)))


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    head = start_local_head(num_cpus=4, temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield head
    head.stop()
    assert head.pids() == [], "every process of the Ray cluster we started has ended"


@pytest.fixture(scope="module")
def home(lake_home):
    save(lake_home, "digits", cnn(1))
    save(lake_home, "other", cnn(5))
    good = lance.dataset(str(lake_home / "models/digits.lance")).to_table()
    broken = good.set_column(good.schema.get_field_index("program"), "program",
                             pa.array([b"not a program"], pa.large_binary()))
    lance.write_dataset(broken, str(lake_home / "models/broken.lance"))
    return lake_home


@pytest.fixture(scope="module")
def inference(home, storage_service, ray_head):
    args = ["--storage-addr", storage_service.addr, "--serving", "ray", "--serve-address", ray_head.gcs_address,
            "--replica-num-cpus", "0.5"]
    service = ServiceProcess("inference_svc", home, args).start(timeout=60)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def stub(inference):
    channel = grpc.insecure_channel(inference.addr)
    yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def replica_pids(ray_head, model: str) -> list[int]:  # noqa: ANN001
    from ray.util.state import list_actors

    actors = list_actors(address=ray_head.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    return [a.pid for a in actors if a.class_name.startswith(f"ServeReplica:aip-{model}-")]


def test_a_model_served_by_two_replicas_answers_like_the_local_program(stub, ray_head, inference):
    load(stub, "digits", replicas=2, max_batch_size=16)
    x = images(3, seed=1)
    answer = stub.ModelInfer(infer_request("digits", x))
    assert answer.model_version == "1"
    np.testing.assert_allclose(scores(answer), expected(cnn(1), x), atol=1e-4)
    assert len(replica_pids(ray_head, "digits")) == 2
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["digits"].state == "READY" and "2 RUNNING" in index["digits"].reason, index["digits"]
    assert stub.ModelReady(pb.ModelReadyRequest(name="digits")).ready
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="digits")).inputs[0].shape == [-1, 1, 28, 28]
    with Hammer(inference.addr, "digits", images(1, 2), clients=CLIENTS) as hammer:
        time.sleep(2)
    assert not hammer.failures
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits")).model_stats[0]
    assert stats.inference_stats.success.count == len(hammer.versions) + 1
    assert stats.execution_count >= 1 and sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == (
        len(hammer.versions) + 1), "every request was computed in exactly one batch"
    assert max(b.batch_size for b in stats.batch_stats) > 1, "concurrent requests were merged into batches"



def test_hot_swap_to_a_new_version_under_load_fails_no_request(stub, inference, home, ray_head):
    x = images(1, seed=3)
    with Hammer(inference.addr, "digits", x, clients=CLIENTS) as hammer:
        time.sleep(1)
        save(home, "digits", cnn(2))
        load(stub, "digits", replicas=2)
        time.sleep(3)
    assert not hammer.failures, hammer.failures[:3]
    assert hammer.versions[0] == "1" and hammer.versions[-1] == "2" and len(hammer.versions) > 50
    late = hammer.versions[hammer.versions.index("2"):].count("1")
    assert late <= CLIENTS, f"after the swap only requests already in flight answer from version 1 ({late})"
    np.testing.assert_allclose(scores(stub.ModelInfer(infer_request("digits", x))), expected(cnn(2), x), atol=1e-4)
    deadline = time.time() + 30
    while time.time() < deadline and len(replica_pids(ray_head, "digits")) > 2:
        time.sleep(0.5)
    assert len(replica_pids(ray_head, "digits")) == 2, "the old version's replicas were removed"


def test_a_killed_replica_is_replaced_and_serving_goes_on(stub, inference, ray_head):
    before = replica_pids(ray_head, "digits")
    assert len(before) == 2
    with Hammer(inference.addr, "digits", images(1, seed=4), clients=CLIENTS) as hammer:
        time.sleep(1)
        served_before_kill = len(hammer.versions)
        os.kill(before[0], signal.SIGKILL)
        deadline = time.time() + 60
        while time.time() < deadline and len(set(replica_pids(ray_head, "digits")) - {before[0]}) < 2:
            time.sleep(0.5)
        time.sleep(1)
    after = set(replica_pids(ray_head, "digits"))
    assert before[0] not in after and len(after) == 2, "Ray Serve started a replacement"
    assert len(hammer.versions) > served_before_kill + 50
    print(f"replica kill under {CLIENTS} clients: {len(hammer.failures)} failed of "
          f"{len(hammer.versions) + len(hammer.failures)}")
    assert not hammer.failures, hammer.failures[:3]


def test_bad_loads_are_refused_and_other_models_keep_serving(stub, inference):
    unknown = rpc_error(lambda: load(stub, "other", replicas=1, warp_speed=9))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT and "warp_speed" in unknown.details()
    negative = rpc_error(lambda: load(stub, "other", replicas=-1))
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT and "replicas" in negative.details()
    both = rpc_error(lambda: load(stub, "other", replicas=2, max_replicas=3))
    assert both.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in both.details()
    huge = rpc_error(lambda: load(stub, "other", replicas=100))
    assert huge.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the whole Ray cluster has 4" in huge.details()
    missing = rpc_error(lambda: load(stub, "absent", replicas=1))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "absent" in missing.details()
    broken = rpc_error(lambda: load(stub, "broken", replicas=1))
    assert broken.code() == grpc.StatusCode.FAILED_PRECONDITION and "Ray Serve replica" in broken.details()
    assert stub.ModelInfer(infer_request("digits", images(1))).model_version == "2", "others keep serving"
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["broken"].state == "UNAVAILABLE" and "Ray Serve replica" in index["broken"].reason


def test_autoscaling_loads_and_unloading_frees_the_replicas(stub, inference, ray_head):
    load(stub, "other", min_replicas=1, max_replicas=2, target_ongoing_requests=4, num_cpus=0.25)
    x = images(2, seed=6)
    np.testing.assert_allclose(scores(stub.ModelInfer(infer_request("other", x))), expected(cnn(5), x), atol=1e-4)
    config = stub.ModelConfig(pb.ModelConfigRequest(name="other")).config
    assert config.name == "other"
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="other"))
    deadline = time.time() + 30
    while time.time() < deadline and replica_pids(ray_head, "other"):
        time.sleep(0.5)
    assert replica_pids(ray_head, "other") == [], "unloading deleted the application and its replicas"
    assert not stub.ModelReady(pb.ModelReadyRequest(name="other")).ready


def test_scaling_a_served_version_happens_in_place_under_load_and_what_cannot_be_placed_ends(stub, inference,
                                                                                             ray_head):
    """1 → 2 → 3 → 1 replicas of the version serving, under load: the same application scales (no second copy),
    no request fails. Then more replicas than the free CPUs hold: RESOURCE_EXHAUSTED naming what is missing within
    a bounded time, the old replicas serving throughout, nothing half deployed left."""
    load(stub, "digits")
    app = stub.ModelConfig(pb.ModelConfigRequest(name="digits")).config.parameters["application"].string_value
    with Hammer(inference.addr, "digits", images(1, seed=8), clients=2) as hammer:
        for count in (2, 3, 1):
            load(stub, "digits", replicas=count)
            deadline = time.time() + 60
            while len(replica_pids(ray_head, "digits")) != count and time.time() < deadline:
                time.sleep(0.5)
            assert len(replica_pids(ray_head, "digits")) == count
            now = stub.ModelConfig(pb.ModelConfigRequest(name="digits")).config.parameters["application"]
            assert now.string_value == app, "scaled in place, not a second application"
    assert not hammer.failures, hammer.failures[:3]
    assert len(hammer.versions) > 50
    load(stub, "other", replicas=4, num_cpus=0.5)  # 2 of the cluster's 4 CPUs; digits holds 0.5
    try:
        with Hammer(inference.addr, "digits", images(1, seed=9), clients=4) as hammer:
            started = time.time()
            refused = rpc_error(lambda: load(stub, "digits", replicas=5, timeout=120))
            took = time.time() - started
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()
        assert "cannot be placed" in refused.details() and "CPU" in refused.details(), refused.details()
        assert took < 30, f"it ended in {took:.0f} s"
        assert not hammer.failures, "the replicas serving before kept serving"
        deadline = time.time() + 60
        while len(replica_pids(ray_head, "digits")) != 1 and time.time() < deadline:
            time.sleep(0.5)
        assert len(replica_pids(ray_head, "digits")) == 1, "the replicas it could not place are gone"
    finally:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="other"))


def test_a_ray_cluster_that_is_down_is_unavailable_naming_ray(home, storage_service):
    dead = f"127.0.0.1:{free_port()}"
    service = ServiceProcess("inference_svc", home, ["--storage-addr", storage_service.addr, "--serving", "ray",
                                                      "--serve-address", dead]).start(timeout=60)
    try:
        with grpc.insecure_channel(service.addr) as channel:
            own = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            error = rpc_error(lambda: load(own, "digits", timeout=120, replicas=1))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and f"the Ray cluster at {dead}" in error.details()
    finally:
        service.stop()

