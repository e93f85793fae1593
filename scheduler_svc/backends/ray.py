"""Levels 2 and 3: each task is a Ray job (Ray Jobs API) running the same worker entry point, but for short tasks
on warm runners (``ray_warm``) when the scheduler keeps some.

The job reports to the scheduler over gRPC like any task (no shared disk, any node); its logs are
streamed from Ray's log tail into the task log, and checked once against Ray's whole log when the
job ends.
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
from scheduler_svc.backends.ray_warm import WarmPool, is_warm
from scheduler_svc.tasks import Outcome, Task, TaskStatus

log = logging.getLogger("scheduler_svc.ray")
POLL_S = 0.25
WORKING_DIR_EXCLUDES = ["__pycache__", ".ai_platform", ".venv", ".git", "*.lance"]
PENDING_CHECK_S = 2.0  # a job still pending then: say which of its resources no live node offers
STOP_PENDING_S = 2.0  # a stop that a still-pending job has not taken by then: the job never ran
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
    custom_resources = True  # passed to Ray as entrypoint resources: a task lands on a node that offers them

    def __init__(self, address: str, platform_env: dict[str, str], warm: WarmPool | None = None) -> None:
        self.address = address if "://" in address else f"http://{address}"
        self.platform_env = platform_env
        self.warm = warm  # short tasks fork on warm runners (AIP_RAY_WARM_RUNNERS) rather than start a Job each
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
        if self.warm is not None:
            await self.warm.close()

    async def run(self, ctx: RunContext, attach: bool) -> Outcome:
        task = ctx.task
        if self.warm is not None and (is_warm(task) if attach else await self.warm.takes(task)):
            return await self.warm.run(ctx, Path(task.script), attach)
        if attach and is_warm(task):
            return Outcome(TaskStatus.FAILED, error_type="RunnerLost",
                           error_message="the task ran on a warm runner, and this scheduler has none "
                                         "(AIP_RAY_WARM_RUNNERS=0)")
        client = await self.client()
        job_id = task.job_id or task.id
        if not attach:
            resources = task.resources
            await asyncio.to_thread(
                client.submit_job,
                entrypoint=shlex.join(WORKER_COMMAND),
                submission_id=job_id,
                runtime_env=self.runtime_env(task, ctx.credential),
                entrypoint_num_cpus=resources.num_cpus or None,
                entrypoint_num_gpus=resources.num_gpus or None,
                entrypoint_memory=resources.memory_mb * 2**20 or None,
                entrypoint_resources=resources.custom or None,
                metadata={"aip_task": task.name},
            )
            ctx.on_submitted(job_id)
        # The task log mirrors Ray's byte for byte, so after a restart it already holds what was seen.
        cursor = LogCursor(written=ctx.log.end)
        tail = asyncio.ensure_future(self._tail_logs(client, job_id, cursor, ctx))
        stop_asked = asyncio.ensure_future(ctx.stop.wait())
        stop_sent, running = 0.0, task.status.value == "running"
        pending_since, explained = time.monotonic(), False
        next_log_fetch = 0.0
        try:
            while True:
                status = str(await asyncio.to_thread(client.get_job_status, job_id))
                status = status.rsplit(".", 1)[-1]
                if status == "RUNNING" and not running:
                    running = True
                    ctx.on_running(None, job_id, None)
                if ctx.started_at is not None and not running:  # it began between two polls
                    running = True
                    ctx.on_running(None, job_id, ctx.started_at)
                if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                    break
                if status == "PENDING" and not explained and time.monotonic() - pending_since > PENDING_CHECK_S:
                    explained = True
                    if missing := await self._missing_resources(task.resources.custom):
                        ctx.on_progress({"fraction": 0.0, "message": missing, "metrics": {}, "time": time.time()})
                if tail.done() and time.monotonic() >= next_log_fetch:  # the stream broke: poll instead
                    await self._mirror_logs(client, job_id, cursor, ctx)
                    next_log_fetch = time.monotonic() + LOG_POLL_S
                if ctx.stop.is_set() and not stop_sent:
                    await asyncio.to_thread(client.stop_job, job_id)
                    stop_sent = time.monotonic()
                if stop_sent and status == "PENDING" and time.monotonic() - stop_sent > STOP_PENDING_S:
                    # Ray queues the stop behind a job that no node can start yet: the job never ran, and is
                    # stopped the moment it would start.
                    log.info("Ray job %s never started; it is cancelled", job_id)
                    break
                await asyncio.wait([stop_asked], timeout=POLL_S)  # a poll interval, cut short by a stop
        finally:
            stop_asked.cancel()
            tail.cancel()  # Ray's tail lingers a second or two after the end; one fetch below is quicker
        await self._mirror_logs(client, job_id, cursor, ctx)  # whatever the tail did not deliver
        ctx.log.close()
        info = await asyncio.to_thread(client.get_job_info, job_id)
        if not running and (ctx.started_at or info.start_time):  # it started and ended between two polls
            # Ray's start_time is when the job was submitted, which for a queued job is long before it ran.
            ctx.on_running(None, job_id, ctx.started_at or info.start_time / 1000)
        # Ray stamps the end when the job finishes; polls and log fetches may notice it later.
        if status in ("STOPPED", "PENDING"):  # PENDING: stopped before it ever started
            outcome = Outcome(TaskStatus.CANCELLED)
        elif status == "SUCCEEDED":
            outcome = ctx.outcome(None)
        else:
            outcome = ctx.outcome(f"the Ray job failed: {info.message or 'no message from Ray'}")
        outcome.ended_at = info.end_time / 1000 if info.end_time else None
        return outcome

    def runtime_env(self, task: Task, credential: str) -> dict:
        """The job's environment: the platform's settings, and the script's directory shipped through Ray (its
        ``working_dir``), so a node that shares no disk with the scheduler runs it all the same."""
        script = Path(task.script)
        # The job's environment is readable by whoever reads Ray's job API: it holds the task's own credential
        # (this task's reports, reading the lake, its outputs), never the platform's.
        return {"env_vars": worker_env(task, self.platform_env, {"AIP_TASK_TOKEN": credential}, script=script.name),
                "working_dir": str(script.parent), "excludes": WORKING_DIR_EXCLUDES}

    async def _missing_resources(self, wanted: dict[str, float]) -> str:
        """Why a pending job cannot start: the custom resources no live node offers in that amount ('' if any)."""
        if not wanted:
            return ""
        from ray.util.state import list_nodes

        try:
            nodes = await asyncio.to_thread(list_nodes, address=self.address, detail=True, timeout=10)
        except Exception as exc:  # noqa: BLE001 - the explanation is a courtesy; the job stays pending either way
            log.warning("cannot list the Ray cluster's nodes: %s", exc)
            return ""
        alive = [n.resources_total or {} for n in nodes if n.state == "ALIVE"]
        lacking = [f"{name}={amount:g}" for name, amount in wanted.items()
                   if not any(resources.get(name, 0) >= amount for resources in alive)]
        if not lacking:
            return ""
        offered = sorted({name for resources in alive for name in resources if not name.startswith("node:")})
        return (f"waiting for resources: no live node offers {', '.join(lacking)} "
                f"(the cluster offers {', '.join(offered)}); cancel the task or add such a node")

    async def _tail_logs(self, client, job_id: str, cursor: LogCursor, ctx: RunContext) -> None:  # noqa: ANN001
        """Stream Ray's log as the job writes it; returns when the job ends or the stream breaks."""
        try:
            async for chunk in client.tail_job_logs(job_id):
                data = chunk.encode()
                if new := cursor.take(data, cursor.read):
                    ctx.write_log(new)
                cursor.read += len(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the poll loop falls back to fetching the whole log
            log.warning("log tail of Ray job %s broke (%s); polling its log instead", job_id, exc)

    async def _mirror_logs(self, client, job_id: str, cursor: LogCursor, ctx: RunContext) -> None:  # noqa: ANN001
        """Fetch Ray's whole log and append what the task log lacks (Ray has no ranged read).

        The log lives on the node that ran the job: when that node is gone, the task log keeps what it has."""
        try:
            data = (await asyncio.to_thread(client.get_job_logs, job_id)).encode()
        except Exception as exc:  # noqa: BLE001 - best effort: the job's outcome does not depend on its log
            log.warning("the log of Ray job %s cannot be fetched (its node may be gone): %s", job_id,
                        str(exc).splitlines()[0][:200])
            return
        if new := cursor.take(data, 0):
            ctx.write_log(new)
