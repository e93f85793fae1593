"""gRPC edge of the scheduler: protobuf in and out, plain values to and from the Scheduler."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from ai_platform.core import auth
from ai_platform.core.errors import InvalidArgument, PermissionDenied, PlatformError
from ai_platform.core.limits import MAX_PARAMS_DEPTH, TASK_WAIT_MAX_S, json_depth
from ai_platform.core.names import METRIC_KEY
from ai_platform.core.wire import TASK_STATUSES, struct_value
from ai_platform.protos.aiplatform.v1 import pipelines_pb2 as ppb
from ai_platform.protos.aiplatform.v1 import pipelines_pb2_grpc, scheduler_pb2_grpc
from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as pb
from ai_platform.sdk.report import report_request
from scheduler_svc.backends import channel_report
from scheduler_svc.pipelines import PipelineRecord, PipelineRun, Pipelines
from scheduler_svc.scheduler import Scheduler, TaskRequest
from scheduler_svc.tasks import MetricPoint, Resources, Task, TaskStatus

MAX_PAGE = 1000
METRICS_PER_MESSAGE = 10_000


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def task_to_pb(task: Task) -> pb.Task:
    message = pb.Task(
        id=task.id,
        name=task.name,
        script=task.script,
        input=task.input,
        output=task.output,
        resolved_input=task.resolved_input,
        resolved_output=task.resolved_output,
        input_table=task.input_table,
        input_version=task.input_version,
        owner=task.owner,
        output_table=task.output_table,
        resources=pb.Resources(
            num_cpus=task.resources.num_cpus, num_gpus=task.resources.num_gpus, memory_mb=task.resources.memory_mb,
            custom=task.resources.custom,
        ),
        timeout_s=task.timeout_s,
        status=TASK_STATUSES.number(task.status.value),
        backend=task.backend,
        created_at=_timestamp(task.created_at),
        started_at=_timestamp(task.started_at),
        completed_at=_timestamp(task.completed_at),
    )
    message.params.update(task.params)
    if task.effective_params is not None:
        message.effective_params.update(task.effective_params)
    if task.result is not None:
        json_format.ParseDict(task.result, message.result)
    if task.error_type:
        message.error.CopyFrom(pb.TaskError(type=task.error_type, message=task.error_message))
    if task.progress:
        progress = task.progress
        message.progress.CopyFrom(
            pb.Progress(
                fraction=progress.get("fraction", 0.0),
                message=progress.get("message", ""),
                updated_at=_timestamp(progress.get("time")),
            )
        )
        message.progress.metrics.update(progress.get("metrics") or {})
    return message


def _page_token(task: Task) -> str:
    """An opaque cursor: where the page ended in the listing's order (newest first), not how many rows it skipped,
    so tasks submitted while a client pages never repeat or shift a row."""
    return base64.urlsafe_b64encode(f"after:{task.created_at!r}:{task.id}".encode()).decode()


def _cursor(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        kind, created_at, task_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 2)
        if kind == "after" and task_id and math.isfinite(float(created_at)):
            return float(created_at), task_id
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidArgument(f"invalid page_token {token[:64]!r}: pass back the token a listing answered with")


def bearer_token() -> str:
    return auth.CALLER_CREDENTIAL.get()


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.local_reports = self.local_report  # the other edge reports arrive at: a forked task's socket

    async def SubmitTask(self, request: pb.SubmitTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        resources = request.resources
        task = await self.scheduler.submit(
            TaskRequest(
                name=request.name,
                script=request.script,
                input=request.input,
                output=request.output,
                params=struct_value(request.params) if request.HasField("params") else {},
                resources=Resources(resources.num_cpus, resources.num_gpus, resources.memory_mb,
                                    dict(resources.custom)),
                timeout_s=request.timeout_s,
            )
        )
        return task_to_pb(task)

    async def GetTask(self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        if not 0 <= request.wait_s <= TASK_WAIT_MAX_S:  # NaN too
            raise InvalidArgument(f"wait_s must be between 0 and {TASK_WAIT_MAX_S:g} seconds, got {request.wait_s}")
        if request.wait_s:
            return task_to_pb(await self.scheduler.finished(request.id, request.wait_s))
        return task_to_pb(self.scheduler.get(request.id))

    async def ListTasks(self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext) -> pb.ListTasksResponse:
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        page_size = min(request.page_size or 50, MAX_PAGE)
        statuses = [TaskStatus(TASK_STATUSES.name(status)) for status in request.statuses]
        tasks = self.scheduler.list(statuses, request.name, page_size + 1, _cursor(request.page_token),
                                    request.owner)
        more = len(tasks) > page_size
        return pb.ListTasksResponse(
            tasks=[task_to_pb(t) for t in tasks[:page_size]],
            next_page_token=_page_token(tasks[page_size - 1]) if more else "",
        )

    async def CancelTask(self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        return task_to_pb(await self.scheduler.cancel(request.id))

    async def StreamLogs(
        self, request: pb.StreamLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.LogChunk]:
        if request.tail_bytes < 0:
            raise InvalidArgument("tail_bytes must not be negative")
        async for offset, data in self.scheduler.logs(request.id, request.follow, request.tail_bytes):
            yield pb.LogChunk(data=data, offset=offset)

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Task]:
        async for task in self.scheduler.watch(request.id):
            yield task_to_pb(task)

    async def StreamMetrics(
        self, request: pb.StreamMetricsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MetricPoints]:
        async for points, dropped in self.scheduler.metrics(request.id, request.follow):
            for start in range(0, max(len(points), 1), METRICS_PER_MESSAGE):
                yield pb.MetricPoints(dropped=dropped, points=[
                    pb.MetricPoint(key=p.key, step=p.step, value=p.value, time=p.time)
                    for p in points[start:start + METRICS_PER_MESSAGE]])

    async def ReportTask(
        self, request: pb.ReportTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportTaskResponse:
        if request.secret and request.secret != bearer_token():
            raise PermissionDenied("secret, when given, must be the task's own credential, the same as the bearer")
        return answer_report(self.scheduler, request)

    def local_report(self, task: Task, data: bytes) -> tuple[bool, bytes | None]:
        """A report on a forked task's own socket (``RunContext.answer_report``, ``report.ChannelReporter``), from
        the one task the socket belongs to, checked as ReportTask checks its message. (ok, b"" or the refusal; None
        for the two reports the worker does not wait to hear answered: its result, a refusal of which fails the task
        as ResultNotDelivered with the reason in its log, and its last word, its exit code.)"""
        who = auth.CALLER.set(auth.Principal(f"task:{task.id}", auth.Role.VIEWER, task_id=task.id, owner=task.owner))
        kind = ""
        try:
            kind, value = channel_report(data)
            if kind == "exit":
                self.scheduler.report(task.id, kind, value)
                return True, None
            try:  # the very message ReportTask takes, through the same decoder and its limits (nesting, numbers)
                built = report_request(task.id, kind, value).SerializeToString()
                request = pb.ReportTaskRequest.FromString(built)
            except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, RecursionError,
                    json_format.Error, DecodeError) as exc:
                raise InvalidArgument(f"a {kind} report on the task's channel is malformed: {exc!r}"[:512]) from None
            answer_report(self.scheduler, request)
            return True, None if kind == "result" else b""
        except PlatformError as exc:
            refusal = f"{exc.grpc_code.name}: {exc.message}"
            if kind == "result":
                self.scheduler.result_refused(task.id, refusal)
                return False, None
            return False, refusal.encode()
        finally:
            auth.CALLER.reset(who)


def answer_report(scheduler: Scheduler, request: pb.ReportTaskRequest) -> pb.ReportTaskResponse:
    """One report from a task's worker, over gRPC or its own socket: recorded, and answered (``started`` with the
    task's spec: params of any size travel here, not in the worker's environment)."""
    kind = request.WhichOneof("report")
    if kind is None:
        raise InvalidArgument("a report needs one of started, progress, result, error or metrics")
    if kind == "started":
        value: Any = request.started
    elif kind == "progress":
        p = request.progress
        value = {"fraction": p.fraction, "message": p.message, "metrics": struct_value(p.metrics),
                 "time": p.updated_at.ToNanoseconds() / 1e9 if p.HasField("updated_at") else time.time()}
    elif kind == "result":
        value = struct_value(request.result)
    elif kind == "metrics":
        value = [metric_point(p) for p in request.metrics.points]
    elif kind == "params":
        value = struct_value(request.params)
    else:
        value = {"type": request.error.type, "message": request.error.message}
    nested = value["metrics"] if kind == "progress" else value if kind in ("result", "params") else None
    if json_depth(nested) > MAX_PARAMS_DEPTH:  # kept on the task, which no client could decode any more
        raise InvalidArgument(f"a {kind} report nests deeper than {MAX_PARAMS_DEPTH} levels")
    scheduler.report(request.task_id, kind, value)
    if kind == "started":
        return pb.ReportTaskResponse(task=task_to_pb(scheduler.get(request.task_id)))
    return pb.ReportTaskResponse()


def metric_point(point: pb.MetricPoint) -> MetricPoint:
    """A reported point, checked: a series name, a step >= 0, a finite value."""
    if not METRIC_KEY.fullmatch(point.key):
        raise InvalidArgument(f"metric name {point.key[:64]!r} must be 1-128 letters, digits, '_', '.', '-', '/'")
    if point.step < 0:
        raise InvalidArgument(f"metric {point.key!r}: step must be >= 0, got {point.step}")
    if not math.isfinite(point.value):
        raise InvalidArgument(f"metric {point.key!r} at step {point.step}: value must be finite, got {point.value}")
    return MetricPoint(point.key, point.step, point.value, point.time)


# -- pipelines ---------------------------------------------------------------------------------------------------------

def run_to_pb(run: PipelineRun) -> ppb.PipelineRun:
    message = ppb.PipelineRun(
        id=run.id, pipeline=run.pipeline, revision=run.revision, status=run.status, trigger=run.trigger,
        order=run.order, owner=run.owner, created_at=_timestamp(run.created_at),
        completed_at=_timestamp(run.completed_at), message=run.message, no_cache=run.no_cache,
    )
    message.params.update(run.params)
    for name, state in run.steps.items():
        step = message.steps[name]
        step.status, step.task_id, step.cached_from = state.status, state.task_id, state.cached_from
        step.output, step.output_version, step.cache_key = state.output, state.output_version, state.cache_key
        step.message = state.message
        step.inputs.update(state.inputs)
        if state.result is not None:
            json_format.ParseDict(state.result, step.result)
    return message


def pipeline_to_pb(record: PipelineRecord, last_run: PipelineRun | None) -> ppb.Pipeline:
    message = ppb.Pipeline(name=record.name, revision=record.revision, owner=record.owner,
                           updated_at=_timestamp(record.updated_at))
    message.definition.update(record.definition)
    if last_run is not None:
        message.last_run.CopyFrom(run_to_pb(last_run))
    return message


class PipelineServicer(pipelines_pb2_grpc.PipelineServiceServicer):
    def __init__(self, pipelines: Pipelines) -> None:
        self.pipelines = pipelines

    async def ApplyPipeline(self, request: ppb.ApplyPipelineRequest, context: grpc.aio.ServicerContext
                            ) -> ppb.Pipeline:
        record = await self.pipelines.apply(request.name, struct_value(request.definition))
        return pipeline_to_pb(record, self.pipelines.last_run(record.name))

    async def GetPipeline(self, request: ppb.GetPipelineRequest, context: grpc.aio.ServicerContext) -> ppb.Pipeline:
        return pipeline_to_pb(self.pipelines.get(request.name), self.pipelines.last_run(request.name))

    async def ListPipelines(self, request: ppb.ListPipelinesRequest, context: grpc.aio.ServicerContext
                            ) -> ppb.ListPipelinesResponse:
        return ppb.ListPipelinesResponse(pipelines=[pipeline_to_pb(r, self.pipelines.last_run(r.name))
                                                    for r in self.pipelines.list()])

    async def RunPipeline(self, request: ppb.RunPipelineRequest, context: grpc.aio.ServicerContext
                          ) -> ppb.PipelineRun:
        params = struct_value(request.params) if request.HasField("params") else {}
        return run_to_pb(await self.pipelines.run(request.name, params, request.no_cache))

    async def GetPipelineRun(self, request: ppb.GetPipelineRunRequest, context: grpc.aio.ServicerContext
                             ) -> ppb.PipelineRun:
        return run_to_pb(self.pipelines.get_run(request.id))

    async def ListPipelineRuns(self, request: ppb.ListPipelineRunsRequest, context: grpc.aio.ServicerContext
                               ) -> ppb.ListPipelineRunsResponse:
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        runs = self.pipelines.runs(request.name, min(request.page_size or 50, MAX_PAGE))
        return ppb.ListPipelineRunsResponse(runs=[run_to_pb(r) for r in runs])

    async def WatchPipelineRun(self, request: ppb.GetPipelineRunRequest, context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[ppb.PipelineRun]:
        async for run in self.pipelines.watch(request.id):
            yield run_to_pb(run)

    async def CancelPipelineRun(self, request: ppb.GetPipelineRunRequest, context: grpc.aio.ServicerContext
                                ) -> ppb.PipelineRun:
        return run_to_pb(await self.pipelines.cancel(request.id))
