"""The side channel from a running task to the scheduler: JSON lines, never parsed out of stdout.

Locally it is a pipe (``AIP_REPORT_FD``); on Ray it is a file (``AIP_REPORT_PATH``) that the
scheduler tails. Kept free of heavy imports: it is on every task's start-up path.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from ai_platform.core.settings import TaskSettings

_lock = threading.Lock()
_stream = None


def _channel():  # noqa: ANN202 - a text file or None
    global _stream
    if _stream is None:
        settings = TaskSettings.from_env()
        if settings.report_fd >= 0:
            _stream = os.fdopen(settings.report_fd, "w", buffering=1, closefd=False)
        elif settings.report_path:
            _stream = open(settings.report_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the task
    return _stream


def send(kind: str, value: Any) -> bool:
    """Send one ``{kind: value}`` message; False when not running as a platform task."""
    stream = _channel()
    if stream is None:
        return False
    line = json.dumps({kind: value}, allow_nan=False)
    with _lock:
        stream.write(line + "\n")
        stream.flush()
    return True
