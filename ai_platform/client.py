"""Python client over gRPC. Datasets and models move as Arrow, in and out, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pyarrow as pa

from ai_platform import arrow_ipc
from ai_platform.config import Settings
from ai_platform.protos.aiplatform.v1 import storage_pb2 as storage_pb
from ai_platform.protos.aiplatform.v1 import storage_pb2_grpc

KINDS = {"dataset": storage_pb.DATASET, "model": storage_pb.MODEL}
MODES = {"create": storage_pb.CREATE, "append": storage_pb.APPEND, "overwrite": storage_pb.OVERWRITE}


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes)]


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
