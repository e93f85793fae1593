"""Platform errors: raised by service logic, translated to gRPC / REST status only at the edges."""

from __future__ import annotations

import grpc


class PlatformError(Exception):
    """Base class; ``grpc_code`` says how the edge reports it."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PlatformError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(PlatformError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PlatformError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(PlatformError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(PlatformError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(PlatformError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Cancelled(PlatformError):
    grpc_code = grpc.StatusCode.CANCELLED
