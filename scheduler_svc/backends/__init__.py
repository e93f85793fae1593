"""Where tasks run. A backend runs one task to its end and says how it ended; the scheduler does the rest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ai_platform.core.errors import InvalidArgument
from ai_platform.core.settings import platform_pythonpath
from ai_platform.sdk.report import CHANNEL_KINDS
from scheduler_svc.logs import TaskLog
from scheduler_svc.tasks import Outcome, Task, TaskStatus

log = logging.getLogger("scheduler_svc")
LOST_NOTICE = b"\n[platform] %d bytes of this task's output were lost: %s\n"


@dataclass
class RunContext:
    """What a backend gets from the scheduler for one run."""

    task: Task
    credential: str  # the task's own (see Scheduler.credentials): for its worker only
    log: TaskLog
    on_running: Callable[[int | None, str, float | None], None]  # (pid, job_id, started_at) once work starts
    on_progress: Callable[[dict[str, Any]], None]
    on_submitted: Callable[[str], None]  # (job_id) once a cluster accepted the work
    # A report on the task's own socket: (ok, the answer to send back, None for a report nobody waits on).
    answer_report: Callable[[bytes], tuple[bool, bytes | None]] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # set on cancel or timeout
    on_exit: Callable[[int], None] | None = None  # told the worker's last word: its exit code (a forked worker's)
    exit_code: int | None = None  # the worker's last word, once said
    result: Any = None
    error: dict[str, str] | None = None
    has_result: bool = False
    result_refusal: str = ""  # why a result the worker did not wait to hear answered was refused
    started_at: float | None = None  # when the worker began, by its own clock (a queued Ray job starts late)
    log_lost: int = 0  # bytes of output that could not be written to the log (a full disk, its folder removed)
    log_error: str = ""  # why, the first time

    def write_log(self, data: bytes) -> None:
        """Append the task's output to its log. A log that cannot be written loses that output (counted, said in
        the scheduler's log and, once it can be written again, in the task's), never the task: its output keeps
        being read, so the task runs on and ends as it would have."""
        try:
            self.log.write(data)
        except OSError as exc:
            if not self.log_lost:
                self.log_error = f"LogWriteFailed: {(exc.strerror or str(exc)).lower()}"
                log.warning("task %s: its log cannot be written (%s); output is dropped until it can",
                            self.task.id, self.log_error)
            self.log_lost += len(data)
            return
        if self.log_lost and self.log_error:  # writable again: say what is missing, once
            with contextlib.suppress(OSError):
                self.log.write(LOST_NOTICE % (self.log_lost, self.log_error.encode()))
                self.log_error = ""

    def report(self, kind: str, value: Any) -> None:
        """One report from the task's worker (ReportTask): ``started``, ``progress``, ``result`` or ``error``."""
        if kind == "started":
            self.started_at = float(value)
        elif kind == "progress":
            self.on_progress(value)
        elif kind == "result":
            self.result, self.has_result = value, True
        elif kind == "error":
            self.error = value
        elif kind == "exit":
            self.exit_code = value
            if self.on_exit is not None:
                self.on_exit(value)

    def refuse_result(self, refusal: str) -> None:
        self.result_refusal = refusal
        self.write_log(b"[platform] the scheduler refused the result report: %s\n" % refusal.encode())

    def outcome(self, exit_description: str | None) -> Outcome:
        """Completed with a result, else failed with the script's error, else with how the process ended."""
        if self.has_result and exit_description is None:
            return Outcome(TaskStatus.COMPLETED, result=self.result)
        if self.error:
            return Outcome(
                TaskStatus.FAILED,
                error_type=self.error.get("type", "Error"),
                error_message=self.error.get("message", ""),
            )
        if self.result_refusal and exit_description is None:
            return Outcome(TaskStatus.FAILED, error_type="ResultNotDelivered",
                           error_message=f"the scheduler did not take the result run returned: "
                                         f"{self.result_refusal}"[:1024])
        return Outcome(
            TaskStatus.FAILED,
            error_type="ProcessExit",
            error_message=exit_description or "the task ended without reporting a result",
        )


class Backend(Protocol):
    """Where tasks run, and the policies that differ between places: queueing, restarts and shutdown."""

    name: str
    detached: bool  # its work outlives the scheduler: on shutdown stop watching it, after a restart re-attach
    slots: asyncio.Semaphore | None  # bounds how many tasks run at once; None when the cluster queues them
    custom_resources: bool  # whether tasks may ask for custom resources (kinds of node)

    def can_reattach(self, task: Task) -> bool:
        """Whether work left by a previous scheduler can be tracked again."""
        ...

    def end_orphans(self, task: Task) -> None:
        """End what is left of a run that the scheduler lost (after a restart)."""
        ...

    async def run(self, ctx: RunContext, attach: bool) -> Outcome:
        """Run (or, with ``attach``, keep tracking) ``ctx.task`` until it ends or ``ctx.stop`` is set."""
        ...

    async def close(self) -> None: ...


def channel_report(data: bytes) -> tuple[str, Any]:
    """A report on a forked task's socket (the local backend's, or a warm runner's on Ray): JSON ``{"kind": KIND,
    "value": VALUE}``, the kinds ReportTask takes but ``started`` (that task's spec came with its process), and
    ``exit`` with the worker's exit code (0-255)."""
    try:
        message = json.loads(data)
    except ValueError:
        raise InvalidArgument("a report on the task's channel must be JSON") from None
    if not isinstance(message, dict) or set(message) != {"kind", "value"}:
        raise InvalidArgument('a report on the task\'s channel is {"kind": KIND, "value": VALUE}, nothing else')
    if message["kind"] not in CHANNEL_KINDS:
        raise InvalidArgument(f"unknown report kind {str(message['kind'])[:64]!r} on the task's channel; expected "
                              f"one of {', '.join(CHANNEL_KINDS)}")
    if message["kind"] == "exit" and not (type(message["value"]) is int and 0 <= message["value"] <= 255):
        raise InvalidArgument(f"an exit report carries the worker's exit code, 0-255, not {message['value']!r:.64}")
    return message["kind"], message["value"]


def worker_env(task: Task | None, platform_env: dict[str, str], extra: dict[str, str], script: str = "") \
        -> dict[str, str]:
    """Environment of the worker entry point: the platform's settings (a Ray job inherits none; never the admin
    token or the signing keys), the task's id and script, and the platform importable. ``script``: the script's path
    where the worker runs, when that is not the scheduler's (a Ray job's working directory). The rest of the spec
    (params of any size, the resolved input and output) the worker gets from the scheduler in answer to its first
    report; its credential each backend hands over its own way (``extra``)."""
    return {
        **platform_env,
        **(task_variables(task, script) if task is not None else {}),
        "PYTHONPATH": platform_pythonpath(),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def task_variables(task: Task, script: str = "") -> dict[str, str]:
    """The variables that name the task in its worker's environment (the rest is the platform's, the same for all)."""
    return {"AIP_TASK_ID": task.id, "AIP_TASK_SCRIPT": script or task.script}


def worker_spec(task: Task) -> dict[str, Any]:
    """What the worker knows of its task (``ai_platform.sdk.report.spec``): the answer to its ``started`` report, or
    handed over with the process where the backend can (the local backend's fork server)."""
    return {"id": task.id, "script": task.script, "input": task.resolved_input, "output": task.resolved_output,
            "params": task.params or {}, "input_table": task.input_table, "input_version": task.input_version,
            "owner": task.owner}


WORKER_COMMAND = [sys.executable, "-m", "ai_platform.sdk.worker"]
