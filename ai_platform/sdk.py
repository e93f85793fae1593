"""What user scripts import: progress reporting now, model saving and loading with the inference work.

A task script defines ``run(input_path, output_path, params) -> dict`` and may call
:func:`report_progress` as it goes; clients see it on the task and in WatchTask.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ai_platform import report


def report_progress(fraction: float, message: str = "", metrics: dict[str, Any] | None = None) -> None:
    """Tell the platform how far the task is (``fraction`` in 0..1), with optional metrics.

    Outside a platform task it prints the progress to stderr instead.
    """
    fraction = float(fraction)
    if not math.isfinite(fraction):
        raise ValueError(f"fraction must be a finite number, got {fraction}")
    progress = {"fraction": min(max(fraction, 0.0), 1.0), "message": str(message), "metrics": dict(metrics or {}),
                "time": time.time()}
    if not report.send("progress", progress):
        print(f"[progress {progress['fraction']:.0%}] {message} {metrics or ''}", file=sys.stderr)
