"""Who may do what: credentials, their roles, and the one table that maps every gRPC method and REST route to the
least role it needs. Every service checks each call against it on its own (no call to another service), at its edge.

Credentials:
- ``AIP_TOKEN``: the admin credential, as it always was.
- Signed tokens (JWT, HS256) for people: subject, role (``viewer`` < ``editor`` < ``admin``), expiry; signed with
  ``AIP_AUTH_KEY`` (or, when it is unset, a key derived from ``AIP_TOKEN``), also accepted when signed with one of
  ``AIP_AUTH_PREVIOUS_KEYS`` (rotation). ``aip tokens create`` makes them.
- Task credentials, minted by the scheduler for each task: they may report for that task, read the lake, write the
  task's outputs and serve its input model, and nothing else; they expire with the task's timeout.

With neither ``AIP_TOKEN`` nor ``AIP_AUTH_KEY`` set the platform is open: every caller is ``anonymous`` with the admin
role (one person on their own machine), except that a task's reports still need that task's credential.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ai_platform.core.errors import PermissionDenied, Unauthenticated

SERVICE_TOKEN_TTL_S = 24 * 3600
CLOCK_SKEW_S = 30  # a token issued or expiring this far in the future or past is still taken (clocks drift)
ISSUER = "ai-platform"


def _base64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_JWT_HEADER = _base64url(b'{"alg":"HS256","typ":"JWT"}')
TASK_KINDS = ("task",)


class Role(IntEnum):
    """What a person may do; each role may do everything the ones below it may."""

    VIEWER = 1  # read everything, predict
    EDITOR = 2  # also submit and cancel tasks, write datasets and models, set aliases, load models
    ADMIN = 3  # also delete, collect garbage, unload models, manage credentials

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}; roles are {', '.join(r.name.lower() for r in cls)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


TASK = "task"  # the table's word for "a task's own credential, and no person": ReportTask


@dataclass(frozen=True)
class Principal:
    """Who is calling: a person with a role, the admin, or a task (``task_id`` set) with its narrow scope."""

    subject: str
    role: Role
    task_id: str = ""
    outputs: tuple[str, ...] = ()  # lake tables ("datasets/x", "models/y") a task may write, aliases it may move
    serves: tuple[str, ...] = ()  # model tables a task may load into inference
    owner: str = ""  # a task's: who submitted it
    expires: float | None = None

    @property
    def is_task(self) -> bool:
        return bool(self.task_id)

    def describe(self) -> dict[str, Any]:
        return {"subject": self.subject, "role": TASK if self.is_task else self.role.label,
                **({"task_id": self.task_id, "owner": self.owner} if self.is_task else {}),
                "expires_at": self.expires}


ANONYMOUS = Principal("anonymous", Role.ADMIN)
ADMIN = Principal("admin", Role.ADMIN)

# -- the table -------------------------------------------------------------------------------------------------------

V, E, A = Role.VIEWER, Role.EDITOR, Role.ADMIN
ST, SC, INF, ACC, PL = ("/aiplatform.v1.StorageService/", "/aiplatform.v1.SchedulerService/",
                        "/inference.GRPCInferenceService/", "/aiplatform.v1.AccessService/",
                        "/aiplatform.v1.PipelineService/")
METHOD_ROLES: dict[str, Role | str] = {
    ST + "ListTables": V, ST + "GetTable": V, ST + "ListVersions": V, ST + "PreviewRows": V, ST + "ReadTable": V,
    ST + "ResolveUri": V, ST + "WriteTable": E, ST + "SetAlias": E, ST + "DeleteAlias": E, ST + "DeleteTable": A,
    ST + "CollectGarbage": A,
    SC + "SubmitTask": E, SC + "GetTask": V, SC + "ListTasks": V, SC + "CancelTask": E, SC + "StreamLogs": V,
    SC + "WatchTask": V, SC + "StreamMetrics": V, SC + "ReportTask": TASK,
    INF + "ServerLive": V, INF + "ServerReady": V, INF + "ModelReady": V, INF + "ServerMetadata": V,
    INF + "ModelMetadata": V, INF + "ModelInfer": V, INF + "ModelStreamInfer": V, INF + "ModelConfig": V,
    INF + "ModelStatistics": V, INF + "RepositoryIndex": V, INF + "RepositoryModelLoad": E,
    INF + "RepositoryModelUnload": A, INF + "SystemSharedMemoryStatus": A, INF + "SystemSharedMemoryRegister": A,
    INF + "SystemSharedMemoryUnregister": A, INF + "CudaSharedMemoryStatus": A, INF + "CudaSharedMemoryRegister": A,
    INF + "CudaSharedMemoryUnregister": A, INF + "TraceSetting": A, INF + "LogSettings": A,
    ACC + "WhoAmI": V, ACC + "CreateToken": A,
    PL + "ApplyPipeline": E, PL + "GetPipeline": V, PL + "ListPipelines": V, PL + "RunPipeline": E,
    PL + "GetPipelineRun": V, PL + "ListPipelineRuns": V, PL + "WatchPipelineRun": V, PL + "CancelPipelineRun": E,
}
# What a task's credential may call besides ReportTask: reading the lake (its writes and alias moves are checked per
# table by storage), and loading its input model into inference (checked per model there).
TASK_METHODS = frozenset({ST + "ListTables", ST + "GetTable", ST + "ListVersions", ST + "PreviewRows",
                          ST + "ReadTable", ST + "ResolveUri", ST + "WriteTable", ST + "SetAlias", SC + "ReportTask",
                          INF + "RepositoryModelLoad", INF + "ModelMetadata", INF + "ModelReady",
                          INF + "ServerLive", INF + "ServerReady", ACC + "WhoAmI"})

R = "/api/v1/"
ROUTE_ROLES: dict[tuple[str, str], Role] = {
    **{("GET", f"{R}{kind}{tail}"): V for kind in ("datasets", "models")
       for tail in ("", "/{id}", "/{id}/versions", "/{id}/rows")},
    ("GET", f"{R}datasets/{{id}}/export"): V, ("POST", f"{R}datasets/{{id}}"): E,
    **{(method, f"{R}{kind}/{{id}}/aliases/{{alias}}"): E for kind in ("datasets", "models")
       for method in ("PUT", "DELETE")},
    **{("DELETE", f"{R}{kind}/{{id}}"): A for kind in ("datasets", "models")},
    **{("POST", f"{R}{kind}/{{id}}/gc"): A for kind in ("datasets", "models")},
    ("POST", f"{R}tasks"): E, ("GET", f"{R}tasks"): V, ("GET", f"{R}tasks/{{id}}"): V,
    ("POST", f"{R}tasks/{{id}}/cancel"): E, ("GET", f"{R}tasks/{{id}}/logs"): V, ("GET", f"{R}tasks/{{id}}/metrics"): V,
    ("GET", f"{R}runs"): V, ("POST", f"{R}models/{{id}}/predict"): V,
    ("GET", f"{R}whoami"): V, ("POST", f"{R}tokens"): A,
    ("PUT", f"{R}pipelines/{{name}}"): E, ("GET", f"{R}pipelines"): V, ("GET", f"{R}pipelines/{{name}}"): V,
    ("POST", f"{R}pipelines/{{name}}/runs"): E, ("GET", f"{R}pipelines/{{name}}/runs"): V,
    ("GET", f"{R}pipelines/{{name}}/runs/{{run_id}}"): V, ("POST", f"{R}pipelines/{{name}}/runs/{{run_id}}/cancel"): E,
    ("POST", f"{R}feedback"): E,
    **{("GET", path): V for path in (
        "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{model}", "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/ready", "/v2/models/{model}/versions/{version}/ready", "/v2/models/{model}/stats",
        "/v2/models/{model}/versions/{version}/stats", "/v2/models/{model}/config",
        "/v2/models/{model}/versions/{version}/config", "/v2/repository/index")},
    ("POST", "/v2/repository/index"): V,
    ("POST", "/v2/models/{model}/infer"): V, ("POST", "/v2/models/{model}/versions/{version}/infer"): V,
    ("POST", "/v2/repository/models/{model}/load"): E, ("POST", "/v2/repository/models/{model}/unload"): A,
}
OPEN_ROUTES = frozenset({("GET", "/healthz"), ("GET", "/metrics")})  # /metrics has AIP_METRICS_TOKEN of its own


def required(method: str) -> Role | str:
    """The least role a gRPC method needs; KeyError for one missing from the table (a test walks them all)."""
    return METHOD_ROLES[method]


def allow(principal: Principal, method: str) -> None:
    """PermissionDenied naming the role needed when ``principal`` may not call ``method``."""
    needed = required(method)
    if principal.is_task:
        if method not in TASK_METHODS:
            raise PermissionDenied(f"a task's credential may read the lake, write its own outputs, serve its input "
                                   f"model and report for its task; not {method.rsplit('/', 1)[1]}")
        return
    if needed == TASK:
        raise PermissionDenied(f"{method.rsplit('/', 1)[1]} takes a task's own credential, not a person's")
    if principal.role < needed:
        raise PermissionDenied(f"{method.rsplit('/', 1)[1]} needs the role {needed.label}; "
                               f"{principal.subject} is {principal.role.label}")


def allow_route(principal: Principal, method: str, template: str) -> None:
    """The same for a REST route (``template`` as the OpenAPI document states it)."""
    needed = ROUTE_ROLES[(method, template)]
    if principal.is_task:
        raise PermissionDenied("a task's credential is for its own calls to the services, not the REST API")
    if principal.role < needed:
        raise PermissionDenied(f"{method} {template} needs the role {needed.label}; {principal.subject} is "
                               f"{principal.role.label}")


def allow_write(principal: Principal, table: str) -> None:
    """A task writes only its own outputs (``datasets/NAME`` or ``models/NAME``)."""
    if principal.is_task and table not in principal.outputs:
        raise PermissionDenied(f"task {principal.task_id} may write its outputs only "
                               f"({', '.join(principal.outputs) or 'none'}), not {table}")


def allow_serve(principal: Principal, model: str) -> None:
    """A task loads only the model it was given (its input or output) into inference."""
    if principal.is_task and f"models/{model}" not in principal.serves + principal.outputs:
        raise PermissionDenied(f"task {principal.task_id} may serve only its own model(s) "
                               f"({', '.join(principal.serves + principal.outputs) or 'none'}), not {model}")


# -- who is calling, for the code below the edge ----------------------------------------------------------------------

CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller", default=ANONYMOUS)
CALLER_CREDENTIAL: contextvars.ContextVar[str] = contextvars.ContextVar("caller_credential", default="")
FORWARDED: contextvars.ContextVar[str] = contextvars.ContextVar("forwarded_token", default="")  # the gateway's


def caller() -> Principal:
    """Who made the call being served (set by the edge before the handler runs)."""
    return CALLER.get()


# -- credentials ------------------------------------------------------------------------------------------------------

def derived_key(token: str) -> bytes:
    """The signing key when only AIP_TOKEN is set: every service holding the token can verify what it signed."""
    return hmac.new(token.encode(), b"ai-platform signing key", hashlib.sha256).digest()


@dataclass
class Authority:
    """Verifies (and signs) this platform's credentials: the admin token, people's and tasks' signed tokens."""

    token: str = ""
    key: bytes = b""
    previous_keys: tuple[bytes, ...] = ()
    task_key: bytes = b""  # the scheduler's own key for task credentials when the platform has none
    _cache: dict[str, tuple[Principal, float | None]] = field(default_factory=dict)
    _own: dict[str, tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Any, task_key: bytes = b"") -> Authority:
        token = getattr(settings, "token", "")
        key = getattr(settings, "auth_key", "").encode() or (derived_key(token) if token else b"")
        previous = tuple(k.encode() for k in getattr(settings, "auth_previous_keys", []))
        return cls(token, key, previous, task_key)

    @property
    def enabled(self) -> bool:
        """Whether callers must prove who they are (else the platform is open)."""
        return bool(self.token or self.key)

    @property
    def signing_key(self) -> bytes:
        return self.key or self.task_key

    def sign(self, claims: dict[str, Any], ttl_s: float) -> str:
        """A JWT (HS256) with ``claims``, issued now for ``ttl_s``. Signed here with hmac, as PyJWT would sign it
        (and checked by PyJWT): the scheduler signs one for every task it starts, and PyJWT takes ten times as
        long."""
        if not self.signing_key:
            raise ValueError("no signing key: set AIP_AUTH_KEY (or AIP_TOKEN) to make tokens")
        now = int(time.time())
        payload = json.dumps({"iss": ISSUER, "iat": now, "exp": now + int(ttl_s), **claims}, separators=(",", ":"))
        signed = _JWT_HEADER + b"." + _base64url(payload.encode())
        return (signed + b"." + _base64url(hmac.new(self.signing_key, signed, hashlib.sha256).digest())).decode()

    def service_token(self, service: str) -> str:
        """This service's own credential for its calls to its peers: AIP_TOKEN, or (only a key set) a token it
        signs itself as an admin named ``service:NAME``, renewed before it expires."""
        if self.token or not self.key:
            return self.token
        cached = self._own.get(service)
        if cached is None or cached[1] - time.time() < SERVICE_TOKEN_TTL_S / 2:
            cached = self._own[service] = (self.person_token(f"service:{service}", Role.ADMIN, SERVICE_TOKEN_TTL_S),
                                           time.time() + SERVICE_TOKEN_TTL_S)
        return cached[0]

    def person_token(self, name: str, role: Role, ttl_s: float) -> str:
        return self.sign({"sub": name, "role": role.label, "kind": "person"}, ttl_s)

    def task_token(self, task_id: str, owner: str, outputs: Iterable[str], serves: Iterable[str],
                   ttl_s: float) -> str:
        return self.sign({"sub": f"task:{task_id}", "kind": "task", "task": task_id, "owner": owner,
                          "out": sorted(set(outputs)), "serve": sorted(set(serves))}, ttl_s)

    def verify(self, header: str | bytes | None) -> Principal:
        """The caller an ``authorization`` header names; Unauthenticated saying why (never the key)."""
        if isinstance(header, bytes):
            header = header.decode(errors="replace")
        if not header:
            if not self.enabled:
                return ANONYMOUS
            raise Unauthenticated("missing bearer token: send the metadata authorization: Bearer <token>")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("malformed bearer token: the authorization metadata must be 'Bearer <token>'")
        if self.token and hmac.compare_digest(credential.encode(), self.token.encode()):
            return ADMIN
        if credential.count(".") != 2:
            if not self.enabled:
                return ANONYMOUS
            raise Unauthenticated("wrong bearer token: it is neither AIP_TOKEN nor a token this platform signed")
        cached = self._cache.get(credential)
        if cached is not None and (cached[1] is None or cached[1] + CLOCK_SKEW_S > time.time()):
            return cached[0]
        principal = self._decode(credential)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[credential] = (principal, principal.expires)
        return principal

    def _decode(self, credential: str) -> Principal:
        import jwt

        keys = [k for k in (self.key, *self.previous_keys, self.task_key) if k]
        if not keys:
            if not self.enabled:
                return ANONYMOUS
            raise Unauthenticated("a signed token, but this service has no key to check it (AIP_AUTH_KEY)")
        problem = "its signature matches no key of this platform (tampered, or signed with another key)"
        for key in keys:
            try:
                claims = jwt.decode(credential, key, algorithms=["HS256"], issuer=ISSUER, leeway=CLOCK_SKEW_S,
                                    options={"require": ["exp", "iat", "sub"]})
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("the token expired; ask an admin for a new one (aip tokens create)") from None
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise Unauthenticated(f"the token is not valid: {exc}") from None
            return self._principal(claims)
        raise Unauthenticated(f"the token is not valid: {problem}")

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        expires = float(claims["exp"])
        if claims.get("kind") == "task":
            return Principal(str(claims["sub"]), Role.VIEWER, task_id=str(claims.get("task", "")),
                             outputs=tuple(claims.get("out") or ()), serves=tuple(claims.get("serve") or ()),
                             owner=str(claims.get("owner", "")), expires=expires)
        try:
            role = Role.named(str(claims.get("role", "")))
        except ValueError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from None
        return Principal(str(claims["sub"]), role, expires=expires)


def bearer_of(metadata: Iterable[tuple[str, Any]]) -> str:
    """The ``authorization`` value among a call's metadata ('' when there is none)."""
    return next((v.decode() if isinstance(v, bytes) else v for k, v in metadata if k == "authorization"), "")


def forwarded_token(default: Callable[[], str]) -> Callable[[], str]:
    """A token source for a service's calls to its peers: the caller's own credential when a request is being
    served on its behalf (the gateway forwards it), else this service's own (``default``)."""

    def source() -> str:
        return FORWARDED.get() or default()

    return source


def own_token(settings: Any, service: str) -> Callable[[], str]:
    """A token source for a service's own calls to its peers (AIP_TOKEN, or one it signs with the platform's key)."""
    authority = Authority.of(settings)
    return lambda: authority.service_token(service)
