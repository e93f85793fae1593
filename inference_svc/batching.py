"""Adaptive batching: concurrent requests are merged along the batch dimension into one forward pass.

A request waits while the previous batch computes (that is when batches form under load),
and at most ``max_queue_delay_s`` more for others to arrive; batches hold at most
``max_batch_size`` rows. The forward pass runs on the model's own thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Pending:
    inputs: list[np.ndarray]
    rows: int
    future: asyncio.Future
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass
class BatchTiming:
    """What one batch cost, for statistics."""

    size: int
    queue_ns: list[int]
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


RunBatch = Callable[[list[np.ndarray]], tuple[list[np.ndarray], int, int, int]]


class AdaptiveBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        max_batch_size: int,
        max_queue_delay_s: float,
        on_batch: Callable[[BatchTiming], None],
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self.on_batch = on_batch
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._collector: asyncio.Task | None = None
        self._retired = False
        self._idle = True  # the collector is waiting for a first request

    async def submit(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs for this request's rows only."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Pending(inputs, int(inputs[0].shape[0]), future))
        if self._collector is None or self._collector.done():
            self._collector = asyncio.ensure_future(self._collect())
        return await future

    def retire(self) -> None:
        """Finish what is queued, then stop; a request that still arrives restarts the collector."""
        self._retired = True
        if self._idle and self._queue.empty() and self._collector is not None:
            self._collector.cancel()

    async def _next_batch(self) -> list[Pending]:
        batch = [await self._queue.get()]
        self._idle = False
        # Let requests that arrived in the same burst (ready to run on the loop) join this batch.
        await asyncio.sleep(0)
        rows = batch[0].rows
        deadline = time.perf_counter() + self.max_queue_delay_s
        while rows < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if rows + item.rows > self.max_batch_size:
                self._queue.put_nowait(item)  # goes first in the next batch (it is alone in the queue's head)
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while not (self._retired and self._queue.empty()):
            self._idle = True
            batch = await self._next_batch()
            started = time.perf_counter_ns()
            inputs = (
                batch[0].inputs
                if len(batch) == 1
                else [np.concatenate([p.inputs[i] for p in batch]) for i in range(len(batch[0].inputs))]
            )
            try:
                outputs, input_ns, infer_ns, output_ns = await loop.run_in_executor(
                    self.executor, self.run_batch, inputs
                )
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            offset = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result([out[offset : offset + p.rows] for out in outputs])
                offset += p.rows
            self.on_batch(
                BatchTiming(len(batch), [started - p.enqueued_ns for p in batch], input_ns, infer_ns, output_ns)
            )
