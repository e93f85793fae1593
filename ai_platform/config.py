"""Configuration shared by every service: ``AIP_*`` environment variables, overridable by flags.

Each service binds its own address and finds its peers by theirs, so ``aip up`` and a
service started alone read the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICES = ("storage", "scheduler", "inference", "gateway")
DEFAULT_ADDRS = {
    "storage": "127.0.0.1:50051",
    "scheduler": "127.0.0.1:50052",
    "inference": "127.0.0.1:50053",
    "gateway": "127.0.0.1:8000",
}


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _env_number(name: str, default: float, kind: type) -> Any:
    text = os.environ.get(name)
    if not text:
        return kind(default)
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def _storage_options_flag(text: str) -> dict[str, str]:
    try:
        return parse_storage_options(text, "--storage-options")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_storage_options(text: str, source: str = "AIP_STORAGE_OPTIONS") -> dict[str, str]:
    """Lance (object_store) storage options from a JSON object, e.g. ``{"aws_endpoint": "http://host:9000"}``."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} must be a JSON object of option names to values: {exc}") from None
    if not isinstance(value, dict) or any(isinstance(v, (dict, list)) or v is None for v in value.values()):
        raise ValueError(f"{source} must be a JSON object of option names to strings, numbers or booleans")
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def default_metrics_addr(addr: str) -> str:
    """Prometheus endpoint of a gRPC service: same host, gRPC port + 1000."""
    host, port = split_addr(addr)
    return f"{host}:{port + 1000}"


@dataclass
class Settings:
    home: str = field(default_factory=lambda: _env("AIP_HOME", "./.ai_platform"))
    storage_addr: str = field(default_factory=lambda: _env("AIP_STORAGE_ADDR", DEFAULT_ADDRS["storage"]))
    scheduler_addr: str = field(default_factory=lambda: _env("AIP_SCHEDULER_ADDR", DEFAULT_ADDRS["scheduler"]))
    inference_addr: str = field(default_factory=lambda: _env("AIP_INFERENCE_ADDR", DEFAULT_ADDRS["inference"]))
    gateway_addr: str = field(default_factory=lambda: _env("AIP_GATEWAY_ADDR", DEFAULT_ADDRS["gateway"]))
    metrics_addr: str = field(default_factory=lambda: _env("AIP_METRICS_ADDR", ""))
    backend: str = field(default_factory=lambda: _env("AIP_BACKEND", "local"))
    ray_address: str = field(default_factory=lambda: _env("RAY_ADDRESS", ""))
    token: str = field(default_factory=lambda: _env("AIP_TOKEN", ""))
    script_roots: list[str] = field(
        default_factory=lambda: [p for p in _env("AIP_SCRIPT_ROOTS", os.getcwd()).split(os.pathsep) if p]
    )
    storage_options: dict[str, str] = field(
        default_factory=lambda: parse_storage_options(_env("AIP_STORAGE_OPTIONS", ""))
    )
    max_message_mb: int = field(default_factory=lambda: _env_number("AIP_MAX_MESSAGE_MB", 64, int))
    grace_s: float = field(default_factory=lambda: _env_number("AIP_GRACE_S", 10.0, float))
    log_level: str = field(default_factory=lambda: _env("AIP_LOG_LEVEL", "info"))

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    def home_uri(self) -> str:
        """The home as an absolute path, or unchanged when it is a URI (``s3://...``)."""
        if "://" in self.home:
            return self.home.rstrip("/")
        return str(Path(self.home).expanduser().resolve())

    def addr_of(self, service: str) -> str:
        return getattr(self, f"{service}_addr")

    def metrics_addr_of(self, service: str) -> str:
        return self.metrics_addr or default_metrics_addr(self.addr_of(service))


def build_parser(service: str, description: str) -> argparse.ArgumentParser:
    """Flags mirroring the ``AIP_*`` variables; defaults come from the environment."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {service}_svc" if service != "gateway" else "python -m gateway", description=description
    )
    try:
        defaults = Settings()
    except ValueError as exc:  # a malformed AIP_* variable: say which, as for a bad flag
        parser.error(str(exc))
    parser.add_argument("--home", default=defaults.home, help="lake home: a directory or s3://bucket/prefix (AIP_HOME)")
    parser.add_argument(
        "--addr", default=defaults.addr_of(service), help=f"address this service binds (AIP_{service.upper()}_ADDR)"
    )
    for peer in SERVICES:
        if peer != service:
            parser.add_argument(
                f"--{peer}-addr", default=defaults.addr_of(peer), help=f"address of {peer} (AIP_{peer.upper()}_ADDR)"
            )
    parser.add_argument(
        "--metrics-addr",
        default=defaults.metrics_addr,
        help="Prometheus /metrics HTTP address (AIP_METRICS_ADDR; default: gRPC port + 1000)",
    )
    parser.add_argument(
        "--max-message-mb",
        type=int,
        default=defaults.max_message_mb,
        help="largest gRPC message accepted or sent, in MiB (AIP_MAX_MESSAGE_MB)",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=defaults.grace_s,
        help="seconds to drain in-flight calls on SIGTERM (AIP_GRACE_S)",
    )
    parser.add_argument("--log-level", default=defaults.log_level, help="debug, info, warning, error (AIP_LOG_LEVEL)")
    if service == "storage":
        parser.add_argument(
            "--storage-options",
            type=_storage_options_flag,
            default=defaults.storage_options,
            help='JSON object of Lance storage options for an s3:// home, e.g. \'{"aws_endpoint": "http://127.0.0.1:9000",'
            ' "allow_http": true}\' (AIP_STORAGE_OPTIONS; the AWS_* variables also apply)',
        )
    return parser


def settings_from_args(service: str, args: argparse.Namespace) -> Settings:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if hasattr(args, f.name)}
    values[f"{service}_addr"] = args.addr
    return Settings(**values)
