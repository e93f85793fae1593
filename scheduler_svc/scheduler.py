"""The scheduler: validates and queues tasks, runs them on a backend, records every change.

Plain Python over plain values; the gRPC edge lives in ``server.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_platform.core.auth import Authority, caller
from ai_platform.core.errors import (
    FailedPrecondition,
    InsufficientStorage,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PlatformError,
)
from ai_platform.core.limits import check_params, check_task_fields
from ai_platform.core.names import validate_name
from scheduler_svc.backends import Backend, RunContext
from scheduler_svc.logs import TaskLog
from scheduler_svc.refs import Resolver
from scheduler_svc.store import TaskStore
from scheduler_svc.tasks import MetricPoint, Outcome, Resources, Task, TaskStatus

log = logging.getLogger("scheduler_svc")
PROGRESS_SAVE_INTERVAL_S = 0.5
METRICS_POLL_S = 0.25  # a followed metric stream looks for new points this often
TASK_CREDENTIAL_GRACE_S = 600.0  # past its timeout, a task's credential outlives it by this much (reports, retries)
TASK_CREDENTIAL_MAX_S = 30 * 24 * 3600.0  # a task without a timeout
ADMIT_WAIT_S = 5.0  # how long a submit may wait to answer "running" (or "pending" for a queued task)
UNSAVED_RETRY_S = 1.0  # records a full disk refused are saved again this often
NOT_SCRIPT_DIRS = {"site-packages", "dist-packages", "node_modules", "__pycache__"}


@dataclass
class TaskRequest:
    name: str
    script: str
    input: str
    output: str
    params: dict[str, Any]
    resources: Resources
    timeout_s: float
    input_version: int = 0  # a lake input read at this version (a pipeline's pinned input), not the newest


@dataclass
class TaskRun:
    """Everything the scheduler holds for one task in flight, from its launch until its run ends.

    ``task`` is the live record (progress included, saved at most every PROGRESS_SAVE_INTERVAL_S); ``context`` exists
    once the backend runs it; ``stop_reason`` says why the scheduler stopped it (cancel, timeout, shutdown).
    """

    task: Task
    future: asyncio.Future | None = None
    context: RunContext | None = None
    stop_reason: str = ""
    last_progress_save: float = 0.0
    timed: bool = False  # its timeout is armed
    admitted: asyncio.Event = field(default_factory=asyncio.Event)  # holds its slot, queued for one, or ended
    producers: list[TaskRun] = field(default_factory=list)  # queued or running tasks writing its input: it waits


class Scheduler:
    def __init__(
        self,
        store: TaskStore,
        backend: Backend,
        resolver: Resolver,
        *,
        log_dir: Path,
        script_roots: list[Path],
        start_dir: Path,
        log_cap_bytes: int,
        authority: Authority | None = None,
    ) -> None:
        self.store = store
        self.authority = authority or Authority(task_key=secrets.token_bytes(32))
        self.backend = backend
        self.resolver = resolver
        self.log_dir = log_dir
        self.script_roots = [r.resolve() for r in script_roots]
        self.start_dir = start_dir
        self.log_cap_bytes = log_cap_bytes
        self._runs: dict[str, TaskRun] = {}
        # One event per task someone waits on (watch, long polling), set and dropped at that task's next change:
        # a change wakes the waiters of its own task, not every waiter of every task.
        self._changes: dict[str, asyncio.Event] = {}
        # Records a full disk refused: served from here and saved again every UNSAVED_RETRY_S until the disk has room.
        self._unsaved: dict[str, Task] = {}
        self._saver: asyncio.Task | None = None
        # Reports on a forked task's own socket, answered as ReportTask is (set by the gRPC edge, server.py).
        self.local_reports: Callable[[Task, bytes], tuple[bool, bytes | None]] | None = None

    # -- lifecycle ---------------------------------------------------------------
    async def recover(self) -> None:
        """After a restart: work the backend can re-attach to is tracked again, queued tasks run, and runs that
        were cut off fail (the backend ends what is left of them)."""
        for task in self.store.unfinished():
            if self.backend.can_reattach(task):
                self._launch(task, attach=True)
            elif task.status is TaskStatus.RUNNING or task.job_id:
                self.backend.end_orphans(task)
                self._finish(
                    task,
                    Outcome(
                        TaskStatus.FAILED,
                        error_type="SchedulerRestart",
                        error_message="the scheduler stopped while the task was running; its processes were ended",
                    ),
                )
            else:  # queued: again behind any task in flight that writes its input
                self._launch(task, producers=self._producers(task.input_table) if task.input_table else [])

    async def shutdown(self) -> None:
        """Stop work that cannot outlive the scheduler; stop watching detached work (re-attached after a restart)."""
        for task_id, run in list(self._runs.items()):
            if self.backend.detached and run.future is not None:
                run.future.cancel()
            else:
                self._request_stop(task_id, "shutdown")
        await asyncio.gather(*(r.future for r in self._runs.values() if r.future), return_exceptions=True)
        if self._saver is not None:
            self._saver.cancel()
        self._save_unsaved()
        if self._unsaved:
            log.error("%d task records could not be saved before the scheduler stopped (no space left): %s",
                      len(self._unsaved), ", ".join(self._unsaved))
        await self.backend.close()
        await self.resolver.close()

    # -- requests ----------------------------------------------------------------
    async def submit(self, request: TaskRequest) -> Task:
        name = validate_name(request.name, "task name")
        check_task_fields(request.script, request.input, request.output, request.timeout_s)
        check_params(request.params)
        script = self.check_script(request.script)
        self._check_resources(request.resources, request.timeout_s)
        resolved_input, pinned = await self.resolver.resolve(request.input, "input")
        resolved_output, output_table = await self.resolver.resolve(request.output, "output")
        if request.input_version:
            if not pinned:
                raise InvalidArgument(f"input_version needs a lake input, not {request.input!r}")
            pinned = await self.resolver.pin(pinned.table, request.input_version)
        producers = self._producers(pinned.table) if pinned and not pinned.version else []
        task = Task(
            owner=caller().subject,
            id=uuid.uuid4().hex[:16],
            name=name,
            script=str(script),
            input=request.input,
            output=request.output,
            resolved_input=resolved_input,
            resolved_output=resolved_output,
            input_table=pinned.table if pinned else "",
            input_version=pinned.version if pinned else 0,
            output_table=output_table.table if output_table else "",
            params=request.params,
            resources=request.resources,
            timeout_s=request.timeout_s,
            backend=self.backend.name,
        )
        self.store.save(task)
        run = self._launch(task, producers=producers)
        log.info("task submitted", extra={"task": task.id, "task_name": name, "script": task.script})
        # Answer with the state the task is in: running once it holds a slot (its start under way), pending while it
        # waits. The launch's first step, run now, takes a free slot at once; only a lake input to pin first, or a
        # cluster to hand the work to, makes the answer wait (at most ADMIT_WAIT_S).
        await asyncio.sleep(0)
        if not run.admitted.is_set():
            try:
                await asyncio.wait_for(asyncio.shield(run.admitted.wait()), ADMIT_WAIT_S)
            except TimeoutError:
                pass
        return self.get(task.id)

    def check_script(self, script: str) -> Path:
        if not script:
            raise InvalidArgument("script is required (a .py file defining run(input_path, output_path, params))")
        if "\x00" in script:
            raise InvalidArgument("script contains a NUL byte")
        path = (self.start_dir / script).resolve()
        if path.suffix != ".py":
            raise InvalidArgument(f"script {script!r} is not a .py file")
        root = next((r for r in self.script_roots if path.is_relative_to(r)), None)
        if root is None:
            roots = ", ".join(map(str, self.script_roots))
            raise InvalidArgument(f"script {script!r} is outside the allowed script roots ({roots})")
        folders = path.relative_to(root).parts[:-1]
        if any(part.startswith(".") for part in folders):
            raise InvalidArgument(f"script {script!r} is in a hidden directory; task scripts live in plain ones")
        if NOT_SCRIPT_DIRS & set(folders) or any((root.joinpath(*folders[:i]) / "pyvenv.cfg").exists()
                                                 for i in range(len(folders) + 1)):
            raise InvalidArgument(f"script {script!r} is inside a virtual environment or installed packages, "
                                  f"not a task script")
        if not path.is_file():
            raise InvalidArgument(f"script {script!r} does not exist ({path})")
        return path

    def _check_resources(self, resources: Resources, timeout_s: float) -> None:
        if min(resources.num_cpus, resources.num_gpus, resources.memory_mb) < 0:
            raise InvalidArgument("resources must not be negative")
        for name, amount in resources.custom.items():
            validate_name(name, "custom resource name")
            if not amount > 0 or amount == float("inf"):
                raise InvalidArgument(f"custom resource '{name}' needs a finite amount above 0, got {amount}")
        if resources.custom and not self.backend.custom_resources:
            raise InvalidArgument(f"the {self.backend.name} backend has no custom resources "
                                  f"({', '.join(resources.custom)}); they need the Ray backend (--backend ray)")
        if timeout_s < 0:
            raise InvalidArgument("timeout_s must not be negative")

    def get(self, task_id: str) -> Task:
        run = self._runs.get(task_id)
        task = run.task if run else self._unsaved.get(task_id) or self.store.get(task_id)
        if task is None:
            raise NotFound(f"task '{task_id}' does not exist")
        return task

    def list(self, statuses: list[TaskStatus], name: str, page_size: int,
             after: tuple[float, str] | None = None, owner: str = "") -> list[Task]:
        """Tasks newest first, from just after the cursor ``after`` (created_at, id) of the previous page."""
        listed = self.store.list(statuses, name, page_size, after, owner)
        if self._unsaved:  # the newest state of a record the disk refused
            listed = [self._unsaved.get(t.id, t) for t in listed]
        return listed

    async def cancel(self, task_id: str) -> Task:
        task = self.get(task_id)
        if task.status.finished:
            raise FailedPrecondition(f"task '{task_id}' is already {task.status.value}")
        run = self._runs.get(task_id)
        if run is not None and run.context is not None:
            self._request_stop(task_id, "cancel")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(run.future)
        else:  # still queued: it never started
            self._finish(task, Outcome(TaskStatus.CANCELLED))
            if run is not None and run.future is not None:
                run.future.cancel()
        return self.get(task_id)

    def report(self, task_id: str, kind: str, value: Any) -> None:
        """A report from the task's worker, wherever it runs; it must carry that task's own credential."""
        run = self._runs.get(task_id)
        task = run.task if run else self._unsaved.get(task_id) or self.store.get(task_id)
        if task is None:
            raise NotFound(f"task '{task_id}' does not exist")
        if caller().task_id != task_id:
            raise PermissionDenied(f"only task '{task_id}' itself reports for it, with its own credential")
        if run is None or run.context is None or task.status.finished:
            raise FailedPrecondition(f"task '{task_id}' is {task.status.value}: it takes reports only while it runs")
        if kind == "params":
            task.effective_params = value
            self._changed_task(task)
            return
        if kind == "metrics":
            dropped = self.store.add_metrics(task_id, value)
            if dropped:
                task.metrics_dropped += dropped
                self._changed_task(task)
            return
        run.context.report(kind, value)

    def result_refused(self, task_id: str, refusal: str) -> None:
        """The result a forked worker sent without waiting for the answer was refused: the task fails saying why."""
        run = self._runs.get(task_id)
        if run is not None and run.context is not None:
            run.context.refuse_result(refusal)

    async def metrics(self, task_id: str, follow: bool) -> AsyncIterator[tuple[list[MetricPoint], int]]:
        """The task's metric points and how many were dropped; with follow, new ones until the task ends."""
        self.get(task_id)  # NOT_FOUND for an unknown task
        after = 0
        while True:
            finished = self.get(task_id).status.finished and task_id not in self._runs
            points, after = self.store.metrics(task_id, after)
            if points or not follow:
                yield points, self.get(task_id).metrics_dropped
            if not follow or finished:
                return
            await asyncio.sleep(METRICS_POLL_S)

    # -- streams -----------------------------------------------------------------
    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        """The task now, then again after every change, until it has finished. Each is a copy taken when it is
        sent: the live record may change while one is on its way, and the last one sent must be the finished one."""
        live = self.get(task_id)  # the record the scheduler changes, while the task is in flight
        task = copy.copy(live)
        while True:
            yield task
            if task.status.finished:
                return
            seen = (task.status, task.progress, task.started_at)
            while (live.status, live.progress, live.started_at) == seen:
                await self._next_change(task_id)
            task = copy.copy(live)

    async def finished(self, task_id: str, wait_s: float) -> Task:
        """The task once it has finished, or as it is after ``wait_s`` seconds (long polling)."""
        live = self.get(task_id)
        try:
            async with asyncio.timeout(wait_s):
                while not live.status.finished:
                    await self._next_change(task_id)
        except TimeoutError:
            pass
        return live

    async def _next_change(self, task_id: str) -> None:
        event = self._changes.get(task_id)
        if event is None:
            event = self._changes[task_id] = asyncio.Event()
        await event.wait()

    async def logs(self, task_id: str, follow: bool, tail_bytes: int) -> AsyncIterator[tuple[int, bytes]]:
        task = self.get(task_id)
        run = self._runs.get(task_id)
        if run and run.context:
            task_log = run.context.log
        else:
            task_log = TaskLog(self.log_path(task_id), self.log_cap_bytes, task.log_dropped)
        offset = max(task_log.end - tail_bytes, 0) if tail_bytes > 0 else 0
        while True:
            start, data, offset = task_log.read(offset)
            if data:
                yield start, data
                continue
            if not follow or (self.get(task_id).status.finished and task_id not in self._runs):
                return
            await asyncio.sleep(0.1)

    def log_path(self, task_id: str) -> Path:
        return self.log_dir / f"{task_id}.log"

    # -- running -----------------------------------------------------------------
    def credentials(self, task: Task) -> str:
        """The task's own credential: report for this task, read the lake, write its lake outputs, serve the model
        it was given; it expires with the task's timeout (or TASK_CREDENTIAL_MAX_S)."""
        outputs = [task.output_table] if task.output_table else []
        serves = [task.input_table] if task.input_table.startswith("models/") else []
        ttl = task.timeout_s + TASK_CREDENTIAL_GRACE_S if task.timeout_s else TASK_CREDENTIAL_MAX_S
        return self.authority.task_token(task.id, task.owner, outputs, serves, ttl)

    def _producers(self, table: str) -> list[TaskRun]:
        """The queued or running tasks that write ``table``: a task reading it waits for them (a chain of tasks
        submitted at once), and is pinned to what they wrote."""
        return [r for r in self._runs.values() if r.task.output_table == table and not r.task.status.finished]

    def _launch(self, task: Task, attach: bool = False, producers: list[TaskRun] = ()) -> TaskRun:
        run = self._runs[task.id] = TaskRun(task, producers=list(producers))
        run.future = asyncio.ensure_future(self._run(run, attach))
        run.future.add_done_callback(lambda _: self._forget(run))
        return run

    def _forget(self, run: TaskRun) -> None:
        run.admitted.set()
        failure = None if run.future is None or run.future.cancelled() else run.future.exception()
        if failure is not None and not run.task.status.finished:  # a bug here must not leave the task hanging
            log.error("running task %s failed in the scheduler", run.task.id, exc_info=failure)
            self._finish(run.task, Outcome(TaskStatus.FAILED, error_type="SchedulerError",
                                           error_message=f"the scheduler failed running the task: {failure}"))
        if self._runs.get(run.task.id) is run:
            del self._runs[run.task.id]

    async def _run(self, run: TaskRun, attach: bool) -> None:
        task = run.task
        slots = self.backend.slots
        waiting = [p.future for p in run.producers if p.future is not None and not p.future.done()]
        if waiting or (slots is not None and slots.locked()):
            run.admitted.set()  # it waits for the tasks writing its input or for a slot: pending
        try:
            if waiting:
                await asyncio.wait(waiting)
            upstream = [p.task for p in run.producers if p.task.status is not TaskStatus.COMPLETED]
            run.producers.clear()
            if upstream and not task.status.finished:
                names = ", ".join(f"{t.name} ({t.id}) {t.status.value}" for t in upstream)
                self._finish(task, Outcome(TaskStatus.FAILED, error_type="UpstreamFailed",
                                           error_message=f"the task writing its input {task.input_table} did not "
                                                         f"complete: {names}"))
                return
            async with slots or contextlib.nullcontext():
                if task.status.finished:
                    return
                if task.input_table and not task.input_version and not attach:
                    try:  # pinned as it starts: the task reads exactly this version, whatever is written meanwhile
                        task.input_version = (await self.resolver.pin(task.input_table)).version
                    except PlatformError as exc:
                        self._finish(task, Outcome(TaskStatus.FAILED, error_type=type(exc).__name__,
                                                   error_message=exc.message))
                        return
                    self._changed_task(task)
                task_log = TaskLog(self.log_path(task.id), self.log_cap_bytes, task.log_dropped)
                try:
                    credential = self.credentials(task)
                except Exception as exc:  # noqa: BLE001 - a task that cannot be launched fails, it never hangs
                    log.exception("task %s could not be given its credential", task.id)
                    self._finish(task, Outcome(TaskStatus.FAILED, error_type=type(exc).__name__,
                                               error_message=f"the task could not be launched: {exc}"))
                    return
                run.context = RunContext(
                    task=task,
                    credential=credential,
                    log=task_log,
                    on_running=lambda pid, job_id, started_at: self._on_running(run, pid, job_id, started_at),
                    on_progress=lambda p: self._on_progress(run, p),
                    on_submitted=lambda job_id: self._on_submitted(run, job_id),
                    answer_report=functools.partial(self.local_reports, task) if self.local_reports else None,
                )
                if attach and task.status is TaskStatus.RUNNING:
                    run.timed = True
                    self._arm_timeout(task)
                try:
                    outcome = await self.backend.run(run.context, attach)
                except Exception as exc:  # noqa: BLE001 - a backend failure fails this task, not the scheduler
                    log.exception("backend failed running task %s", task.id)
                    outcome = Outcome(TaskStatus.FAILED, error_type=type(exc).__name__, error_message=str(exc))
                run.context.write_log(b"")  # a last try at saying what output a full disk cost
                task_log.close()
                task.log_dropped = task_log.dropped
                self._finish(task, self._explain(run, outcome))
        except asyncio.CancelledError:
            pass

    def _explain(self, run: TaskRun, outcome: Outcome) -> Outcome:
        """A run that the scheduler stopped ends the way the scheduler meant it to."""
        if run.stop_reason == "cancel":
            return Outcome(TaskStatus.CANCELLED)
        if run.stop_reason == "timeout":
            return Outcome(
                TaskStatus.FAILED,
                error_type="Timeout",
                error_message=f"the task ran past its timeout_s={run.task.timeout_s:g} and was stopped",
            )
        if run.stop_reason == "shutdown":
            return Outcome(
                TaskStatus.FAILED,
                error_type="SchedulerShutdown",
                error_message="the scheduler shut down while the task was running",
            )
        return outcome

    def _request_stop(self, task_id: str, reason: str) -> None:
        run = self._runs.get(task_id)
        if run is None:
            return
        run.stop_reason = run.stop_reason or reason
        if run.context is not None:
            run.context.stop.set()

    def _arm_timeout(self, task: Task, since: float | None = None) -> None:
        """Stop the task once timeout_s has passed ``since`` (default: its start)."""
        if task.timeout_s:
            elapsed = time.time() - (since or task.started_at or time.time())
            asyncio.get_running_loop().call_later(
                max(task.timeout_s - elapsed, 0), self._request_stop, task.id, "timeout"
            )

    def _on_running(self, run: TaskRun, pid: int | None, job_id: str, started_at: float | None) -> None:
        """The task runs (again, once its process is known: only the pid and job are new then)."""
        task = run.task
        task.pid, task.job_id = pid or task.pid, job_id or task.job_id
        first = task.status is not TaskStatus.RUNNING
        if first:
            task.status, task.started_at = TaskStatus.RUNNING, started_at or time.time()
        started = bool(pid or job_id)  # its process or job exists (a local task is running before, while it starts)
        if started and not run.timed:  # timeout_s counts from here, not from a fork server's first warm-up
            run.timed = True
            self._arm_timeout(task, since=started_at or time.time())
        # Saved once its process (or job) is known, which a restart needs to end what is left of it; until then a
        # restart finds it queued and runs it then.
        self._changed_task(task, save=started or not first)
        run.admitted.set()

    def _on_submitted(self, run: TaskRun, job_id: str) -> None:
        run.task.job_id = job_id
        self._changed_task(run.task)
        run.admitted.set()  # the cluster took it; it starts when the cluster has room

    def _on_progress(self, run: TaskRun, progress: dict[str, Any]) -> None:
        run.task.progress = progress
        now = time.time()
        save = now - run.last_progress_save >= PROGRESS_SAVE_INTERVAL_S or progress.get("fraction") == 1
        if save:
            run.last_progress_save = now
        self._changed_task(run.task, save=save)

    def _finish(self, task: Task, outcome: Outcome) -> None:
        ended_at = outcome.ended_at or time.time()
        task.status, task.completed_at = outcome.status, max(ended_at, task.started_at or ended_at)
        task.result, task.error_type, task.error_message = outcome.result, outcome.error_type, outcome.error_message
        self._changed_task(task)
        log.info("task finished", extra={"task": task.id, "status": task.status.value, "error": task.error_type})

    def _changed_task(self, task: Task, save: bool = True) -> None:
        if save:
            try:
                self.store.save(task)
                self._unsaved.pop(task.id, None)
            except InsufficientStorage as exc:  # the state lives on here and is saved once the disk has room
                if not self._unsaved:
                    log.warning("task records cannot be saved: %s", exc.message)
                self._unsaved[task.id] = task
                if self._saver is None or self._saver.done():
                    self._saver = asyncio.ensure_future(self._keep_saving())
        if (changed := self._changes.pop(task.id, None)) is not None:
            changed.set()

    def _save_unsaved(self) -> None:
        for task_id, task in list(self._unsaved.items()):
            try:
                self.store.save(task)
            except InsufficientStorage:
                return
            if self._unsaved.get(task_id) is task:
                del self._unsaved[task_id]

    async def _keep_saving(self) -> None:
        while self._unsaved:
            await asyncio.sleep(UNSAVED_RETRY_S)
            self._save_unsaved()
        log.info("task records saved again: the disk has room")

