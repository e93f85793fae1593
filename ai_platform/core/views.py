"""The JSON views of datasets, models, versions and tasks, declared once.

The REST gateway returns them (and its OpenAPI document describes them), the Python client hands them back as
dicts, and the CLI prints them. Each view is built from the services' protobuf messages by its ``from_pb``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from ai_platform.core.wire import INT64_MAX, TASK_STATUSES, struct_value
from ai_platform.protos.aiplatform.v1 import scheduler_pb2, storage_pb2

MODEL_COLUMNS = ["signature", "params", "metrics", "framework", "lineage"]


def iso(ts: Timestamp) -> str:
    return ts.ToDatetime(dt.UTC).isoformat().replace("+00:00", "Z")


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class ErrorDetail(BaseModel):
    code: str = Field(examples=["DATASET_NOT_FOUND"])
    message: str = Field(examples=["dataset 'mnist_clean' does not exist"])


class ErrorBody(BaseModel):
    error: ErrorDetail


class AliasMoveView(BaseModel):
    moved_by: str
    moved_at: str


class TableView(BaseModel):
    """A dataset or model table at one version."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    path: str = Field(description="Lance URI of the table")
    schema_: dict[str, str] = Field(alias="schema", description="column name -> Arrow type")
    num_rows: int
    size_bytes: int
    version: int
    latest_version: int
    num_versions: int
    created_at: str
    updated_at: str
    metadata: dict[str, str] = {}
    aliases: dict[str, int] = Field({}, description="alias -> version, e.g. {\"production\": 3}")
    created_by: str = Field("", description="who wrote this version (a person, or 'OWNER (task ID)')")
    alias_moves: dict[str, AliasMoveView] = Field({}, description="alias -> who last moved it, and when")

    @classmethod
    def fields_from_pb(cls, info: storage_pb2.TableInfo) -> dict[str, Any]:
        return {"id": info.name, "path": info.uri, "schema": {c.name: c.type for c in info.schema},
                "num_rows": info.num_rows, "size_bytes": info.size_bytes, "version": info.version,
                "latest_version": info.latest_version, "num_versions": info.num_versions,
                "created_at": iso(info.created_at), "updated_at": iso(info.updated_at),
                "metadata": dict(info.metadata), "aliases": dict(info.aliases), "created_by": info.created_by,
                "alias_moves": {alias: AliasMoveView(moved_by=move.moved_by, moved_at=iso(move.moved_at))
                                for alias, move in info.alias_moves.items()}}

    @classmethod
    def from_pb(cls, info: storage_pb2.TableInfo) -> TableView:
        return cls(**cls.fields_from_pb(info))


class TrainedModel(BaseModel):
    """A model version trained from a dataset version (from the model's lineage)."""

    model: str
    version: int
    dataset_version: int
    task_id: str = ""


class DatasetView(TableView):
    """A dataset; described alone, with the models whose newest version was trained from it."""

    models: list[TrainedModel] = []


class ModelView(TableView):
    """A model table at one version, with what its newest row says about the model."""

    metrics: dict[str, Any] = {}
    params: dict[str, Any] = {}
    signature: dict[str, Any] = {}
    framework: str = ""
    labels: list[str] | None = None
    lineage: dict[str, Any] = Field({}, description="what the version was trained from: input (dataset name and "
                                                    "version), task_id, script, script_sha256, params")

    @staticmethod
    def columns_of(info: storage_pb2.TableInfo) -> list[str]:
        """The model columns this table has (what to preview to fill the view)."""
        present = {c.name for c in info.schema}
        return [c for c in MODEL_COLUMNS if c in present]

    @classmethod
    def from_pb(cls, info: storage_pb2.TableInfo, rows_json: str = "[]") -> ModelView:
        """``rows_json``: the model row(s) previewed as JSON (``PreviewRows`` of :meth:`columns_of`)."""
        rows = json.loads(rows_json)
        row = rows[-1] if rows else {}
        signature = _json_object(row.get("signature"))
        labels = (signature.get("outputs") or [{}])[0].get("labels")
        return cls(**cls.fields_from_pb(info), metrics=_json_object(row.get("metrics")),
                   params=_json_object(row.get("params")), signature=signature,
                   framework=row.get("framework") or "", labels=labels, lineage=_json_object(row.get("lineage")))


class VersionView(BaseModel):
    version: int
    timestamp: str
    metadata: dict[str, str] = {}
    created_by: str = Field("", description="who wrote it ('' for versions written before it was kept)")

    @classmethod
    def from_pb(cls, version: storage_pb2.VersionInfo) -> VersionView:
        return cls(version=version.version, timestamp=iso(version.timestamp), metadata=dict(version.metadata),
                   created_by=version.created_by)


class RowsView(BaseModel):
    rows: list[dict[str, Any]]
    total_rows: int
    offset: int
    limit: int


class GarbageRequest(BaseModel):
    """What a cleanup of one table may remove."""

    model_config = ConfigDict(extra="forbid")

    keep_versions: int = Field(0, ge=0, le=INT64_MAX, description="keep the newest N versions; 0 keeps them all")
    min_age_s: int = Field(3600, ge=0, le=INT64_MAX, description=(
        "unreferenced files younger than this are kept (a write in progress made them); 0 removes them all, "
        "safe only while nothing writes to the table"))
    dry_run: bool = Field(False, description="say what would be removed, remove nothing")


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=INT64_MAX, description="the version the alias points to")


class GarbageView(BaseModel):
    removed_versions: list[int]
    removed_files: int
    removed_bytes: int
    kept_unreferenced_files: int
    dry_run: bool

    @classmethod
    def from_pb(cls, response: storage_pb2.CollectGarbageResponse) -> GarbageView:
        return cls(removed_versions=list(response.removed_versions), removed_files=response.removed_files,
                   removed_bytes=response.removed_bytes, kept_unreferenced_files=response.kept_unreferenced_files,
                   dry_run=response.dry_run)


class StatusView(BaseModel):
    status: str = Field(examples=["deleted"])


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0, ge=0, allow_inf_nan=False)
    num_gpus: float = Field(0, ge=0, allow_inf_nan=False)
    memory_mb: int = Field(0, ge=0, le=INT64_MAX)
    custom: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="Ray custom resources (kinds of node), e.g. {\"pool\": 1}",
        examples=[{"pool": 1}])


class TaskRequest(BaseModel):
    """A task to run; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["mnist_clean"])
    script: str = Field(examples=["mnist/mnist_clean.py"])
    input: str = Field("", examples=["download"])
    output: str = Field("", examples=["datasets/mnist_clean"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"limit": 1000}])
    resources: Resources | None = None
    timeout_s: float = Field(0, ge=0, allow_inf_nan=False)


class ProgressView(BaseModel):
    fraction: float
    message: str = ""
    metrics: dict[str, Any] = {}


class MetricsView(BaseModel):
    """A task's metric series, each ``[[step, value, time], ...]`` sorted by step (points may arrive in any order)."""

    series: dict[str, list[tuple[int, float, float]]] = Field(examples=[{"loss": [[0, 2.3, 1764300000.0]]}])
    dropped: int = Field(0, description="points refused because the task was over its cap (100,000 points, "
                                        "100 series)")

    @classmethod
    def from_pb(cls, messages: list[scheduler_pb2.MetricPoints]) -> MetricsView:
        series: dict[str, list[tuple[int, float, float]]] = {}
        for message in messages:
            for p in message.points:
                series.setdefault(p.key, []).append((p.step, p.value, p.time))
        for points in series.values():
            points.sort(key=lambda point: point[0])
        return cls(series=series, dropped=messages[-1].dropped if messages else 0)


class RunView(BaseModel):
    """A task as a run to compare with others: its params, the last value of each metric series (by step), and
    the series themselves."""

    id: str
    name: str
    script: str
    status: str
    params: dict[str, Any] = Field(description="what the run ran with: the script's defaults included when it said "
                                               "them (sdk.log_params), else the params given")
    given: dict[str, Any] = Field({}, description="the params the run was submitted with")
    result: Any = None
    final: dict[str, float]
    series: dict[str, list[tuple[int, float, float]]]

    @classmethod
    def from_pb(cls, task: scheduler_pb2.Task, metrics: list[scheduler_pb2.MetricPoints]) -> RunView:
        series = MetricsView.from_pb(metrics).series
        return cls(id=task.id, name=task.name, script=task.script, status=TASK_STATUSES.name(task.status),
                   params=struct_value(task.effective_params if task.HasField("effective_params") else task.params),
                   given=struct_value(task.params),
                   result=struct_value(task.result) if task.HasField("result") else None,
                   final={key: points[-1][1] for key, points in series.items()}, series=series)


def run_matches(task: scheduler_pb2.Task, name_prefix: str, script: str) -> bool:
    """Whether a task belongs to a comparison chosen by name prefix and script."""
    return task.name.startswith(name_prefix) and (not script or task.script == script)


class TaskView(BaseModel):
    id: str
    name: str
    script: str
    input: str
    output: str
    params: dict[str, Any]
    status: str = Field(examples=["completed"])
    backend: str
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    result: Any = None
    error: str | None = Field(None, description="'<type>: <message>' when the task failed")
    error_type: str | None = None
    progress: ProgressView | None = None
    resources: Resources
    timeout_s: float
    resolved_input: str
    resolved_output: str
    input_table: str = Field("", description="a lake input, e.g. datasets/mnist_clean")
    input_version: int = Field(0, description="the version of input_table the task reads (pinned when the task starts)")
    owner: str = Field("", description="who submitted it")
    effective_params: dict[str, Any] | None = Field(None, description="what the script ran with, its defaults "
                                                                      "included (sdk.log_params)")

    @classmethod
    def from_pb(cls, task: scheduler_pb2.Task) -> TaskView:
        failed = task.HasField("error")
        progress = None
        if task.HasField("progress"):
            progress = ProgressView(fraction=task.progress.fraction, message=task.progress.message,
                                    metrics=struct_value(task.progress.metrics))
        return cls(
            id=task.id, name=task.name, script=task.script, input=task.input, output=task.output,
            params=struct_value(task.params), status=TASK_STATUSES.name(task.status), backend=task.backend,
            created_at=iso(task.created_at),
            started_at=iso(task.started_at) if task.HasField("started_at") else None,
            completed_at=iso(task.completed_at) if task.HasField("completed_at") else None,
            result=struct_value(task.result) if task.HasField("result") else None,
            error=f"{task.error.type}: {task.error.message}" if failed else None,
            error_type=task.error.type if failed else None,
            progress=progress,
            resources=Resources(num_cpus=task.resources.num_cpus, num_gpus=task.resources.num_gpus,
                                memory_mb=task.resources.memory_mb, custom=dict(task.resources.custom)),
            timeout_s=task.timeout_s, resolved_input=task.resolved_input, resolved_output=task.resolved_output,
            input_table=task.input_table, input_version=task.input_version, owner=task.owner,
            effective_params=struct_value(task.effective_params) if task.HasField("effective_params") else None,
        )


class PredictView(BaseModel):
    prediction: int
    label: str | None = None
    confidence: float
    probabilities: list[float]
    model_version: str


class HealthView(BaseModel):
    status: str = Field(examples=["ok"])
    services: dict[str, dict[str, Any]]


def as_dict(view: BaseModel) -> dict[str, Any]:
    """A view as the plain dict the client and the CLI hand out (the same keys as the REST body)."""
    return view.model_dump(by_alias=True)


class ProtocolErrorBody(BaseModel):
    """The Open Inference Protocol's error body, on the /v2 routes."""

    error: str = Field(examples=["model 'mnist_cnn' does not exist"])


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 409, 413, 503, 507)}
PROTOCOL_ERRORS = {status: {"model": ProtocolErrorBody} for status in (400, 401, 404, 409, 413, 503, 507)}
STREAM_ERRORS = {429: {"model": ErrorBody, "description": "the client holds too many followed streams and long polls "
                                                          "already"}}


class WhoAmIView(BaseModel):
    subject: str = Field(examples=["alice"])
    role: str = Field(examples=["editor"], description="viewer | editor | admin | task")
    task_id: str = ""
    expires_at: str | None = None
    open: bool = Field(False, description="the platform checks no credentials (neither AIP_TOKEN nor AIP_AUTH_KEY)")


class TokenRequest(BaseModel):
    """A token for a person; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["alice"])
    role: str = Field(examples=["editor"], description="viewer | editor | admin")
    ttl_s: float = Field(30 * 24 * 3600, gt=0, le=366 * 24 * 3600, allow_inf_nan=False)


class TokenView(BaseModel):
    token: str
    identity: WhoAmIView


# -- pipelines ---------------------------------------------------------------------------------------------------------

class StepRunView(BaseModel):
    status: str = Field(description="pending | running | completed | cached | failed | cancelled | skipped")
    task_id: str = Field("", description="the task that ran the step (empty when cached)")
    cached_from: str = Field("", description="the earlier task whose output a cached step reuses")
    output: str = ""
    output_version: int = Field(0, description="the version of the output that the dependents read")
    inputs: dict[str, int] = Field(default_factory=dict, description="each lake input as pinned for this run")
    cache_key: str = ""
    message: str = ""
    result: Any = None


class PipelineRunView(BaseModel):
    id: str
    pipeline: str
    revision: int
    status: str = Field(description="running | completed | failed | cancelled")
    trigger: str = Field(description='"manual", "dataset NAME@VERSION" or "schedule CRON"')
    steps: dict[str, StepRunView]
    order: list[str]
    owner: str = ""
    created_at: str | None = None
    completed_at: str | None = None
    message: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    no_cache: bool = False

    @classmethod
    def from_pb(cls, run: Any) -> PipelineRunView:
        steps = {name: StepRunView(status=s.status, task_id=s.task_id, cached_from=s.cached_from, output=s.output,
                                   output_version=s.output_version, inputs=dict(s.inputs), cache_key=s.cache_key,
                                   message=s.message, result=struct_value(s.result) if s.HasField("result") else None)
                 for name, s in run.steps.items()}
        return cls(id=run.id, pipeline=run.pipeline, revision=run.revision, status=run.status, trigger=run.trigger,
                   steps=steps, order=list(run.order), owner=run.owner, message=run.message,
                   created_at=iso(run.created_at) if run.HasField("created_at") else None,
                   completed_at=iso(run.completed_at) if run.HasField("completed_at") else None,
                   params=struct_value(run.params) if run.HasField("params") else {}, no_cache=run.no_cache)


class PipelineView(BaseModel):
    name: str
    definition: dict[str, Any]
    revision: int
    owner: str = ""
    updated_at: str | None = None
    last_run: PipelineRunView | None = None

    @classmethod
    def from_pb(cls, pipeline: Any) -> PipelineView:
        return cls(name=pipeline.name, definition=struct_value(pipeline.definition), revision=pipeline.revision,
                   owner=pipeline.owner, updated_at=iso(pipeline.updated_at) if pipeline.HasField("updated_at")
                   else None, last_run=PipelineRunView.from_pb(pipeline.last_run) if pipeline.HasField("last_run")
                   else None)


class PipelineRunRequest(BaseModel):
    """Start a run; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per step, over the definition's",
                                              examples=[{"train": {"epochs": 1}}])
    cache: bool = Field(True, description="false: run every step even when an exact earlier result exists")
