"""Tasks: submit, list, inspect, cancel, logs (plain or followed as server-sent events). SchedulerService only."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as pb
from ai_platform.views import task_view
from gateway.errors import invalid
from gateway.schemas import ERRORS, StatusView, TaskRequest, TaskView

router = APIRouter(tags=["tasks"])
NOT_FOUND = "TASK_NOT_FOUND"


@router.post("/api/v1/tasks", status_code=201, response_model=TaskView, responses=ERRORS, summary="Submit a task")
async def submit_task(request: Request, body: TaskRequest) -> dict:
    backends = request.app.state.backends
    message = pb.SubmitTaskRequest(
        name=body.name, script=body.script, input=body.input, output=body.output, timeout_s=body.timeout_s
    )
    try:
        message.params.update(body.params)
    except (ValueError, TypeError) as exc:
        raise invalid(f"params: {exc}") from None
    if body.resources:
        message.resources.CopyFrom(pb.Resources(**body.resources.model_dump()))
    task = await backends.call(
        "scheduler", backends.scheduler.SubmitTask(message, timeout=backends.timeout_s), "DATASET_NOT_FOUND"
    )
    return task_view(task)


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
    limit: int = Query(50, ge=1, le=1000),
    page_token: str = "",
) -> list[dict]:
    backends = request.app.state.backends
    statuses = []
    for value in filter(None, status.split(",")):
        if value.upper() not in pb.TaskStatus.keys() or value.upper() == "TASK_STATUS_UNSPECIFIED":
            raise invalid(f"unknown status {value!r}: use pending, running, completed, failed or cancelled")
        statuses.append(pb.TaskStatus.Value(value.upper()))
    response = await backends.call(
        "scheduler",
        backends.scheduler.ListTasks(
            pb.ListTasksRequest(statuses=statuses, name=name, page_size=limit, page_token=page_token),
            timeout=backends.timeout_s,
        ),
    )
    if response.next_page_token:
        http_response.headers["X-Next-Page-Token"] = response.next_page_token
    return [task_view(t) for t in response.tasks]


@router.get("/api/v1/tasks/{id}", response_model=TaskView, responses=ERRORS, summary="A task, with its progress")
async def get_task(request: Request, id: str) -> dict:
    backends = request.app.state.backends
    task = await backends.call(
        "scheduler", backends.scheduler.GetTask(pb.GetTaskRequest(id=id), timeout=backends.timeout_s), NOT_FOUND
    )
    return task_view(task)


@router.post(
    "/api/v1/tasks/{id}/cancel",
    response_model=StatusView,
    responses=ERRORS,
    summary="Cancel a task (its processes are stopped)",
)
async def cancel_task(request: Request, id: str) -> dict:
    backends = request.app.state.backends
    task = await backends.call(
        "scheduler", backends.scheduler.CancelTask(pb.CancelTaskRequest(id=id), timeout=backends.timeout_s), NOT_FOUND
    )
    return {"status": pb.TaskStatus.Name(task.status).lower()}


@router.get(
    "/api/v1/tasks/{id}/logs",
    responses={
        **ERRORS,
        200: {
            "content": {"text/plain": {}, "text/event-stream": {}},
            "description": "the log; with follow=true, server-sent events",
        },
    },
    summary="A task's stdout and stderr; follow=true streams it as server-sent events until the task ends",
)
async def task_logs(request: Request, id: str, follow: bool = False, tail_bytes: int = Query(0, ge=0)) -> Any:
    backends = request.app.state.backends
    await backends.call(
        "scheduler", backends.scheduler.GetTask(pb.GetTaskRequest(id=id), timeout=backends.timeout_s), NOT_FOUND
    )
    call = backends.scheduler.StreamLogs(pb.StreamLogsRequest(id=id, follow=follow, tail_bytes=tail_bytes))
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
        task = await backends.scheduler.GetTask(pb.GetTaskRequest(id=id), timeout=backends.timeout_s)
        yield f"event: end\ndata: {json.dumps({'status': pb.TaskStatus.Name(task.status).lower()})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
