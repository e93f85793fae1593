"""Protobuf values as plain JSON: what both the Python client and the REST gateway hand to people."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp


def plain_json(value: Any) -> Any:
    """Struct numbers are doubles; give whole numbers back as ints so ``range(params["epochs"])`` works."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def iso(ts: Timestamp) -> str:
    return ts.ToDatetime(dt.UTC).isoformat().replace("+00:00", "Z")
