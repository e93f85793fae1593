"""Start, stop and inspect a whole platform on one machine: each service its own process.

Used by ``aip up|down|status`` and by notebooks. The running platform is described by
``<home>/platform.json`` (pids, addresses, level, the Ray head we started), so ``aip down``
ends exactly the processes ``aip up`` started.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ai_platform import __version__
from ai_platform.core.ports import bindable
from ai_platform.core.settings import MODULES as SERVICES
from ai_platform.core.settings import (
    PLATFORM_FILE,
    REPO_ROOT,
    SUN_PATH_MAX,
    ClientSettings,
    child_environment,
    default_addrs,
    default_metrics_addr,
    split_addr,
)
from ai_platform.core.tls import TlsConfig
from ai_platform.core.wire import HEALTH_TIMEOUT_S, error_from_rpc, sync_channel


class LaunchError(RuntimeError):
    """Why the platform could not start; nothing it started is left running."""


@dataclass
class PlatformState:
    home: str
    level: int
    addrs: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)
    ray: dict | None = None
    started_at: float = field(default_factory=time.time)
    lake: str = ""  # an object-store lake (s3://...) when the lake is not the home directory itself
    metrics: dict[str, str] = field(default_factory=dict)  # each gRPC service's Prometheus address

    @property
    def url(self) -> str:
        return f"http://{self.addrs['gateway']}"

    def env(self) -> dict[str, str]:
        """The AIP_* settings that point a client (or a notebook) at this platform."""
        return {"AIP_HOME": self.lake or self.home, **{f"AIP_{n.upper()}_ADDR": a for n, a in self.addrs.items()}}


def state_file(home: Path) -> Path:
    return home / PLATFORM_FILE


def read_state(home: Path) -> PlatformState | None:
    try:
        return PlatformState(**json.loads(state_file(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _ours(pid: int, module: str) -> bool:
    """Is ``pid`` still the service we started (and not a recycled pid)?"""
    try:
        return f"-m\0{module}\0" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") + "\0"
    except OSError:
        return False


SERVICE_ORDER = ("gateway", "storage", "scheduler", "inference")  # the order of the ports from a base port
PORT_SPAN = 7  # gateway, storage, scheduler, inference, then the three services' metrics


def ports_from(base: int, hint: str = "--port") -> tuple[dict[str, int], dict[str, int]]:
    """All seven ports from one base: gateway ``base``, storage ``base+1``, scheduler ``+2``, inference ``+3``, and
    the metrics of storage, scheduler and inference at ``+4``, ``+5``, ``+6``. ``hint``: how the caller chose it."""
    if not 1024 <= base <= 65535 - (PORT_SPAN - 1):
        raise LaunchError(f"{hint}={base} is out of range: the platform takes {PORT_SPAN} ports from it, so "
                          f"it must be 1024-{65535 - (PORT_SPAN - 1)} (ports below 1024 need root; 20000-32767 stay "
                          f"clear of Ray's and the ephemeral ports)")
    services = {name: base + i for i, name in enumerate(SERVICE_ORDER)}
    metrics = {name: base + len(SERVICE_ORDER) + i for i, name in enumerate(SERVICE_ORDER[1:])}
    return services, metrics


def _port_free(addr: str) -> bool:
    host, port = split_addr(addr)
    return bindable(port, host)


def health(service: str, addr: str, timeout: float = HEALTH_TIMEOUT_S, tls: TlsConfig | None = None) -> str:
    """Why ``service`` at ``addr`` is not healthy ('' when it is): the gateway's /healthz answers, a gRPC service's
    health service says SERVING (over TLS when the settings name its files)."""
    if service == "gateway":
        try:
            with urllib.request.urlopen(f"http://{addr}/healthz", timeout=timeout):
                return ""
        except OSError as exc:
            return f"GET http://{addr}/healthz failed: {exc}"
    tls = ClientSettings.from_env().tls() if tls is None else tls
    try:
        with sync_channel(addr, tls=tls) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return ""
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            return f"{SERVICES[service]} at {addr} is {status}"
    except grpc.RpcError as exc:
        return error_from_rpc(exc, f"{SERVICES[service]} at {addr}", tls.enabled).message


def healthy(service: str, addr: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    return not health(service, addr, timeout)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _stop_pids(pids: dict[str, int], grace_s: float = 15.0) -> None:
    live = {name: pid for name, pid in pids.items() if _ours(pid, SERVICES[name])}
    for pid in live.values():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace_s
    while time.time() < deadline and any(_ours(pid, SERVICES[n]) for n, pid in live.items()):
        time.sleep(0.1)
    for name, pid in live.items():
        if _ours(pid, SERVICES[name]):
            os.kill(pid, signal.SIGKILL)


def inference_socket_path(home: Path) -> str:
    """Where inference serves the gateway's ModelInfer calls on this host: under the home, or, when that path is
    too long for a Unix socket, in a private directory under /tmp named after the home."""
    path = home / "run" / "inference.sock"
    if len(os.fsencode(str(path))) <= SUN_PATH_MAX:
        return str(path)
    return f"/tmp/aip-{os.getuid()}-{hashlib.sha1(str(home).encode()).hexdigest()[:12]}/inference.sock"


def up(home: Path, *, host: str = "127.0.0.1", ports: dict[str, int] | None = None, level: int = 1,
       ray_address: str | None = None, cwd: Path | None = None, timeout_s: float = 90,
       lake: str = "", base_port: int | None = None, port_hint: str = "--port") -> PlatformState:
    """Start storage, scheduler, inference and gateway; return once each reports healthy.

    ``home`` holds the lake and the platform's own state (logs, task records, ``platform.json``);
    with ``lake`` (an ``s3://`` URI) the lake lives there instead and ``home`` keeps only the state.
    ``base_port`` moves all seven ports together (:func:`ports_from`); ``ports`` names single ones.
    ``port_hint`` is how the caller chooses the base port, for the message when one is taken.
    """
    home = home.expanduser().resolve()
    cwd = (cwd or Path.cwd()).resolve()
    existing = read_state(home)
    if existing and any(_ours(pid, SERVICES[n]) for n, pid in existing.pids.items()):
        raise LaunchError(f"a platform is already running from {home} (pids {existing.pids}); `aip down` first")
    try:
        (home / "logs").mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise LaunchError(f"the home {home} is not writable: {exc}") from None
    if base_port is not None:
        chosen, metric_ports = ports_from(base_port, port_hint)
        chosen.update(ports or {})
    else:
        chosen = {**{n: split_addr(a)[1] for n, a in default_addrs().items()}, **(ports or {})}
        metric_ports = {n: split_addr(default_metrics_addr(f"{host}:{chosen[n]}"))[1] for n in SERVICE_ORDER[1:]}
    addrs = {name: f"{host}:{chosen[name]}" for name in SERVICES}
    metrics = {name: f"{host}:{port}" for name, port in metric_ports.items()}
    for name in SERVICES:
        for what, candidate in (("", addrs[name]), (" metrics", metrics.get(name))):
            if candidate and not _port_free(candidate):
                how = f"{port_hint}=BASE moves all seven ports" if base_port is not None else \
                    f"--{name}-port, or --port for all seven"
                raise LaunchError(f"{SERVICES[name]} cannot start: {candidate} is already in use (the {name}{what} "
                                  f"port; choose others: {how})")
    state = PlatformState(str(home), level, addrs, lake=lake, metrics=metrics)
    procs: dict[str, subprocess.Popen] = {}
    script_roots = ClientSettings.from_env().script_roots or [str(cwd), str(REPO_ROOT / "mnist")]
    env = child_environment({**state.env(), "AIP_SCRIPT_ROOTS": os.pathsep.join(script_roots)})
    if lake:
        env["AIP_STATE_DIR"] = str(home)
    env.setdefault("AIP_INFERENCE_SOCKET", inference_socket_path(home))
    try:
        if level >= 2:
            env["AIP_BACKEND"] = "ray"
            if ray_address:
                env["RAY_ADDRESS"] = ray_address
            else:
                from ai_platform.cli.ray_cluster import start_local_head

                temp = f"/tmp/aip-ray-{os.getuid()}-{abs(hash(str(home))) % 10**8}"
                head = start_local_head(num_cpus=os.cpu_count() or 2, temp_dir=temp)
                state.ray = {"session_id": head.session_id, "gcs_address": head.gcs_address,
                             "dashboard_url": head.dashboard_url, "temp_dir": temp, "started_here": True}
                env["RAY_ADDRESS"] = head.dashboard_url
                env.setdefault("AIP_SERVE_ADDRESS", head.gcs_address)
                env.setdefault("AIP_RAY_CLUSTER_ADDRESS", head.gcs_address)
            if env.get("AIP_SERVE_ADDRESS"):  # models served by Ray Serve replicas on the same cluster
                env.setdefault("AIP_SERVING", "ray")
            state.ray = state.ray or {"dashboard_url": env["RAY_ADDRESS"], "started_here": False}
        for name, module in SERVICES.items():
            log = open(home / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
            own = {**env, "AIP_METRICS_ADDR": metrics[name]} if name in metrics else env
            procs[name] = subprocess.Popen([sys.executable, "-m", module], cwd=cwd, env=own, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            state.pids[name] = procs[name].pid
        deadline = time.time() + timeout_s
        pending = dict(state.pids)
        while pending:
            for name in list(pending):
                if (code := procs[name].poll()) is not None:  # our own child: its exit is certain, not guessed
                    log_path = home / "logs" / f"{name}.log"
                    raise LaunchError(f"{SERVICES[name]} exited with status {code} while starting; its log "
                                      f"({log_path}) ends with:\n{_log_tail(log_path)}")
                if healthy(name, addrs[name]):
                    del pending[name]
            if pending and time.time() > deadline:
                raise LaunchError(f"{', '.join(SERVICES[n] for n in pending)} not healthy after {timeout_s:.0f}s; "
                                  f"see {home}/logs/")
            time.sleep(0.2)
    except BaseException:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        _stop_ray(state)
        raise
    state_file(home).write_text(json.dumps(asdict(state), indent=2))
    return state


def attach_or_up(home: Path, *, level: int = 1, **options: object) -> tuple[PlatformState, bool]:
    """The platform running from ``home`` when there is one (a notebook beside `make demo`), else one started as
    :func:`up` starts it. Returns it and whether it was started here (then the caller stops it when done).
    A running platform below ``level`` is a LaunchError saying so: level 2 needs Ray."""
    home = home.expanduser().resolve()
    state = read_state(home)
    if state and all(_ours(pid, SERVICES[n]) for n, pid in state.pids.items()) and \
            all(healthy(n, a) for n, a in state.addrs.items()):
        if state.level < level:
            raise LaunchError(f"the platform running from {home} is level {state.level} and this needs level "
                              f"{level}: stop it (aip down) or use another home (and ports) for this one")
        return state, False
    return up(home, level=level, **options), True


def _stop_ray(state: PlatformState) -> None:
    if state.ray and state.ray.get("started_here"):
        from ai_platform.cli.ray_cluster import RayHead

        RayHead(state.ray["session_id"], state.ray["gcs_address"], state.ray["dashboard_url"],
                state.ray["temp_dir"]).stop()


def down(home: Path) -> PlatformState | None:
    """Stop what ``up`` started from ``home`` (services, then the Ray head if we started it)."""
    home = home.expanduser().resolve()
    state = read_state(home)
    if state is None:
        return None
    _stop_pids(state.pids)
    _stop_ray(state)
    state_file(home).unlink(missing_ok=True)
    return state


def status(home: Path) -> list[dict]:
    """One row per service (and the Ray head at level 2): pid, address, metrics address, health, version."""
    home = home.expanduser().resolve()
    state = read_state(home)
    addrs = state.addrs if state else default_addrs()
    rows = []
    for name, module in SERVICES.items():
        pid = state.pids.get(name) if state else None
        metrics = (state.metrics.get(name) if state else None) or (
            default_metrics_addr(addrs[name]) if name != "gateway" else f"{addrs[name]}/metrics")
        rows.append({"service": module, "pid": pid if pid and _ours(pid, module) else None, "address": addrs[name],
                     "metrics": metrics, "healthy": healthy(name, addrs[name]), "version": __version__})
    if state and state.ray:
        rows.append(ray_status(state.ray))
    return rows


def ray_status(ray: dict) -> dict:
    """The Ray cluster a level-2 platform runs on, as its dashboard answers: healthy with the Ray version."""
    url = ray["dashboard_url"]
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=HEALTH_TIMEOUT_S) as answer:
            version, healthy_now = json.loads(answer.read()).get("ray_version", "?"), True
    except (OSError, ValueError):
        version, healthy_now = "", False
    return {"service": "ray head" if ray.get("started_here") else "ray cluster", "pid": None,
            "address": ray.get("gcs_address") or url, "metrics": url, "healthy": healthy_now, "version": version}
