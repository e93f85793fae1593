"""Arrow IPC framing for gRPC: each message carries one complete, self-describing IPC stream."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from ai_platform.core.errors import InvalidArgument

# Room left in a gRPC message for the IPC schema, framing and protobuf envelope.
FRAMING_HEADROOM = 64 * 1024


def encode(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode(data: bytes, what: str = "Arrow IPC payload") -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """Schema and batches of one IPC stream; InvalidArgument if the bytes are not one."""
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(data))
        return reader.schema, list(reader)
    except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowNotImplementedError) as exc:
        raise InvalidArgument(f"{what} is not a valid Arrow IPC stream: {exc}") from exc


def split_to_fit(batch: pa.RecordBatch, max_bytes: int) -> Iterator[pa.RecordBatch]:
    """Slices of ``batch`` whose buffers each fit in ``max_bytes`` (minus framing headroom)."""
    budget = max(max_bytes - FRAMING_HEADROOM, 1)
    if batch.nbytes <= budget or batch.num_rows <= 1:
        yield batch
        return
    rows = max(1, batch.num_rows * budget // batch.nbytes)
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def encode_chunks(reader: Iterable[pa.RecordBatch], schema: pa.Schema, max_bytes: int) -> Iterator[bytes]:
    """One encoded message per (possibly split) batch; a schema-only message when there are no rows."""
    sent = False
    for batch in reader:
        for piece in split_to_fit(batch, max_bytes):
            sent = True
            yield encode(schema, [piece])
    if not sent:
        yield encode(schema, [])
