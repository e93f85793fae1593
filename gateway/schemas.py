"""Request and response bodies, so /docs describes the API exactly."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(examples=["DATASET_NOT_FOUND"])
    message: str = Field(examples=["dataset 'mnist_clean' does not exist"])


class ErrorBody(BaseModel):
    error: ErrorDetail


class TableView(BaseModel):
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

    model_config = {"populate_by_name": True}


class ModelView(TableView):
    metrics: dict[str, Any] = {}
    params: dict[str, Any] = {}
    signature: dict[str, Any] = {}
    framework: str = ""
    labels: list[str] | None = None


class VersionView(BaseModel):
    version: int
    timestamp: str
    metadata: dict[str, str] = {}


class RowsView(BaseModel):
    rows: list[dict[str, Any]]
    total_rows: int
    offset: int
    limit: int


class StatusView(BaseModel):
    status: str = Field(examples=["deleted"])


class Resources(BaseModel):
    num_cpus: float = Field(0, ge=0)
    num_gpus: float = Field(0, ge=0)
    memory_mb: int = Field(0, ge=0)


class TaskRequest(BaseModel):
    name: str = Field(examples=["mnist_clean"])
    script: str = Field(examples=["mnist/mnist_clean.py"])
    input: str = Field("", examples=["download"])
    output: str = Field("", examples=["datasets/mnist_clean"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"limit": 1000}])
    resources: Resources | None = None
    timeout_s: float = Field(0, ge=0)


class ProgressView(BaseModel):
    fraction: float
    message: str = ""
    metrics: dict[str, Any] = {}


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


class PredictView(BaseModel):
    prediction: int
    label: str | None = None
    confidence: float
    probabilities: list[float]
    model_version: str


class HealthView(BaseModel):
    status: str = Field(examples=["ok"])
    services: dict[str, dict[str, Any]]


ERRORS = {status: {"model": ErrorBody} for status in (400, 404, 409, 413, 503)}
