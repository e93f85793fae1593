"""What user scripts import: progress reporting, and saving and loading models.

A task script defines ``run(input_path, output_path, params) -> dict``, may call
:func:`report_progress` as it goes (clients see it on the task and in WatchTask), and saves
what it trained with :func:`save_model` so that inference_svc can serve it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from ai_platform import report


def save_model(model: Any, output: str, example_inputs: Any, labels: list[str] | None = None,
               params: dict | None = None, metrics: dict | None = None, **options: Any) -> dict[str, Any]:
    """Save a PyTorch model as a new version of the model table ``output`` (see ``ai_platform.models``).

    An ``s3://`` output uses the platform's storage options (``AIP_STORAGE_OPTIONS``) unless given.
    """
    from ai_platform import models

    options.setdefault("storage_options", _lake_storage_options())
    return models.save_model(model, output, example_inputs, labels, params, metrics, **options)


def _lake_storage_options() -> dict[str, str] | None:
    from ai_platform.config import parse_storage_options

    return parse_storage_options(os.environ.get("AIP_STORAGE_OPTIONS", "")) or None


def deploy_model(name: str, *, version: int | None = None, max_batch_size: int | None = None,
                 max_queue_delay_us: int | None = None, inference_addr: str | None = None) -> dict[str, Any]:
    """Load the model table ``name`` into inference_svc (the newest version unless one is given).

    Loading again after a new version was saved swaps it in without failing requests in flight.
    Addresses come from ``AIP_INFERENCE_ADDR`` and ``AIP_GATEWAY_ADDR``, as the platform sets them.
    """
    import grpc

    from ai_platform.config import Settings
    from ai_platform.protos.inference import grpc_service_pb2 as pb
    from ai_platform.protos.inference import grpc_service_pb2_grpc

    settings = Settings()
    addr = inference_addr or settings.inference_addr
    parameters = {}
    for key, value in (("version", version), ("max_batch_size", max_batch_size),
                       ("max_queue_delay_us", max_queue_delay_us)):
        if value is not None:
            parameters[key] = pb.ModelRepositoryParameter(int64_param=int(value))
    with grpc.insecure_channel(addr) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name, parameters=parameters), timeout=300)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=str(version or "")), timeout=30)
    gateway = f"http://{settings.gateway_addr}"
    return {"model": name, "version": int(meta.versions[0]), "endpoints": {
        "grpc": addr, "rest_infer": f"{gateway}/v2/models/{name}/infer",
        "predict": f"{gateway}/api/v1/models/{name}/predict", "page": f"{gateway}/"}}


def load_model(uri: str, version: int | None = None, device: str = "cpu") -> Any:
    """A runnable module for a saved model, without the training script's class."""
    from ai_platform import models

    return models.load_model(uri, version, device, _lake_storage_options())


def report_progress(fraction: float, message: str = "", metrics: dict[str, Any] | None = None) -> None:
    """Tell the platform how far the task is (``fraction`` in 0..1), with optional metrics.

    Outside a platform task it prints the progress to stderr instead.
    """
    fraction = float(fraction)
    if not math.isfinite(fraction):
        raise ValueError(f"fraction must be a finite number, got {fraction}")
    progress = {"fraction": min(max(fraction, 0.0), 1.0), "message": str(message), "metrics": dict(metrics or {}),
                "time": time.time()}
    if not report.send("progress", progress):
        print(f"[progress {progress['fraction']:.0%}] {message} {metrics or ''}", file=sys.stderr)
