"""Pipelines: named graphs of ordinary tasks, run step by step with exact caching, on demand or on triggers.

A step is cached when everything that decides its result matches an earlier completed step whose output version
still exists: the script's sha256, its params (canonical JSON), each lake input at the exact version pinned for
this run (a raw file or directory input: the sha256 of its content), and the platform's SDK version. Lance versions
never change, so "same key" means "same data": changed data always reruns, unchanged data never does.

Runs and the cache live in the scheduler's SQLite beside the task records and survive a restart: a run in flight
picks up its running steps' tasks (which the scheduler re-attached or failed) and goes on. Plain Python over plain
values; the gRPC edge is in ``server.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ai_platform
from ai_platform.core.auth import CALLER, Principal, Role, caller
from ai_platform.core.errors import FailedPrecondition, InvalidArgument, NotFound, PlatformError
from ai_platform.core.names import validate_name
from scheduler_svc.pipeline_spec import (
    LAKE_OUTPUT,
    STEP_OUTPUT,
    DatasetTrigger,
    ScheduleTrigger,
    Step,
    parse_definition,
)
from scheduler_svc.scheduler import Scheduler, TaskRequest
from scheduler_svc.store import guarded
from scheduler_svc.tasks import TaskStatus

log = logging.getLogger("scheduler_svc.pipelines")
TRIGGER_POLL_S = 2.0  # dataset triggers look at their dataset's newest version this often (one GetTable each)
DONE_STEPS = {"completed", "cached"}
ENDED_STEPS = {"completed", "cached", "failed", "cancelled", "skipped"}


@dataclass
class StepState:
    status: str = "pending"  # pending | running | completed | cached | failed | cancelled | skipped
    task_id: str = ""
    cached_from: str = ""
    output: str = ""
    output_version: int = 0
    inputs: dict[str, int] = field(default_factory=dict)  # lake table -> the version this run reads
    cache_key: str = ""
    message: str = ""
    result: Any = None


@dataclass
class PipelineRun:
    id: str
    pipeline: str
    revision: int
    definition: dict
    trigger: str
    owner: str
    steps: dict[str, StepState]
    params: dict[str, dict] = field(default_factory=dict)
    no_cache: bool = False
    status: str = "running"
    created_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    message: str = ""

    @property
    def order(self) -> list[str]:
        return list(self.steps)


@dataclass
class PipelineRecord:
    name: str
    definition: dict
    revision: int
    owner: str
    updated_at: float
    trigger_state: dict = field(default_factory=dict)  # per trigger: what it last saw and when it last fired


class PipelineStore:
    """Definitions, runs and the step cache, in the scheduler's database."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.db.execute("CREATE TABLE IF NOT EXISTS pipelines (name TEXT PRIMARY KEY, definition TEXT, revision"
                        " INTEGER, owner TEXT, updated_at REAL, trigger_state TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS pipeline_runs (id TEXT PRIMARY KEY, pipeline TEXT, status TEXT,"
                        " created_at REAL, record TEXT)")
        self.db.execute("CREATE INDEX IF NOT EXISTS pipeline_runs_created ON pipeline_runs (pipeline, created_at)")
        self.db.execute("CREATE TABLE IF NOT EXISTS step_cache (key TEXT PRIMARY KEY, task_id TEXT, output TEXT,"
                        " output_version INTEGER, result TEXT, created_at REAL)")

    @guarded
    def save_pipeline(self, record: PipelineRecord) -> None:
        self.db.execute("INSERT OR REPLACE INTO pipelines VALUES (?, ?, ?, ?, ?, ?)",
                        (record.name, json.dumps(record.definition), record.revision, record.owner, record.updated_at,
                         json.dumps(record.trigger_state)))

    def pipeline(self, name: str) -> PipelineRecord | None:
        row = self.db.execute("SELECT * FROM pipelines WHERE name = ?", (name,)).fetchone()
        return self._pipeline(row) if row else None

    def pipelines(self) -> list[PipelineRecord]:
        return [self._pipeline(r) for r in self.db.execute("SELECT * FROM pipelines ORDER BY name")]

    @staticmethod
    def _pipeline(row: tuple) -> PipelineRecord:
        return PipelineRecord(row[0], json.loads(row[1]), row[2], row[3], row[4], json.loads(row[5] or "{}"))

    @guarded
    def save_run(self, run: PipelineRun) -> None:
        record = dataclasses.asdict(run)
        self.db.execute("INSERT OR REPLACE INTO pipeline_runs VALUES (?, ?, ?, ?, ?)",
                        (run.id, run.pipeline, run.status, run.created_at, json.dumps(record)))

    def run(self, run_id: str) -> PipelineRun | None:
        row = self.db.execute("SELECT record FROM pipeline_runs WHERE id = ?", (run_id,)).fetchone()
        return self._run(row[0]) if row else None

    def runs(self, pipeline: str = "", limit: int = 50, statuses: tuple[str, ...] = ()) -> list[PipelineRun]:
        where, args = [], []
        if pipeline:
            where.append("pipeline = ?")
            args.append(pipeline)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += list(statuses)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(f"SELECT record FROM pipeline_runs {clause} ORDER BY created_at DESC LIMIT ?",
                               [*args, limit])
        return [self._run(r[0]) for r in rows]

    @staticmethod
    def _run(text: str) -> PipelineRun:
        values = json.loads(text)
        values["steps"] = {name: StepState(**state) for name, state in values["steps"].items()}
        return PipelineRun(**values)

    def cached(self, key: str) -> dict | None:
        row = self.db.execute("SELECT task_id, output, output_version, result FROM step_cache WHERE key = ?",
                              (key,)).fetchone()
        if row is None:
            return None
        return {"task_id": row[0], "output": row[1], "output_version": row[2], "result": json.loads(row[3])}

    @guarded
    def remember(self, key: str, task_id: str, output: str, output_version: int, result: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO step_cache VALUES (?, ?, ?, ?, ?, ?)",
                        (key, task_id, output, output_version, json.dumps(result), time.time()))

    @guarded
    def forget(self, key: str) -> None:
        self.db.execute("DELETE FROM step_cache WHERE key = ?", (key,))


def sha256_of(path: Path) -> str:
    """The content hash of a file, or of a directory's files (their relative names and contents, in order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class Pipelines:
    """Owns pipelines' whole lifecycle: definitions, runs (each an asyncio task walking its graph), the step
    cache and the triggers. Steps are submitted to the :class:`Scheduler` as ordinary tasks."""

    def __init__(self, scheduler: Scheduler, store: PipelineStore) -> None:
        self.scheduler = scheduler
        self.store = store
        self._running: dict[str, asyncio.Task] = {}
        self._live: dict[str, PipelineRun] = {}
        self._changed = asyncio.Condition()
        self._triggers: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Runs cut off by a restart go on (their steps' tasks were re-attached or failed by the scheduler);
        triggers start watching."""
        for run in self.store.runs(limit=1_000_000, statuses=("running",)):
            self._spawn(run)
        self._triggers = asyncio.ensure_future(self._watch_triggers())

    async def shutdown(self) -> None:
        """Stop walking graphs; the runs stay "running" and go on after the next start."""
        if self._triggers is not None:
            self._triggers.cancel()
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    # -- definitions -----------------------------------------------------------------------------------------------
    async def apply(self, name: str, raw: dict) -> PipelineRecord:
        validate_name(name, "pipeline name")
        definition = parse_definition(raw)
        for step in definition.steps:  # every script must be one the scheduler runs, now
            try:
                self.scheduler.check_script(step.script)
            except InvalidArgument as exc:
                raise InvalidArgument(f"step '{step.name}': {exc.message}") from None
            await self._check_refs(step)
        state = {}
        for index, trigger in enumerate(definition.triggers):
            if isinstance(trigger, DatasetTrigger):
                try:
                    version, rows = await self.scheduler.resolver.table_rows(f"datasets/{trigger.dataset}")
                except NotFound:
                    raise InvalidArgument(f"on[{index}]: the trigger's dataset '{trigger.dataset}' does not exist "
                                          f"(a trigger watches a dataset that has been written)") from None
                state[str(index)] = {"version": version, "rows": rows, "fired_at": 0.0}
            else:
                state[str(index)] = {"next_at": self._next_time(trigger.cron, time.time())}
        old = self.store.pipeline(name)
        record = PipelineRecord(name, raw, (old.revision + 1) if old else 1, caller().subject, time.time(), state)
        self.store.save_pipeline(record)
        log.info("pipeline applied", extra={"pipeline": name, "revision": record.revision})
        return record

    async def _check_refs(self, step: Step) -> None:
        """Lake references that cannot work are refused at apply: a bad name, or a gate's alias that does not exist
        on an existing model unless the step may create it (``params.create_alias``)."""
        for ref in [step.input, *step.inputs.values()]:
            if ref and not STEP_OUTPUT.match(ref):
                await self.scheduler.resolver.resolve(ref, "input")
        for key, ref in step.inputs.items():
            if ref and not STEP_OUTPUT.match(ref) and not LAKE_OUTPUT.match(ref):
                raise InvalidArgument(f"step '{step.name}': inputs.{key} must be a lake table (datasets/NAME, "
                                      f"models/NAME) or steps.NAME.output, got {ref!r}")
        output = LAKE_OUTPUT.match(step.output)
        if output and output["alias"]:
            model = output["table"].split("/", 1)[1]
            validate_name(model, "model name")
            validate_name(output["alias"], "alias")
            present = await self.scheduler.resolver.alias_version(model, output["alias"])
            if present == 0 and not step.params.get("create_alias"):
                raise InvalidArgument(f"step '{step.name}': model '{model}' has no alias '{output['alias']}' (set "
                                      f"params.create_alias: true to let the step create it)")
        elif output:
            await self.scheduler.resolver.resolve(step.output, "output")

    def get(self, name: str) -> PipelineRecord:
        record = self.store.pipeline(name)
        if record is None:
            raise NotFound(f"pipeline '{name}' does not exist")
        return record

    def list(self) -> list[PipelineRecord]:
        return self.store.pipelines()

    def last_run(self, name: str) -> PipelineRun | None:
        runs = self.store.runs(name, limit=1)
        return self._live.get(runs[0].id, runs[0]) if runs else None

    # -- runs ------------------------------------------------------------------------------------------------------
    async def run(self, name: str, params: dict | None = None, no_cache: bool = False,
                  trigger: str = "manual", owner: str = "") -> PipelineRun:
        """Start a run now: its lake inputs are pinned at this moment. FailedPrecondition while the pipeline's
        allowed runs are in flight."""
        record = self.get(name)
        definition = parse_definition(record.definition)
        params = params or {}
        for step_name, overrides in params.items():
            if step_name not in {s.name for s in definition.steps}:
                raise InvalidArgument(f"params: pipeline '{name}' has no step '{step_name}' (params are given per "
                                      f"step: {{\"STEP\": {{\"param\": value}}}})")
            if not isinstance(overrides, dict):
                raise InvalidArgument(f"params.{step_name} must be an object of the step's params")
        in_flight = [r for r in self._live.values() if r.pipeline == name and r.status == "running"]
        if len(in_flight) >= definition.max_concurrent_runs:
            raise FailedPrecondition(f"pipeline '{name}' already has {len(in_flight)} run(s) in flight "
                                     f"({', '.join(r.id for r in in_flight)}); max_concurrent_runs is "
                                     f"{definition.max_concurrent_runs}")
        steps = {s.name: StepState(output=s.output) for s in definition.steps}
        for step in definition.steps:  # every lake input that no step writes, pinned now
            for ref in [step.input, *step.inputs.values()]:
                if ref and not STEP_OUTPUT.match(ref):
                    _, table = await self.scheduler.resolver.resolve(ref, "input")
                    if table is not None:
                        pinned = await self.scheduler.resolver.pin(table.table)
                        steps[step.name].inputs[table.table] = pinned.version
        run = PipelineRun(id=uuid.uuid4().hex[:16], pipeline=name, revision=record.revision,
                          definition=record.definition, trigger=trigger, owner=owner or caller().subject,
                          steps=steps, params=params, no_cache=no_cache)
        self.store.save_run(run)
        self._spawn(run)
        log.info("pipeline run started", extra={"pipeline": name, "run": run.id, "trigger": trigger})
        return run

    def get_run(self, run_id: str) -> PipelineRun:
        run = self._live.get(run_id) or self.store.run(run_id)
        if run is None:
            raise NotFound(f"pipeline run '{run_id}' does not exist")
        return run

    def runs(self, name: str = "", limit: int = 50) -> list[PipelineRun]:
        if name:
            self.get(name)
        return [self._live.get(r.id, r) for r in self.store.runs(name, limit)]

    async def cancel(self, run_id: str) -> PipelineRun:
        run = self.get_run(run_id)
        if run.status != "running":
            raise FailedPrecondition(f"pipeline run '{run_id}' is already {run.status}")
        run = self._live.get(run_id, run)
        run.status = "cancelled"  # the walker sees it and starts nothing more
        for state in run.steps.values():
            if state.status == "pending":
                state.status, state.message = "skipped", "the run was cancelled"
        for state in run.steps.values():
            if state.status == "running" and state.task_id:
                with contextlib.suppress(FailedPrecondition, NotFound):
                    await self.scheduler.cancel(state.task_id)
        await self._wait_for(run)
        return self.get_run(run_id)

    async def _wait_for(self, run: PipelineRun) -> None:
        walker = self._running.get(run.id)
        if walker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(walker)

    async def watch(self, run_id: str) -> AsyncIterator[PipelineRun]:
        """The run now, then after every change, until it has ended (each a copy as it was sent)."""
        run = self.get_run(run_id)
        while True:
            snapshot = self.store._run(json.dumps(dataclasses.asdict(run)))
            yield snapshot
            if snapshot.status != "running" and run_id not in self._running:
                return
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._differs, run_id, dataclasses.asdict(snapshot)))
            run = self.get_run(run_id)

    def _differs(self, run_id: str, seen: dict) -> bool:
        return dataclasses.asdict(self.get_run(run_id)) != seen or run_id not in self._running

    # -- walking a run's graph -------------------------------------------------------------------------------------
    def _spawn(self, run: PipelineRun) -> None:
        self._live[run.id] = run
        walker = self._running[run.id] = asyncio.ensure_future(self._walk(run))
        walker.add_done_callback(lambda _: self._ended(run))

    def _ended(self, run: PipelineRun) -> None:
        self._running.pop(run.id, None)
        if run.status != "running":
            self._live.pop(run.id, None)
        asyncio.ensure_future(self._notify())

    async def _walk(self, run: PipelineRun) -> None:
        CALLER.set(Principal(run.owner or "pipeline", Role.EDITOR))  # its steps are the owner's tasks
        definition = parse_definition(run.definition)
        steps: dict[str, asyncio.Task] = {}
        try:
            while True:
                for step in definition.steps:
                    state = run.steps[step.name]
                    if state.status not in ("pending", "running") or step.name in steps:
                        continue
                    ups = [run.steps[u] for u in step.upstream()]
                    blocked = next((u for u in step.upstream() if run.steps[u].status in
                                    ("failed", "cancelled", "skipped")), None)
                    if run.status == "cancelled" and state.status == "pending":
                        state.status, state.message = "skipped", "the run was cancelled"
                        self._changed_run(run)
                    elif blocked and state.status == "pending":
                        state.status = "skipped"
                        state.message = f"step '{blocked}' {run.steps[blocked].status}"
                        self._changed_run(run)
                    elif state.status == "running" or all(u.status in DONE_STEPS for u in ups):
                        steps[step.name] = asyncio.ensure_future(self._step(run, step))
                active = [t for t in steps.values() if not t.done()]
                if not active:
                    if all(s.status in ENDED_STEPS for s in run.steps.values()):
                        break
                    for state in run.steps.values():  # cannot happen in a checked graph; never loop on it
                        if state.status not in ENDED_STEPS:
                            state.status, state.message = "skipped", "its inputs never became ready"
                    continue
                await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the scheduler stops: the run goes on after its next start
            for task in steps.values():
                task.cancel()
            raise
        failed = [n for n, s in run.steps.items() if s.status in ("failed", "cancelled")]
        if run.status == "cancelled":  # as cancel() left it
            pass
        elif failed:
            run.status = "failed"
            run.message = "; ".join(f"step '{n}' {run.steps[n].status}: {run.steps[n].message}" for n in failed)
        else:
            run.status = "completed"
        run.completed_at = time.time()
        self._changed_run(run)
        log.info("pipeline run ended", extra={"pipeline": run.pipeline, "run": run.id, "status": run.status})

    async def _step(self, run: PipelineRun, step: Step) -> None:
        state = run.steps[step.name]
        try:
            if state.status == "running" and state.task_id:  # after a restart: the task it started goes on
                await self._await_task(run, step, state)
                return
            request, key = await self._prepare(run, step, state)
            state.cache_key = key
            if step.cache and not run.no_cache and await self._reuse(run, step, state, key):
                return
            if run.status == "cancelled":
                state.status, state.message = "skipped", "the run was cancelled"
                return
            task = await self.scheduler.submit(request)
            state.status, state.task_id = "running", task.id
            self._changed_run(run)
            if run.status == "cancelled":  # cancelled while it was being submitted
                with contextlib.suppress(FailedPrecondition, NotFound):
                    await self.scheduler.cancel(task.id)
            await self._await_task(run, step, state)
        except PlatformError as exc:
            state.status, state.message = "failed", exc.message
        except Exception as exc:  # noqa: BLE001 - a step that cannot start fails the run, never the scheduler
            log.exception("pipeline step %s of run %s failed to start", step.name, run.id)
            state.status, state.message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self._changed_run(run)

    async def _prepare(self, run: PipelineRun, step: Step, state: StepState) -> tuple[TaskRequest, str]:
        """The task to submit and its cache key, from the versions this run reads."""
        resolver = self.scheduler.resolver
        input_ref, input_version, input_key = step.input, 0, ""
        match = STEP_OUTPUT.match(step.input)
        if match:
            upstream = run.steps[match["step"]]
            input_ref, input_version = upstream.output, upstream.output_version
            state.inputs[upstream.output] = upstream.output_version
            input_key = f"{upstream.output}@{upstream.output_version}"
        elif step.input:
            resolved, table = await resolver.resolve(step.input, "input")
            if table is not None:
                input_version = state.inputs[table.table]
                input_key = f"{table.table}@{input_version}"
            else:
                path = Path(resolved)
                input_key = f"sha256:{await asyncio.to_thread(sha256_of, path)}" if path.exists() else resolved
        params = {**step.params, **run.params.get(step.name, {})}
        extra, extra_key = {}, {}
        for key, ref in step.inputs.items():
            match = STEP_OUTPUT.match(ref)
            if match:
                upstream = run.steps[match["step"]]
                table, version = upstream.output, upstream.output_version
                state.inputs[table] = version
            else:
                _, lake = await resolver.resolve(ref, "input")
                table, version = lake.table, state.inputs[lake.table]
            pinned = await resolver.pin(table, version)
            extra[key] = {"uri": pinned.uri, "version": version, "table": table}
            extra_key[key] = f"{table}@{version}"
        if extra:
            params["inputs"] = extra
        script = self.scheduler.check_script(step.script)
        script_hash = await asyncio.to_thread(sha256_of, script)
        output = LAKE_OUTPUT.match(step.output)
        if output and output["alias"]:  # a gate decides against what the alias points to now: part of its key
            extra_key["alias"] = await resolver.alias_version(output["table"].split("/", 1)[1], output["alias"])
        key = hashlib.sha256(json.dumps({
            "script": script_hash, "input": input_key, "inputs": extra_key,
            "params": {k: v for k, v in params.items() if k != "inputs"}, "output": step.output,
            "sdk": ai_platform.__version__,
        }, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        request = TaskRequest(name=f"{run.pipeline}.{step.name}", script=step.script, input=input_ref,
                              output=step.output, params=params, resources=step.resources, timeout_s=step.timeout_s,
                              input_version=input_version)
        return request, key

    async def _reuse(self, run: PipelineRun, step: Step, state: StepState, key: str) -> bool:
        """An exact earlier result whose output version still exists: the step is ``cached``. An entry whose
        version was removed (garbage collection) goes, and the step runs."""
        entry = self.store.cached(key)
        if entry is None:
            return False
        table = LAKE_OUTPUT.match(entry["output"])
        if table and not table["alias"] and not await self.scheduler.resolver.has_version(
                entry["output"], entry["output_version"]):
            self.store.forget(key)
            log.info("cache entry dropped: its output version is gone",
                     extra={"pipeline": run.pipeline, "step": step.name, "output": entry["output"]})
            return False
        state.status, state.cached_from = "cached", entry["task_id"]
        state.output_version, state.result = entry["output_version"], entry["result"]
        return True

    async def _await_task(self, run: PipelineRun, step: Step, state: StepState) -> None:
        task = self.scheduler.get(state.task_id)
        async for task in self.scheduler.watch(state.task_id):
            if task.status.finished:
                break
        state.result = task.result
        if task.status is TaskStatus.COMPLETED:
            output = LAKE_OUTPUT.match(step.output)
            if output and not output["alias"]:
                state.output_version = (await self.scheduler.resolver.pin(step.output)).version
            state.status = "completed"
            if state.cache_key:
                with contextlib.suppress(PlatformError):  # a full disk costs the cache entry, not the step
                    self.store.remember(state.cache_key, task.id, step.output, state.output_version, task.result)
        else:
            state.status = "cancelled" if task.status is TaskStatus.CANCELLED else "failed"
            state.message = f"{task.error_type}: {task.error_message}" if task.error_type else task.status.value

    def _changed_run(self, run: PipelineRun) -> None:
        with contextlib.suppress(PlatformError):  # a full disk: the run lives on here, saved at its next change
            self.store.save_run(run)
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- triggers --------------------------------------------------------------------------------------------------
    @staticmethod
    def _next_time(expression: str, after: float) -> float:
        from croniter import croniter

        return float(croniter(expression, after).get_next(float))

    async def _watch_triggers(self) -> None:
        """Polls: one GetTable per dataset trigger every TRIGGER_POLL_S (storage's cost is reading one manifest),
        rather than a stream that every storage replica would have to fan out. A trigger that fires while the
        pipeline's runs are all in flight waits: later new versions coalesce into the one run that follows."""
        while True:
            await asyncio.sleep(TRIGGER_POLL_S)
            for record in self.store.pipelines():
                try:
                    await self._check_triggers(record)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - one pipeline's trigger must not stop the others'
                    log.exception("checking the triggers of pipeline %s failed", record.name)

    async def _check_triggers(self, record: PipelineRecord) -> None:
        definition = parse_definition(record.definition)
        busy = sum(1 for r in self._live.values() if r.pipeline == record.name and r.status == "running")
        now = time.time()
        before = json.dumps(record.trigger_state, sort_keys=True)
        for index, trigger in enumerate(definition.triggers):
            state = record.trigger_state.setdefault(str(index), {})
            fire = ""
            if isinstance(trigger, ScheduleTrigger):
                if now >= state.get("next_at", 0):
                    state["next_at"] = self._next_time(trigger.cron, now)
                    # a tick that finds the runs in flight is skipped, like an overlapping cron job
                    fire = trigger.describe() if busy < definition.max_concurrent_runs else ""
            else:
                try:
                    version, rows = await self.scheduler.resolver.table_rows(f"datasets/{trigger.dataset}")
                except NotFound:
                    continue
                if (version > state.get("version", 0) and rows - state.get("rows", 0) >= trigger.min_new_rows and
                        now - state.get("fired_at", 0.0) >= trigger.min_interval_s and
                        busy < definition.max_concurrent_runs):
                    fire = f"dataset {trigger.dataset}@{version}"
                    state.update(version=version, rows=rows, fired_at=now)
            if fire:
                try:
                    await self.run(record.name, trigger=fire, owner=record.owner)
                    busy += 1
                except PlatformError as exc:
                    log.warning("pipeline %s: the trigger %s could not start a run: %s", record.name, fire,
                                exc.message)
        if json.dumps(record.trigger_state, sort_keys=True) != before:
            current = self.store.pipeline(record.name)
            if current is not None and current.revision == record.revision:  # not re-applied meanwhile
                self.store.save_pipeline(record)
