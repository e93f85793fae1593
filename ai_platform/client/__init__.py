"""Python client over gRPC. Datasets and models move as Arrow, in and out, batch by batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ai_platform.core import arrow_ipc
from ai_platform.core.limits import TASK_WAIT_MAX_S
from ai_platform.core.settings import ClientSettings
from ai_platform.core.views import (
    GarbageView,
    MetricsView,
    ModelView,
    PipelineRunView,
    PipelineView,
    RunView,
    TableView,
    TaskView,
    VersionView,
    as_dict,
    iso,
    run_matches,
)
from ai_platform.core.wire import (
    CALL_TIMEOUT_S,
    CLIENT_MAX_MESSAGE_BYTES,
    DATATYPE_OF_NUMPY,
    DATATYPES,
    MODEL_LOAD_TIMEOUT_S,
    TABLE_KINDS,
    TASK_STATUSES,
    WRITE_BATCH_BYTES,
    WRITE_MODES,
    encode_parameters,
    struct_value,
    sync_channel,
)
from ai_platform.protos.aiplatform.v1 import access_pb2 as access_pb
from ai_platform.protos.aiplatform.v1 import access_pb2_grpc, pipelines_pb2_grpc, scheduler_pb2_grpc, storage_pb2_grpc
from ai_platform.protos.aiplatform.v1 import pipelines_pb2 as pipelines_pb
from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as scheduler_pb
from ai_platform.protos.aiplatform.v1 import storage_pb2 as storage_pb
from ai_platform.protos.inference import grpc_service_pb2 as inference_pb
from ai_platform.protos.inference import grpc_service_pb2_grpc


class StorageClient:
    """Datasets and models in the lake, through storage_svc."""

    def __init__(self, addr: str | None = None, max_message_bytes: int | None = None) -> None:
        self.max_message_bytes = max_message_bytes or CLIENT_MAX_MESSAGE_BYTES
        settings = ClientSettings.from_env()
        self.channel = sync_channel(addr or settings.storage_addr, settings.token, self.max_message_bytes,
                                    settings.tls())
        self.stub = storage_pb2_grpc.StorageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def list(self, kind: str = "dataset") -> list[storage_pb.TableInfo]:
        return list(self.stub.ListTables(storage_pb.ListTablesRequest(kind=TABLE_KINDS.number(kind))).tables)

    def get(self, name: str, kind: str = "dataset", version: int = 0) -> storage_pb.TableInfo:
        return self.stub.GetTable(storage_pb.GetTableRequest(kind=TABLE_KINDS.number(kind), name=name, version=version))

    def versions(self, name: str, kind: str = "dataset") -> list[storage_pb.VersionInfo]:
        request = storage_pb.ListVersionsRequest(kind=TABLE_KINDS.number(kind), name=name)
        return list(self.stub.ListVersions(request).versions)

    def delete(self, name: str, kind: str = "dataset") -> None:
        self.stub.DeleteTable(storage_pb.DeleteTableRequest(kind=TABLE_KINDS.number(kind), name=name))

    def collect_garbage(self, name: str, kind: str = "dataset", *, keep_versions: int = 0,
                        min_age_s: int | None = None, dry_run: bool = False) -> storage_pb.CollectGarbageResponse:
        return self.stub.CollectGarbage(storage_pb.CollectGarbageRequest(
            kind=TABLE_KINDS.number(kind), name=name, keep_versions=keep_versions, min_age_s=min_age_s,
            dry_run=dry_run))

    def read_batches(
        self,
        name: str,
        kind: str = "dataset",
        *,
        version: int = 0,
        columns: list[str] | None = None,
        filter: str = "",
        limit: int = 0,
        offset: int = 0,
    ) -> Iterator[pa.RecordBatch]:
        request = storage_pb.ReadTableRequest(
            kind=TABLE_KINDS.number(kind),
            name=name,
            version=version,
            columns=columns or [],
            filter=filter,
            limit=limit,
            offset=offset,
        )
        for chunk in self.stub.ReadTable(request):
            yield from arrow_ipc.decode(chunk.arrow_ipc)[1]

    def read(self, name: str, kind: str = "dataset", **scan: object) -> pa.Table:
        request = storage_pb.ReadTableRequest(kind=TABLE_KINDS.number(kind), name=name, **scan)
        schema, batches = None, []
        for chunk in self.stub.ReadTable(request):
            schema, part = arrow_ipc.decode(chunk.arrow_ipc)
            batches.extend(part)
        return pa.Table.from_batches(batches, schema=schema)

    def write(
        self,
        name: str,
        data: pa.Table | pa.RecordBatchReader,
        kind: str = "dataset",
        mode: str = "create",
        metadata: dict[str, str] | None = None,
    ) -> storage_pb.TableInfo:
        """Stream ``data`` to the lake; the service commits once, after the last batch."""
        reader = data.to_reader() if isinstance(data, pa.Table) else data

        def requests() -> Iterator[storage_pb.WriteTableRequest]:
            header = storage_pb.WriteHeader(kind=TABLE_KINDS.number(kind), name=name, mode=WRITE_MODES.number(mode),
                                            metadata=metadata or {})
            yield storage_pb.WriteTableRequest(header=header)
            for payload in arrow_ipc.encode_chunks(_rebatched(reader), reader.schema, self.max_message_bytes):
                yield storage_pb.WriteTableRequest(chunk=storage_pb.ArrowChunk(arrow_ipc=payload))
            yield storage_pb.WriteTableRequest(commit=storage_pb.WriteCommit())

        return self.stub.WriteTable(requests())


FINISHED = {scheduler_pb.COMPLETED, scheduler_pb.FAILED, scheduler_pb.CANCELLED}
LONG_POLL_S = TASK_WAIT_MAX_S  # the longest GetTask waits for a task to finish


def task_result(task: scheduler_pb.Task) -> Any:
    """The JSON value that the task's ``run`` returned (None if none); whole numbers stay integers."""
    return struct_value(task.result) if task.HasField("result") else None


def status_name(task: scheduler_pb.Task) -> str:
    return TASK_STATUSES.name(task.status)


class SchedulerClient:
    """Tasks: submit, follow, cancel, through scheduler_svc."""

    def __init__(self, addr: str | None = None) -> None:
        settings = ClientSettings.from_env()
        self.channel = sync_channel(addr or settings.scheduler_addr, settings.token, tls=settings.tls())
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def submit(
        self,
        name: str,
        script: str,
        input: str = "",
        output: str = "",
        params: dict | None = None,
        *,
        num_cpus: float = 0,
        num_gpus: float = 0,
        memory_mb: int = 0,
        timeout_s: float = 0,
        resources: dict[str, Any] | None = None,
    ) -> scheduler_pb.Task:
        """``resources`` (``num_cpus``, ``num_gpus``, ``memory_mb``, ``custom``) may stand in for the keywords."""
        wanted = {"num_cpus": num_cpus, "num_gpus": num_gpus, "memory_mb": memory_mb, "custom": {},
                  **(resources or {})}
        unknown = set(wanted) - {"num_cpus", "num_gpus", "memory_mb", "custom"}
        if unknown:
            raise ValueError(f"unknown resources {sorted(unknown)}; use num_cpus, num_gpus, memory_mb and custom")
        request = scheduler_pb.SubmitTaskRequest(
            name=name,
            script=script,
            input=input,
            output=output,
            timeout_s=timeout_s,
            resources=scheduler_pb.Resources(**wanted),
        )
        request.params.update(params or {})
        return self.stub.SubmitTask(request)

    def get(self, task_id: str) -> scheduler_pb.Task:
        return self.stub.GetTask(scheduler_pb.GetTaskRequest(id=task_id))

    def list(
        self, statuses: list[str] | None = None, name: str = "", page_size: int = 0, page_token: str = "",
        owner: str = "",
    ) -> scheduler_pb.ListTasksResponse:
        codes = [TASK_STATUSES.number(s) for s in statuses or []]
        return self.stub.ListTasks(
            scheduler_pb.ListTasksRequest(statuses=codes, name=name, page_size=page_size, page_token=page_token,
                                          owner=owner)
        )

    def cancel(self, task_id: str) -> scheduler_pb.Task:
        return self.stub.CancelTask(scheduler_pb.CancelTaskRequest(id=task_id))

    def logs(self, task_id: str, follow: bool = False, tail_bytes: int = 0) -> Iterator[bytes]:
        for chunk in self.stub.StreamLogs(
            scheduler_pb.StreamLogsRequest(id=task_id, follow=follow, tail_bytes=tail_bytes)
        ):
            yield chunk.data

    def watch(self, task_id: str) -> Iterator[scheduler_pb.Task]:
        yield from self.stub.WatchTask(scheduler_pb.WatchTaskRequest(id=task_id))

    def metrics(self, task_id: str, follow: bool = False) -> Iterator[scheduler_pb.MetricPoints]:
        yield from self.stub.StreamMetrics(scheduler_pb.StreamMetricsRequest(id=task_id, follow=follow))

    def wait(self, task_id: str, timeout: float | None = None) -> scheduler_pb.Task:
        """Block until the task has finished; returns its final record. One long-polling GetTask a minute (the
        scheduler answers as the task ends), not a stream of every change."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_s = LONG_POLL_S if deadline is None else min(LONG_POLL_S, max(deadline - time.monotonic(), 0))
            asked = time.monotonic()
            task = self.stub.GetTask(scheduler_pb.GetTaskRequest(id=task_id, wait_s=wait_s),
                                     timeout=wait_s + CALL_TIMEOUT_S)
            if task.status in FINISHED:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} did not finish within {timeout}s")
            if time.monotonic() - asked < wait_s / 2:  # answered early, unfinished: never ask in a tight loop
                time.sleep(min(wait_s / 2, 1.0))


class PipelineClient:
    """Pipelines: apply a definition, run it, follow and cancel runs, through the scheduler's PipelineService."""

    def __init__(self, addr: str | None = None, channel: Any = None) -> None:
        """``channel``: the scheduler's, when one is open already (PipelineService is served beside it)."""
        if channel is None:
            settings = ClientSettings.from_env()
            channel = sync_channel(addr or settings.scheduler_addr, settings.token, tls=settings.tls())
        self.channel = channel
        self.stub = pipelines_pb2_grpc.PipelineServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def apply(self, name: str, definition: dict) -> pipelines_pb.Pipeline:
        request = pipelines_pb.ApplyPipelineRequest(name=name)
        request.definition.update(definition)
        return self.stub.ApplyPipeline(request)

    def get(self, name: str) -> pipelines_pb.Pipeline:
        return self.stub.GetPipeline(pipelines_pb.GetPipelineRequest(name=name))

    def list(self) -> list[pipelines_pb.Pipeline]:
        return list(self.stub.ListPipelines(pipelines_pb.ListPipelinesRequest()).pipelines)

    def run(self, name: str, params: dict | None = None, cache: bool = True) -> pipelines_pb.PipelineRun:
        """Start a run; ``params`` per step (``{"train": {"epochs": 1}}``), ``cache=False`` reruns every step."""
        request = pipelines_pb.RunPipelineRequest(name=name, no_cache=not cache)
        if params:
            request.params.update(params)
        return self.stub.RunPipeline(request)

    def get_run(self, run_id: str) -> pipelines_pb.PipelineRun:
        return self.stub.GetPipelineRun(pipelines_pb.GetPipelineRunRequest(id=run_id))

    def runs(self, name: str = "", page_size: int = 0) -> list[pipelines_pb.PipelineRun]:
        return list(self.stub.ListPipelineRuns(pipelines_pb.ListPipelineRunsRequest(name=name,
                                                                                    page_size=page_size)).runs)

    def watch(self, run_id: str, timeout: float | None = None) -> Iterator[pipelines_pb.PipelineRun]:
        yield from self.stub.WatchPipelineRun(pipelines_pb.GetPipelineRunRequest(id=run_id), timeout=timeout)

    def wait(self, run_id: str, timeout: float | None = None) -> pipelines_pb.PipelineRun:
        """Block until the run has ended; returns its final record."""
        run = None
        for run in self.watch(run_id, timeout):
            if run.status != "running":
                return run
        return run if run is not None else self.get_run(run_id)

    def cancel(self, run_id: str) -> pipelines_pb.PipelineRun:
        return self.stub.CancelPipelineRun(pipelines_pb.GetPipelineRunRequest(id=run_id))


def _rebatched(reader: pa.RecordBatchReader, target_bytes: int = WRITE_BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    """Batches of about ``target_bytes``: small ones are merged, big ones sliced (zero-copy).

    Several moderate messages let the client encode, the network carry and the service
    write at the same time, instead of one after the other.
    """
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in reader:
        if batch.nbytes >= target_bytes:
            if pending:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, size = [], 0
            yield from arrow_ipc.split_to_fit(batch, target_bytes + arrow_ipc.FRAMING_HEADROOM)
            continue
        pending.append(batch)
        size += batch.nbytes
        if size >= target_bytes:
            yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
            pending, size = [], 0
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


class InferenceClient:
    """Models served by inference_svc: load, unload, predict (numpy in, numpy out)."""

    def __init__(self, addr: str | None = None) -> None:
        settings = ClientSettings.from_env()
        self.channel = sync_channel(addr or settings.inference_addr, settings.token, tls=settings.tls())
        self.stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def load(self, name: str, version: int | None = None, **parameters: int | float | str | None) -> None:
        """Load (or hot-swap) a model. ``parameters``: ``max_batch_size``, ``max_queue_delay_us`` or
        ``batch_wait_timeout_s``, ``device``; with Ray Serve also ``replicas`` or ``min_replicas``/``max_replicas``/
        ``target_ongoing_requests``, and ``num_cpus``/``num_gpus`` per replica. Unknown ones are refused."""
        parameters = encode_parameters({"version": version, **parameters})
        self.stub.RepositoryModelLoad(inference_pb.RepositoryModelLoadRequest(model_name=name, parameters=parameters),
                                      timeout=MODEL_LOAD_TIMEOUT_S)

    def unload(self, name: str) -> None:
        self.stub.RepositoryModelUnload(inference_pb.RepositoryModelUnloadRequest(model_name=name))

    def index(self) -> list[dict]:
        return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
                for m in self.stub.RepositoryIndex(inference_pb.RepositoryIndexRequest()).models]

    def infer(self, name: str, inputs: Any, version: str = "", metadata: Any = None) -> tuple[list, str]:
        """Outputs (numpy arrays, in signature order) and the version that answered.

        ``metadata`` (a ModelMetadataResponse) saves a round trip when the caller already has it.
        """
        import numpy as np

        meta = metadata or self.stub.ModelMetadata(inference_pb.ModelMetadataRequest(name=name, version=version))
        arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        request = inference_pb.ModelInferRequest(model_name=name, model_version=version)
        for spec, array in zip(meta.inputs, arrays, strict=True):
            array = np.ascontiguousarray(array, dtype=DATATYPES[spec.datatype].numpy)
            request.inputs.add(name=spec.name, datatype=DATATYPE_OF_NUMPY[str(array.dtype)], shape=list(array.shape))
            request.raw_input_contents.append(array.tobytes())
        response = self.stub.ModelInfer(request)
        outputs = [np.frombuffer(response.raw_output_contents[i], DATATYPES[t.datatype].numpy).reshape(list(t.shape))
                   for i, t in enumerate(response.outputs)]
        return outputs, response.model_version


def identity_dict(identity: access_pb.Identity) -> dict:
    return {"subject": identity.subject, "role": identity.role, "task_id": identity.task_id,
            "expires_at": iso(identity.expires_at) if identity.HasField("expires_at") else None,
            "open": identity.open}


class Client:
    """The platform from Python, over gRPC: datasets, models, tasks and predictions.

    Addresses come from the arguments or the ``AIP_*`` variables, as the services read them::

        client = Client()
        client.write_dataset("points", pandas_frame)
        task = client.submit("train", "mnist/mnist_cnn.py", "datasets/mnist_clean", "models/mnist_cnn",
                             {"epochs": 1})
        client.wait(task["id"], progress=True)
    """

    def __init__(self, storage_addr: str | None = None, scheduler_addr: str | None = None,
                 inference_addr: str | None = None) -> None:
        self.storage = StorageClient(storage_addr)
        self.scheduler = SchedulerClient(scheduler_addr)
        self.inference = InferenceClient(inference_addr)
        self.access = access_pb2_grpc.AccessServiceStub(self.scheduler.channel)
        self.pipelines = PipelineClient(channel=self.scheduler.channel)

    def close(self) -> None:
        for part in (self.storage, self.scheduler, self.inference):
            part.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- datasets -------------------------------------------------------------------
    def list_datasets(self) -> list[dict]:
        return [as_dict(TableView.from_pb(t)) for t in self.storage.list("dataset")]

    def get_dataset(self, name: str, version: int = 0) -> dict:
        return as_dict(TableView.from_pb(self.storage.get(name, "dataset", version)))

    def dataset_versions(self, name: str) -> list[dict]:
        return [as_dict(VersionView.from_pb(v)) for v in self.storage.versions(name, "dataset")]

    def read_dataset(self, name: str, *, columns: list[str] | None = None, filter: str = "", limit: int = 0,
                     offset: int = 0, version: int = 0) -> pa.Table:
        return self.storage.read(name, "dataset", columns=columns or [], filter=filter, limit=limit, offset=offset,
                                 version=version)

    def read_dataset_pandas(self, name: str, **scan: Any) -> Any:
        return self.read_dataset(name, **scan).to_pandas()

    def write_dataset(self, name: str, data: Any, mode: str = "create") -> dict:
        """Write a pyarrow Table/RecordBatchReader or a pandas DataFrame; returns the new version's view."""
        if not isinstance(data, (pa.Table, pa.RecordBatchReader)):
            data = pa.Table.from_pandas(data, preserve_index=False)
        return as_dict(TableView.from_pb(self.storage.write(name, data, "dataset", mode)))

    def delete_dataset(self, name: str) -> None:
        self.storage.delete(name, "dataset")

    # -- models ---------------------------------------------------------------------
    def list_models(self) -> list[dict]:
        return [self.get_model(t.name) for t in self.storage.list("model")]

    def get_model(self, name: str, version: int = 0) -> dict:
        info = self.storage.get(name, "model", version)
        columns = ModelView.columns_of(info)
        if not columns:
            return as_dict(ModelView.from_pb(info))
        preview = self.storage.stub.PreviewRows(storage_pb.PreviewRowsRequest(
            kind=storage_pb.MODEL, name=name, version=info.version, limit=1, columns=columns))
        return as_dict(ModelView.from_pb(info, preview.rows_json))

    def model_versions(self, name: str) -> list[dict]:
        return [as_dict(VersionView.from_pb(v)) for v in self.storage.versions(name, "model")]

    def delete_model(self, name: str) -> None:
        self.storage.delete(name, "model")

    def set_alias(self, name: str, alias: str, version: int, kind: str = "model") -> dict:
        """Point ``alias`` (e.g. "production") at ``version``; inference serves ``model_version=alias`` from it."""
        self.storage.stub.SetAlias(storage_pb.SetAliasRequest(kind=TABLE_KINDS.number(kind), name=name, alias=alias,
                                                              version=version))
        return self.get_model(name) if kind == "model" else self.get_dataset(name)

    def delete_alias(self, name: str, alias: str, kind: str = "model") -> dict:
        self.storage.stub.DeleteAlias(storage_pb.DeleteAliasRequest(kind=TABLE_KINDS.number(kind), name=name,
                                                                    alias=alias))
        return self.get_model(name) if kind == "model" else self.get_dataset(name)

    def collect_garbage(self, name: str, kind: str = "dataset", *, keep_versions: int = 0,
                        min_age_s: int | None = None, dry_run: bool = False) -> dict:
        """Free a table's storage: unreferenced files older than ``min_age_s`` (default one hour) and, with
        ``keep_versions=N``, every version but the newest N. ``dry_run`` reports without removing."""
        return as_dict(GarbageView.from_pb(self.storage.collect_garbage(
            name, kind, keep_versions=keep_versions, min_age_s=min_age_s, dry_run=dry_run)))

    # -- tasks ----------------------------------------------------------------------
    def submit(self, name: str, script: str, input: str = "", output: str = "", params: dict | None = None,
               **options: Any) -> dict:
        return as_dict(TaskView.from_pb(self.scheduler.submit(name, script, input, output, params, **options)))

    def get_task(self, task_id: str) -> dict:
        return as_dict(TaskView.from_pb(self.scheduler.get(task_id)))

    def list_tasks(self, status: list[str] | None = None, name: str = "", limit: int = 50,
                   owner: str = "") -> list[dict]:
        return [as_dict(TaskView.from_pb(t)) for t in self.scheduler.list(status, name, limit, owner=owner).tasks]

    def whoami(self) -> dict:
        """Who the platform takes this client for: ``{"subject", "role", "task_id", "expires_at", "open"}``."""
        return identity_dict(self.access.WhoAmI(access_pb.WhoAmIRequest()))

    def create_token(self, name: str, role: str, ttl_s: float = 30 * 24 * 3600) -> str:
        """A signed token for a person (``viewer``, ``editor`` or ``admin``): signed here when ``AIP_AUTH_KEY`` is
        set, else by the platform (an admin's call)."""
        settings = ClientSettings.from_env()
        if settings.auth_key:
            from ai_platform.core.auth import Authority, Role

            return Authority.of(settings).person_token(name, Role.named(role), ttl_s)
        return self.access.CreateToken(access_pb.CreateTokenRequest(name=name, role=role, ttl_s=ttl_s)).token

    def cancel(self, task_id: str) -> dict:
        return as_dict(TaskView.from_pb(self.scheduler.cancel(task_id)))

    # -- pipelines ------------------------------------------------------------------
    def pipeline(self, name: str, steps: list[dict] | None = None, *, definition: dict | None = None,
                 **fields: Any) -> dict:
        """Define (or redefine) a pipeline: its ``steps`` and any other field (``on``, ``max_concurrent_runs``,
        ``description``), or a whole ``definition`` as a YAML file holds it::

            client.pipeline("nightly", [
                {"name": "clean", "script": "mnist/mnist_clean.py", "input": "download",
                 "output": "datasets/mnist_clean"},
                {"name": "train", "script": "mnist/mnist_cnn.py", "input": "steps.clean.output",
                 "output": "models/mnist_cnn", "params": {"epochs": 1}},
            ], on={"cron": "0 3 * * *"})
        """
        body = dict(definition or {})
        if steps is not None:
            body["steps"] = steps
        body.update(fields)
        return as_dict(PipelineView.from_pb(self.pipelines.apply(name, body)))

    def run_pipeline(self, name: str, params: dict | None = None, cache: bool = True, wait: bool = False,
                     timeout: float | None = None) -> dict:
        """Start a run (``params`` per step: ``{"train": {"epochs": 1}}``); with ``wait``, its final record."""
        run = self.pipelines.run(name, params, cache)
        if wait:
            run = self.pipelines.wait(run.id, timeout)
        return as_dict(PipelineRunView.from_pb(run))

    def pipeline_run(self, run_id: str) -> dict:
        return as_dict(PipelineRunView.from_pb(self.pipelines.get_run(run_id)))

    def pipeline_runs(self, name: str = "", limit: int = 50) -> list[dict]:
        return [as_dict(PipelineRunView.from_pb(r)) for r in self.pipelines.runs(name, limit)]

    def list_pipelines(self) -> list[dict]:
        return [as_dict(PipelineView.from_pb(p)) for p in self.pipelines.list()]

    def cancel_pipeline_run(self, run_id: str) -> dict:
        return as_dict(PipelineRunView.from_pb(self.pipelines.cancel(run_id)))

    def metrics(self, task_id: str) -> Any:
        """The task's metric points as a pandas frame: ``key``, ``step``, ``value``, ``time`` (UTC), sorted by key
        and step (``frame.pivot(index="step", columns="key", values="value")`` gives one column per series)."""
        import pandas as pd

        view = MetricsView.from_pb(list(self.scheduler.metrics(task_id)))
        rows = [(key, step, value, at) for key, points in view.series.items() for step, value, at in points]
        frame = pd.DataFrame(rows, columns=["key", "step", "value", "time"])
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame.sort_values(["key", "step"], kind="stable", ignore_index=True)

    def runs(self, ids: list[str] | None = None, *, name_prefix: str = "", script: str = "",
             limit: int = 20) -> list[dict]:
        """Runs side by side (``GET /api/v1/runs``): each task's params, ``final`` metrics (the last point of each
        series) and ``series``; by ``ids``, or the newest ``limit`` tasks whose name starts with ``name_prefix``
        and (if given) ran ``script``."""
        if ids:
            tasks = [self.scheduler.get(i) for i in ids]
        else:
            listing = self.scheduler.stub.ListTasks(scheduler_pb.ListTasksRequest(page_size=1000)).tasks
            tasks = [t for t in listing if run_matches(t, name_prefix, script)][:limit]
        return [as_dict(RunView.from_pb(t, list(self.scheduler.metrics(t.id)))) for t in tasks]

    def logs(self, task_id: str, follow: bool = False) -> Iterator[str]:
        for data in self.scheduler.logs(task_id, follow):
            yield data.decode(errors="replace")

    def wait(self, task_id: str, progress: bool = False, timeout: float | None = None) -> dict:
        """Block until the task ends; with ``progress``, draw a progress bar from its reports."""
        if not progress:
            return as_dict(TaskView.from_pb(self.scheduler.wait(task_id, timeout)))
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        task = self.scheduler.get(task_id)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TextColumn("{task.fields[message]}"), TimeElapsedColumn()) as bar:
            row = bar.add_task(task.name, total=1.0, message="")
            for task in self.scheduler.watch(task_id):
                bar.update(row, completed=task.progress.fraction, message=task.progress.message or status_name(task))
            if status_name(task) == "completed":
                bar.update(row, completed=1.0)
        return as_dict(TaskView.from_pb(task))

    # -- inference ------------------------------------------------------------------
    def deploy(self, name: str, **options: Any) -> None:
        self.inference.load(name, **options)

    def predict(self, name: str, inputs: Any, version: str = "") -> Any:
        """The model's first output for ``inputs`` (numpy, batch first), in chunks the model accepts."""
        import numpy as np

        stub = self.inference.stub
        config = stub.ModelConfig(inference_pb.ModelConfigRequest(name=name, version=version)).config
        metadata = stub.ModelMetadata(inference_pb.ModelMetadataRequest(name=name, version=version))
        arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        step = max(config.max_batch_size, 1)
        parts = [self.inference.infer(name, [a[start: start + step] for a in arrays], version, metadata)[0][0]
                 for start in range(0, len(arrays[0]), step)]
        return np.concatenate(parts)
