"""gRPC edge of the storage service: converts protobuf to plain values and calls the catalog."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ai_platform.core.auth import allow_write, caller
from ai_platform.core.errors import (
    NO_SPACE,
    Cancelled,
    InsufficientStorage,
    InvalidArgument,
    PlatformError,
    Unavailable,
    no_space,
)
from ai_platform.core.wire import TABLE_KINDS, WRITE_MODES
from ai_platform.protos.aiplatform.v1 import storage_pb2 as pb
from ai_platform.protos.aiplatform.v1 import storage_pb2_grpc
from storage_svc.catalog import GC_MIN_AGE_S, LakeCatalog, TableInfo, TableKind, WriteMode
from storage_svc.streams import COMMIT, Commit, Scan, read_payloads, write_stream


def _kind(value: int) -> TableKind:
    return TableKind(TABLE_KINDS.name(value))


def _timestamp(value) -> Timestamp:  # noqa: ANN001 - datetime
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def table_to_pb(info: TableInfo) -> pb.TableInfo:
    return pb.TableInfo(
        name=info.name,
        kind=TABLE_KINDS.number(info.kind.value),
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
        aliases=info.aliases,
        created_by=info.created_by,
        alias_moves={alias: pb.AliasMove(moved_by=by, moved_at=_timestamp(at))
                     for alias, (by, at) in info.alias_moves.items()},
    )


def who() -> str:
    """How the caller is recorded: a person's name, or a task's owner and the task."""
    principal = caller()
    return f"{principal.owner or '?'} (task {principal.task_id})" if principal.is_task else principal.subject


log = logging.getLogger("storage_svc")


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, catalog: LakeCatalog, max_message_bytes: int) -> None:
        self.catalog = catalog
        self.max_message_bytes = max_message_bytes

    def translate_error(self, exc: Exception) -> Exception:
        """A full disk is RESOURCE_EXHAUSTED saying so; I/O failures of a remote lake (object store down or
        unreachable) are UNAVAILABLE, not a bug here."""
        if not isinstance(exc, PlatformError) and no_space(exc):
            return InsufficientStorage(f"storage_svc: {NO_SPACE} in the lake at {self.catalog.home}; nothing was "
                                       f"committed, and what was committed before is intact")
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
                pb.VersionInfo(version=v.version, timestamp=_timestamp(v.timestamp), metadata=v.metadata,
                               created_by=v.created_by)
                for v in versions
            ]
        )

    async def DeleteTable(
        self, request: pb.DeleteTableRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTableResponse:
        await asyncio.to_thread(self.catalog.delete, _kind(request.kind), request.name)
        log.info("table deleted", extra={"table": f"{_kind(request.kind).value}s/{request.name}", "by": who()})
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
            self.catalog.resolve, _kind(request.kind), request.name, request.version or None, request.must_exist,
            request.alias,
        )
        return pb.ResolveUriResponse(
            uri=uri, exists=exists, version=version, storage_options=self.catalog.storage_options
        )

    async def CollectGarbage(
        self, request: pb.CollectGarbageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectGarbageResponse:
        min_age_s = request.min_age_s if request.HasField("min_age_s") else GC_MIN_AGE_S
        report = await asyncio.to_thread(self.catalog.collect_garbage, _kind(request.kind), request.name,
                                         request.keep_versions, min_age_s, request.dry_run)
        log.info("garbage collected", extra={"table": f"{_kind(request.kind).value}s/{request.name}", "by": who(),
                                             "dry_run": report.dry_run, "removed_versions": report.removed_versions,
                                             "removed_files": report.removed_files})
        return pb.CollectGarbageResponse(
            removed_versions=report.removed_versions, removed_files=report.removed_files,
            removed_bytes=report.removed_bytes, kept_unreferenced_files=report.kept_unreferenced_files,
            dry_run=report.dry_run)

    async def SetAlias(self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext) -> pb.TableInfo:
        # a task moves only the alias it was given as its output (a pipeline's gate: models/NAME@ALIAS)
        allow_write(caller(), f"{_kind(request.kind).value}s/{request.name}@{request.alias}")
        info = await asyncio.to_thread(self.catalog.set_alias, _kind(request.kind), request.name, request.alias,
                                       request.version, who())
        return table_to_pb(info)

    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: grpc.aio.ServicerContext) -> pb.TableInfo:
        info = await asyncio.to_thread(self.catalog.delete_alias, _kind(request.kind), request.name, request.alias,
                                       who())
        return table_to_pb(info)

    async def ReadTable(
        self, request: pb.ReadTableRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ArrowChunk]:
        scan = Scan(request.version or None, list(request.columns), request.filter, request.limit, request.offset,
                    request.batch_rows)
        async for payload in read_payloads(self.catalog, _kind(request.kind), request.name, scan,
                                           self.max_message_bytes):
            yield pb.ArrowChunk(arrow_ipc=payload)

    async def WriteTable(
        self, request_iterator: AsyncIterator[pb.WriteTableRequest], context: grpc.aio.ServicerContext
    ) -> pb.TableInfo:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument("the first WriteTable message must be a WriteHeader")
        header = first.header
        mode = WriteMode(WRITE_MODES.name(header.mode))
        allow_write(caller(), f"{_kind(header.kind).value}s/{header.name}")  # a task writes its own outputs only
        info = await write_stream(self.catalog, _kind(header.kind), header.name, mode, dict(header.metadata),
                                  _payloads(request_iterator), who())
        return table_to_pb(info)


async def _payloads(requests: AsyncIterator[pb.WriteTableRequest]) -> AsyncIterator[bytes | Commit]:
    """The messages after the header: each ArrowChunk's bytes, then COMMIT."""
    number, chunks = 1, 0
    async for message in requests:
        number += 1
        payload = message.WhichOneof("payload")
        if payload == "chunk":
            chunks += 1
            yield message.chunk.arrow_ipc
        elif payload == "header":
            raise InvalidArgument(f"message {number} is a second WriteHeader: a write is one WriteHeader, then "
                                  f"ArrowChunks, then one WriteCommit")
        elif payload is None:
            raise InvalidArgument(f"message {number} carries nothing: send an ArrowChunk or the WriteCommit")
        elif not chunks:
            break
        else:
            yield COMMIT
            return
    if not chunks:
        raise InvalidArgument("WriteTable needs at least one ArrowChunk after the header (it carries the schema)")
    raise Cancelled("WriteTable stream ended without a WriteCommit; nothing was committed")
