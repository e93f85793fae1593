"""Levels 2 and 3: each task is a Ray job (Ray Jobs API) running the same worker entry point.

The job's side channel is a JSON-lines file under the scheduler's state directory (shared
storage on a multi-node cluster); its logs are streamed from Ray's log tail into the task log,
and checked once against Ray's whole log when the job ends.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from ai_platform.core.errors import Unavailable
from scheduler_svc.backends import WORKER_COMMAND, RunContext, worker_env
from scheduler_svc.tasks import Outcome, Task, TaskStatus

log = logging.getLogger("scheduler_svc.ray")
POLL_S = 0.25
LOG_POLL_S = 1.0  # full-log polling, only while Ray's log tail is not streaming


@dataclass
class LogCursor:
    """How far the task log mirrors Ray's log (``written``), and how far the tail stream has read."""

    written: int
    read: int = 0

    def take(self, data: bytes, start: int) -> bytes:
        """The part of ``data`` (Ray's log from byte ``start``) that the task log does not have yet."""
        end = start + len(data)
        new = data[max(self.written - start, 0) :] if end > self.written else b""
        self.written = max(self.written, end)
        return new


class RayBackend:
    name = "ray"
    detached = True  # Ray jobs run on without the scheduler, which re-attaches after a restart
    slots = None  # the cluster queues jobs until their resources are free

    def __init__(self, address: str, report_dir: Path, platform_env: dict[str, str]) -> None:
        self.address = address if "://" in address else f"http://{address}"
        self.report_dir = report_dir
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self.platform_env = platform_env
        self._client = None

    def can_reattach(self, task: Task) -> bool:
        return task.backend == "ray" and bool(task.job_id)

    def end_orphans(self, task: Task) -> None:
        return None  # a job that cannot be re-attached was never accepted by Ray

    async def client(self):  # noqa: ANN201 - ray.job_submission.JobSubmissionClient
        if self._client is None:
            from ray.job_submission import JobSubmissionClient  # Ray is only imported when Ray is the backend

            try:
                self._client = await asyncio.to_thread(JobSubmissionClient, self.address)
            except Exception as exc:  # noqa: BLE001 - any connection failure means Ray is not reachable
                raise Unavailable(f"Ray cluster at {self.address} is unavailable: {exc}") from exc
        return self._client

    async def close(self) -> None:
        self._client = None

    async def run(self, ctx: RunContext, attach: bool) -> Outcome:
        task = ctx.task
        client = await self.client()
        report_path = self.report_dir / f"{task.id}.jsonl"
        job_id = task.job_id or task.id
        if not attach:
            report_path.unlink(missing_ok=True)
            resources = task.resources
            await asyncio.to_thread(
                client.submit_job,
                entrypoint=shlex.join(WORKER_COMMAND),
                submission_id=job_id,
                runtime_env={"env_vars": worker_env(task, self.platform_env, {"AIP_REPORT_PATH": str(report_path)})},
                entrypoint_num_cpus=resources.num_cpus or None,
                entrypoint_num_gpus=resources.num_gpus or None,
                entrypoint_memory=resources.memory_mb * 2**20 or None,
                metadata={"aip_task": task.name},
            )
            ctx.on_submitted(job_id)
        # The task log mirrors Ray's byte for byte, so after a restart it already holds what was seen.
        cursor = LogCursor(written=ctx.log.end)
        tail = asyncio.ensure_future(self._tail_logs(client, job_id, cursor, ctx))
        report_offset, stop_sent, running = 0, False, task.status.value == "running"
        next_log_fetch = 0.0
        try:
            while True:
                status = str(await asyncio.to_thread(client.get_job_status, job_id))
                status = status.rsplit(".", 1)[-1]
                if status == "RUNNING" and not running:
                    running = True
                    ctx.on_running(None, job_id, None)
                report_offset = self._read_reports(report_path, report_offset, ctx)
                if ctx.started_at is not None and not running:  # it began between two polls
                    running = True
                    ctx.on_running(None, job_id, ctx.started_at)
                if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                    break
                if tail.done() and time.monotonic() >= next_log_fetch:  # the stream broke: poll instead
                    await self._mirror_logs(client, job_id, cursor, ctx)
                    next_log_fetch = time.monotonic() + LOG_POLL_S
                if ctx.stop.is_set() and not stop_sent:
                    await asyncio.to_thread(client.stop_job, job_id)
                    stop_sent = True
                try:
                    await asyncio.wait_for(asyncio.shield(ctx.stop.wait()), POLL_S)
                except TimeoutError:
                    pass
        finally:
            tail.cancel()  # Ray's tail lingers a second or two after the end; one fetch below is quicker
        await self._mirror_logs(client, job_id, cursor, ctx)  # whatever the tail did not deliver
        ctx.log.close()
        info = await asyncio.to_thread(client.get_job_info, job_id)
        if not running and (ctx.started_at or info.start_time):  # it started and ended between two polls
            # Ray's start_time is when the job was submitted, which for a queued job is long before it ran.
            ctx.on_running(None, job_id, ctx.started_at or info.start_time / 1000)
        # Ray stamps the end when the job finishes; polls and log fetches may notice it later.
        if status == "STOPPED":
            outcome = Outcome(TaskStatus.CANCELLED)
        elif status == "SUCCEEDED":
            outcome = ctx.outcome(None)
        else:
            outcome = ctx.outcome(f"the Ray job failed: {info.message or 'no message from Ray'}")
        outcome.ended_at = info.end_time / 1000 if info.end_time else None
        return outcome

    def _read_reports(self, path: Path, offset: int, ctx: RunContext) -> int:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            ctx.handle_report(line)
        return offset + len(complete)

    async def _tail_logs(self, client, job_id: str, cursor: LogCursor, ctx: RunContext) -> None:  # noqa: ANN001
        """Stream Ray's log as the job writes it; returns when the job ends or the stream breaks."""
        try:
            async for chunk in client.tail_job_logs(job_id):
                data = chunk.encode()
                if new := cursor.take(data, cursor.read):
                    ctx.log.write(new)
                cursor.read += len(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the poll loop falls back to fetching the whole log
            log.warning("log tail of Ray job %s broke (%s); polling its log instead", job_id, exc)

    async def _mirror_logs(self, client, job_id: str, cursor: LogCursor, ctx: RunContext) -> None:  # noqa: ANN001
        """Fetch Ray's whole log and append what the task log lacks (Ray has no ranged read)."""
        data = (await asyncio.to_thread(client.get_job_logs, job_id)).encode()
        if new := cursor.take(data, 0):
            ctx.log.write(new)
