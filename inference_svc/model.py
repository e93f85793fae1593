"""A loaded model: its signature, validation and statistics (``ServedModel``), and where it computes (a ``Runner``)."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ai_platform.core.errors import InvalidArgument
from ai_platform.core.wire import DATATYPES
from ai_platform.sdk.models import ModelRecord, load_program
from inference_svc.batching import AdaptiveBatcher, BatchTiming

# Request tensors are read-only views of the message bytes; the program never writes to its inputs.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
WARM_UP_PASSES = 3  # TorchScript's profiling executor specialises during the first passes
INLINE_FORWARD_MAX_S = 0.0005  # a lone request whose forward pass is quicker runs on the event loop
BATCHED_PROGRAM_MIN_ROWS = 2


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class ModelStats:
    """Triton-shaped statistics: per request (success, fail, queue, compute) and per batch size."""

    inference_count: int = 0  # rows inferred
    execution_count: int = 0  # forward passes
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, tuple[Duration, Duration, Duration]] = field(default_factory=dict)


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.0


# Load parameters only Ray Serve takes (a local backend refuses them, naming the backend that would take them).
REPLICA_PARAMETERS = frozenset({"replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "num_cpus",
                                "num_gpus"})


@dataclass
class LoadOptions:
    """How one model version is served: batching and device everywhere; replicas and their resources on Ray Serve
    (fixed ``replicas``, or autoscaling between ``min_replicas`` and ``max_replicas``)."""

    batching: BatchingConfig
    device: str
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas


class Program:
    """A model version's program on a device, ready for forward passes of any batch size.

    The one forward pass of both serving backends: in inference_svc (local) and in each Ray Serve replica.
    """

    def __init__(self, record: ModelRecord, device: str) -> None:
        import torch

        self._torch = torch
        self.device = device
        self.inputs = record.signature["inputs"]
        self.program = load_program(record, device)
        self.batched_program = self._optimise_for_batches(self.program)
        self._warm_up()

    def _optimise_for_batches(self, program: Any) -> Any:
        """A frozen, oneDNN-fused variant of a TorchScript program for CPU batches.

        For the MNIST CNN it runs a batch of 32 about 7x faster per image than the plain trace, and
        a single image about 1.4x slower; each forward pass uses whichever suits its batch size.
        """
        torch = self._torch
        if self.device != "cpu" or not isinstance(program, torch.jit.ScriptModule):
            return program
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.jit.optimize_for_inference(torch.jit.freeze(program.eval()))
        except Exception:  # noqa: BLE001 - optimisation is optional; the plain program still serves
            return program

    def _warm_up(self) -> None:
        """Forward passes at load time, so the first request does not pay for lazy initialisation; the quickest
        one-row pass is ``lone_forward_s``."""
        examples = [
            np.zeros([1, *[max(d, 1) for d in spec["shape"][1:]]], DATATYPES[spec["datatype"]].numpy)
            for spec in self.inputs
        ]
        self.lone_forward_s = float("inf")
        for _ in range(WARM_UP_PASSES):
            started = time.perf_counter()
            self.forward(examples)
            self.lone_forward_s = min(self.lone_forward_s, time.perf_counter() - started)

    def forward(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], int, int, int]:
        """Outputs, and the nanoseconds spent on input, inference and output."""
        torch = self._torch
        t0 = time.perf_counter_ns()
        tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in inputs]
        t1 = time.perf_counter_ns()
        program = self.batched_program if inputs[0].shape[0] >= BATCHED_PROGRAM_MIN_ROWS else self.program
        with torch.inference_mode():
            result = program(*tensors)
        t2 = time.perf_counter_ns()
        results = result if isinstance(result, (tuple, list)) else (result,)
        outputs = [r.detach().to("cpu").numpy() for r in results]
        return outputs, t1 - t0, t2 - t1, time.perf_counter_ns() - t2


class Runner(Protocol):
    """Where a served model's forward passes happen: this process (``LocalRunner``) or Ray Serve replicas."""

    device: str
    on_batch: Callable[[BatchTiming], None]

    async def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...

    def retire(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class LocalRunner:
    """The program in this process, behind the adaptive batcher, on a thread of its own."""

    def __init__(self, name: str, record: ModelRecord, device: str, batching: BatchingConfig) -> None:
        self.program = Program(record, device)
        self.device = device
        self.on_batch: Callable[[BatchTiming], None] = lambda timing: None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        cheap = device == "cpu" and self.program.lone_forward_s < INLINE_FORWARD_MAX_S
        self.batcher = AdaptiveBatcher(self.program.forward, self._executor, batching.max_batch_size,
                                       batching.max_queue_delay_s, lambda timing: self.on_batch(timing),
                                       inline_max_rows=1 if cheap else 0)

    async def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return await self.batcher.submit(arrays)

    def retire(self) -> None:
        self.batcher.retire()

    def describe(self) -> dict[str, Any]:
        return {"serving": "local"}


class LocalServing:
    """Level 1 serving: every model version computes in this process."""

    name = "local"
    parameters: frozenset[str] = frozenset()

    def default_options(self, batching: BatchingConfig, device: str) -> LoadOptions:
        return LoadOptions(batching, device)

    def build(self, name: str, record: ModelRecord, storage_options: dict[str, str],
              options: LoadOptions) -> ServedModel:
        return ServedModel(name, record, options.batching, LocalRunner(name, record, options.device, options.batching))

    def state(self, model: ServedModel) -> tuple[bool, str]:
        return True, ""

    def close(self) -> None:
        return None


class ServedModel:
    """A loaded model version as the data plane sees it: signature, request validation and statistics. Its
    ``runner`` computes; both serving backends share everything here."""

    def __init__(self, name: str, record: ModelRecord, batching: BatchingConfig, runner: Runner) -> None:
        self.name = name
        self.version = record.version
        self.record = record
        self.signature = record.signature
        self.batching = batching
        self.inputs = record.signature["inputs"]
        self.outputs = record.signature["outputs"]
        self.stats = ModelStats()
        self._stats_lock = threading.Lock()
        self.runner = runner
        runner.on_batch = self._record_batch

    @property
    def device(self) -> str:
        return self.runner.device

    def _record_batch(self, timing: BatchTiming) -> None:
        with self._stats_lock:
            s = self.stats
            s.execution_count += 1
            for q in timing.queue_ns:
                s.queue.add(q)
            s.compute_input.add(timing.compute_input_ns, timing.size)
            s.compute_infer.add(timing.compute_infer_ns, timing.size)
            s.compute_output.add(timing.compute_output_ns, timing.size)
            per_size = s.batches.setdefault(timing.size, (Duration(), Duration(), Duration()))
            per_size[0].add(timing.compute_input_ns)
            per_size[1].add(timing.compute_infer_ns)
            per_size[2].add(timing.compute_output_ns)

    def record_request(self, ok: bool, ns: int, rows: int) -> None:
        with self._stats_lock:
            (self.stats.success if ok else self.stats.fail).add(ns)
            if ok:
                self.stats.inference_count += rows
            self.stats.last_inference_ms = int(time.time() * 1000)

    def validate(self, inputs: list[InferInput]) -> list[np.ndarray]:
        """The request's arrays in signature order; InvalidArgument saying expected vs. got otherwise."""
        expected = {spec["name"]: spec for spec in self.inputs}
        if len(inputs) > len(self.inputs):
            raise InvalidArgument(
                f"model '{self.name}' takes {len(self.inputs)} input(s) {list(expected)}, got {len(inputs)}"
            )
        given: dict[str, InferInput] = {}
        for item in inputs:
            if item.name not in expected:
                raise InvalidArgument(f"unknown input '{item.name}' for model '{self.name}'; it takes {list(expected)}")
            if item.name in given:
                raise InvalidArgument(f"input '{item.name}' given twice")
            given[item.name] = item
        arrays, rows = [], None
        for name, spec in expected.items():
            item = given.get(name)
            if item is None:
                raise InvalidArgument(f"missing input '{name}' for model '{self.name}'")
            if item.datatype != spec["datatype"]:
                raise InvalidArgument(f"input '{name}': expected datatype {spec['datatype']}, got {item.datatype}")
            want = spec["shape"]
            if len(item.shape) != len(want) or any(w not in (-1, g) for w, g in zip(want, item.shape, strict=True)):
                raise InvalidArgument(f"input '{name}': expected shape {want}, got {list(item.shape)}")
            if item.shape[0] == 0:
                raise InvalidArgument(f"input '{name}': empty batch (shape {list(item.shape)})")
            if item.shape[0] > self.batching.max_batch_size:
                raise InvalidArgument(
                    f"input '{name}': batch of {item.shape[0]} exceeds max_batch_size {self.batching.max_batch_size}"
                )
            if rows is not None and item.shape[0] != rows:
                raise InvalidArgument(f"inputs disagree on the batch size ({rows} vs {item.shape[0]})")
            rows = item.shape[0]
            arrays.append(item.data)
        return arrays

    async def infer(self, inputs: list[InferInput], requested: list[str] | None = None) -> list[InferInput]:
        started = time.perf_counter_ns()
        rows = 0
        try:
            arrays = self.validate(inputs)
            rows = int(arrays[0].shape[0])
            outputs = await self.runner.run(arrays)
        except BaseException:
            self.record_request(False, time.perf_counter_ns() - started, rows)
            raise
        self.record_request(True, time.perf_counter_ns() - started, rows)
        names = [spec["name"] for spec in self.outputs]
        if requested:
            unknown = [r for r in requested if r not in names]
            if unknown:
                raise InvalidArgument(f"unknown output(s) {unknown} for model '{self.name}'; it has {names}")
        result = []
        for spec, array in zip(self.outputs, outputs, strict=False):
            if not requested or spec["name"] in requested:
                result.append(InferInput(spec["name"], spec["datatype"], list(array.shape), array))
        return result

    def retire(self) -> None:
        self.runner.retire()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "signature": self.signature,
            "max_batch_size": self.batching.max_batch_size,
            "max_queue_delay_us": int(self.batching.max_queue_delay_s * 1e6),
            "device": self.device,
            **self.runner.describe(),
        }
