"""The inference data plane: what every protocol edge calls, in plain Python types."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ai_platform import __version__
from ai_platform.core.errors import InvalidArgument, NotFound, PlatformError
from ai_platform.core.wire import INT64_MAX
from inference_svc.model import REPLICA_PARAMETERS, BatchingConfig, InferInput, LoadOptions, ServedModel
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
# Load parameters every backend takes; REPLICA_PARAMETERS only Ray Serve. Others are refused.
LOAD_PARAMETERS = frozenset({"version", "config", "max_batch_size", "max_queue_delay_us", "batch_wait_timeout_s",
                             "device"})
N = TypeVar("N", int, float)


def _number(parameters: dict[str, Any], key: str, kind: type[N], least: N, fallback: Any = None) -> N | None:
    """A numeric load parameter, at least ``least``: given as a number, or as digits in a string."""
    value = parameters.get(key, fallback)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = kind(value) if kind is float or (value.isascii() and value.isdigit()) else None
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise InvalidArgument(f"load parameter {key} must be {'an integer' if kind is int else 'a number'}, "
                              f"got {parameters.get(key, fallback)!r}")
    if not math.isfinite(value) or value < least or value > INT64_MAX:
        raise InvalidArgument(f"load parameter {key} must be a finite number >= {least}, got {value!r}")
    return kind(value)
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
        model = self.repository.loaded(name, version, fresh=False)
        return model is not None and self.repository.serving.state(model)[0]

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
            try:
                async for request in requests:
                    job = asyncio.ensure_future(serve_one(request))
                    running.add(job)
                    job.add_done_callback(running.discard)
                await asyncio.gather(*running)
            except BaseException:
                for job in running:
                    job.cancel()
                raise
            finally:  # the end marker, whatever ended the requests: the answers below never wait in vain
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read_all())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader  # a stream that broke (a malformed message, the client gone) ends with its error
        finally:
            reader.cancel()

    async def load(self, name: str, parameters: dict[str, Any]) -> ServedModel:
        version = _number(parameters, "version", int, 1)
        return await self.repository.load(name, version, self.load_options(parameters))

    def load_options(self, parameters: dict[str, Any]) -> LoadOptions | None:
        """The load parameters as options; InvalidArgument naming any this serving backend does not know."""
        serving = self.repository.serving
        unknown = sorted(set(parameters) - LOAD_PARAMETERS - serving.parameters)
        if unknown:
            elsewhere = [key for key in unknown if key in REPLICA_PARAMETERS]
            if elsewhere:
                raise InvalidArgument(f"load parameter(s) {elsewhere} need Ray Serve (--serving ray); this "
                                      f"inference_svc serves models in its own process")
            known = sorted(LOAD_PARAMETERS | serving.parameters)
            raise InvalidArgument(f"unknown load parameter(s) {unknown}; known: {known}")
        if set(parameters) <= {"version"}:
            return None
        config = parameters.get("config") or ""
        try:
            config = json.loads(config) if config else {}
        except ValueError as exc:
            raise InvalidArgument(f"load parameter config is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise InvalidArgument("load parameter config must be a JSON object")
        default = self.repository.default_batching
        max_batch = _number(parameters, "max_batch_size", int, 1, config.get("max_batch_size"))
        delay_us = _number(parameters, "max_queue_delay_us", int, 0,
                           (config.get("dynamic_batching") or {}).get("max_queue_delay_microseconds"))
        wait_s = _number(parameters, "batch_wait_timeout_s", float, 0)
        if delay_us is not None and wait_s is not None:
            raise InvalidArgument("give max_queue_delay_us or batch_wait_timeout_s, not both")
        delay_s = wait_s if wait_s is not None else (delay_us / 1e6 if delay_us is not None else None)
        batching = BatchingConfig(max_batch if max_batch is not None else default.max_batch_size,
                                  delay_s if delay_s is not None else default.max_queue_delay_s)
        device = parameters.get("device") or self.repository.device
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise InvalidArgument(f"load parameter device must be cpu, cuda or cuda:N, got {device!r}")
        options = serving.default_options(batching, device)
        fixed = _number(parameters, "replicas", int, 1)
        low = _number(parameters, "min_replicas", int, 0)
        high = _number(parameters, "max_replicas", int, 1)
        target = _number(parameters, "target_ongoing_requests", float, 0)
        if fixed is not None and (low, high, target) != (None, None, None):
            raise InvalidArgument("give replicas (a fixed count) or min_replicas/max_replicas (autoscaling), not both")
        if (low, high, target) != (None, None, None):
            options.min_replicas = low if low is not None else 1
            options.max_replicas = high if high is not None else max(options.min_replicas, 1)
            options.target_ongoing_requests = target or 2.0
            if options.min_replicas > options.max_replicas:
                raise InvalidArgument(f"min_replicas {options.min_replicas} is above max_replicas "
                                      f"{options.max_replicas}")
        elif fixed is not None:
            options.replicas = fixed
        for key in ("num_cpus", "num_gpus"):
            value = _number(parameters, key, float, 0)
            if value is not None:
                setattr(options, key, value)
        return options

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)

    async def index(self) -> list[ModelStatus]:
        return await self.repository.index()

    def statistics(self, name: str, version: str) -> list[ServedModel]:
        if not name:
            return self.repository.all_loaded()
        model = self.repository.loaded(name, version, fresh=False)
        if model is None:
            raise NotFound(f"model '{name}'{' version ' + version if version else ''} is not loaded")
        return [model]
