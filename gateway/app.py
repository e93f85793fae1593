"""The gateway application: routes, error bodies, limits, auth, CORS, metrics and the web page."""

from __future__ import annotations

import datetime
import hmac
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ai_platform import __version__
from ai_platform.core import auth
from ai_platform.core.auth import Authority, allow_route
from ai_platform.core.errors import PlatformError
from ai_platform.core.metrics import RequestMetrics
from ai_platform.core.settings import GatewaySettings
from ai_platform.core.views import ERRORS, HealthView, TokenRequest, TokenView, WhoAmIView, iso
from ai_platform.protos.aiplatform.v1 import access_pb2
from gateway import errors
from gateway.connections import StreamLimit
from gateway.errors import Message, Receive, Scope, Send
from gateway.routes_feedback import router as feedback_router
from gateway.routes_inference import DIRECT_ROUTES, DirectRoute
from gateway.routes_inference import router as inference_router
from gateway.routes_lake import remove_stale_spools
from gateway.routes_lake import router as lake_router
from gateway.routes_pipelines import router as pipelines_router
from gateway.routes_tasks import router as tasks_router
from gateway.upstreams import Upstreams

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
log = logging.getLogger("gateway")
HTTP_METRICS = RequestMetrics("aip_http_request", "HTTP requests", ["method", "route", "status"])
UPLOAD_ROUTE = re.compile(r"^/api/v1/datasets/[^/]+/?$")
OPEN_PATHS = {"/healthz", "/metrics"}  # /metrics has a token of its own (AIP_METRICS_TOKEN)
DOC_PATHS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # describe the API, hold no data

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


JSON_TYPES = {"application/json"}
BINARY_INFER_TYPES = {"application/json", "application/octet-stream"}  # the binary tensor extension
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


class GuardMiddleware:
    """Who calls and whether their role may (the role table in ``ai_platform.core.auth``), the browser door (the
    Origin of a state-changing request, the content type of a JSON body), body size limits (413 before reading the
    rest), per-route metrics, and the direct routes, as plain ASGI. The caller's credential is forwarded to the
    services, which check it on their own."""

    def __init__(self, app: ASGIApp, authority: Authority, body_limit: int, upload_limit: int,
                 direct_routes: list[DirectRoute], origin_allowed: Callable[[str], bool]) -> None:
        self.app, self.authority, self.direct_routes = app, authority, direct_routes
        self.body_limit, self.upload_limit = body_limit, upload_limit
        self.origin_allowed = origin_allowed
        self.templates: list[tuple[set[str], re.Pattern, str]] = []
        # The page's files (its scripts, styles and vendored libraries, at any depth) and the API's documents load
        # without the token: a <script> tag sends no header, and none of them holds data.
        files = {"/" + p.relative_to(WEB_DIR).as_posix() for p in WEB_DIR.rglob("*") if p.is_file()} \
            if WEB_DIR.is_dir() else set()
        self.static = {"/"} | files
        self.open_get = self.static | DOC_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, path, method = time.perf_counter(), scope["path"], scope["method"]
        status_holder = {"status": 500}

        async def send_recorded(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_recorded, path, method)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or ("static" if path in self.static else "unmatched")
            HTTP_METRICS.observe((method, template, str(status_holder["status"])), time.perf_counter() - started)

    def template_of(self, scope: Scope) -> str:
        """The OpenAPI path of the route a request is for ('' when none is): the role table's key."""
        if not self.templates:  # from the document itself, so that table, document and check agree
            for template, operations in scope["app"].openapi()["paths"].items():
                pattern = re.compile("^" + re.sub(r"\\{[^}/]+\\}", "[^/]+", re.escape(template)) + "$")
                self.templates.append(({m.upper() for m in operations}, pattern, template))
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        return next((template for methods, regex, template in self.templates
                     if method in methods and regex.match(scope["path"])), "")

    async def _refuse(self, send: Send, path: str, status: int, code: str, message: str) -> None:
        headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
        await errors.send_error(send, status, code, message, headers, path)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        headers = dict(scope["headers"])
        if path in OPEN_PATHS or (method in ("GET", "HEAD") and path in self.open_get):
            await self._limited(scope, receive, send, path, method)
            return
        credential = headers.get(b"authorization", b"").decode(errors="replace")
        template = ""
        try:
            principal = self.authority.verify(credential)
            template = self.template_of(scope)
            if template:
                allow_route(principal, "GET" if method == "HEAD" else method, template)
        except PlatformError as exc:
            await self._refuse(send, path, exc.http_status, exc.rest_code, exc.message)
            return
        if method in STATE_CHANGING:
            origin = headers.get(b"origin", b"").decode(errors="replace")
            if origin and not self.origin_allowed(origin):  # another site's page, even a "simple request"
                await self._refuse(send, path, 403, "FORBIDDEN_ORIGIN",
                                   f"requests from {origin} may not change anything here (AIP_CORS_ORIGINS)")
                return
            declared = headers.get(b"content-type", b"").decode(errors="replace").split(";")[0].strip().lower()
            wanted = BINARY_INFER_TYPES if template.endswith("/infer") else JSON_TYPES
            if declared and template and not UPLOAD_ROUTE.match(path) and declared not in wanted:
                await self._refuse(send, path, 415, "UNSUPPORTED_MEDIA_TYPE",
                                   f"{template} takes {' or '.join(sorted(wanted))}, not {declared}")
                return
        auth.CALLER.set(principal)
        auth.FORWARDED.set(credential.partition(" ")[2])  # every call to a service carries the caller's own
        await self._limited(scope, receive, send, path, method)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        limit = self.upload_limit if method == "POST" and UPLOAD_ROUTE.match(path) else self.body_limit
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await errors.send_error(send, 413, "PAYLOAD_TOO_LARGE",
                                    f"the body is {int(length)} bytes; the limit is {limit}", path=path)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise errors.ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is over the {limit} byte limit")
            return message

        for route in self.direct_routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)
                await route.serve(scope, limited_receive, send)
                return
        await self.app(scope, limited_receive, send)


def whoami_of(principal: auth.Principal, authority: Authority) -> dict:
    described = principal.describe()
    expires = described.pop("expires_at")
    return {"subject": described["subject"], "role": described["role"], "task_id": described.get("task_id", ""),
            "expires_at": datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat().replace("+00:00", "Z")
            if expires else None, "open": not authority.enabled}


def identity_view(identity: access_pb2.Identity) -> dict:
    return {"subject": identity.subject, "role": identity.role, "task_id": identity.task_id,
            "expires_at": iso(identity.expires_at) if identity.HasField("expires_at") else None,
            "open": identity.open}


def create_app(settings: GatewaySettings) -> FastAPI:
    body_limit, upload_limit = int(settings.body_limit_mb * 2**20), int(settings.upload_limit_mb * 2**20)
    authority = Authority.of(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.authority = authority
        app.state.upstreams = Upstreams(settings, authority)
        app.state.model_cache = {}
        app.state.upload_limit = upload_limit
        app.state.max_message_bytes = settings.max_message_bytes
        app.state.streams = StreamLimit(settings.max_streams_per_client)
        app.state.spool_dir = tempfile.gettempdir()
        if removed := remove_stale_spools(app.state.spool_dir):
            log.info("removed %d spool files of uploads whose gateway died", removed)
        yield
        await app.state.upstreams.close()

    app = FastAPI(
        title="AI Platform", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        dependencies=[Depends(errors.refuse_unknown_query)],
        description="REST face of the platform: datasets and models in the Lance lake, tasks, and inference "
                    "(Open Inference Protocol). Every error is `{\"error\": {\"code\", \"message\"}}`.",
    )
    app.add_exception_handler(errors.ApiError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_error_handler)
    app.include_router(lake_router)
    app.include_router(tasks_router)
    app.include_router(pipelines_router)
    app.include_router(feedback_router)
    app.include_router(inference_router)

    @app.get("/healthz", response_model=HealthView, tags=["platform"], summary="The gateway and each backend")
    async def healthz(request: Request) -> dict:
        services = await request.app.state.upstreams.health()
        return {"status": "ok" if all(s["healthy"] for s in services.values()) else "degraded", "services": services}

    # The API's documents with their assets from web/vendor/ (make install), not a CDN: they work offline.
    @app.get("/docs", include_in_schema=False)
    async def swagger_docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="AI Platform · API",
                                   swagger_js_url="/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/favicon.svg")

    @app.get("/redoc", include_in_schema=False)
    async def redoc_docs() -> Response:
        return get_redoc_html(openapi_url="/openapi.json", title="AI Platform · API",
                              redoc_js_url="/vendor/redoc/redoc.standalone.js", redoc_favicon_url="/favicon.svg",
                              with_google_fonts=False)

    @app.get("/api/v1/whoami", response_model=WhoAmIView, tags=["access"], responses=ERRORS,
             summary="Who the gateway takes the caller for: subject, role, expiry")
    async def whoami(request: Request) -> WhoAmIView:
        return WhoAmIView(**whoami_of(auth.caller(), authority))

    @app.post("/api/v1/tokens", response_model=TokenView, status_code=201, tags=["access"], responses=ERRORS,
              summary="A signed token for a person with a role (admin)")
    async def create_token(request: Request, body: TokenRequest) -> TokenView:
        upstreams = request.app.state.upstreams
        made = await upstreams.call("scheduler", upstreams.access.CreateToken(access_pb2.CreateTokenRequest(
            name=body.name, role=body.role, ttl_s=body.ttl_s), timeout=upstreams.timeout_s))
        return TokenView(token=made.token, identity=WhoAmIView(**identity_view(made.identity)))

    @app.get("/metrics", tags=["platform"], summary="Prometheus metrics (AIP_METRICS_TOKEN guards it when set)",
             response_class=Response)
    async def metrics(request: Request) -> Response:
        if settings.metrics_token and not hmac.compare_digest(
                request.headers.get("authorization", ""), f"Bearer {settings.metrics_token}"):
            raise errors.ApiError(401, "UNAUTHORIZED", "missing or wrong bearer token for /metrics "
                                                       "(AIP_METRICS_TOKEN)")
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if WEB_DIR.is_dir():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")

    origins = settings.cors_origins
    local = re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?")

    def origin_allowed(origin: str) -> bool:
        return origin in origins if origins else bool(local.fullmatch(origin))

    app.add_middleware(GuardMiddleware, authority=authority, body_limit=body_limit, upload_limit=upload_limit,
                       direct_routes=DIRECT_ROUTES, origin_allowed=origin_allowed)
    app.add_middleware(CORSMiddleware, allow_origins=origins,  # outermost, so errors carry CORS headers too
                       allow_origin_regex=None if origins else local.pattern, allow_methods=["*"],
                       allow_headers=["*"])
    return app

