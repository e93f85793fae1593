"""ModelInfer over a Unix socket: the gateway's hop to inference when both run on one host.

A Python gRPC call costs about 0.4 ms of a lone request's time at each end (call set-up, HTTP/2 framing, the
completion queue); the same protobuf messages in length-prefixed frames over a Unix socket cost about 0.1 ms. The
messages, the checks and the errors are gRPC's: only the framing differs (calls are counted in
``aip_socket_requests_total``). gRPC stays the contract
(other hosts, clients, tritonclient); this socket is an accelerator ``aip up`` turns on between its own processes.

Frames: ``kind`` (1 byte), ``call`` (8 bytes, the client's number for the exchange), ``length`` (4 bytes), then
``length`` bytes. A connection starts with HELLO carrying the platform's token (empty without one); then CALL frames,
numbered from 1 (0 is the connection's own), carry ``ModelInferRequest`` bytes, answered in any order by REPLY
(``ModelInferResponse`` bytes) or ERROR (JSON ``{"code": <grpc status name>, "message": ...}``) with the same
``call``. A frame the server cannot accept (a wrong token, an unknown kind, call 0, a frame over the size limit) is
answered by an ERROR with call 0 and the connection closes; a malformed request gets its own ERROR and the
connection stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from ai_platform.core.auth import Authority, allow
from ai_platform.core.errors import (
    Internal,
    InvalidArgument,
    PlatformError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from ai_platform.core.metrics import RequestMetrics
from ai_platform.core.wire import error_from_status, refuse_unknown_fields
from ai_platform.protos.inference import grpc_service_pb2 as pb

log = logging.getLogger("ai_platform.core.infer_socket")

HEADER = struct.Struct("<BQI")  # kind, call, length
HELLO, CALL, REPLY, ERROR = 1, 2, 3, 4
HELLO_LIMIT = 8192  # bytes a HELLO may hold: a credential
HELLO_TIMEOUT_S = 5.0  # a connection that has not said HELLO by then is closed
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
RETRY_AFTER_S = 1.0  # after the socket failed to connect, calls go over gRPC this long before it is tried again

SOCKET_METRICS = RequestMetrics("aip_socket_request", "ModelInfer calls over inference's Unix socket",
                                ["method", "code"])

Handler = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]


def _frame(kind: int, call: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, call, len(payload)) + payload


def _error_frame(call: int, exc: PlatformError) -> bytes:
    message = exc.summary if isinstance(exc, Internal) else exc.message
    return _frame(ERROR, call, json.dumps({"code": exc.grpc_code.name, "message": message}).encode())


class FrameReader:
    """Splits a byte stream into frames; ``limit`` bounds a frame's payload."""

    def __init__(self, limit: int) -> None:
        self.limit, self.buffer = limit, bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        """The whole frames received so far, one at a time (so that the limit may change between two: a HELLO
        small, the calls after it up to the message limit); ResourceExhausted for a frame over the limit."""
        self.buffer += data
        while len(self.buffer) >= HEADER.size:
            kind, call, length = HEADER.unpack_from(self.buffer, 0)
            if length > self.limit:
                raise ResourceExhausted(f"a frame of {length} bytes is over the {self.limit} byte limit")
            end = HEADER.size + length
            if len(self.buffer) < end:
                return
            frame = (kind, call, bytes(self.buffer[HEADER.size:end]))
            del self.buffer[:end]
            yield frame


# -- the server, in inference_svc ------------------------------------------------------------------------------------

class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: InferSocketServer) -> None:
        # Until HELLO proves the caller, a frame may hold a token's worth of bytes, not a message's.
        self.server, self.frames = server, FrameReader(HELLO_LIMIT)
        self.transport: asyncio.Transport | None = None
        self.greeted = False
        self.hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.hello_timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._no_hello)

    def _no_hello(self) -> None:
        if not self.greeted:
            self.send(_error_frame(0, Unauthenticated(f"no HELLO within {HELLO_TIMEOUT_S:g} s")))
            if self.transport is not None:
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            for kind, call, payload in self.frames.feed(data):
                if not self.greeted:
                    if kind != HELLO:
                        raise InvalidArgument(f"a connection starts with HELLO ({HELLO}), got frame kind {kind}")
                    principal = self.server.authority.verify(f"Bearer {payload.decode(errors='replace')}"
                                                             if payload else "")
                    allow(principal, MODEL_INFER)
                    self.greeted = True
                    self.frames.limit = self.server.max_message_bytes
                    if self.hello_timer is not None:
                        self.hello_timer.cancel()
                elif kind == CALL:
                    if call == 0:
                        raise InvalidArgument("CALL frames are numbered from 1; 0 answers for the connection")
                    self.server.start_call(self, call, payload)
                else:
                    raise InvalidArgument(f"unknown frame kind {kind}; a client sends HELLO ({HELLO}) once, then "
                                          f"CALL ({CALL})")
        except PlatformError as exc:
            SOCKET_METRICS.observe(("ModelInfer", exc.grpc_code.name), 0.0)
            self.send(_error_frame(0, exc))
            if self.transport is not None:
                self.transport.close()

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.hello_timer is not None:
            self.hello_timer.cancel()


class InferSocketServer:
    """Serves ``handler`` (the gRPC servicer's ModelInfer logic) on a Unix socket, with the gRPC edge's checks:
    the caller's credential (once per connection, in HELLO: a few KiB at most, within HELLO_TIMEOUT_S), unknown
    fields, the message size limit."""

    def __init__(self, path: str, handler: Handler, authority: Authority, max_message_bytes: int) -> None:
        self.path, self.handler, self.authority = path, handler, authority
        self.max_message_bytes = max_message_bytes
        self.server: asyncio.AbstractServer | None = None
        self.in_flight: set[asyncio.Task] = set()
        self.stopping = False  # calls that arrive now are refused (UNAVAILABLE); those in flight finish

    async def start(self) -> None:
        """Listen at ``path`` (its directory made private to this user); a live server already there is an error,
        a stale socket file is replaced."""
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = path.parent.stat()
        if folder.st_uid != os.getuid() or folder.st_mode & 0o022:
            raise OSError(f"{path.parent} must belong to this user and be writable by no one else")
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise OSError(f"{path} exists and is not a socket")
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                except OSError:  # nobody listens: a socket file left by a server that died
                    path.unlink()
                else:
                    raise OSError(f"another server is listening on {path}")
        old_umask = os.umask(0o177)  # the socket file: this user only
        try:
            self.server = await asyncio.get_running_loop().create_unix_server(lambda: _ServerConnection(self),
                                                                              str(path))
        finally:
            os.umask(old_umask)

    def start_call(self, connection: _ServerConnection, call: int, payload: bytes) -> None:
        if self.stopping:
            SOCKET_METRICS.observe(("ModelInfer", "UNAVAILABLE"), 0.0)
            connection.send(_error_frame(call, Unavailable("inference_svc is shutting down")))
            return
        task = asyncio.get_running_loop().create_task(self._serve(connection, call, payload))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _serve(self, connection: _ServerConnection, call: int, payload: bytes) -> None:
        started, code = time.perf_counter(), "OK"
        try:
            try:
                request = pb.ModelInferRequest.FromString(payload)
            except DecodeError as exc:
                raise InvalidArgument(f"the CALL frame is not a ModelInferRequest: {exc}") from None
            refuse_unknown_fields(request, deep=False)
            reply = (await self.handler(request)).SerializeToString()
            if len(reply) > self.max_message_bytes:
                raise ResourceExhausted(f"the response is {len(reply)} bytes, over the {self.max_message_bytes} "
                                        f"byte message limit")
            frame = _frame(REPLY, call, reply)
        except Exception as exc:  # noqa: BLE001 - the edge: every failure becomes an ERROR frame
            error = exc
            if not isinstance(error, PlatformError):
                log.error("unhandled error in ModelInfer over %s", self.path, exc_info=error)
                error = Internal(str(error), summary="internal error in ModelInfer (details in the service log)")
            code, frame = error.grpc_code.name, _error_frame(call, error)
        SOCKET_METRICS.observe(("ModelInfer", code), time.perf_counter() - started)
        connection.send(frame)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, give calls in flight ``grace_s`` to finish, remove the socket file."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=grace_s)
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()


# -- the client, in the gateway --------------------------------------------------------------------------------------

class _ClientConnection(asyncio.Protocol):
    def __init__(self, client: InferSocketClient) -> None:
        self.client, self.frames = client, FrameReader(client.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, asyncio.Future] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = list(self.frames.feed(data))
        except ResourceExhausted as exc:
            self.fail(Unavailable(f"{self.client.name} sent {exc.message}"))
            return
        for kind, call, payload in frames:
            if call == 0 and kind == ERROR:  # the server refused the connection
                self.fail(self.client.error(payload))
                return
            future = self.waiting.pop(call, None)
            if future is None or future.done():  # its caller gave up (deadline)
                continue
            if kind == REPLY:
                future.set_result(payload)
            elif kind == ERROR:
                future.set_exception(self.client.error(payload))
            else:
                self.fail(Unavailable(f"{self.client.name} sent an unknown frame kind {kind}"))
                return

    def fail(self, exc: PlatformError) -> None:
        """Every call waiting on this connection fails with ``exc``; the connection closes."""
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.client.forget(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(Unavailable(f"{self.client.name} is unavailable: the connection closed"
                              + (f" ({exc})" if exc else "")))


class InferSocketClient:
    """One connection to inference's Unix socket, shared by concurrent calls (each answered by its call number)."""

    def __init__(self, path: str, token: str, max_message_bytes: int) -> None:
        self.path, self.token, self.max_message_bytes = path, token.encode(), max_message_bytes
        self.name = f"inference_svc at unix:{path}"
        self._connection: _ClientConnection | None = None
        self._connecting: asyncio.Task | None = None
        self._calls = 0
        self.retry_at = 0.0  # until then the socket is not tried (it failed to connect)
        self.failing = False  # the last attempt to connect failed (said once in the log, not every second)

    @property
    def usable(self) -> bool:
        """False for a while after the socket failed to connect: the caller goes over gRPC meanwhile."""
        return time.monotonic() >= self.retry_at

    def error(self, payload: bytes) -> PlatformError:
        try:
            body = json.loads(payload)
            code, message = grpc.StatusCode[body["code"]], str(body["message"])
        except (ValueError, KeyError, TypeError):
            return Internal(f"{self.name} sent an unreadable ERROR frame: {payload[:200]!r}",
                            summary="inference_svc failed")
        return error_from_status(code, message, self.name)

    async def _connect(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_unix_connection(lambda: _ClientConnection(self), self.path)
        except OSError as exc:
            self.retry_at = time.monotonic() + RETRY_AFTER_S
            if not self.failing:
                log.warning("cannot connect to %s (%s): ModelInfer goes over gRPC until it can", self.name, exc)
            self.failing = True
            raise ConnectionError(f"cannot connect to {self.name}: {exc}") from None
        if self.failing:
            log.info("connected to %s again", self.name)
        self.failing = False
        connection.transport.write(_frame(HELLO, 0, self.token))  # type: ignore[union-attr]
        self._connection = connection
        return connection

    async def connection(self) -> _ClientConnection:
        """The open connection, made on first use (concurrent first calls share one attempt)."""
        if self._connection is not None:
            return self._connection
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    def forget(self, connection: _ClientConnection) -> None:
        if self._connection is connection:
            self._connection = None

    async def infer(self, request: pb.ModelInferRequest, timeout_s: float) -> pb.ModelInferResponse:
        """ModelInfer; ConnectionError when the socket cannot be reached (nothing was sent: the caller may use
        gRPC), PlatformError when inference answered with an error or went away with the call."""
        connection = await self.connection()
        if connection.transport is None:
            raise Unavailable(f"{self.name} is unavailable: the connection closed")
        self._calls += 1
        call = self._calls
        future = asyncio.get_running_loop().create_future()
        connection.waiting[call] = future
        connection.transport.write(_frame(CALL, call, request.SerializeToString()))
        try:
            payload = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            connection.waiting.pop(call, None)
            raise Unavailable(f"{self.name} is unavailable: no answer within {timeout_s:g}s") from None
        return pb.ModelInferResponse.FromString(payload)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.fail(Unavailable(f"{self.name}: the client closed"))

