"""Datasets and models: catalog, versions, rows, upload and export. Translation to StorageService only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ai_platform.core import arrow_ipc
from ai_platform.core.errors import NO_SPACE, no_space
from ai_platform.core.views import (
    ERRORS,
    AliasRequest,
    DatasetView,
    GarbageRequest,
    GarbageView,
    ModelView,
    RowsView,
    StatusView,
    TableView,
    TrainedModel,
    VersionView,
)
from ai_platform.core.wire import INT64_MAX, TABLE_KINDS, UPLOAD_TIMEOUT_S, WRITE_MODES
from ai_platform.protos.aiplatform.v1 import storage_pb2 as pb
from gateway.errors import ApiError, TableName, invalid

router = APIRouter()
UPLOAD_FORMATS = {"application/vnd.apache.arrow.stream": "arrow", "application/vnd.apache.arrow.file": "arrow",
                  "application/vnd.apache.parquet": "parquet", "application/x-parquet": "parquet",
                  "application/parquet": "parquet", "text/csv": "csv"}
EXPORT_TYPES = {"arrow": "application/vnd.apache.arrow.stream", "parquet": "application/vnd.apache.parquet",
                "csv": "text/csv"}


async def model_view(request: Request, info: pb.TableInfo) -> ModelView:
    upstreams = request.app.state.upstreams
    columns = ModelView.columns_of(info)
    if not columns:
        return ModelView.from_pb(info)
    preview = await upstreams.call("storage", upstreams.storage.PreviewRows(pb.PreviewRowsRequest(
        kind=pb.MODEL, name=info.name, version=info.version, limit=1, columns=columns),
        timeout=upstreams.timeout_s), "MODEL_NOT_FOUND")
    return ModelView.from_pb(info, preview.rows_json)


async def trained_from(request: Request, dataset: str) -> list[TrainedModel]:
    """The models whose newest version's lineage names ``dataset`` as its input."""
    upstreams = request.app.state.upstreams
    listing = await upstreams.call("storage", upstreams.storage.ListTables(
        pb.ListTablesRequest(kind=pb.MODEL), timeout=upstreams.timeout_s))
    candidates = [t for t in listing.tables if any(c.name == "lineage" for c in t.schema)]
    previews = await asyncio.gather(*(upstreams.call("storage", upstreams.storage.PreviewRows(pb.PreviewRowsRequest(
        kind=pb.MODEL, name=t.name, limit=1, columns=["lineage"]), timeout=upstreams.timeout_s))
        for t in candidates), return_exceptions=True)
    found = []
    for table, preview in zip(candidates, previews, strict=True):
        if isinstance(preview, BaseException):
            continue  # deleted meanwhile, or unreadable: not part of the answer
        rows = json.loads(preview.rows_json)
        lineage = json.loads(rows[-1].get("lineage") or "{}") if rows else {}
        source = lineage.get("input") or {}
        if source.get("kind") == "dataset" and source.get("name") == dataset:
            found.append(TrainedModel(model=table.name, version=table.version, dataset_version=source["version"],
                                      task_id=lineage.get("task_id", "")))
    return found


async def table_view(request: Request, info: pb.TableInfo) -> TableView:
    """A table as the REST routes show it: a model with its newest row's facts, or a dataset."""
    return await model_view(request, info) if info.kind == pb.MODEL else DatasetView.from_pb(info)


def _register(collection: str, view_model: type) -> None:
    singular = collection[:-1]
    kind, not_found = TABLE_KINDS.number(singular), f"{singular.upper()}_NOT_FOUND"

    @router.get(f"/api/v1/{collection}", response_model=list[view_model], response_model_by_alias=True,
                tags=[collection], summary=f"List {collection}", responses=ERRORS)
    async def list_tables(request: Request) -> list[TableView]:
        upstreams = request.app.state.upstreams
        response = await upstreams.call("storage", upstreams.storage.ListTables(
            pb.ListTablesRequest(kind=kind), timeout=upstreams.timeout_s))
        if kind == pb.MODEL:
            return list(await asyncio.gather(*(model_view(request, t) for t in response.tables)))
        return [DatasetView.from_pb(t) for t in response.tables]

    @router.get(f"/api/v1/{collection}/{{id}}", response_model=view_model, response_model_by_alias=True,
                tags=[collection], summary=f"Describe a {singular}", responses=ERRORS)
    async def get_table(request: Request, id: TableName, version: int = Query(0, ge=0, le=INT64_MAX)) -> TableView:
        upstreams = request.app.state.upstreams
        info = await upstreams.call("storage", upstreams.storage.GetTable(
            pb.GetTableRequest(kind=kind, name=id, version=version), timeout=upstreams.timeout_s), not_found)
        if kind == pb.MODEL:
            return await model_view(request, info)
        return DatasetView(**DatasetView.fields_from_pb(info), models=await trained_from(request, id))

    @router.delete(f"/api/v1/{collection}/{{id}}", response_model=StatusView, tags=[collection],
                   summary=f"Delete a {singular} and all its versions", responses=ERRORS)
    async def delete_table(request: Request, id: TableName) -> dict:
        upstreams = request.app.state.upstreams
        await upstreams.call("storage", upstreams.storage.DeleteTable(
            pb.DeleteTableRequest(kind=kind, name=id), timeout=upstreams.timeout_s), not_found)
        return {"status": "deleted"}

    @router.get(f"/api/v1/{collection}/{{id}}/versions", response_model=list[VersionView], tags=[collection],
                summary=f"Every committed version of a {singular}", responses=ERRORS)
    async def list_versions(request: Request, id: TableName) -> list[VersionView]:
        upstreams = request.app.state.upstreams
        response = await upstreams.call("storage", upstreams.storage.ListVersions(
            pb.ListVersionsRequest(kind=kind, name=id), timeout=upstreams.timeout_s), not_found)
        return [VersionView.from_pb(v) for v in response.versions]

    @router.post(f"/api/v1/{collection}/{{id}}/gc", response_model=GarbageView, tags=[collection],
                 summary=f"Free a {singular}'s storage: unreferenced files, old versions on request", responses=ERRORS)
    async def collect_garbage(request: Request, id: TableName, body: GarbageRequest | None = None) -> GarbageView:
        """Removes data files no version references (left by an interrupted write) once older than ``min_age_s``,
        and with ``keep_versions`` every version but the newest N (Lance's cleanup; tagged versions stay)."""
        body = body or GarbageRequest()
        upstreams = request.app.state.upstreams
        response = await upstreams.call("storage", upstreams.storage.CollectGarbage(pb.CollectGarbageRequest(
            kind=kind, name=id, keep_versions=body.keep_versions, min_age_s=body.min_age_s, dry_run=body.dry_run),
            timeout=upstreams.timeout_s), not_found)
        return GarbageView.from_pb(response)

    @router.put(f"/api/v1/{collection}/{{id}}/aliases/{{alias}}", response_model=view_model,
                response_model_by_alias=True, tags=[collection], responses=ERRORS,
                summary=f"Point an alias (e.g. production) at a version of a {singular}")
    async def set_alias(request: Request, id: TableName, alias: TableName, body: AliasRequest) -> TableView:
        upstreams = request.app.state.upstreams
        info = await upstreams.call("storage", upstreams.storage.SetAlias(pb.SetAliasRequest(
            kind=kind, name=id, alias=alias, version=body.version), timeout=upstreams.timeout_s), not_found)
        return await table_view(request, info)

    @router.delete(f"/api/v1/{collection}/{{id}}/aliases/{{alias}}", response_model=view_model,
                   response_model_by_alias=True, tags=[collection], responses=ERRORS,
                   summary=f"Remove an alias of a {singular}")
    async def delete_alias(request: Request, id: TableName, alias: TableName) -> TableView:
        upstreams = request.app.state.upstreams
        info = await upstreams.call("storage", upstreams.storage.DeleteAlias(pb.DeleteAliasRequest(
            kind=kind, name=id, alias=alias), timeout=upstreams.timeout_s), not_found)
        return await table_view(request, info)

    @router.get(f"/api/v1/{collection}/{{id}}/rows", response_model=RowsView, tags=[collection],
                summary=f"Preview rows of a {singular}", responses=ERRORS)
    async def preview_rows(request: Request, id: TableName, limit: int = Query(10, ge=1, le=1000),
                           offset: int = Query(0, ge=0, le=INT64_MAX), version: int = Query(0, ge=0, le=INT64_MAX),
                           columns: str = Query("", description="comma-separated; empty = all")) -> dict:
        upstreams = request.app.state.upstreams
        wanted = [c for c in columns.split(",") if c]
        response = await upstreams.call("storage", upstreams.storage.PreviewRows(pb.PreviewRowsRequest(
            kind=kind, name=id, version=version, offset=offset, limit=limit, columns=wanted),
            timeout=upstreams.timeout_s), not_found)
        return {"rows": json.loads(response.rows_json), "total_rows": response.total_rows, "offset": offset,
                "limit": limit}


_register("datasets", DatasetView)
_register("models", ModelView)


# -- upload ---------------------------------------------------------------------------------

def _open_batches(path: str, fmt: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Schema and a batch iterator over the spooled upload; InvalidRequest when it is not that format."""
    try:
        if fmt == "arrow":
            source = pa.memory_map(path)
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
            return reader.schema, iter(reader)
        if fmt == "parquet":
            parquet = pq.ParquetFile(path)
            return parquet.schema_arrow, parquet.iter_batches(batch_size=65536)
        reader = pacsv.open_csv(path)
        return reader.schema, iter(reader)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise invalid(f"the body is not a valid {fmt} file: {exc}") from None


@router.post("/api/v1/datasets/{id}", response_model=TableView, response_model_by_alias=True, status_code=201,
             tags=["datasets"], summary="Upload a dataset (Arrow IPC stream, Parquet or CSV body)", responses=ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {
                 t: {"schema": {"type": "string", "format": "binary"}} for t in UPLOAD_FORMATS}}})
async def upload_dataset(request: Request, id: TableName,
                         mode: str = Query("create", pattern="^(create|append|overwrite)$"),
                         format: str = Query("", pattern="^(|arrow|parquet|csv)$",
                                             description="overrides the Content-Type")) -> TableView:
    """The body is spooled to a temporary file (never held in memory), then streamed to storage batch by batch;
    the new version is committed only after the last batch."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = format or UPLOAD_FORMATS.get(content_type)
    if fmt is None:
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", f"send Arrow IPC, Parquet or CSV (one of {list(UPLOAD_FORMATS)}"
                                                      f"), or say ?format=arrow|parquet|csv; got {content_type!r}")
    state = request.app.state
    with spool_file(state.spool_dir) as spool:
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > state.upload_limit:
                    raise ApiError(413, "PAYLOAD_TOO_LARGE", f"upload is over the {state.upload_limit} byte limit")
                spool.write(chunk)
            spool.flush()
        except OSError as exc:
            if not no_space(exc):
                raise
            raise ApiError(507, "INSUFFICIENT_STORAGE", f"gateway: {NO_SPACE} for the upload's spool file in "
                                                        f"{state.spool_dir} (TMPDIR); nothing was written") from None
        if size == 0:
            raise invalid("the request body is empty")
        schema, batches = await asyncio.to_thread(_open_batches, spool.name, fmt)
        failure: list[Exception] = []

        async def requests() -> AsyncIterator[pb.WriteTableRequest]:
            yield pb.WriteTableRequest(header=pb.WriteHeader(kind=pb.DATASET, name=id, mode=WRITE_MODES.number(mode)))
            sent = False
            try:
                while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                    for payload in arrow_ipc.encode_chunks([batch], schema, state.max_message_bytes // 2):
                        sent = True
                        yield pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=payload))
            except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
                failure.append(exc)
                return  # no commit: storage keeps the last version
            if not sent:
                yield pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=arrow_ipc.encode(schema, [])))
            yield pb.WriteTableRequest(commit=pb.WriteCommit())

        upstreams = state.upstreams
        try:
            info = await upstreams.call("storage", upstreams.storage.WriteTable(requests(), timeout=UPLOAD_TIMEOUT_S),
                                       "DATASET_NOT_FOUND")
        except ApiError:
            if failure:
                raise invalid(f"the body is not a valid {fmt} file: {failure[0]}") from None
            raise
    return TableView.from_pb(info)


SPOOL_PREFIX = "aip-upload-"


def spool_file(directory: str) -> Any:
    """A temporary file for one upload, named after this process, so that a gateway starting later can tell the
    spool files of a gateway that died (see :func:`remove_stale_spools`)."""
    return tempfile.NamedTemporaryFile(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=directory)


def remove_stale_spools(directory: str) -> int:
    """Remove the spool files left by gateways that are gone (killed during an upload); returns how many."""
    removed = 0
    for path in Path(directory).glob(f"{SPOOL_PREFIX}*"):
        pid = path.name[len(SPOOL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


# -- export ---------------------------------------------------------------------------------

class _Drain:
    """A write-only file that hands out what was written since the last take()."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _writer(fmt: str, sink: _Drain, schema: pa.Schema) -> Any:
    if fmt == "arrow":
        return pa.ipc.new_stream(sink, schema)
    if fmt == "parquet":
        return pq.ParquetWriter(sink, schema)
    return pacsv.CSVWriter(sink, schema)


@router.get("/api/v1/datasets/{id}/export", tags=["datasets"], responses={
    **ERRORS, 200: {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in EXPORT_TYPES.values()},
                    "description": "the table, streamed"}},
    summary="Export a dataset as Arrow IPC, Parquet or CSV, streamed batch by batch")
async def export_dataset(request: Request, id: TableName, format: str = Query("arrow", pattern="^(arrow|parquet|csv)$"),
                         version: int = Query(0, ge=0, le=INT64_MAX), columns: str = "", filter: str = "",
                         limit: int = Query(0, ge=0, le=INT64_MAX)) -> StreamingResponse:
    upstreams = request.app.state.upstreams
    call = upstreams.storage.ReadTable(pb.ReadTableRequest(
        kind=pb.DATASET, name=id, version=version, columns=[c for c in columns.split(",") if c], filter=filter,
        limit=limit))
    stream = call.__aiter__()
    first = await upstreams.call("storage", stream.__anext__(), "DATASET_NOT_FOUND")  # errors before any byte is sent
    if format == "csv":
        nested = [f.name for f in arrow_ipc.decode(first.arrow_ipc)[0] if pa.types.is_nested(f.type)
                  or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        if nested:
            call.cancel()
            raise invalid(f"CSV cannot hold the column(s) {nested} (lists, structs, binary): export them as arrow or "
                          f"parquet, or leave them out with ?columns=")

    async def body() -> AsyncIterator[bytes]:
        schema, batches = arrow_ipc.decode(first.arrow_ipc)
        sink = _Drain()
        writer = _writer(format, sink, schema)
        try:
            for batch in batches:
                writer.write_batch(batch)
            yield sink.take()
            async for chunk in stream:
                for batch in arrow_ipc.decode(chunk.arrow_ipc)[1]:
                    writer.write_batch(batch)
                if data := sink.take():
                    yield data
        finally:
            writer.close()
            call.cancel()
        if data := sink.take():
            yield data

    extension = {"arrow": "arrow", "parquet": "parquet", "csv": "csv"}[format]
    return StreamingResponse(body(), media_type=EXPORT_TYPES[format],
                             headers={"Content-Disposition": f'attachment; filename="{id}.{extension}"'})
