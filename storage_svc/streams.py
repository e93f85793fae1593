"""Arrow IPC streams in and out of the catalog, bridging the async edge and Lance's blocking reads and writes.

Reading encodes the next batch in a thread while the current one is on the wire. Writing feeds a blocking Lance
write from the incoming stream through a small bounded queue, so memory stays flat and a stream that breaks, or
carries a bad chunk, commits nothing. Plain Python over Arrow; the gRPC edge only converts messages.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from ai_platform.core import arrow_ipc
from ai_platform.core.errors import Cancelled, InvalidArgument
from storage_svc.catalog import LakeCatalog, TableInfo, TableKind, WriteMode

WRITE_QUEUE_DEPTH = 4  # decoded chunks waiting for the writer thread
_POLL_S = 0.1  # how often a blocked side looks whether the other gave up
_END = object()


class Commit:
    """The end of a write stream: commit what came before it."""


COMMIT = Commit()


@dataclass
class Scan:
    """What to read: a projection, filter and row window of one version (0 = the latest)."""

    version: int | None = None
    columns: list[str] = field(default_factory=list)
    filter: str = ""
    limit: int = 0
    offset: int = 0
    batch_rows: int = 0


def _next_payloads(reader: pa.RecordBatchReader, schema: pa.Schema, max_bytes: int) -> list[bytes] | None:
    """Read and encode the next batch (runs in a worker thread); None at the end."""
    try:
        batch = reader.read_next_batch()
    except StopIteration:
        return None
    return list(arrow_ipc.encode_chunks([batch], schema, max_bytes)) if batch.num_rows else []


async def read_payloads(
    catalog: LakeCatalog, kind: TableKind, name: str, scan: Scan, max_bytes: int
) -> AsyncIterator[bytes]:
    """The table as Arrow IPC payloads of at most ``max_bytes``; an empty result still carries the schema."""
    reader = await asyncio.to_thread(catalog.scan, kind, name, scan.version, scan.columns, scan.filter, scan.limit,
                                     scan.offset, scan.batch_rows)
    schema, sent = reader.schema, False
    try:
        pending = asyncio.ensure_future(asyncio.to_thread(_next_payloads, reader, schema, max_bytes))
        while (payloads := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(_next_payloads, reader, schema, max_bytes))
            for payload in payloads:
                sent = True
                yield payload
        if not sent:
            yield arrow_ipc.encode(schema, [])
    finally:
        reader.close()


async def write_stream(
    catalog: LakeCatalog,
    kind: TableKind,
    name: str,
    mode: WriteMode,
    metadata: dict[str, str],
    messages: AsyncIterator[bytes | Commit],
    created_by: str = "",
) -> TableInfo:
    """Write the Arrow IPC payloads of ``messages`` as one commit, once :data:`COMMIT` arrives.

    The first payload carries the schema. A stream that ends without COMMIT, a payload that is not Arrow, or a
    failure of ``messages`` itself commits nothing; the catalog checks every batch against the first one's schema.
    """
    catalog.uri(kind, name)  # validates the name before reading any data
    first = await anext(messages, None)
    if not isinstance(first, bytes):
        raise InvalidArgument("a write needs at least one Arrow chunk after the header (it carries the schema)")
    schema, first_batches = arrow_ipc.decode(first, "chunk 1")

    inbox: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE_DEPTH)
    aborted, writer_done = threading.Event(), threading.Event()

    def source() -> Iterator[pa.RecordBatch]:
        yield from first_batches
        while True:
            if aborted.is_set():
                raise Cancelled("the write was cancelled by the client; nothing was committed")
            try:
                item = inbox.get(timeout=_POLL_S)
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
                inbox.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    loop = asyncio.get_running_loop()
    writer: asyncio.Future = loop.create_future()

    def settle(result: TableInfo | None, error: BaseException | None) -> None:
        if not writer.done():
            writer.set_exception(error) if error is not None else writer.set_result(result)

    def write() -> None:
        try:
            loop.call_soon_threadsafe(settle, catalog.write(kind, name, mode, schema, source(), metadata, created_by),
                                      None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        finally:
            writer_done.set()

    # NOTE: a thread of its own, not the event loop's shared executor: each write blocks its thread until its
    # stream ends, and with more writes than executor threads the chunks' hand-offs would wait for a free one.
    threading.Thread(target=write, name=f"write-{name}", daemon=True).start()
    try:
        committed, number = False, 1
        async for message in messages:
            number += 1
            if writer.done():
                break
            if isinstance(message, Commit):
                committed = True
                break
            try:
                batches = arrow_ipc.decode(message, f"chunk {number}")[1]
            except InvalidArgument as exc:
                await asyncio.to_thread(put, exc)  # the writer raises it and commits nothing
                break
            await asyncio.to_thread(put, batches)
        else:
            if not writer.done():
                raise Cancelled("the write stream ended without a commit; nothing was committed")
        if committed and not writer.done():
            await asyncio.to_thread(put, _END)
    except BaseException:
        aborted.set()
        raise
    return await writer
