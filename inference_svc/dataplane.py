"""The inference data plane: what every protocol edge calls, in plain Python types."""

from __future__ import annotations

import json
from typing import Any

from ai_platform import __version__
from ai_platform.errors import InvalidArgument, NotFound
from inference_svc.model import BatchingConfig, InferInput, ServedModel
from inference_svc.repository import ModelRepository, ModelState

SERVER_NAME = "ai-platform-inference"
EXTENSIONS = [
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "binary_tensor_data",
    "dynamic_batching",
]


class DataPlane:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str) -> bool:
        return self.repository.loaded(name, version) is not None

    async def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        model = await self.repository.get(name, version)
        return {
            "name": name,
            "versions": [str(model.version)],
            "platform": "pytorch_libtorch",
            "inputs": model.inputs,
            "outputs": model.outputs,
        }

    async def model(self, name: str, version: str) -> ServedModel:
        return await self.repository.get(name, version)

    async def infer(
        self, name: str, version: str, inputs: list[InferInput], requested: list[str] | None = None
    ) -> tuple[ServedModel, list[InferInput]]:
        if not inputs:
            raise InvalidArgument("the request has no inputs")
        model = self.repository.loaded(name, version) or await self.repository.get(name, version)
        return model, await model.infer(inputs, requested)

    async def load(self, name: str, parameters: dict[str, Any]) -> ServedModel:
        version = parameters.get("version")
        batching = None
        config = json.loads(parameters["config"]) if parameters.get("config") else {}
        max_batch = parameters.get("max_batch_size", config.get("max_batch_size"))
        delay_us = parameters.get(
            "max_queue_delay_us", config.get("dynamic_batching", {}).get("max_queue_delay_microseconds")
        )
        if max_batch is not None or delay_us is not None:
            default = self.repository.default_batching
            batching = BatchingConfig(
                int(max_batch) if max_batch is not None else default.max_batch_size,
                int(delay_us) / 1e6 if delay_us is not None else default.max_queue_delay_s,
            )
            if batching.max_batch_size < 1 or batching.max_queue_delay_s < 0:
                raise InvalidArgument("max_batch_size must be >= 1 and max_queue_delay_us >= 0")
        return await self.repository.load(
            name, int(version) if version else None, batching, parameters.get("device") or None
        )

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)

    async def index(self) -> list[ModelState]:
        return await self.repository.index()

    def statistics(self, name: str, version: str) -> list[ServedModel]:
        if not name:
            return self.repository.all_loaded()
        model = self.repository.loaded(name, version)
        if model is None:
            raise NotFound(f"model '{name}'{' version ' + version if version else ''} is not loaded")
        return [model]
