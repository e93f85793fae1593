"""Levels 2 and 3: each task is a Ray job (Ray Jobs API) running the same worker entry point.

The job's side channel is a JSON-lines file under the scheduler's state directory (shared
storage on a multi-node cluster); its logs come from Ray and are mirrored into the task log.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from pathlib import Path

from ai_platform.errors import Unavailable
from scheduler_svc.backends import WORKER_COMMAND, RunContext, worker_env
from scheduler_svc.tasks import Outcome, TaskStatus

log = logging.getLogger("scheduler_svc.ray")
POLL_S = 0.25
LOG_POLL_S = 1.0


class RayBackend:
    name = "ray"

    def __init__(self, address: str, report_dir: Path) -> None:
        self.address = address if "://" in address else f"http://{address}"
        self.report_dir = report_dir
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self._client = None

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
                runtime_env={"env_vars": worker_env(task, {"AIP_REPORT_PATH": str(report_path)})},
                entrypoint_num_cpus=resources.num_cpus or None,
                entrypoint_num_gpus=resources.num_gpus or None,
                entrypoint_memory=resources.memory_mb * 2**20 or None,
                metadata={"aip_task": task.name},
            )
            ctx.on_submitted(job_id)
        # The task log mirrors Ray's byte for byte, so after a restart it already holds what was seen.
        report_offset, log_seen, stop_sent, running = 0, ctx.log.end, False, task.status.value == "running"
        next_log_fetch = 0.0
        while True:
            status = str(await asyncio.to_thread(client.get_job_status, job_id))
            status = status.rsplit(".", 1)[-1]
            if status == "RUNNING" and not running:
                running = True
                ctx.on_running(None, job_id, None)
            report_offset = self._read_reports(report_path, report_offset, ctx)
            finished = status in ("SUCCEEDED", "FAILED", "STOPPED")
            if finished or time.monotonic() >= next_log_fetch:  # Ray returns the whole log: fetch it sparingly
                log_seen = await self._mirror_logs(client, job_id, log_seen, ctx)
                next_log_fetch = time.monotonic() + LOG_POLL_S
            if finished:
                break
            if ctx.stop.is_set() and not stop_sent:
                await asyncio.to_thread(client.stop_job, job_id)
                stop_sent = True
            try:
                await asyncio.wait_for(asyncio.shield(ctx.stop.wait()), POLL_S)
            except TimeoutError:
                pass
        ctx.log.close()
        info = await asyncio.to_thread(client.get_job_info, job_id)
        if not running and info.start_time:  # it started and ended between two polls
            ctx.on_running(None, job_id, info.start_time / 1000)
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

    async def _mirror_logs(self, client, job_id: str, seen: int, ctx: RunContext) -> int:  # noqa: ANN001
        text = await asyncio.to_thread(client.get_job_logs, job_id)
        data = text.encode()
        if len(data) > seen:
            ctx.log.write(data[seen:])
        return max(seen, len(data))
