"""Tasks: submit, list, inspect, cancel, logs (plain or followed as server-sent events). SchedulerService only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from ai_platform.core.errors import PlatformError
from ai_platform.core.limits import TASK_WAIT_MAX_S, check_params, check_task_fields
from ai_platform.core.views import (
    ERRORS,
    STREAM_ERRORS,
    MetricsView,
    RunView,
    StatusView,
    TaskRequest,
    TaskView,
    run_matches,
)
from ai_platform.core.wire import INT64_MAX, TASK_STATUSES
from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as pb
from gateway.errors import from_platform, invalid

router = APIRouter(tags=["tasks"])
NOT_FOUND = "TASK_NOT_FOUND"


@router.post("/api/v1/tasks", status_code=201, response_model=TaskView, responses=ERRORS, summary="Submit a task")
async def submit_task(request: Request, body: TaskRequest) -> TaskView:
    upstreams = request.app.state.upstreams
    try:  # before protobuf sees them: a Struct nested too deep fails inside protobuf
        check_params(body.params)
        check_task_fields(body.script, body.input, body.output, body.timeout_s)
    except PlatformError as exc:
        raise from_platform(exc) from None
    message = pb.SubmitTaskRequest(
        name=body.name, script=body.script, input=body.input, output=body.output, timeout_s=body.timeout_s
    )
    try:
        message.params.update(body.params)
    except (ValueError, TypeError) as exc:
        raise invalid(f"params: {exc}") from None
    if body.resources:
        message.resources.CopyFrom(pb.Resources(**body.resources.model_dump()))
    task = await upstreams.call(
        "scheduler", upstreams.scheduler.SubmitTask(message, timeout=upstreams.timeout_s), "DATASET_NOT_FOUND"
    )
    return TaskView.from_pb(task)


@router.get(
    "/api/v1/tasks",
    response_model=list[TaskView],
    responses=ERRORS,
    summary="List tasks, newest first (a JSON array, as in the seed; the next page's token is in the "
    "X-Next-Page-Token header)",
)
async def list_tasks(
    request: Request,
    http_response: Response,
    status: str = Query("", description="comma-separated states"),
    name: str = "",
    owner: str = Query("", description="who submitted them"),
    limit: int = Query(50, ge=1, le=1000),
    page_token: str = "",
) -> list[dict]:
    upstreams = request.app.state.upstreams
    try:
        statuses = [TASK_STATUSES.number(value) for value in filter(None, status.split(","))]
    except PlatformError as exc:
        raise from_platform(exc) from None
    response = await upstreams.call(
        "scheduler",
        upstreams.scheduler.ListTasks(
            pb.ListTasksRequest(statuses=statuses, name=name, page_size=limit, page_token=page_token, owner=owner),
            timeout=upstreams.timeout_s,
        ),
    )
    if response.next_page_token:
        http_response.headers["X-Next-Page-Token"] = response.next_page_token
    return [TaskView.from_pb(t) for t in response.tasks]


@router.get("/api/v1/tasks/{id}", response_model=TaskView, responses={**ERRORS, **STREAM_ERRORS},
            summary="A task, with its progress; with wait_s, answered as it finishes (long polling)")
async def get_task(
    request: Request,
    id: str,
    wait_s: float = Query(0, ge=0, le=TASK_WAIT_MAX_S, allow_inf_nan=False,
                          description="wait up to this many seconds for the task to finish; answered at once when it "
                                      "has, or as it does (a client that waits longer asks again)"),
) -> dict:
    upstreams = request.app.state.upstreams

    async def task() -> Any:
        return await upstreams.call("scheduler", upstreams.scheduler.GetTask(
            pb.GetTaskRequest(id=id, wait_s=wait_s), timeout=wait_s + upstreams.timeout_s), NOT_FOUND)

    if not wait_s:
        return TaskView.from_pb(await task())
    async with request.app.state.streams.hold(request.client):  # counted as a followed stream is
        return TaskView.from_pb(await task())


@router.post(
    "/api/v1/tasks/{id}/cancel",
    response_model=StatusView,
    responses=ERRORS,
    summary="Cancel a task (its processes are stopped)",
)
async def cancel_task(request: Request, id: str) -> dict:
    upstreams = request.app.state.upstreams
    task = await upstreams.call(
        "scheduler", upstreams.scheduler.CancelTask(pb.CancelTaskRequest(id=id), timeout=upstreams.timeout_s), NOT_FOUND
    )
    return {"status": TASK_STATUSES.name(task.status)}


@router.get(
    "/api/v1/tasks/{id}/logs",
    responses={
        **ERRORS, **STREAM_ERRORS,
        200: {
            "content": {"text/plain": {}, "text/event-stream": {}},
            "description": "the log; with follow=true, server-sent events",
        },
    },
    summary="A task's stdout and stderr; follow=true streams it as server-sent events until the task ends",
)
async def task_logs(request: Request, id: str, follow: bool = False,
                    tail_bytes: int = Query(0, ge=0, le=INT64_MAX)) -> Any:
    upstreams = request.app.state.upstreams
    await upstreams.call(
        "scheduler", upstreams.scheduler.GetTask(pb.GetTaskRequest(id=id), timeout=upstreams.timeout_s), NOT_FOUND
    )
    call = upstreams.scheduler.StreamLogs(pb.StreamLogsRequest(id=id, follow=follow, tail_bytes=tail_bytes))
    if not follow:
        data = b""
        async for chunk in call:
            data += chunk.data
        return PlainTextResponse(data.decode(errors="replace"))

    async def events() -> AsyncIterator[str]:
        pending = ""
        try:
            async for chunk in call:
                pending += chunk.data.decode(errors="replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    yield f"data: {line}\n\n"
        except grpc.aio.AioRpcError as exc:
            yield f"event: error\ndata: {json.dumps({'code': exc.code().name, 'message': exc.details()})}\n\n"
            return
        finally:
            call.cancel()
        if pending:
            yield f"data: {pending}\n\n"
        task = await upstreams.scheduler.GetTask(pb.GetTaskRequest(id=id), timeout=upstreams.timeout_s)
        yield f"event: end\ndata: {json.dumps({'status': TASK_STATUSES.name(task.status)})}\n\n"

    return StreamingResponse(request.app.state.streams.follow(request.client, events()),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get(
    "/api/v1/tasks/{id}/metrics",
    response_model=MetricsView,
    responses={
        **ERRORS, **STREAM_ERRORS,
        200: {"content": {"application/json": {}, "text/event-stream": {}},
              "description": "the series; with follow=true, server-sent events of new points until the task ends"},
    },
    summary="A task's metric series (sdk.log_metrics); follow=true streams new points as server-sent events",
)
async def task_metrics(request: Request, id: str, follow: bool = False) -> Any:
    upstreams = request.app.state.upstreams
    await upstreams.call(
        "scheduler", upstreams.scheduler.GetTask(pb.GetTaskRequest(id=id), timeout=upstreams.timeout_s), NOT_FOUND
    )
    call = upstreams.scheduler.StreamMetrics(pb.StreamMetricsRequest(id=id, follow=follow))
    if not follow:
        return MetricsView.from_pb([message async for message in call])

    async def events() -> AsyncIterator[str]:
        try:
            async for message in call:
                points = [[p.key, p.step, p.value, p.time] for p in message.points]
                yield f"data: {json.dumps({'points': points, 'dropped': message.dropped})}\n\n"
        except grpc.aio.AioRpcError as exc:
            yield f"event: error\ndata: {json.dumps({'code': exc.code().name, 'message': exc.details()})}\n\n"
            return
        finally:
            call.cancel()
        task = await upstreams.scheduler.GetTask(pb.GetTaskRequest(id=id), timeout=upstreams.timeout_s)
        yield f"event: end\ndata: {json.dumps({'status': TASK_STATUSES.name(task.status)})}\n\n"

    return StreamingResponse(request.app.state.streams.follow(request.client, events()),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/api/v1/runs", response_model=list[RunView], responses=ERRORS,
            summary="Runs side by side: params, final metrics and metric series of several tasks")
async def compare_runs(
    request: Request,
    ids: str = Query("", description="comma-separated task ids; or choose by name_prefix and/or script"),
    name_prefix: str = "",
    script: str = "",
    limit: int = Query(20, ge=1, le=100, description="most runs when choosing by name or script (newest first)"),
) -> list[RunView]:
    upstreams = request.app.state.upstreams
    wanted = [i for i in ids.split(",") if i]
    if wanted:
        if len(wanted) > 100:
            raise invalid(f"at most 100 ids, got {len(wanted)}")
        tasks = await asyncio.gather(*(upstreams.call("scheduler", upstreams.scheduler.GetTask(
            pb.GetTaskRequest(id=i), timeout=upstreams.timeout_s), NOT_FOUND) for i in wanted))
    else:
        listing = await upstreams.call("scheduler", upstreams.scheduler.ListTasks(
            pb.ListTasksRequest(page_size=1000), timeout=upstreams.timeout_s))
        tasks = [t for t in listing.tasks if run_matches(t, name_prefix, script)][:limit]

    async def series(task: pb.Task) -> list[pb.MetricPoints]:
        call = upstreams.scheduler.StreamMetrics(pb.StreamMetricsRequest(id=task.id), timeout=upstreams.timeout_s)
        return await upstreams.call("scheduler", _collect(call), NOT_FOUND)

    metrics = await asyncio.gather(*(series(t) for t in tasks))
    return [RunView.from_pb(t, m) for t, m in zip(tasks, metrics, strict=True)]


async def _collect(call: Any) -> list[pb.MetricPoints]:
    return [message async for message in call]
