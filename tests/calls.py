"""One valid call of every REST operation and every gRPC method of the platform, against a platform prepared by
:func:`prepare` (a dataset, two models, a finished task). The access tests run them in order (a delete comes after
what it deletes was made), in each mode and with each credential, and compare the answers; a route or method that
is missing here fails them, so a new one cannot go untested."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import torch

from ai_platform.core import arrow_ipc
from ai_platform.protos.aiplatform.v1 import access_pb2 as apb
from ai_platform.protos.aiplatform.v1 import pipelines_pb2 as ppb
from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as spb
from ai_platform.protos.aiplatform.v1 import storage_pb2 as stpb
from ai_platform.protos.inference import grpc_service_pb2 as ipb
from ai_platform.sdk.models import save_model
from mnist.model import MnistCNN


@dataclass
class Prepared:
    """What every call may refer to."""

    task_id: str = ""
    arrow: bytes = b""
    names: dict[str, str] = field(default_factory=dict)


def arrow_body(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


ONE_STEP = {"steps": [{"name": "only", "script": "scripts/trivial.py"}]}
NAPPING = {"steps": [{"name": "nap", "script": "scripts/nap.py", "params": {"seconds": 600}, "cache": False}],
           "max_concurrent_runs": 2}


def prepare_pipelines(http: Any, ready: Prepared) -> None:
    """Pipelines the calls refer to, made through ``http`` (an httpx client with the admin's headers) before any
    task holds a slot: a finished run of ready_pipe. The runs to cancel come later (:func:`start_slow_runs`)."""
    import time

    for name, definition in (("ready_pipe", ONE_STEP), ("slow_pipe", NAPPING)):
        http.put(f"/api/v1/pipelines/{name}", json=definition).raise_for_status()
    run_id = ready.names["pipeline_run"] = http.post("/api/v1/pipelines/ready_pipe/runs", json={}).json()["id"]
    deadline = time.time() + 60
    while http.get(f"/api/v1/pipelines/ready_pipe/runs/{run_id}").json()["status"] == "running":
        assert time.time() < deadline, "ready_pipe's run did not end"
        time.sleep(0.1)


def start_slow_runs(http: Any, ready: Prepared) -> None:
    """Two runs of slow_pipe in flight (their steps queued behind the sleeping tasks), one for each cancel."""
    for key in ("slow_run", "grpc_slow_run"):
        ready.names[key] = http.post("/api/v1/pipelines/slow_pipe/runs", json={}).json()["id"]


def prepare(project: Any) -> None:
    """Models saved into the project's lake before the platform starts: one to serve, one to delete."""
    torch.manual_seed(0)
    for name in ("cnn", "doomed"):
        save_model(MnistCNN().eval(), str(project / f".ai_platform/models/{name}.lance"), torch.zeros(1, 1, 28, 28),
                   labels=list(range(10)))


# -- REST -------------------------------------------------------------------------------------------------------------

@dataclass
class RestCall:
    method: str
    template: str  # the OpenAPI path
    build: Callable[[Prepared], dict[str, Any]]  # httpx.request keyword arguments, url included

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.template


IMAGE = {"image": [0.0] * 784}
INFER = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}


def _rest(method: str, template: str, url: str | Callable[[Prepared], str] = "", **kwargs: Any) -> RestCall:
    def build(ready: Prepared) -> dict[str, Any]:
        resolved = url(ready) if callable(url) else (url or template)
        extra = {k: v(ready) if callable(v) else v for k, v in kwargs.items()}
        return {"method": method, "url": resolved, **extra}

    return RestCall(method, template, build)


ARROW = {"Content-Type": "application/vnd.apache.arrow.stream"}
REST_CALLS: list[RestCall] = [
    _rest("POST", "/api/v1/datasets/{id}", "/api/v1/datasets/points", content=lambda r: r.arrow, headers=ARROW),
    _rest("POST", "/api/v1/datasets/{id}", "/api/v1/datasets/scratch", content=lambda r: r.arrow, headers=ARROW),
    _rest("GET", "/api/v1/datasets"),
    _rest("GET", "/api/v1/datasets/{id}", "/api/v1/datasets/points"),
    _rest("GET", "/api/v1/datasets/{id}/versions", "/api/v1/datasets/points/versions"),
    _rest("GET", "/api/v1/datasets/{id}/rows", "/api/v1/datasets/points/rows", params={"limit": 2}),
    _rest("GET", "/api/v1/datasets/{id}/export", "/api/v1/datasets/points/export", params={"format": "parquet"}),
    _rest("PUT", "/api/v1/datasets/{id}/aliases/{alias}", "/api/v1/datasets/points/aliases/golden",
          json={"version": 1}),
    _rest("DELETE", "/api/v1/datasets/{id}/aliases/{alias}", "/api/v1/datasets/points/aliases/golden"),
    _rest("POST", "/api/v1/datasets/{id}/gc", "/api/v1/datasets/points/gc", json={"dry_run": True}),
    _rest("DELETE", "/api/v1/datasets/{id}", "/api/v1/datasets/scratch"),
    _rest("GET", "/api/v1/models"),
    _rest("GET", "/api/v1/models/{id}", "/api/v1/models/cnn"),
    _rest("GET", "/api/v1/models/{id}/versions", "/api/v1/models/cnn/versions"),
    _rest("GET", "/api/v1/models/{id}/rows", "/api/v1/models/cnn/rows", params={"columns": "framework"}),
    _rest("PUT", "/api/v1/models/{id}/aliases/{alias}", "/api/v1/models/cnn/aliases/production", json={"version": 1}),
    _rest("DELETE", "/api/v1/models/{id}/aliases/{alias}", "/api/v1/models/cnn/aliases/production"),
    _rest("POST", "/api/v1/models/{id}/gc", "/api/v1/models/cnn/gc", json={"dry_run": True}),
    _rest("DELETE", "/api/v1/models/{id}", "/api/v1/models/doomed"),
    _rest("POST", "/api/v1/tasks", json={"name": "access", "script": "scripts/trivial.py", "params": {"n": 1}}),
    _rest("GET", "/api/v1/tasks"),
    _rest("GET", "/api/v1/tasks/{id}", lambda r: f"/api/v1/tasks/{r.task_id}"),
    _rest("GET", "/api/v1/tasks/{id}/logs", lambda r: f"/api/v1/tasks/{r.task_id}/logs"),
    _rest("GET", "/api/v1/tasks/{id}/logs", lambda r: f"/api/v1/tasks/{r.task_id}/logs", params={"follow": "true"}),
    _rest("GET", "/api/v1/tasks/{id}/metrics", lambda r: f"/api/v1/tasks/{r.task_id}/metrics"),
    _rest("GET", "/api/v1/tasks/{id}/metrics", lambda r: f"/api/v1/tasks/{r.task_id}/metrics",
          params={"follow": "true"}),
    _rest("GET", "/api/v1/runs", params=lambda r: {"ids": r.task_id}),
    _rest("POST", "/api/v1/tasks/{id}/cancel", lambda r: f"/api/v1/tasks/{r.names['sleeper']}/cancel"),
    _rest("POST", "/v2/repository/models/{model}/load", "/v2/repository/models/cnn/load"),
    _rest("GET", "/v2/health/live"),
    _rest("GET", "/v2/health/ready"),
    _rest("GET", "/v2"),
    _rest("GET", "/v2/models/{model}", "/v2/models/cnn"),
    _rest("GET", "/v2/models/{model}/versions/{version}", "/v2/models/cnn/versions/1"),
    _rest("GET", "/v2/models/{model}/ready", "/v2/models/cnn/ready"),
    _rest("GET", "/v2/models/{model}/versions/{version}/ready", "/v2/models/cnn/versions/1/ready"),
    _rest("POST", "/v2/models/{model}/infer", "/v2/models/cnn/infer", json=INFER),
    _rest("POST", "/v2/models/{model}/versions/{version}/infer", "/v2/models/cnn/versions/1/infer", json=INFER),
    _rest("POST", "/api/v1/models/{id}/predict", "/api/v1/models/cnn/predict", json=IMAGE),
    _rest("GET", "/v2/models/{model}/stats", "/v2/models/cnn/stats"),
    _rest("GET", "/v2/models/{model}/versions/{version}/stats", "/v2/models/cnn/versions/1/stats"),
    _rest("GET", "/v2/models/{model}/config", "/v2/models/cnn/config"),
    _rest("GET", "/v2/models/{model}/versions/{version}/config", "/v2/models/cnn/versions/1/config"),
    _rest("GET", "/v2/repository/index"),
    _rest("POST", "/v2/repository/index"),
    _rest("POST", "/v2/repository/models/{model}/unload", "/v2/repository/models/cnn/unload"),
    _rest("PUT", "/api/v1/pipelines/{name}", "/api/v1/pipelines/access_pipe", json=lambda r: ONE_STEP),
    _rest("GET", "/api/v1/pipelines"),
    _rest("GET", "/api/v1/pipelines/{name}", "/api/v1/pipelines/ready_pipe"),
    _rest("POST", "/api/v1/pipelines/{name}/runs", "/api/v1/pipelines/ready_pipe/runs", json={"cache": True}),
    _rest("GET", "/api/v1/pipelines/{name}/runs", "/api/v1/pipelines/ready_pipe/runs"),
    _rest("GET", "/api/v1/pipelines/{name}/runs/{run_id}",
          lambda r: f"/api/v1/pipelines/ready_pipe/runs/{r.names['pipeline_run']}"),
    _rest("POST", "/api/v1/pipelines/{name}/runs/{run_id}/cancel",
          lambda r: f"/api/v1/pipelines/slow_pipe/runs/{r.names['slow_run']}/cancel"),
    _rest("POST", "/api/v1/feedback", json={**IMAGE, "label": 3, "dataset": "access_feedback"}),
    _rest("GET", "/api/v1/whoami"),
    _rest("POST", "/api/v1/tokens", json={"name": "carol", "role": "viewer", "ttl_s": 3600}),
    _rest("GET", "/healthz"),
    _rest("GET", "/metrics"),
]
# An open platform (no AIP_TOKEN, no AIP_AUTH_KEY) signs no tokens: the one answer that differs between the modes.
OPEN_DIFFERS = {("POST", "/api/v1/tokens"): 400, "/aiplatform.v1.AccessService/CreateToken": "INVALID_ARGUMENT"}


# -- gRPC -------------------------------------------------------------------------------------------------------------

@dataclass
class GrpcCall:
    service: str  # storage | scheduler | inference
    method: str  # the full method name, /package.Service/Method
    request: Callable[[Prepared], Any]  # a message, or an iterator of messages for client streams
    response: Any  # the response message class (its FromString)
    kind: str = "unary_unary"


def _write(name: str) -> Callable[[Prepared], Iterator[stpb.WriteTableRequest]]:
    def requests(ready: Prepared) -> Iterator[stpb.WriteTableRequest]:
        yield stpb.WriteTableRequest(header=stpb.WriteHeader(kind=stpb.DATASET, name=name, mode=stpb.OVERWRITE))
        yield stpb.WriteTableRequest(chunk=stpb.ArrowChunk(arrow_ipc=arrow_ipc.encode(*_points())))
        yield stpb.WriteTableRequest(commit=stpb.WriteCommit())

    return requests


def _points() -> tuple[pa.Schema, list[pa.RecordBatch]]:
    table = pa.table({"x": [1.0, 2.0, 3.0]})
    return table.schema, table.to_batches()


def _infer_request() -> ipb.ModelInferRequest:
    request = ipb.ModelInferRequest(model_name="cnn", raw_input_contents=[np.zeros((1, 1, 28, 28), np.float32)
                                                                          .tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    return request


ST, SC, INF, ACC, PL = ("/aiplatform.v1.StorageService/", "/aiplatform.v1.SchedulerService/",
                        "/inference.GRPCInferenceService/", "/aiplatform.v1.AccessService/",
                        "/aiplatform.v1.PipelineService/")


def _pipeline_definition(r: Prepared) -> ppb.ApplyPipelineRequest:
    request = ppb.ApplyPipelineRequest(name="grpc_pipe")
    request.definition.update(ONE_STEP)
    return request

GRPC_CALLS: list[GrpcCall] = [
    GrpcCall("storage", ST + "WriteTable", _write("grpc_points"), stpb.TableInfo, "stream_unary"),
    GrpcCall("storage", ST + "ListTables", lambda r: stpb.ListTablesRequest(kind=stpb.DATASET),
             stpb.ListTablesResponse),
    GrpcCall("storage", ST + "GetTable", lambda r: stpb.GetTableRequest(kind=stpb.DATASET, name="grpc_points"),
             stpb.TableInfo),
    GrpcCall("storage", ST + "ListVersions", lambda r: stpb.ListVersionsRequest(kind=stpb.DATASET, name="grpc_points"),
             stpb.ListVersionsResponse),
    GrpcCall("storage", ST + "PreviewRows", lambda r: stpb.PreviewRowsRequest(kind=stpb.DATASET, name="grpc_points",
                                                                              limit=2), stpb.PreviewRowsResponse),
    GrpcCall("storage", ST + "ReadTable", lambda r: stpb.ReadTableRequest(kind=stpb.DATASET, name="grpc_points"),
             stpb.ArrowChunk, "unary_stream"),
    GrpcCall("storage", ST + "ResolveUri", lambda r: stpb.ResolveUriRequest(kind=stpb.DATASET, name="grpc_points"),
             stpb.ResolveUriResponse),
    GrpcCall("storage", ST + "CollectGarbage", lambda r: stpb.CollectGarbageRequest(
        kind=stpb.DATASET, name="grpc_points", dry_run=True), stpb.CollectGarbageResponse),
    GrpcCall("storage", ST + "SetAlias", lambda r: stpb.SetAliasRequest(kind=stpb.DATASET, name="grpc_points",
                                                                        alias="first", version=1), stpb.TableInfo),
    GrpcCall("storage", ST + "DeleteAlias", lambda r: stpb.DeleteAliasRequest(kind=stpb.DATASET, name="grpc_points",
                                                                              alias="first"), stpb.TableInfo),
    GrpcCall("storage", ST + "DeleteTable", lambda r: stpb.DeleteTableRequest(kind=stpb.DATASET, name="grpc_points"),
             stpb.DeleteTableResponse),
    GrpcCall("scheduler", SC + "SubmitTask", lambda r: spb.SubmitTaskRequest(name="grpc", script="scripts/trivial.py"),
             spb.Task),
    GrpcCall("scheduler", SC + "GetTask", lambda r: spb.GetTaskRequest(id=r.task_id), spb.Task),
    GrpcCall("scheduler", SC + "ListTasks", lambda r: spb.ListTasksRequest(page_size=5), spb.ListTasksResponse),
    GrpcCall("scheduler", SC + "StreamLogs", lambda r: spb.StreamLogsRequest(id=r.task_id), spb.LogChunk,
             "unary_stream"),
    GrpcCall("scheduler", SC + "WatchTask", lambda r: spb.WatchTaskRequest(id=r.task_id), spb.Task, "unary_stream"),
    GrpcCall("scheduler", SC + "StreamMetrics", lambda r: spb.StreamMetricsRequest(id=r.task_id), spb.MetricPoints,
             "unary_stream"),
    GrpcCall("scheduler", SC + "CancelTask", lambda r: spb.CancelTaskRequest(id=r.names["grpc_sleeper"]), spb.Task),
    # Only a task's own worker reports; anyone else, whatever their credential, is refused the same way.
    GrpcCall("scheduler", SC + "ReportTask", lambda r: spb.ReportTaskRequest(task_id=r.task_id, secret="not-it",
                                                                            started=1.0), spb.ReportTaskResponse),
    GrpcCall("scheduler", PL + "ApplyPipeline", _pipeline_definition, ppb.Pipeline),
    GrpcCall("scheduler", PL + "GetPipeline", lambda r: ppb.GetPipelineRequest(name="ready_pipe"), ppb.Pipeline),
    GrpcCall("scheduler", PL + "ListPipelines", lambda r: ppb.ListPipelinesRequest(), ppb.ListPipelinesResponse),
    GrpcCall("scheduler", PL + "RunPipeline", lambda r: ppb.RunPipelineRequest(name="ready_pipe"), ppb.PipelineRun),
    GrpcCall("scheduler", PL + "GetPipelineRun", lambda r: ppb.GetPipelineRunRequest(id=r.names["pipeline_run"]),
             ppb.PipelineRun),
    GrpcCall("scheduler", PL + "ListPipelineRuns", lambda r: ppb.ListPipelineRunsRequest(name="ready_pipe"),
             ppb.ListPipelineRunsResponse),
    GrpcCall("scheduler", PL + "WatchPipelineRun", lambda r: ppb.GetPipelineRunRequest(id=r.names["pipeline_run"]),
             ppb.PipelineRun, "unary_stream"),
    GrpcCall("scheduler", PL + "CancelPipelineRun", lambda r: ppb.GetPipelineRunRequest(id=r.names["grpc_slow_run"]),
             ppb.PipelineRun),
    GrpcCall("scheduler", ACC + "WhoAmI", lambda r: apb.WhoAmIRequest(), apb.Identity),
    GrpcCall("scheduler", ACC + "CreateToken", lambda r: apb.CreateTokenRequest(name="dave", role="editor", ttl_s=60),
             apb.CreateTokenResponse),
    GrpcCall("inference", INF + "RepositoryModelLoad", lambda r: ipb.RepositoryModelLoadRequest(model_name="cnn"),
             ipb.RepositoryModelLoadResponse),
    GrpcCall("inference", INF + "ServerLive", lambda r: ipb.ServerLiveRequest(), ipb.ServerLiveResponse),
    GrpcCall("inference", INF + "ServerReady", lambda r: ipb.ServerReadyRequest(), ipb.ServerReadyResponse),
    GrpcCall("inference", INF + "ModelReady", lambda r: ipb.ModelReadyRequest(name="cnn"), ipb.ModelReadyResponse),
    GrpcCall("inference", INF + "ServerMetadata", lambda r: ipb.ServerMetadataRequest(), ipb.ServerMetadataResponse),
    GrpcCall("inference", INF + "ModelMetadata", lambda r: ipb.ModelMetadataRequest(name="cnn"),
             ipb.ModelMetadataResponse),
    GrpcCall("inference", INF + "ModelInfer", lambda r: _infer_request(), ipb.ModelInferResponse),
    GrpcCall("inference", INF + "ModelStreamInfer", lambda r: iter([_infer_request()]), ipb.ModelStreamInferResponse,
             "stream_stream"),
    GrpcCall("inference", INF + "ModelConfig", lambda r: ipb.ModelConfigRequest(name="cnn"), ipb.ModelConfigResponse),
    GrpcCall("inference", INF + "ModelStatistics", lambda r: ipb.ModelStatisticsRequest(name="cnn"),
             ipb.ModelStatisticsResponse),
    GrpcCall("inference", INF + "RepositoryIndex", lambda r: ipb.RepositoryIndexRequest(), ipb.RepositoryIndexResponse),
    GrpcCall("inference", INF + "RepositoryModelUnload", lambda r: ipb.RepositoryModelUnloadRequest(model_name="cnn"),
             ipb.RepositoryModelUnloadResponse),
    *[GrpcCall("inference", INF + name, lambda r, req=request: req, response) for name, request, response in (
        ("SystemSharedMemoryStatus", ipb.SystemSharedMemoryStatusRequest(), ipb.SystemSharedMemoryStatusResponse),
        ("SystemSharedMemoryRegister", ipb.SystemSharedMemoryRegisterRequest(name="x", key="x", byte_size=8),
         ipb.SystemSharedMemoryRegisterResponse),
        ("SystemSharedMemoryUnregister", ipb.SystemSharedMemoryUnregisterRequest(name="x"),
         ipb.SystemSharedMemoryUnregisterResponse),
        ("CudaSharedMemoryStatus", ipb.CudaSharedMemoryStatusRequest(), ipb.CudaSharedMemoryStatusResponse),
        ("CudaSharedMemoryRegister", ipb.CudaSharedMemoryRegisterRequest(name="x", byte_size=8),
         ipb.CudaSharedMemoryRegisterResponse),
        ("CudaSharedMemoryUnregister", ipb.CudaSharedMemoryUnregisterRequest(name="x"),
         ipb.CudaSharedMemoryUnregisterResponse),
        ("TraceSetting", ipb.TraceSettingRequest(), ipb.TraceSettingResponse),
        ("LogSettings", ipb.LogSettingsRequest(), ipb.LogSettingsResponse),
    )],
]


def grpc_call(channel: grpc.Channel, call: GrpcCall, ready: Prepared, metadata: Any = None,
              timeout: float = 60) -> tuple[grpc.StatusCode, str]:
    """Make one call; its status code and message (OK and '' when it worked, streams read to their end)."""
    invoke = getattr(channel, call.kind)(call.method, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=call.response.FromString)
    try:
        answer = invoke(call.request(ready), metadata=metadata, timeout=timeout)
        if call.kind.endswith("stream"):
            list(answer)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def rest_status(response: Any) -> tuple[int, str]:
    """A response's status and, for a server-sent-events stream, whether it ended with an error event."""
    text = response.text
    if "text/event-stream" in response.headers.get("content-type", "") and "event: error" in text:
        return response.status_code, "event: error " + text.split("event: error", 1)[1][:200]
    body = text[:300]
    try:
        error = json.loads(text).get("error") if text.startswith("{") else None
    except ValueError:
        error = None
    return response.status_code, json.dumps(error) if error else body if response.status_code >= 400 else ""
