"""Platform errors: raised by service logic, translated to gRPC / REST status only at the edges.

Each error knows its gRPC status and its REST status and code, so every edge reports it the same way;
``ai_platform.core.wire.error_from_rpc`` maps a peer's status back to the same classes.
"""

from __future__ import annotations

import grpc


class PlatformError(Exception):
    """Base class; ``grpc_code`` and ``http_status``/``rest_code`` say how the edges report it."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    rest_code: str = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Internal(PlatformError):
    """A failure that is no caller's fault; ``summary`` is what a client may see, the message goes to the log."""

    def __init__(self, message: str, summary: str = "internal error") -> None:
        super().__init__(message)
        self.summary = summary


class InvalidArgument(PlatformError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status, rest_code = 400, "INVALID_REQUEST"


class NotFound(PlatformError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status, rest_code = 404, "NOT_FOUND"


class AlreadyExists(PlatformError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status, rest_code = 409, "CONFLICT"


class FailedPrecondition(PlatformError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status, rest_code = 409, "CONFLICT"


class ResourceExhausted(PlatformError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status, rest_code = 413, "PAYLOAD_TOO_LARGE"


NO_SPACE = "no space left on device"  # how every service words a full disk, so every edge can tell it apart


class InsufficientStorage(ResourceExhausted):
    """A full disk or store: RESOURCE_EXHAUSTED over gRPC, 507 over REST. The message names the service and says
    ``NO_SPACE``; reads go on, and writing works again once space is freed."""

    http_status, rest_code = 507, "INSUFFICIENT_STORAGE"


def no_space(exc: BaseException) -> bool:
    """Whether a failure is a full disk: ENOSPC, or SQLite's and Lance's words for it."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return NO_SPACE in text or "database or disk is full" in text or "disk quota exceeded" in text


CANNOT_PLACE = "cannot be placed"  # how a serving change the cluster has no room for is worded, at every edge


class NoCapacity(ResourceExhausted):
    """A serving change the cluster has no room for (replicas that cannot be placed): RESOURCE_EXHAUSTED over gRPC,
    503 over REST; the message says ``CANNOT_PLACE`` and names the resources missing."""

    http_status, rest_code = 503, "INSUFFICIENT_RESOURCES"


class Unavailable(PlatformError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status, rest_code = 503, "SERVICE_UNAVAILABLE"


class Cancelled(PlatformError):
    grpc_code = grpc.StatusCode.CANCELLED
    http_status, rest_code = 400, "INVALID_REQUEST"


class PermissionDenied(PlatformError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status, rest_code = 403, "FORBIDDEN"


class Unauthenticated(PlatformError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status, rest_code = 401, "UNAUTHORIZED"
