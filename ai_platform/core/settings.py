"""Settings: every ``AIP_*`` variable and its flag, declared once with its default, type and meaning.

The only module that reads the environment for configuration. Each service has a settings class listing what it
reads; its ``--help`` and README's configuration table (``python -m ai_platform.core.settings``) are generated from
the same declarations, and a malformed value is refused naming the variable or flag it came from. Standard library
only: the task worker reads its settings here too, and must start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

DEFAULT_HOME = "./.ai_platform"
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("storage", "scheduler", "inference", "gateway")
MODULES = {"storage": "storage_svc", "scheduler": "scheduler_svc", "inference": "inference_svc",
           "gateway": "gateway"}
S = TypeVar("S", bound="BaseSettings")


# -- value parsers: text in, a value out, ValueError saying what was expected -------------------------------------

def text(value: str) -> str:
    return value


def integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"must be an integer, got {value!r}") from None


def positive_integer(value: str) -> int:
    number = integer(value)
    if number < 1:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return number


def non_negative_integer(value: str) -> int:
    number = integer(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return number


def non_negative_number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be a number, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return number


def positive_number(value: str) -> float:
    number = non_negative_number(value)
    if number == 0:
        raise ValueError(f"must be above 0, got {value!r}")
    return number


def address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT with a port in 1-65535, got {value!r}")
    return value


def optional_address(value: str) -> str:
    return address(value) if value else ""


SUN_PATH_MAX = 107  # bytes in a Unix socket's path (Linux sun_path, less the terminating NUL)


def socket_path(value: str) -> str:
    size = len(os.fsencode(value))
    if size > SUN_PATH_MAX:
        raise ValueError(f"is {size} bytes long; a Unix socket's path takes at most {SUN_PATH_MAX}, got {value!r}")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def path_list(value: str) -> list[str]:
    return [p for p in value.split(os.pathsep) if p]


def comma_list(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


SIGNING_KEY_MIN_BYTES = 32  # HS256's key should be as long as its hash (RFC 7518 3.2)


def signing_key(value: str) -> str:
    if value and len(value.encode()) < SIGNING_KEY_MIN_BYTES:
        raise ValueError(f"must be a signing key of at least {SIGNING_KEY_MIN_BYTES} bytes, got one of "
                         f"{len(value.encode())} (make one with: openssl rand -hex 32)")
    return value


def signing_keys(value: str) -> list[str]:
    return [signing_key(key) for key in comma_list(value)]


def storage_options(value: str) -> dict[str, str]:
    """Lance (object_store) storage options from a JSON object, e.g. ``{"aws_endpoint": "http://host:9000"}``."""
    try:
        options = json.loads(value or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"must be a JSON object of option names to values: {exc}") from None
    if not isinstance(options, dict) or any(isinstance(v, (dict, list)) or v is None for v in options.values()):
        raise ValueError("must be a JSON object of option names to strings, numbers or booleans")
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in options.items()}


# -- declarations -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Declaration:
    """How one setting is read: its variable, its parser, what it means and how its default reads in docs."""

    env: str
    parse: Callable[[str], Any]
    doc: str
    shown_default: str | None = None
    flag: bool = True


def setting(default: Any = None, doc: str = "", *, parse: Callable[[str], Any] = text, env: str = "",
            factory: Callable[[], Any] | None = None, shown: str | None = None, flag: bool = True) -> Any:
    """A dataclass field that is also a setting (``env`` defaults to ``AIP_`` + the field name)."""
    declaration = Declaration(env, parse, doc, shown, flag)
    if factory is not None:
        return field(default_factory=factory, metadata={"setting": declaration})
    return field(default=default, metadata={"setting": declaration})


def _declaration(f: dataclasses.Field) -> Declaration:
    declared: Declaration = f.metadata["setting"]
    return declared if declared.env else dataclasses.replace(declared, env=f"AIP_{f.name.upper()}")


def _shown(f: dataclasses.Field, declared: Declaration) -> str:
    if declared.shown_default is not None:
        return declared.shown_default
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        return ",".join(value)
    return "" if value is None else str(value)


@functools.cache
def _declarations(cls: type) -> tuple[tuple[dataclasses.Field, Declaration], ...]:
    """A class's settings, worked out once (a task's worker reads its own at every start)."""
    return tuple((f, _declaration(f)) for f in dataclasses.fields(cls) if "setting" in f.metadata)


class SettingsError(ValueError):
    """A malformed setting; the message names the variable or flag."""


@dataclass
class BaseSettings:
    """Settings read from ``AIP_*`` variables (and, for a service, flags that override them)."""

    service: ClassVar[str] = ""  # the service whose own address is ``--addr``
    description: ClassVar[str] = ""

    @classmethod
    def declarations(cls) -> list[tuple[dataclasses.Field, Declaration]]:
        return list(_declarations(cls))

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """Settings from the environment; ``overrides`` (already typed) win. Raises SettingsError."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f, declared in cls.declarations():
            raw = environ.get(declared.env)
            if raw:
                try:
                    values[f.name] = declared.parse(raw)
                except ValueError as exc:
                    raise SettingsError(f"{declared.env} {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def overlaid(self: S, variables: Mapping[str, str]) -> S:
        """A copy with ``variables`` (a few of the environment's) read over these settings: what ``from_env`` gives
        for the environment these came from plus ``variables``, without reading it all again. Raises
        SettingsError."""
        overlaid = object.__new__(type(self))  # a plain copy of its fields: no copy protocol, no __init__
        overlaid.__dict__.update(self.__dict__)
        by_variable = type(self)._by_variable()
        for variable, raw in variables.items():
            if (known := by_variable.get(variable)) is None:
                continue
            f, declared = known
            if not raw:  # empty, as from_env reads it: unset, the default
                setattr(overlaid, f.name, f.default_factory() if f.default is dataclasses.MISSING else f.default)
                continue
            try:
                setattr(overlaid, f.name, declared.parse(raw))
            except ValueError as exc:
                raise SettingsError(f"{declared.env} {exc}") from None
        return overlaid

    @classmethod
    @functools.cache
    def _by_variable(cls) -> dict[str, tuple[dataclasses.Field, Declaration]]:
        return {declared.env: (f, declared) for f, declared in cls.declarations()}

    @classmethod
    def parser(cls, prog: str | None = None) -> argparse.ArgumentParser:
        """Flags for every setting, their help generated from the declarations."""
        parser = argparse.ArgumentParser(prog=prog or f"python -m {MODULES.get(cls.service, cls.service)}",
                                         description=cls.description)
        for f, declared in cls.declarations():
            if not declared.flag:
                continue
            own = f.name == f"{cls.service}_addr"
            flag = "--addr" if own else "--" + f.name.replace("_", "-")
            shown = _shown(f, declared)
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper() if not own else "HOST:PORT",
                                choices=getattr(declared.parse, "choices", None), default=None,
                                help=f"{declared.doc} ({declared.env}; default: {shown or 'unset'})")
        return parser

    @classmethod
    def load(cls: type[S], argv: list[str] | None = None) -> S:
        """Settings from flags over the environment; a bad value exits with status 2 naming where it came from."""
        parser = cls.parser()
        args = parser.parse_args(argv)
        try:
            settings = cls.from_env()
        except SettingsError as exc:
            parser.error(str(exc))
        for f, declared in cls.declarations():
            raw = getattr(args, f.name, None)
            if raw is None:
                continue
            try:
                setattr(settings, f.name, declared.parse(raw))
            except ValueError as exc:
                flag = "--addr" if f.name == f"{cls.service}_addr" else "--" + f.name.replace("_", "-")
                parser.error(f"{flag} {exc}")
        try:
            settings.validate()
        except ValueError as exc:
            parser.error(str(exc))
        return settings

    def validate(self) -> None:
        """Checks across settings, made once at start (ValueError saying what is wrong): the TLS files."""
        self.tls()

    def tls(self) -> Any:
        """The TLS files these settings name, read and checked (``ai_platform.core.tls.TlsConfig``; TlsError, a
        ValueError, names the variable of one that cannot be used)."""
        cached = self.__dict__.get("_tls")
        if cached is None:
            from ai_platform.core.tls import TlsConfig

            cached = self.__dict__["_tls"] = TlsConfig.of(self)
        return cached

    def to_env(self) -> dict[str, str]:
        """These settings as the variables that would produce them (for a child process or a Ray job)."""
        env = {}
        for f, declared in self.declarations():
            value = getattr(self, f.name)
            if value in (None, "", [], {}):
                continue
            if isinstance(value, dict):
                env[declared.env] = json.dumps(value)
            elif isinstance(value, list):
                env[declared.env] = (os.pathsep if declared.parse is path_list else ",").join(value)
            else:
                env[declared.env] = str(value)
        return env


# -- what every service reads --------------------------------------------------------------------------------------

def _addr(service: str, port: int) -> Any:
    return setting(f"127.0.0.1:{port}", f"address of {MODULES[service]}", parse=address)


def _token_setting() -> Any:
    return setting("", "the admin credential: with it (or AIP_AUTH_KEY) set, every call must carry a bearer token, "
                       "each gRPC method (not health or reflection) and each gateway route (not /healthz, /metrics, "
                       "the page's files or the API docs); services use it for their own calls")


def _auth_key_setting() -> Any:
    return setting("", "key that signs and checks people's tokens (aip tokens create) and tasks' credentials, at "
                       "least 32 bytes (openssl rand -hex 32); unset, one derived from AIP_TOKEN", parse=signing_key)


def _previous_keys_setting() -> Any:
    return setting(doc="comma-separated keys that signed tokens still accepted (a key being rotated out)",
                   parse=signing_keys, factory=list)


TLS_DOCS = {
    "tls_cert": "PEM certificate this process serves gRPC with, and presents as a client (mutual TLS); with "
                "AIP_TLS_KEY",
    "tls_key": "PEM private key of AIP_TLS_CERT",
    "tls_ca": "PEM certificate authority this process trusts for the gRPC servers it calls (TLS on; the system's "
              "roots when only AIP_TLS_CERT is set)",
}


def _tls_setting(name: str) -> Any:
    return setting("", TLS_DOCS[name])


@dataclass
class Addresses(BaseSettings):
    """Where each service listens; a service binds its own and finds its peers by theirs."""

    storage_addr: str = _addr("storage", 50051)
    scheduler_addr: str = _addr("scheduler", 50052)
    inference_addr: str = _addr("inference", 50053)
    gateway_addr: str = _addr("gateway", 8000)
    token: str = _token_setting()
    tls_cert: str = _tls_setting("tls_cert")
    tls_key: str = _tls_setting("tls_key")
    tls_ca: str = _tls_setting("tls_ca")
    auth_key: str = _auth_key_setting()

    def addr_of(self, service: str) -> str:
        return getattr(self, f"{service}_addr")


@dataclass
class ServiceSettings(Addresses):
    """What every service reads: the lake, the addresses, limits, shutdown and logging."""

    home: str = setting(DEFAULT_HOME, "lake home: a directory, or s3://bucket/prefix")
    metrics_addr: str = setting("", "Prometheus /metrics HTTP address of a gRPC service", parse=optional_address,
                                shown="gRPC port + 1000")
    max_message_mb: int = setting(64, "largest gRPC message accepted or sent, in MiB", parse=positive_integer)
    grace_s: float = setting(10.0, "on SIGTERM, seconds in-flight calls may take to finish",
                             parse=non_negative_number)
    log_level: str = setting("info", "JSON logs on stderr at this level",
                             parse=one_of("debug", "info", "warning", "error"))
    metrics_token: str = setting("", "bearer token the Prometheus /metrics endpoints require (open when unset)")
    tls_client_ca: str = setting("", "PEM certificate authority of the clients a gRPC server accepts: set, TLS is "
                                     "mutual and a client without a certificate it signed is refused")
    auth_previous_keys: list[str] = _previous_keys_setting()

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 2**20

    @property
    def lake_is_remote(self) -> bool:
        return "://" in self.home

    def home_uri(self) -> str:
        """The home as an absolute path, or unchanged when it is a URI (``s3://...``)."""
        if self.lake_is_remote:
            return self.home.rstrip("/")
        return str(Path(self.home).expanduser().resolve())

    def own_addr(self) -> str:
        return self.addr_of(self.service)

    def metrics_address(self) -> str:
        return self.metrics_addr or default_metrics_addr(self.own_addr())


def _storage_options_setting() -> Any:
    return setting(doc="JSON object of Lance storage options for an s3:// home (endpoint, keys, region, allow_http);"
                       " unset ones come from the AWS_* variables", parse=storage_options, factory=dict)


def _state_dir_setting() -> Any:
    return setting("", "task records, task logs, platform.json and service logs",
                   shown=f"the home, or {DEFAULT_HOME} for an s3:// home")


def _ray_address_setting() -> Any:
    return setting("", "Ray dashboard address for the Jobs API, e.g. http://127.0.0.1:8265; `aip up --level 2` "
                       "starts a local Ray head when it is unset", env="RAY_ADDRESS")


def _script_roots_setting(factory: Callable[[], list[str]]) -> Any:
    return setting(doc="directories task scripts must live in (os.pathsep-separated)", parse=path_list,
                   factory=factory, shown="the start directory")


def _inference_socket_setting() -> Any:
    return setting("", "Unix socket on which inference also serves ModelInfer, for a gateway on the same host (the "
                       "same messages and checks as gRPC, less per-call cost); `aip up` sets it", parse=socket_path)


def state_dir_for(state_dir: str, home: str) -> Path:
    """Where the platform's own state lives: AIP_STATE_DIR, else the home when it is a directory."""
    return Path(state_dir or (home if "://" not in home else DEFAULT_HOME)).expanduser().resolve()


@dataclass
class StorageSettings(ServiceSettings):
    service: ClassVar[str] = "storage"
    description: ClassVar[str] = "Storage service: datasets and models in a versioned Lance lake."

    storage_options: dict[str, str] = _storage_options_setting()
    lake_wait_s: float = setting(300.0, "at start, how long to wait for a lake that cannot be reached yet (an object "
                                        "store starting beside it) before exiting with status 1",
                                 parse=non_negative_number)
    create_bucket: bool = setting(False, "create the s3:// home's bucket when it does not exist (a store of the "
                                         "deployment's own)", parse=boolean)


@dataclass
class SchedulerSettings(ServiceSettings):
    service: ClassVar[str] = "scheduler"
    description: ClassVar[str] = "Scheduler service: runs task scripts on local processes or a Ray cluster."

    backend: str = setting("local", "where tasks run", parse=one_of("local", "ray"))
    scheduler_public_addr: str = setting("", "the scheduler's address as task workers reach it (on other nodes)",
                                         parse=optional_address, shown="its own address")
    ray_address: str = _ray_address_setting()
    ray_warm_runners: int = setting(0, "Ray backend: warm runners, Ray actors that each hold one CPU of the cluster "
                                       "and fork short tasks (at most 1 CPU, no GPU, memory or custom resources) in "
                                       "milliseconds rather than start a Ray Job each (about a second); 0: a Job per "
                                       "task", parse=non_negative_integer)
    ray_cluster_address: str = setting("", "Ray backend, warm runners: the cluster's GCS address (host:port) as a "
                                           "driver on one of its nodes joins it; `aip up --level 2` sets it",
                                       parse=optional_address)
    script_roots: list[str] = _script_roots_setting(lambda: [os.getcwd()])
    max_parallel: int = setting(doc="local backend: tasks running at once; the rest queue", parse=positive_integer,
                                factory=lambda: os.cpu_count() or 1, shown="CPU count")
    state_dir: str = _state_dir_setting()
    log_max_mb: float = setting(16.0, "per-task log cap in MiB; the tail is kept", parse=positive_number)
    storage_options: dict[str, str] = _storage_options_setting()
    warm_start: bool = setting(True, "local backend: fork each task from a process that has the worker's imports "
                                     "loaded (milliseconds), rather than start a new interpreter (0.2 s)",
                               parse=boolean)
    warm_imports: list[str] = setting(doc="local backend, warm start: modules imported ahead in the fork server "
                                          "(e.g. numpy,pyarrow,torch: tasks start with them in memory)",
                                      parse=comma_list, factory=list)

    def state_path(self) -> Path:
        return state_dir_for(self.state_dir, self.home_uri())

    def worker_env(self) -> dict[str, str]:
        """The settings a task's worker needs to reach the platform, wherever it runs (a Ray job inherits nothing)."""
        return ClientSettings(
            storage_addr=self.storage_addr, scheduler_addr=self.scheduler_public_addr or self.scheduler_addr,
            inference_addr=self.inference_addr,
            gateway_addr=self.gateway_addr, home=self.home_uri(), storage_options=self.storage_options,
        ).to_env()  # no admin token, no signing key (a task holds its own credential); no TLS files (its node's)


@dataclass
class InferenceSettings(ServiceSettings):
    service: ClassVar[str] = "inference"
    description: ClassVar[str] = "Inference service: Open Inference Protocol over models in the lake."

    device: str = setting("auto", "cpu, cuda, or auto (cuda when available)", parse=one_of("auto", "cpu", "cuda"))
    max_batch_size: int = setting(32, "default rows per merged forward pass", parse=positive_integer)
    max_queue_delay_us: int = setting(0, "default extra wait for a batch to fill, in microseconds",
                                      parse=non_negative_integer)
    torch_threads: int = setting(1, "intra-op threads per forward pass", parse=positive_integer)
    serving: str = setting("local", "where models compute: local (this process) or ray (Ray Serve replicas); "
                                    "`aip up --level 2` uses ray", parse=one_of("local", "ray"))
    serve_address: str = setting("", "serving=ray: the Ray cluster's GCS address (host:port); `aip up --level 2` "
                                      "sets it")
    replicas: int = setting(1, "serving=ray: default replicas per model version", parse=positive_integer)
    replica_num_cpus: float = setting(0.5, "serving=ray: default CPUs each replica holds (a fraction: a few replicas "
                                           "fit beside tasks on a small node; the load parameter num_cpus sets it)",
                                      parse=non_negative_number)
    replica_num_gpus: float = setting(0.0, "serving=ray: default GPUs each replica holds",
                                      parse=non_negative_number)
    inference_socket: str = _inference_socket_setting()


@dataclass
class GatewaySettings(ServiceSettings):
    service: ClassVar[str] = "gateway"
    description: ClassVar[str] = "REST gateway: translates REST to the platform's gRPC services; serves web/."

    body_limit_mb: float = setting(16.0, "largest JSON body, in MiB (413 above)", parse=positive_number)
    upload_limit_mb: float = setting(4096.0, "largest dataset upload, in MiB (413 above)", parse=positive_number)
    gateway_timeout_s: float = setting(30.0, "deadline of each call to a backend service", parse=positive_number)
    cors_origins: list[str] = setting(doc="comma-separated origins allowed by CORS", parse=comma_list,
                                      factory=list, shown="localhost on any port")
    header_timeout_s: float = setting(10.0, "a connection whose request headers are not all in this long after it "
                                            "opened (or the request began) is closed", parse=positive_number)
    keep_alive_s: int = setting(5, "an idle kept-alive connection is closed after this many seconds",
                                parse=positive_integer)
    max_streams_per_client: int = setting(32, "followed streams (logs, metrics) and long polls (a task's wait_s) "
                                              "one client address may hold at once; 429 past it",
                                          parse=positive_integer)
    inference_socket: str = _inference_socket_setting()


@dataclass
class ClientSettings(Addresses):
    """What the client, the CLI and the SDK read: where the services are and where the lake is."""

    service: ClassVar[str] = "client"
    home: str = setting(DEFAULT_HOME, "lake home: a directory, or s3://bucket/prefix")
    state_dir: str = _state_dir_setting()
    storage_options: dict[str, str] = _storage_options_setting()
    ray_address: str = _ray_address_setting()
    script_roots: list[str] = _script_roots_setting(list)  # unset: the directory `aip up` starts the platform in

    def state_path(self) -> Path:
        return state_dir_for(self.state_dir, self.home)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
        """As :meth:`BaseSettings.from_env`; an address that neither the environment nor ``overrides`` give is the
        one of the platform ``aip up`` started from the home (its ``platform.json``), as ``aip status`` finds it,
        so a notebook or a new shell in that directory reaches it with no variables set."""
        settings = super().from_env(environ, **overrides)
        environ = os.environ if environ is None else environ
        for name, addr in running_platform(settings.state_path()).items():
            if not environ.get(f"AIP_{name.upper()}_ADDR") and overrides.get(f"{name}_addr") is None:
                setattr(settings, f"{name}_addr", addr)
        return settings


PLATFORM_FILE = "platform.json"  # what `aip up` writes in its home: the running platform's pids and addresses


def given_addresses(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``AIP_*_ADDR`` variables that are set (those win over platform.json), for messages."""
    environ = os.environ if environ is None else environ
    return [f"AIP_{name.upper()}_ADDR" for name in SERVICES if environ.get(f"AIP_{name.upper()}_ADDR")]


def running_platform(home: Path) -> dict[str, str]:
    """The addresses (service -> HOST:PORT) in ``home``'s platform.json; {} when there is none."""
    try:
        addrs = json.loads((home / PLATFORM_FILE).read_text()).get("addrs", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: addr for name, addr in addrs.items() if name in SERVICES and isinstance(addr, str)}


@dataclass
class TaskSettings(BaseSettings):
    """What the worker that runs one task reads: its spec and where to report (set by the scheduler)."""

    task_id: str = setting("", "the task's id", flag=False)
    task_script: str = setting("", "the task's script where the worker runs (its spec comes from the scheduler)",
                               flag=False)
    task_token: str = setting("", "the task's own credential (on Ray: the job's; on the local backend it comes on "
                                  "the worker's stdin instead, AIP_TASK_TOKEN_STDIN)", flag=False)
    task_token_stdin: str = setting("", "local backend: the task's credential is the first line of stdin",
                                    flag=False)
    scheduler_addr: str = _addr("scheduler", 50052)
    tls_cert: str = _tls_setting("tls_cert")
    tls_key: str = _tls_setting("tls_key")
    tls_ca: str = _tls_setting("tls_ca")
    die_with_parent: str = setting("", "local backend: end the worker when the scheduler dies", flag=False)


SERVICE_SETTINGS: dict[str, type[ServiceSettings]] = {
    "storage": StorageSettings, "scheduler": SchedulerSettings, "inference": InferenceSettings,
    "gateway": GatewaySettings,
}


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def default_metrics_addr(addr: str) -> str:
    """Prometheus endpoint of a gRPC service: same host, gRPC port + 1000."""
    host, port = split_addr(addr)
    return f"{host}:{port + 1000}"


def default_addrs() -> dict[str, str]:
    defaults = Addresses()
    return {name: defaults.addr_of(name) for name in SERVICES}


def platform_pythonpath() -> str:
    """PYTHONPATH with the platform's own packages first, so a child process (or a Ray job) can import them."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


SECRET_VARIABLES = ("AIP_TOKEN", "AIP_AUTH_KEY", "AIP_AUTH_PREVIOUS_KEYS", "AIP_METRICS_TOKEN")


def child_environment(extra: Mapping[str, str], secrets: bool = True) -> dict[str, str]:
    """The environment a child process inherits, plus ``extra``, with the platform importable; without the
    platform's credentials when ``secrets`` is False (a task's worker)."""
    inherited = {k: v for k, v in os.environ.items() if secrets or k not in SECRET_VARIABLES}
    return {**inherited, **extra, "PYTHONPATH": platform_pythonpath()}


def markdown_table() -> str:
    """README's configuration table: one row per variable, the services that read it, its flag and default."""
    rows: dict[str, dict[str, Any]] = {}
    for owner, cls in [*SERVICE_SETTINGS.items(), ("aip and clients", ClientSettings)]:
        for f, declared in cls.declarations():
            row = rows.setdefault(declared.env, {"readers": [], "flag": "", "default": _shown(f, declared),
                                                 "doc": declared.doc})
            row["readers"].append(MODULES.get(owner, owner))
            if owner != "aip and clients" and declared.flag:
                row["flag"] = "--" + f.name.replace("_", "-")
    lines = ["| variable | flag | default | read by | meaning |", "|---|---|---|---|---|"]
    for env, row in rows.items():
        readers = "every service" if all(m in row["readers"] for m in MODULES.values()) else ", ".join(row["readers"])
        if "aip and clients" in row["readers"] and readers == "every service":
            readers = "every service, aip and clients"
        default = f"`{row['default']}`" if row["default"] and not row["default"].startswith(("the ", "its ", "gRPC",
                                                                                            "CPU", "localhost")) \
            else row["default"]
        flag = f"`{row['flag']}`" if row["flag"] else ""
        lines.append(f"| `{env}` | {flag} | {default} | {readers} | {row['doc']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
