"""The side channel from a running task to the scheduler: JSON lines, never parsed out of stdout.

Locally it is a pipe (``AIP_REPORT_FD``); on Ray it is a file (``AIP_REPORT_PATH``) that the
scheduler tails. Kept free of heavy imports: it is on every task's start-up path.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

_lock = threading.Lock()
_stream = None


def _channel():  # noqa: ANN202 - a text file or None
    global _stream
    if _stream is None:
        if fd := os.environ.get("AIP_REPORT_FD"):
            _stream = os.fdopen(int(fd), "w", buffering=1, closefd=False)
        elif path := os.environ.get("AIP_REPORT_PATH"):
            _stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the task
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
