"""Python client over gRPC. Datasets and models move as Arrow, in and out, batch by batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pyarrow as pa
from google.protobuf import json_format

from ai_platform import arrow_ipc
from ai_platform.config import Settings
from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as scheduler_pb
from ai_platform.protos.aiplatform.v1 import scheduler_pb2_grpc, storage_pb2_grpc
from ai_platform.protos.aiplatform.v1 import storage_pb2 as storage_pb

KINDS = {"dataset": storage_pb.DATASET, "model": storage_pb.MODEL}
MODES = {"create": storage_pb.CREATE, "append": storage_pb.APPEND, "overwrite": storage_pb.OVERWRITE}


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message limits, and reconnect backoff capped at 2 s so a peer that comes back is used again quickly."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


class StorageClient:
    """Datasets and models in the lake, through storage_svc."""

    def __init__(self, addr: str | None = None, max_message_bytes: int | None = None) -> None:
        settings = Settings()
        self.max_message_bytes = max_message_bytes or settings.max_message_bytes
        self.channel = grpc.insecure_channel(
            addr or settings.storage_addr, options=channel_options(self.max_message_bytes)
        )
        self.stub = storage_pb2_grpc.StorageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def list(self, kind: str = "dataset") -> list[storage_pb.TableInfo]:
        return list(self.stub.ListTables(storage_pb.ListTablesRequest(kind=KINDS[kind])).tables)

    def get(self, name: str, kind: str = "dataset", version: int = 0) -> storage_pb.TableInfo:
        return self.stub.GetTable(storage_pb.GetTableRequest(kind=KINDS[kind], name=name, version=version))

    def versions(self, name: str, kind: str = "dataset") -> list[storage_pb.VersionInfo]:
        return list(self.stub.ListVersions(storage_pb.ListVersionsRequest(kind=KINDS[kind], name=name)).versions)

    def delete(self, name: str, kind: str = "dataset") -> None:
        self.stub.DeleteTable(storage_pb.DeleteTableRequest(kind=KINDS[kind], name=name))

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
            kind=KINDS[kind],
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
        request = storage_pb.ReadTableRequest(kind=KINDS[kind], name=name, **scan)
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
            header = storage_pb.WriteHeader(kind=KINDS[kind], name=name, mode=MODES[mode], metadata=metadata or {})
            yield storage_pb.WriteTableRequest(header=header)
            for payload in arrow_ipc.encode_chunks(_rebatched(reader), reader.schema, self.max_message_bytes):
                yield storage_pb.WriteTableRequest(chunk=storage_pb.ArrowChunk(arrow_ipc=payload))
            yield storage_pb.WriteTableRequest(commit=storage_pb.WriteCommit())

        return self.stub.WriteTable(requests())


FINISHED = {scheduler_pb.COMPLETED, scheduler_pb.FAILED, scheduler_pb.CANCELLED}


def task_result(task: scheduler_pb.Task) -> Any:
    """The JSON value that the task's ``run`` returned (None if none)."""
    return json_format.MessageToDict(task.result) if task.HasField("result") else None


def status_name(task: scheduler_pb.Task) -> str:
    return scheduler_pb.TaskStatus.Name(task.status).lower()


class SchedulerClient:
    """Tasks: submit, follow, cancel, through scheduler_svc."""

    def __init__(self, addr: str | None = None) -> None:
        self.channel = grpc.insecure_channel(addr or Settings().scheduler_addr, options=channel_options(64 << 20))
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
    ) -> scheduler_pb.Task:
        request = scheduler_pb.SubmitTaskRequest(
            name=name,
            script=script,
            input=input,
            output=output,
            timeout_s=timeout_s,
            resources=scheduler_pb.Resources(num_cpus=num_cpus, num_gpus=num_gpus, memory_mb=memory_mb),
        )
        request.params.update(params or {})
        return self.stub.SubmitTask(request)

    def get(self, task_id: str) -> scheduler_pb.Task:
        return self.stub.GetTask(scheduler_pb.GetTaskRequest(id=task_id))

    def list(
        self, statuses: list[str] | None = None, name: str = "", page_size: int = 0, page_token: str = ""
    ) -> scheduler_pb.ListTasksResponse:
        codes = [scheduler_pb.TaskStatus.Value(s.upper()) for s in statuses or []]
        return self.stub.ListTasks(
            scheduler_pb.ListTasksRequest(statuses=codes, name=name, page_size=page_size, page_token=page_token)
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

    def wait(self, task_id: str, timeout: float | None = None) -> scheduler_pb.Task:
        """Block until the task has finished; returns its final record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        task = self.get(task_id)
        for task in self.stub.WatchTask(scheduler_pb.WatchTaskRequest(id=task_id), timeout=timeout):
            if task.status in FINISHED:
                return task
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} did not finish within {timeout}s")
        return task


def _rebatched(reader: pa.RecordBatchReader, target_bytes: int = 4 * 1024 * 1024) -> Iterator[pa.RecordBatch]:
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
