"""Adaptive batching: concurrent requests are merged along the batch dimension into one forward pass.

A request waits while the previous batch computes (that is when batches form under load),
and at most ``max_queue_delay_s`` more for others to arrive; batches hold at most
``max_batch_size`` rows. With no delay configured the wait adapts: a lone client never waits,
while under concurrent load a batch waits up to a millisecond for about as many requests
as recent batches held. The forward pass runs on the model's own thread, off the event loop,
except a lone request's pass when the model is quicker than the hand-off to that thread
(``inline_max_rows``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
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


ADAPTIVE_WAIT_S = 0.001

RunBatch = Callable[[list[np.ndarray]], tuple[list[np.ndarray], int, int, int]]
AsyncRunBatch = Callable[[list[np.ndarray]], Awaitable[tuple[list[np.ndarray], int, int, int]]]


class AdaptiveBatcher:
    def __init__(
        self,
        run_batch: RunBatch | AsyncRunBatch,
        executor: Executor | None,
        max_batch_size: int,
        max_queue_delay_s: float,
        on_batch: Callable[[BatchTiming], None],
        max_in_flight: int = 1,
        inline_max_rows: int = 0,
    ) -> None:
        """``run_batch`` runs on ``executor`` or, as a coroutine function, on the loop; ``max_in_flight`` batches
        may run at once (1 for a program on one thread; more when batches travel to replicas elsewhere).
        A batch of one request with at most ``inline_max_rows`` rows runs on the loop itself."""
        self.run_batch = run_batch
        self.executor = executor
        self._coroutine = inspect.iscoroutinefunction(run_batch)
        self._slots = asyncio.Semaphore(max(1, max_in_flight))
        self._in_flight = max(1, max_in_flight)
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self.on_batch = on_batch
        self.inline_max_rows = inline_max_rows
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._collector: asyncio.Task | None = None
        self._retired = False
        self._idle = True  # the collector is waiting for a first request
        self._carry: Pending | None = None
        self._typical = 1.0  # requests per batch, smoothed: a sign of how many clients are waiting

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
        if self._idle and self._queue.empty() and self._carry is None and self._collector is not None:
            self._collector.cancel()

    async def _next_batch(self) -> list[Pending]:
        if self._carry is not None:  # did not fit in the previous batch: it starts this one
            batch, self._carry = [self._carry], None
        else:
            batch = [await self._queue.get()]
        self._idle = False
        # Let requests that arrived in the same burst (ready to run on the loop) join this batch.
        await asyncio.sleep(0)
        rows = batch[0].rows
        if self.max_queue_delay_s:
            wait_s, enough = self.max_queue_delay_s, self.max_batch_size
        else:  # adaptive: under concurrent load, wait briefly for about as many requests as batches usually hold
            wait_s = ADAPTIVE_WAIT_S if self._typical >= 2 else 0.0
            enough = max(1, round(self._typical))
        deadline = time.perf_counter() + wait_s
        while rows < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if len(batch) >= enough or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if rows + item.rows > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
        self._typical = 0.8 * self._typical + 0.2 * len(batch)
        return batch

    def set_in_flight(self, max_in_flight: int) -> None:
        """Allow more (or fewer) batches in flight from now on (a model rescaled to more or fewer replicas)."""
        change, self._in_flight = max(1, max_in_flight) - self._in_flight, max(1, max_in_flight)
        for _ in range(change):
            self._slots.release()
        if change < 0:  # taken back as batches in flight end
            asyncio.ensure_future(self._take_slots(-change))

    async def _take_slots(self, count: int) -> None:
        for _ in range(count):
            await self._slots.acquire()

    async def _collect(self) -> None:
        while not (self._retired and self._queue.empty() and self._carry is None):
            self._idle = True
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[Pending]) -> None:
        started = time.perf_counter_ns()
        try:
            inputs = (
                batch[0].inputs
                if len(batch) == 1
                else [np.concatenate([p.inputs[i] for p in batch]) for i in range(len(batch[0].inputs))]
            )
            try:
                if self._coroutine:
                    outputs, input_ns, infer_ns, output_ns = await self.run_batch(inputs)
                elif len(batch) == 1 and batch[0].rows <= self.inline_max_rows:
                    # NOTE: waking the model's thread and the loop again costs more than a small forward pass
                    # (160 us against 140 us for the MNIST CNN); a lone request has nothing to overlap with.
                    outputs, input_ns, infer_ns, output_ns = self.run_batch(inputs)
                else:
                    outputs, input_ns, infer_ns, output_ns = await asyncio.get_running_loop().run_in_executor(
                        self.executor, self.run_batch, inputs)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            offset = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result([out[offset : offset + p.rows] for out in outputs])
                offset += p.rows
            self.on_batch(
                BatchTiming(len(batch), [started - p.enqueued_ns for p in batch], input_ns, infer_ns, output_ns)
            )
        finally:
            self._slots.release()
