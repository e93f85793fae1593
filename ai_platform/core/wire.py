"""The wire layer: gRPC channel options, status <-> platform error, the enum and datatype tables, and timeouts.

Everything that two ends of a call must agree on, known once. Service logic never sees protobuf; the edges use
these tables to convert, and ``Peer`` turns a peer's failure into a :class:`PlatformError` that names the peer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import unknown_fields

from ai_platform.core.errors import (
    CANNOT_PLACE,
    NO_SPACE,
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InsufficientStorage,
    Internal,
    InvalidArgument,
    NoCapacity,
    NotFound,
    PermissionDenied,
    PlatformError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from ai_platform.core.tls import PLAINTEXT, TlsConfig, explain_unavailable
from ai_platform.protos.aiplatform.v1 import scheduler_pb2, storage_pb2
from ai_platform.protos.inference import grpc_service_pb2, model_config_pb2

T = TypeVar("T")

# -- timeouts and limits -------------------------------------------------------------------------------------------
INT64_MAX = 2**63 - 1  # the largest integer a protobuf int64 field carries
CALL_TIMEOUT_S = 10.0  # a service's call to a peer (resolve a name, list the lake)
HEALTH_TIMEOUT_S = 1.0  # one health probe
MODEL_LOAD_TIMEOUT_S = 300.0  # loading a model reads and compiles its program
UPLOAD_TIMEOUT_S = 3600.0  # streaming an upload (gigabytes) into one commit
WRITE_BATCH_BYTES = 4 * 2**20  # a client's write batches: big enough to amortise framing, small enough to overlap
CLIENT_MAX_MESSAGE_BYTES = 64 * 2**20  # what clients accept by default (the services' own default limit)
RECONNECT_BACKOFF_MAX_MS = 2000  # a peer that comes back is used again within 2 s


def channel_options(max_message_bytes: int = CLIENT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Message limits, and reconnect backoff capped so a peer that comes back is used again quickly."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
    ]


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    # so_reuseport off: a second server on a taken port must fail, not silently share it.
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


# -- status <-> error ----------------------------------------------------------------------------------------------
_ERRORS: dict[grpc.StatusCode, type[PlatformError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
_PEER_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def error_from_rpc(exc: grpc.RpcError, peer: str, tls: bool = False) -> PlatformError:
    """A peer's failed call as a platform error. ``peer`` names it, e.g. ``storage_svc at 127.0.0.1:50051``.

    A peer that is down or too slow is UNAVAILABLE naming it; statuses that say the caller was wrong keep their
    meaning and the peer's message; anything else (INTERNAL, UNKNOWN, ...) is the peer's internal failure.
    """
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    return error_from_status(code, exc.details() if hasattr(exc, "details") else "", peer, tls)


def error_from_status(code: grpc.StatusCode, details: str, peer: str, tls: bool = False) -> PlatformError:
    """A peer's status and message as a platform error (see :func:`error_from_rpc`); ``tls``: whether this side
    spoke TLS, to say so when a handshake is what failed."""
    details = details or code.name
    if code in _PEER_DOWN:
        return Unavailable(f"{peer} is unavailable: {explain_unavailable(details, tls)}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return _ERRORS[code](f"{peer} refused the call: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and NO_SPACE in details.lower():
        return InsufficientStorage(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and CANNOT_PLACE in details:
        return NoCapacity(details)
    error = _ERRORS.get(code)
    if error is not None:
        return error(details)
    return Internal(f"{peer} failed ({code.name}): {details}", summary=f"{peer.split(' at ')[0]} failed")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


TokenSource = Callable[[], str]


class _AioBearer:
    """Adds a token to the calls of a grpc.aio channel: the one ``source`` gives for this call (the caller's own,
    which the gateway forwards), so every service checks who is asking."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        token = self.source()
        if not token:
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *bearer(token))
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)


# grpc.aio files an interceptor under the first call type it implements only, so each type needs its own object.
class _UnaryUnaryBearer(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        return await continuation(self._with_token(details), request)


class _UnaryStreamBearer(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001, ANN201
        return await continuation(self._with_token(details), request)


class _StreamUnaryBearer(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return await continuation(self._with_token(details), requests)


class _StreamStreamBearer(_AioBearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return await continuation(self._with_token(details), requests)


def aio_bearer_interceptors(source: TokenSource) -> list[_AioBearer]:
    """One interceptor per call type (unary and streaming), all adding the token ``source`` gives."""
    return [kind(source) for kind in (_UnaryUnaryBearer, _UnaryStreamBearer, _StreamUnaryBearer, _StreamStreamBearer)]


class _SyncBearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """The same for a blocking channel (the Python client, the CLI, the SDK), whose wrapper asks each type apart."""

    def __init__(self, token: str) -> None:
        self.metadata = bearer(token)

    def _with_token(self, details: Any) -> Any:
        # grpc hands interceptors a namedtuple of the call's details
        return details._replace(metadata=[*(details.metadata or ()), *self.metadata])

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), requests)


def aio_channel(addr: str, token: str | TokenSource = "", max_message_bytes: int = CLIENT_MAX_MESSAGE_BYTES,
                tls: TlsConfig = PLAINTEXT) -> grpc.aio.Channel:
    """A grpc.aio channel to a platform service that carries the token (or, from a callable, each call's own) on
    every call, unary and streaming alike, over TLS when ``tls`` says so."""
    source = token if callable(token) else (lambda: token)
    interceptors = aio_bearer_interceptors(source) if callable(token) or token else None
    options = channel_options(max_message_bytes)
    credentials = tls.channel_credentials()
    if credentials is not None:
        return grpc.aio.secure_channel(addr, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(addr, options=options, interceptors=interceptors)


def sync_channel(addr: str, token: str = "", max_message_bytes: int = CLIENT_MAX_MESSAGE_BYTES,
                 tls: TlsConfig = PLAINTEXT) -> grpc.Channel:
    """A blocking channel to a platform service that carries the token on every call, over TLS when ``tls`` says
    so."""
    credentials = tls.channel_credentials()
    options = [*channel_options(max_message_bytes), ("SingleThreadedUnaryStream", 1)]
    channel = (grpc.secure_channel(addr, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(addr, options=options))
    return grpc.intercept_channel(channel, _SyncBearer(token)) if token else channel


class Peer:
    """One grpc.aio channel to another service; a failed call raises a PlatformError that names the service."""

    def __init__(self, module: str, addr: str, max_message_bytes: int, timeout_s: float = CALL_TIMEOUT_S,
                 token: str | TokenSource = "", tls: TlsConfig = PLAINTEXT) -> None:
        self.module, self.addr, self.timeout_s, self.tls = module, addr, timeout_s, tls
        self.channel = aio_channel(addr, token, max_message_bytes, tls)

    @property
    def name(self) -> str:
        return f"{self.module} at {self.addr}"

    async def call(self, pending: Awaitable[T]) -> T:
        """Await a call made on this peer's channel; its failure becomes the matching PlatformError."""
        try:
            return await pending
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.name, self.tls.enabled) from None

    async def close(self) -> None:
        await self.channel.close()


# Checked for unknown fields at the top level only: walking their nested tensors costs about a fifth of REST
# predict's throughput at 32 clients, and the protocol layer checks every tensor's name, datatype and shape itself.
HOT_RPCS = frozenset({"ModelInfer"})


def refuse_unknown_fields(message: Any, path: str = "", deep: bool = True) -> None:
    """INVALID_ARGUMENT naming a field the message carries that this server's contract does not know (a client
    built from a newer contract, or a typo'd field sent as JSON): unknown fields are refused, never ignored.
    ``deep``: in nested messages too."""
    path = path or message.DESCRIPTOR.name
    unknown = unknown_fields.UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({field.field_number for field in unknown})
        raise InvalidArgument(f"{path} carries field number(s) {numbers} that this server does not know")
    if not deep:
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        for item in value if descriptor.is_repeated else [value]:
            refuse_unknown_fields(item, f"{path}.{descriptor.name}")


# -- JSON in protobuf -----------------------------------------------------------------------------------------------
def plain_json(value: Any) -> Any:
    """Struct numbers are doubles; give whole numbers back as ints so ``range(params["epochs"])`` works."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def struct_value(message: Any) -> Any:
    """A protobuf Struct or Value as plain JSON."""
    from google.protobuf import json_format

    return plain_json(json_format.MessageToDict(message))


# -- enum tables -----------------------------------------------------------------------------------------------------
class EnumTable:
    """Names <-> a protobuf enum's numbers, refusing numbers and names it does not know."""

    def __init__(self, what: str, numbers: dict[str, int], unspecified: str | None = None) -> None:
        self.what, self.numbers = what, numbers
        self.names = {number: name for name, number in numbers.items()}
        if unspecified is not None:
            self.names[0] = unspecified

    def name(self, number: int) -> str:
        try:
            return self.names[number]
        except KeyError:
            raise InvalidArgument(f"unknown {self.what} {number}; expected one of {list(self.numbers)}") from None

    def number(self, name: str) -> int:
        try:
            return self.numbers[name.lower()]
        except KeyError:
            raise InvalidArgument(f"unknown {self.what} {name!r}; expected one of {list(self.numbers)}") from None


TABLE_KINDS = EnumTable("kind", {"dataset": storage_pb2.DATASET, "model": storage_pb2.MODEL})
WRITE_MODES = EnumTable(
    "write mode", {"create": storage_pb2.CREATE, "append": storage_pb2.APPEND, "overwrite": storage_pb2.OVERWRITE},
    unspecified="create",
)
TASK_STATUSES = EnumTable("task status", {
    "pending": scheduler_pb2.PENDING, "running": scheduler_pb2.RUNNING, "completed": scheduler_pb2.COMPLETED,
    "failed": scheduler_pb2.FAILED, "cancelled": scheduler_pb2.CANCELLED,
})


# -- tensor datatypes ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Datatype:
    """One Open Inference Protocol datatype: its numpy dtype, the typed-contents field that carries it (None: raw
    bytes only, as in Triton) and its model-config enum."""

    name: str
    numpy: str
    contents_field: str | None

    @property
    def config_type(self) -> int:
        return model_config_pb2.DataType.Value(f"TYPE_{self.name}")


DATATYPES: dict[str, Datatype] = {d.name: d for d in (
    Datatype("BOOL", "bool", "bool_contents"),
    Datatype("UINT8", "uint8", "uint_contents"),
    Datatype("UINT16", "uint16", "uint_contents"),
    Datatype("UINT32", "uint32", "uint_contents"),
    Datatype("UINT64", "uint64", "uint64_contents"),
    Datatype("INT8", "int8", "int_contents"),
    Datatype("INT16", "int16", "int_contents"),
    Datatype("INT32", "int32", "int_contents"),
    Datatype("INT64", "int64", "int64_contents"),
    Datatype("FP16", "float16", None),
    Datatype("FP32", "float32", "fp32_contents"),
    Datatype("FP64", "float64", "fp64_contents"),
)}
DATATYPE_OF_NUMPY = {d.numpy: d.name for d in DATATYPES.values()}


def datatype(name: Any, what: str = "tensor") -> Datatype:
    """The datatype called ``name``; InvalidArgument naming ``what`` otherwise."""
    found = DATATYPES.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidArgument(f"{what}: unsupported datatype {name!r}; expected one of {list(DATATYPES)}")
    return found


# -- model repository parameters ------------------------------------------------------------------------------------
def encode_parameters(values: dict[str, Any]) -> dict[str, grpc_service_pb2.ModelRepositoryParameter]:
    """Model-load parameters as the protocol carries them; None values are left out."""
    encoded = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            encoded[key] = grpc_service_pb2.ModelRepositoryParameter(bool_param=value)
        elif isinstance(value, int):
            encoded[key] = grpc_service_pb2.ModelRepositoryParameter(int64_param=value)
        elif isinstance(value, str):
            encoded[key] = grpc_service_pb2.ModelRepositoryParameter(string_param=value)
        else:
            encoded[key] = grpc_service_pb2.ModelRepositoryParameter(string_param=json.dumps(value))
    return encoded


def decode_parameters(values: Any) -> dict[str, Any]:
    """A request's parameter map (model-load or inference) as plain values."""
    decoded = {}
    for key, value in values.items():
        kind = value.WhichOneof("parameter_choice")
        decoded[key] = getattr(value, kind) if kind else None
    return decoded

