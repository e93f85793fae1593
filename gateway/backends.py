"""One gRPC channel per backend service, a deadline on every call, and status mapped to REST errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ai_platform.client import channel_options
from ai_platform.config import Settings
from ai_platform.protos.aiplatform.v1 import scheduler_pb2_grpc, storage_pb2_grpc
from ai_platform.protos.inference import grpc_service_pb2_grpc
from gateway.errors import from_grpc

T = TypeVar("T")
SERVICE_NAMES = {"storage": "storage_svc", "scheduler": "scheduler_svc", "inference": "inference_svc"}


class Backends:
    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.addrs = {name: settings.addr_of(name) for name in SERVICE_NAMES}
        options = channel_options(settings.max_message_bytes)
        self.channels = {name: grpc.aio.insecure_channel(addr, options=options) for name, addr in self.addrs.items()}
        self.storage = storage_pb2_grpc.StorageServiceStub(self.channels["storage"])
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channels["scheduler"])
        self.inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channels["inference"])

    async def call(self, service: str, pending: Awaitable[T], not_found: str = "NOT_FOUND") -> T:
        """Await a gRPC call to ``service``; its failure becomes the matching ApiError."""
        try:
            return await pending
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, SERVICE_NAMES[service], self.addrs[service], not_found) from None

    async def health(self) -> dict[str, dict]:
        async def check(name: str) -> tuple[str, dict]:
            stub = health_pb2_grpc.HealthStub(self.channels[name])
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                healthy = response.status == health_pb2.HealthCheckResponse.SERVING
                return name, {"service": SERVICE_NAMES[name], "addr": self.addrs[name], "healthy": healthy}
            except grpc.aio.AioRpcError as exc:
                return name, {"service": SERVICE_NAMES[name], "addr": self.addrs[name], "healthy": False,
                              "error": exc.details() or exc.code().name}

        return dict(await asyncio.gather(*(check(name) for name in SERVICE_NAMES)))

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels.values()))
