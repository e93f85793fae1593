"""Pipelines: define, list, run, follow and cancel runs. PipelineService (on the scheduler) only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from ai_platform.core.views import ERRORS, PipelineRunRequest, PipelineRunView, PipelineView
from ai_platform.protos.aiplatform.v1 import pipelines_pb2 as pb
from gateway.errors import ApiError, invalid

router = APIRouter(tags=["pipelines"])
NOT_FOUND = "PIPELINE_NOT_FOUND"
DEFINITION_EXAMPLE = {"steps": [
    {"name": "double", "script": "scripts/double.py", "input": "datasets/src", "output": "datasets/dbl",
     "params": {}},
    {"name": "total", "script": "scripts/total.py", "input": "steps.double.output", "output": "datasets/sum",
     "params": {}}]}


def _definition(body: Any) -> pb.ApplyPipelineRequest:
    if not isinstance(body, dict):
        raise invalid("the body must be a pipeline definition: a JSON object with steps")
    message = pb.ApplyPipelineRequest()
    try:
        message.definition.update(body)
    except (ValueError, TypeError) as exc:
        raise invalid(f"definition: {exc}") from None
    return message


@router.put("/api/v1/pipelines/{name}", response_model=PipelineView, responses=ERRORS,
            summary="Define a pipeline, or replace its definition (a new revision)")
async def apply_pipeline(request: Request, name: str,
                         body: Annotated[dict[str, Any], Body(examples=[DEFINITION_EXAMPLE])]) -> PipelineView:
    upstreams = request.app.state.upstreams
    message = _definition(body)
    message.name = name
    pipeline = await upstreams.call("scheduler", upstreams.pipelines.ApplyPipeline(message,
                                                                                   timeout=upstreams.timeout_s))
    return PipelineView.from_pb(pipeline)


@router.get("/api/v1/pipelines", response_model=list[PipelineView], responses=ERRORS, summary="List pipelines")
async def list_pipelines(request: Request) -> list[PipelineView]:
    upstreams = request.app.state.upstreams
    response = await upstreams.call("scheduler", upstreams.pipelines.ListPipelines(pb.ListPipelinesRequest(),
                                                                                   timeout=upstreams.timeout_s))
    return [PipelineView.from_pb(p) for p in response.pipelines]


@router.get("/api/v1/pipelines/{name}", response_model=PipelineView, responses=ERRORS,
            summary="A pipeline's definition and its last run")
async def get_pipeline(request: Request, name: str) -> PipelineView:
    upstreams = request.app.state.upstreams
    pipeline = await upstreams.call("scheduler", upstreams.pipelines.GetPipeline(
        pb.GetPipelineRequest(name=name), timeout=upstreams.timeout_s), NOT_FOUND)
    return PipelineView.from_pb(pipeline)


@router.post("/api/v1/pipelines/{name}/runs", status_code=201, response_model=PipelineRunView, responses=ERRORS,
             summary="Run a pipeline now (its lake inputs pinned at this moment)")
async def run_pipeline(request: Request, name: str, body: PipelineRunRequest | None = None) -> PipelineRunView:
    upstreams = request.app.state.upstreams
    body = body or PipelineRunRequest()
    message = pb.RunPipelineRequest(name=name, no_cache=not body.cache)
    if body.params:
        try:
            message.params.update(body.params)
        except (ValueError, TypeError) as exc:
            raise invalid(f"params: {exc}") from None
    run = await upstreams.call("scheduler", upstreams.pipelines.RunPipeline(message, timeout=upstreams.timeout_s),
                               NOT_FOUND)
    return PipelineRunView.from_pb(run)


@router.get("/api/v1/pipelines/{name}/runs", response_model=list[PipelineRunView], responses=ERRORS,
            summary="A pipeline's runs, newest first")
async def list_runs(request: Request, name: str, limit: int = Query(50, ge=1, le=1000)) -> list[PipelineRunView]:
    upstreams = request.app.state.upstreams
    response = await upstreams.call("scheduler", upstreams.pipelines.ListPipelineRuns(
        pb.ListPipelineRunsRequest(name=name, page_size=limit), timeout=upstreams.timeout_s), NOT_FOUND)
    return [PipelineRunView.from_pb(r) for r in response.runs]


async def _run_of(request: Request, name: str, run_id: str, cancel: bool = False) -> PipelineRunView:
    upstreams = request.app.state.upstreams
    call = upstreams.pipelines.CancelPipelineRun if cancel else upstreams.pipelines.GetPipelineRun
    if not cancel:
        run = await upstreams.call("scheduler", call(pb.GetPipelineRunRequest(id=run_id),
                                                     timeout=upstreams.timeout_s), "PIPELINE_RUN_NOT_FOUND")
        if run.pipeline != name:
            raise ApiError(404, "PIPELINE_RUN_NOT_FOUND", f"pipeline '{name}' has no run '{run_id}'")
        return PipelineRunView.from_pb(run)
    await _run_of(request, name, run_id)  # 404 for another pipeline's run, before anything is cancelled
    run = await upstreams.call("scheduler", call(pb.GetPipelineRunRequest(id=run_id), timeout=upstreams.timeout_s),
                               "PIPELINE_RUN_NOT_FOUND")
    return PipelineRunView.from_pb(run)


@router.get("/api/v1/pipelines/{name}/runs/{run_id}", response_model=PipelineRunView, responses=ERRORS,
            summary="One run: each step's status, task, cache hit and output version")
async def get_run(request: Request, name: str, run_id: str) -> PipelineRunView:
    return await _run_of(request, name, run_id)


@router.post("/api/v1/pipelines/{name}/runs/{run_id}/cancel", response_model=PipelineRunView, responses=ERRORS,
             summary="Cancel a run: its running steps are cancelled, the waiting ones skipped")
async def cancel_run(request: Request, name: str, run_id: str) -> PipelineRunView:
    return await _run_of(request, name, run_id, cancel=True)
