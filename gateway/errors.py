"""Every error leaves the gateway as ``{"error": {"code", "message"}}`` with the matching HTTP status."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ai_platform.core.errors import Internal, PlatformError
from ai_platform.core.names import NAME_PATTERN, NAME_RULE

log = logging.getLogger("gateway")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# A dataset, model or task-free name in a path, as the OpenAPI document states it (the '..' rule is checked upstream).
TableName = Annotated[str, Path(pattern=f"^{NAME_PATTERN.pattern}$", max_length=128, description=NAME_RULE)]

_HTTP_CODES = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
               409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 503: "SERVICE_UNAVAILABLE"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_REQUEST", message)


def from_platform(exc: PlatformError, not_found: str = "NOT_FOUND") -> ApiError:
    """A platform error (raised here or by a backend service) as the REST error; ``not_found`` names what was
    missing. Internal failures are logged here and reported without their details."""
    if isinstance(exc, Internal):
        log.error("backend failure: %s", exc.message)
        return ApiError(exc.http_status, exc.rest_code, f"{exc.summary}; see its log")
    return ApiError(exc.http_status, not_found if exc.http_status == 404 else exc.rest_code, exc.message)


def error_body(code: str, message: str, path: str = "") -> dict:
    """The platform's error body; on the Open Inference Protocol's routes (/v2) the protocol's own."""
    if path.startswith("/v2"):
        return {"error": message}
    return {"error": {"code": code, "message": message}}


async def send_error(send: Send, status: int, code: str, message: str, headers: list | None = None,
                     path: str = "") -> None:
    """The error body sent as plain ASGI, for the parts of the gateway that run below FastAPI."""
    body = json.dumps(error_body(code, message, path)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


_KNOWN_QUERY: dict[int, frozenset[str]] = {}


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route declares, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def refuse_unknown_query(request: Request) -> None:
    """A dependency of every route: a query parameter the route does not declare is a 400 naming it, never
    silently ignored (``?folow=true`` would otherwise answer as if it were absent)."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    known = _KNOWN_QUERY.get(id(route))
    if known is None:
        known = _KNOWN_QUERY[id(route)] = frozenset(_query_names(route.dependant))
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise invalid(f"unknown query parameter(s) {unknown}; {request.url.path} takes {sorted(known) or 'none'}")


async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message, request.url.path), status_code=exc.status)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            position = error.get("loc", ("body", "?"))[-1]
            problems.append(f"the body is not valid JSON (error at character {position})")
            continue
        loc = error.get("loc", ())
        if loc and loc[0] == "path" and error.get("type") in ("string_pattern_mismatch", "string_too_long"):
            shown = str(error.get("input", ""))
            shown = repr(shown) if len(shown) <= 64 else repr(shown[:64]) + f"... ({len(shown)} chars)"
            problems.append(f"invalid {loc[-1]} {shown}: must be {NAME_RULE}")
            continue
        where = ".".join(str(p) for p in loc if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return JSONResponse(error_body("INVALID_REQUEST", "; ".join(problems), request.url.path), status_code=400)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "INTERNAL_ERROR" if exc.status_code >= 500 else "INVALID_REQUEST")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        raw = request.scope.get("raw_path", b"").decode(errors="replace")
        collection = next((c for c in ("datasets", "models", "tasks") if raw.startswith(f"/api/v1/{c}/")), None)
        if collection and (".." in raw or "%2f" in raw.lower() or "%5c" in raw.lower()):
            name = raw.split(f"/api/v1/{collection}/", 1)[1]
            return JSONResponse(error_body("INVALID_REQUEST", f"invalid {collection[:-1]} name {name!r}: names are "
                                                              f"letters, digits, '_', '.', '-', never paths"), 400)
        message = f"no route {request.method} {request.url.path}"
    return JSONResponse(error_body(code, message, request.url.path), status_code=exc.status_code,
                        headers=exc.headers)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("INTERNAL_ERROR", "internal error (details in the gateway log)", request.url.path),
                        status_code=500)
