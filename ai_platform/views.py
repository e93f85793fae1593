"""Plain JSON views of the services' messages: what the REST gateway returns and the Python client hands back."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from ai_platform.protojson import iso, plain_json
from ai_platform.protos.aiplatform.v1 import scheduler_pb2, storage_pb2

MODEL_COLUMNS = ["signature", "params", "metrics", "framework"]


def table_view(info: storage_pb2.TableInfo) -> dict[str, Any]:
    return {"id": info.name, "path": info.uri, "schema": {c.name: c.type for c in info.schema},
            "num_rows": info.num_rows, "size_bytes": info.size_bytes, "version": info.version,
            "latest_version": info.latest_version, "num_versions": info.num_versions,
            "created_at": iso(info.created_at), "updated_at": iso(info.updated_at), "metadata": dict(info.metadata)}


def version_view(version: storage_pb2.VersionInfo) -> dict[str, Any]:
    return {"version": version.version, "timestamp": iso(version.timestamp), "metadata": dict(version.metadata)}


def model_fields(rows_json: str) -> dict[str, Any]:
    """metrics, params, signature, framework and labels from a model row previewed as JSON."""
    rows = json.loads(rows_json)
    row = rows[-1] if rows else {}
    fields: dict[str, Any] = {}
    for column in ("signature", "params", "metrics"):
        try:
            fields[column] = json.loads(row.get(column) or "{}")
        except ValueError:
            fields[column] = {}
    fields["framework"] = row.get("framework") or ""
    fields["labels"] = (fields["signature"].get("outputs") or [{}])[0].get("labels")
    return fields


def task_view(task: scheduler_pb2.Task) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": task.id, "name": task.name, "script": task.script, "input": task.input, "output": task.output,
        "params": plain_json(json_format.MessageToDict(task.params)),
        "status": scheduler_pb2.TaskStatus.Name(task.status).lower(), "backend": task.backend,
        "created_at": iso(task.created_at),
        "started_at": iso(task.started_at) if task.HasField("started_at") else None,
        "completed_at": iso(task.completed_at) if task.HasField("completed_at") else None,
        "result": plain_json(json_format.MessageToDict(task.result)) if task.HasField("result") else None,
        "error": f"{task.error.type}: {task.error.message}" if task.HasField("error") else None,
        "error_type": task.error.type if task.HasField("error") else None,
        "progress": None,
        "resources": {"num_cpus": task.resources.num_cpus, "num_gpus": task.resources.num_gpus,
                      "memory_mb": task.resources.memory_mb},
        "timeout_s": task.timeout_s, "resolved_input": task.resolved_input, "resolved_output": task.resolved_output,
    }
    if task.HasField("progress"):
        view["progress"] = {"fraction": task.progress.fraction, "message": task.progress.message,
                            "metrics": plain_json(json_format.MessageToDict(task.progress.metrics))}
    return view
