"""gRPC edge of the storage service: converts protobuf to plain values and calls the catalog."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pyarrow as pa
from google.protobuf.timestamp_pb2 import Timestamp

from ai_platform import arrow_ipc
from ai_platform.errors import Cancelled, InvalidArgument, Unavailable
from ai_platform.protos.aiplatform.v1 import storage_pb2 as pb
from ai_platform.protos.aiplatform.v1 import storage_pb2_grpc
from storage_svc.catalog import LakeCatalog, TableInfo, TableKind, WriteMode

_KINDS = {pb.DATASET: TableKind.DATASET, pb.MODEL: TableKind.MODEL}
_KIND_PB = {v: k for k, v in _KINDS.items()}
_MODES = {
    pb.WRITE_MODE_UNSPECIFIED: WriteMode.CREATE,
    pb.CREATE: WriteMode.CREATE,
    pb.APPEND: WriteMode.APPEND,
    pb.OVERWRITE: WriteMode.OVERWRITE,
}
_END = object()


def _kind(value: int) -> TableKind:
    try:
        return _KINDS[value]
    except KeyError:
        raise InvalidArgument("kind must be DATASET or MODEL") from None


def _timestamp(value) -> Timestamp:  # noqa: ANN001 - datetime
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def table_to_pb(info: TableInfo) -> pb.TableInfo:
    return pb.TableInfo(
        name=info.name,
        kind=_KIND_PB[info.kind],
        uri=info.uri,
        schema=[pb.ColumnInfo(name=n, type=t) for n, t in info.schema],
        num_rows=info.num_rows,
        size_bytes=info.size_bytes,
        version=info.version,
        latest_version=info.latest_version,
        num_versions=info.num_versions,
        created_at=_timestamp(info.created_at),
        updated_at=_timestamp(info.updated_at),
        metadata=info.metadata,
    )


def _next_payloads(reader: pa.RecordBatchReader, schema: pa.Schema, max_bytes: int) -> list[bytes] | None:
    """Read and encode the next batch (runs in a worker thread); None at the end."""
    try:
        batch = reader.read_next_batch()
    except StopIteration:
        return None
    return list(arrow_ipc.encode_chunks([batch], schema, max_bytes)) if batch.num_rows else []


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, catalog: LakeCatalog, max_message_bytes: int) -> None:
        self.catalog = catalog
        self.max_message_bytes = max_message_bytes

    def translate_error(self, exc: Exception) -> Exception:
        """I/O failures of a remote lake (object store down or unreachable) are UNAVAILABLE, not a bug here."""
        if isinstance(exc, OSError) and self.catalog.remote:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Unavailable(f"the lake at {self.catalog.home} cannot be reached: {detail}")
        return exc

    async def ListTables(
        self, request: pb.ListTablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTablesResponse:
        tables = await asyncio.to_thread(self.catalog.list_tables, _kind(request.kind))
        return pb.ListTablesResponse(tables=[table_to_pb(t) for t in tables])

    async def GetTable(self, request: pb.GetTableRequest, context: grpc.aio.ServicerContext) -> pb.TableInfo:
        info = await asyncio.to_thread(
            self.catalog.describe, _kind(request.kind), request.name, request.version or None
        )
        return table_to_pb(info)

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVersionsResponse:
        versions = await asyncio.to_thread(self.catalog.versions, _kind(request.kind), request.name)
        return pb.ListVersionsResponse(
            versions=[
                pb.VersionInfo(version=v.version, timestamp=_timestamp(v.timestamp), metadata=v.metadata)
                for v in versions
            ]
        )

    async def DeleteTable(
        self, request: pb.DeleteTableRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTableResponse:
        await asyncio.to_thread(self.catalog.delete, _kind(request.kind), request.name)
        return pb.DeleteTableResponse()

    async def PreviewRows(
        self, request: pb.PreviewRowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreviewRowsResponse:
        rows, total = await asyncio.to_thread(
            self.catalog.preview,
            _kind(request.kind),
            request.name,
            request.version or None,
            request.offset,
            request.limit,
            list(request.columns),
        )
        return pb.PreviewRowsResponse(rows_json=json.dumps(rows), total_rows=total)

    async def ResolveUri(
        self, request: pb.ResolveUriRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveUriResponse:
        uri, exists, version = await asyncio.to_thread(
            self.catalog.resolve, _kind(request.kind), request.name, request.version or None, request.must_exist
        )
        return pb.ResolveUriResponse(
            uri=uri, exists=exists, version=version, storage_options=self.catalog.storage_options
        )

    async def ReadTable(
        self, request: pb.ReadTableRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ArrowChunk]:
        reader = await asyncio.to_thread(
            self.catalog.scan,
            _kind(request.kind),
            request.name,
            request.version or None,
            list(request.columns),
            request.filter,
            request.limit,
            request.offset,
            request.batch_rows,
        )
        schema, sent = reader.schema, False
        try:
            # Read and encode the next batch in a thread while the current one is on the wire.
            pending = asyncio.ensure_future(asyncio.to_thread(_next_payloads, reader, schema, self.max_message_bytes))
            while (payloads := await pending) is not None:
                pending = asyncio.ensure_future(
                    asyncio.to_thread(_next_payloads, reader, schema, self.max_message_bytes)
                )
                for payload in payloads:
                    sent = True
                    yield pb.ArrowChunk(arrow_ipc=payload)
            if not sent:
                yield pb.ArrowChunk(arrow_ipc=arrow_ipc.encode(schema, []))
        finally:
            reader.close()

    async def WriteTable(
        self, request_iterator: AsyncIterator[pb.WriteTableRequest], context: grpc.aio.ServicerContext
    ) -> pb.TableInfo:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument("the first WriteTable message must be a WriteHeader")
        header = first.header
        kind, mode = _kind(header.kind), _MODES.get(header.mode)
        if mode is None:
            raise InvalidArgument(f"unknown write mode {header.mode}")
        self.catalog.uri(kind, header.name)  # validates the name before reading any data
        chunk = await anext(request_iterator, None)
        if chunk is None or chunk.WhichOneof("payload") != "chunk":
            raise InvalidArgument("WriteTable needs at least one ArrowChunk after the header (it carries the schema)")
        schema, first_batches = arrow_ipc.decode(chunk.chunk.arrow_ipc, "chunk 1")

        inbox: queue.Queue = queue.Queue(maxsize=4)
        aborted, writer_done = threading.Event(), threading.Event()

        def source() -> Iterator[pa.RecordBatch]:
            yield from first_batches
            while True:
                if aborted.is_set():
                    raise Cancelled("WriteTable was cancelled by the client; nothing was committed")
                try:
                    item = inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item

        def put(item: object) -> None:
            while not writer_done.is_set():
                try:
                    inbox.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def write() -> TableInfo:
            try:
                return self.catalog.write(kind, header.name, mode, schema, source(), dict(header.metadata))
            finally:
                writer_done.set()

        writer = asyncio.ensure_future(asyncio.to_thread(write))
        try:
            committed, failed, number = False, False, 1
            async for message in request_iterator:
                number += 1
                if writer.done():
                    break
                payload = message.WhichOneof("payload")
                if payload == "commit":
                    committed = True
                    break
                if payload != "chunk":
                    raise InvalidArgument(f"message {number} must be an ArrowChunk or WriteCommit, not a {payload}")
                try:
                    batch_schema, batches = arrow_ipc.decode(message.chunk.arrow_ipc, f"chunk {number}")
                    if not batch_schema.remove_metadata().equals(schema.remove_metadata()):
                        raise InvalidArgument(f"chunk {number} has a different schema from chunk 1")
                except InvalidArgument as exc:
                    failed = True
                    await asyncio.to_thread(put, exc)  # the writer raises it and commits nothing
                    break
                await asyncio.to_thread(put, batches)
            if not failed and not writer.done():
                if not committed:
                    raise Cancelled("WriteTable stream ended without a WriteCommit; nothing was committed")
                await asyncio.to_thread(put, _END)
        except BaseException:
            aborted.set()
            raise
        return table_to_pb(await writer)
