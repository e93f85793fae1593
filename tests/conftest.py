"""Shared fixtures: real service processes on free loopback ports, with a temporary lake home."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ai_platform.cli.launcher import inference_socket_path
from ai_platform.core import infer_socket
from ai_platform.core.ports import free_port
from ai_platform.core.tls import PLAINTEXT, TlsConfig
from ai_platform.core.wire import sync_channel

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServiceProcess:
    """A service started as ``python -m MODULE`` in its own process."""

    module: str
    home: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    addr: str = ""
    metrics_addr: str = ""
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    # Run in a mount namespace of its own, with a private, empty tmpfs over each of these directories (the tests'
    # files: other services' homes, state and logs), so that it sees none of them. The code stays visible.
    private_dirs: list[Path] = field(default_factory=list)
    health_tls: TlsConfig = PLAINTEXT  # how the health checks reach it (a client certificate for mutual TLS)

    def start(self, timeout: float = 30) -> ServiceProcess:
        self.addr = self.addr or f"127.0.0.1:{free_port()}"
        self.metrics_addr = self.metrics_addr or f"127.0.0.1:{free_port()}"
        self.log_path = self.home.parent / f"{self.module}-{self.addr.rsplit(':', 1)[1]}.log"
        env = {**os.environ, "AIP_HOME": str(self.home), "PYTHONPATH": str(ROOT), **self.env}
        args = [
            sys.executable,
            "-m",
            self.module,
            "--addr",
            self.addr,
            "--metrics-addr",
            self.metrics_addr,
            *self.extra_args,
        ]
        if self.private_dirs:
            mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(d))}" for d in self.private_dirs)
            args = ["unshare", "--mount", "--propagation", "private", "bash", "-c", f'{mounts} && exec "$@"', "--",
                    *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, env=env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        if self.module == "gateway":
            self._wait_http(timeout)
            return
        deadline = time.time() + timeout
        with sync_channel(self.addr, tls=self.health_tls) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.time() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise TimeoutError(f"{self.module} not healthy after {timeout}s:\n{self.log()}")

    def _wait_http(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://{self.addr}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"gateway not answering after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture(scope="module")
def lake_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lake") / ".ai_platform"


@pytest.fixture(scope="module")
def storage_service(lake_home: Path) -> Iterator[ServiceProcess]:
    """One storage_svc for a test module, with a small (4 MiB) message limit so size checks are cheap."""
    service = ServiceProcess("storage_svc", lake_home, ["--max-message-mb", "4"]).start()
    yield service
    service.stop()


@dataclass
class Platform:
    """All four services of one platform, started from a project directory as `aip up` would."""

    project: Path
    home: Path
    storage: ServiceProcess
    scheduler: ServiceProcess
    inference: ServiceProcess
    gateway: ServiceProcess

    @property
    def url(self) -> str:
        return f"http://{self.gateway.addr}"

    def services(self) -> list[ServiceProcess]:
        return [self.gateway, self.inference, self.scheduler, self.storage]

    def stop(self) -> None:
        for service in self.services():
            service.stop()


def start_platform(project: Path, gateway_env: dict[str, str] | None = None, token: str = "",
                   env: dict[str, str] | None = None) -> Platform:
    """The four services from ``project`` (its ``.ai_platform`` home), as `aip up` starts them; with ``token``,
    every service wants it (AIP_TOKEN), as in a deployment; ``env`` goes to every service."""
    home = project / ".ai_platform"
    addrs = {name: f"127.0.0.1:{free_port()}" for name in ("storage", "scheduler", "inference", "gateway")}
    env = {**{f"AIP_{name.upper()}_ADDR": addr for name, addr in addrs.items()},
           "AIP_INFERENCE_SOCKET": inference_socket_path(home.resolve()), **({"AIP_TOKEN": token} if token else {}),
           **(env or {})}
    started: list[ServiceProcess] = []
    try:
        for module, name, extra in (("storage_svc", "storage", {}), ("scheduler_svc", "scheduler", {}),
                                    ("inference_svc", "inference", {}), ("gateway", "gateway", gateway_env or {})):
            service = ServiceProcess(module, home, env={**env, **extra}, cwd=project, addr=addrs[name])
            started.append(service.start(timeout=60))
    except BaseException:
        for service in started:
            service.stop()
        raise
    return Platform(project, home, *started)


def socket_exchange(path: str, *frames: tuple[int, int, bytes] | bytes) -> list[tuple[int, int, bytes]]:
    """Send frames (or raw bytes) on a fresh connection; every frame the server sends back until it has answered
    each CALL, or has answered on call 0 (and closed the connection)."""
    calls = sum(not isinstance(f, bytes) and f[0] == infer_socket.CALL for f in frames)
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(path)
        conn.sendall(b"".join(f if isinstance(f, bytes) else infer_socket.HEADER.pack(f[0], f[1], len(f[2])) + f[2]
                              for f in frames))
        received, parser = [], infer_socket.FrameReader(64 << 20)
        while len([f for f in received if f[1]]) < calls or (not calls and not received):
            data = conn.recv(1 << 16)
            if not data:
                break
            received += parser.feed(data)
        return received


def socket_error(frame: tuple[int, int, bytes]) -> tuple[str, str]:
    assert frame[0] == infer_socket.ERROR, frame
    body = json.loads(frame[2])
    return body["code"], body["message"]


# -- the demo, as a user runs it ------------------------------------------------------------------------------------

DEMO_TOKEN = "demo-t0ken"
AIP = str(Path(sys.executable).with_name("aip"))


@dataclass
class Demo:
    """A platform started as `make demo` starts it (`aip up --port BASE`, then `aip demo mnist`) with a token: what
    the shipped scripts wrote is there (datasets/mnist_clean, models/mnist_cnn served, their runs)."""

    project: Path
    url: str
    addrs: dict[str, str]
    token: str
    env: dict[str, str]  # a user's shell in the project: the token, no AIP_*_ADDR (platform.json finds it)

    def aip(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run([AIP, *args], cwd=self.project, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0 or not check, f"aip {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    from ai_platform.cli.launcher import read_state
    from ai_platform.core.ports import free_port_block

    project = tmp_path_factory.mktemp("demo-project")
    (project / "mnist").symlink_to(ROOT / "mnist")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")}
    env.update(AIP_TOKEN=DEMO_TOKEN)
    running = Demo(project, "", {}, DEMO_TOKEN, env)
    running.aip("up", "--detach", "--port", str(free_port_block(7)), timeout=180)
    try:
        state = read_state(project / ".ai_platform")
        running.url, running.addrs = state.url, state.addrs
        running.aip("demo", "mnist")
        yield running
    finally:
        running.aip("down", check=False)
