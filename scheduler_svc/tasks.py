"""The task model: what a task is, its states, and how it ended. Plain values, no protobuf."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass
class Resources:
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    memory_mb: int = 0
    custom: dict[str, float] = field(default_factory=dict)  # Ray custom resources, e.g. {"pool": 1}


@dataclass
class Task:
    id: str
    name: str
    script: str
    input: str
    output: str
    resolved_input: str
    resolved_output: str
    params: dict[str, Any]
    resources: Resources
    timeout_s: float
    backend: str
    status: TaskStatus = TaskStatus.PENDING
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    result: Any = None
    error_type: str = ""
    error_message: str = ""
    progress: dict[str, Any] | None = None
    pid: int | None = None  # process group of a local task
    job_id: str = ""  # Ray job of a ray task
    log_dropped: int = 0  # bytes of log dropped from the front to keep the cap
    metrics_dropped: int = 0  # metric points refused because the task was over its cap
    input_table: str = ""  # a lake input ("datasets/NAME"), pinned at input_version when the task was submitted
    input_version: int = 0
    owner: str = ""  # who submitted it (the credential's subject)
    output_table: str = ""  # a lake output ("datasets/NAME"): what the task's credential may write
    effective_params: dict[str, Any] | None = None  # what the script ran with, defaults included (sdk.log_params)


@dataclass
class MetricPoint:
    key: str
    step: int
    value: float
    time: float


@dataclass
class Outcome:
    """How a run ended, as a backend saw it."""

    status: TaskStatus
    result: Any = None
    error_type: str = ""
    error_message: str = ""
    ended_at: float | None = None  # when the backend itself saw the end (Ray's clock), else now
