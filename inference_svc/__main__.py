"""``python -m inference_svc``: run the inference service alone (``--help`` lists its settings)."""

from __future__ import annotations

import asyncio

from ai_platform.core.auth import Authority
from ai_platform.core.infer_socket import InferSocketServer
from ai_platform.core.logs import setup_logging
from ai_platform.core.server import Servicer, serve
from ai_platform.core.settings import InferenceSettings
from ai_platform.protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from inference_svc.dataplane import DataPlane
from inference_svc.model import BatchingConfig, LocalServing
from inference_svc.repository import ModelRepository
from inference_svc.server import InferenceServicer


def main(argv: list[str] | None = None) -> None:
    settings = InferenceSettings.load(argv)
    setup_logging(settings.log_level)

    import torch

    torch.set_num_threads(settings.torch_threads)
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batching = BatchingConfig(settings.max_batch_size, settings.max_queue_delay_us / 1e6)

    authority = Authority.of(settings)

    async def run() -> None:
        if settings.serving == "ray":
            from inference_svc.serving_ray import RayServing

            serving = RayServing(settings)
        else:
            serving = LocalServing()
        repository = ModelRepository(settings, device, batching, serving)
        repository.start()
        implementation = InferenceServicer(DataPlane(repository))
        servicer = Servicer(
            implementation,
            grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        )
        side_servers = []
        if settings.inference_socket:  # the gateway's hop when it runs on this host
            side_servers.append(InferSocketServer(settings.inference_socket, implementation.infer, authority,
                                                  settings.max_message_bytes))
        await serve(settings, [servicer], on_shutdown=repository.close, side_servers=side_servers,
                    authority=authority)

    asyncio.run(run())


if __name__ == "__main__":
    main()
