"""``python -m inference_svc``: run the inference service alone."""

from __future__ import annotations

import asyncio
import os

from ai_platform.config import build_parser, settings_from_args
from ai_platform.logs import setup_logging
from ai_platform.protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from ai_platform.server import Servicer, serve
from inference_svc.dataplane import DataPlane
from inference_svc.model import BatchingConfig
from inference_svc.repository import ModelRepository
from inference_svc.server import InferenceServicer


def main(argv: list[str] | None = None) -> None:
    parser = build_parser("inference", "Inference service: Open Inference Protocol over models in the lake.")
    parser.add_argument(
        "--device",
        default=os.environ.get("AIP_DEVICE", "auto"),
        help="cpu, cuda, or auto (cuda when available) (AIP_DEVICE)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=int(os.environ.get("AIP_MAX_BATCH_SIZE") or 32),
        help="default rows per merged forward pass (AIP_MAX_BATCH_SIZE)",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=int(os.environ.get("AIP_MAX_QUEUE_DELAY_US") or 0),
        help="default extra wait for a batch to fill, in microseconds (AIP_MAX_QUEUE_DELAY_US)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=int(os.environ.get("AIP_TORCH_THREADS") or 1),
        help="intra-op threads per forward pass (AIP_TORCH_THREADS)",
    )
    args = parser.parse_args(argv)
    settings = settings_from_args("inference", args)
    setup_logging(settings.log_level)

    import torch

    torch.set_num_threads(max(1, args.torch_threads))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batching = BatchingConfig(args.max_batch_size, args.max_queue_delay_us / 1e6)

    async def run() -> None:
        repository = ModelRepository(settings.storage_addr, device, batching)

        servicer = Servicer(
            InferenceServicer(DataPlane(repository)),
            grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        )
        await serve("inference", settings, [servicer], on_shutdown=repository.close)

    asyncio.run(run())


if __name__ == "__main__":
    main()
