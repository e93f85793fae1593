"""The inference data plane: what every protocol edge calls, in plain Python types."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ai_platform import __version__
from ai_platform.core.errors import InvalidArgument, NotFound, PlatformError
from inference_svc.model import BatchingConfig, InferInput, ServedModel
from inference_svc.repository import ModelRepository, ModelStatus

R = TypeVar("R")
T = TypeVar("T")

SERVER_NAME = "ai-platform-inference"
EXTENSIONS = [
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "binary_tensor_data",
    "dynamic_batching",
]


PLATFORM = "pytorch_libtorch"
TENSOR_FIELDS = {"name", "datatype", "shape"}


@dataclass
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


@dataclass
class TensorSpec:
    """One input or output of a model; ``parameters`` say what it means (an output's class ``labels``, as JSON,
    and whether its ``scores`` are logits or probabilities)."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_signature(cls, spec: dict[str, Any]) -> TensorSpec:
        extra = {k: v if isinstance(v, str) else json.dumps(v) for k, v in spec.items() if k not in TENSOR_FIELDS}
        return cls(spec["name"], spec["datatype"], list(spec["shape"]), extra)


@dataclass
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class DataPlane:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, list(EXTENSIONS))

    def model_ready(self, name: str, version: str) -> bool:
        return self.repository.loaded(name, version) is not None

    async def model_metadata(self, name: str, version: str) -> ModelMetadata:
        model = await self.repository.get(name, version)
        return ModelMetadata(name, [str(model.version)], PLATFORM, [TensorSpec.from_signature(s) for s in model.inputs],
                             [TensorSpec.from_signature(s) for s in model.outputs])

    async def model(self, name: str, version: str) -> ServedModel:
        return await self.repository.get(name, version)

    async def infer(
        self, name: str, version: str, inputs: list[InferInput], requested: list[str] | None = None
    ) -> tuple[ServedModel, list[InferInput]]:
        if not inputs:
            raise InvalidArgument("the request has no inputs")
        model = self.repository.loaded(name, version) or await self.repository.get(name, version)
        return model, await model.infer(inputs, requested)

    async def infer_stream(
        self, requests: AsyncIterator[T], infer_one: Callable[[T], Awaitable[R]]
    ) -> AsyncIterator[tuple[T, R | PlatformError]]:
        """Serve a stream's requests concurrently (so they batch together); yield each answer, or the error that
        request met, as soon as it is ready. The stream ends after the last request's answer."""
        answers: asyncio.Queue[tuple[T, R | PlatformError] | None] = asyncio.Queue()

        async def serve_one(request: T) -> None:
            try:
                answers.put_nowait((request, await infer_one(request)))
            except PlatformError as exc:
                answers.put_nowait((request, exc))

        async def read_all() -> None:
            running: set[asyncio.Future] = set()
            async for request in requests:
                job = asyncio.ensure_future(serve_one(request))
                running.add(job)
                job.add_done_callback(running.discard)
            await asyncio.gather(*running)
            answers.put_nowait(None)

        reader = asyncio.ensure_future(read_all())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader
        finally:
            reader.cancel()

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

    async def index(self) -> list[ModelStatus]:
        return await self.repository.index()

    def statistics(self, name: str, version: str) -> list[ServedModel]:
        if not name:
            return self.repository.all_loaded()
        model = self.repository.loaded(name, version)
        if model is None:
            raise NotFound(f"model '{name}'{' version ' + version if version else ''} is not loaded")
        return [model]
