"""The documented limits on what a request may carry, checked where a request enters (the gateway and the services
alike) so that something too big or too deep is refused up front, naming the limit, instead of failing later.

| what | limit |
|---|---|
| a task's params | 256 KiB as JSON, nested at most 32 deep |
| a task's script path | 1,024 characters, 255 bytes per path component |
| a task's input or output | 4,096 characters |
| names (datasets, models, tasks, aliases) | 128 characters (``ai_platform.core.names``) |
| a filter | 10,000 characters, 1,000 AND/OR/NOT, parentheses 64 deep (``storage_svc.filters``) |
| a task's timeout_s | 30 days |
"""

from __future__ import annotations

import json
import os
from typing import Any

from ai_platform.core.errors import InvalidArgument

MAX_PARAMS_BYTES = 256 * 1024
MAX_PARAMS_DEPTH = 32
MAX_SCRIPT_CHARS = 1024
MAX_PATH_COMPONENT_BYTES = 255  # what Linux filesystems take ("File name too long" past it)
MAX_REF_CHARS = 4096
MAX_TIMEOUT_S = 30 * 24 * 3600
TASK_WAIT_MAX_S = 60.0  # GetTask's long polling (gRPC wait_s, REST ?wait_s=): a client that waits longer asks again


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_PARAMS_DEPTH:  # deep enough to refuse: no need to walk further
            return depth
        pending.extend((child, depth + 1) for child in children)
    return deepest


def check_params(params: Any) -> None:
    """InvalidArgument naming the limit when a task's params are too big or too deep."""
    depth = json_depth(params)
    if depth > MAX_PARAMS_DEPTH:
        raise InvalidArgument(f"params nest deeper than {MAX_PARAMS_DEPTH} levels (the limit)")
    size = len(json.dumps(params, separators=(",", ":")))
    if size > MAX_PARAMS_BYTES:
        raise InvalidArgument(f"params are {size:,} bytes as JSON; the limit is {MAX_PARAMS_BYTES:,} "
                              f"(put data in the lake and pass its name)")


def check_task_fields(script: str, input: str, output: str, timeout_s: float) -> None:
    """InvalidArgument naming the limit for a script path, input, output or timeout out of bounds."""
    if len(script) > MAX_SCRIPT_CHARS:
        raise InvalidArgument(f"script is {len(script):,} characters long; the limit is {MAX_SCRIPT_CHARS:,}")
    for part in script.split("/"):
        if len(os.fsencode(part)) > MAX_PATH_COMPONENT_BYTES:
            raise InvalidArgument(f"script has a path component of {len(os.fsencode(part))} bytes; the limit is "
                                  f"{MAX_PATH_COMPONENT_BYTES}")
    for what, ref in (("input", input), ("output", output)):
        if len(ref) > MAX_REF_CHARS:
            raise InvalidArgument(f"{what} is {len(ref):,} characters long; the limit is {MAX_REF_CHARS:,}")
    if timeout_s > MAX_TIMEOUT_S:
        raise InvalidArgument(f"timeout_s {timeout_s:g} is over the limit of {MAX_TIMEOUT_S:,} s (30 days)")
