"""What user scripts import: progress reporting, and saving and loading models.

A task script defines ``run(input_path, output_path, params) -> dict``, may call
:func:`report_progress` as it goes (clients see it on the task and in WatchTask), and saves
what it trained with :func:`save_model` so that inference_svc can serve it.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ai_platform import report


def save_model(model: Any, output: str, example_inputs: Any, labels: list[str] | None = None,
               params: dict | None = None, metrics: dict | None = None, **options: Any) -> dict[str, Any]:
    """Save a PyTorch model as a new version of the model table ``output`` (see ``ai_platform.models``)."""
    from ai_platform import models

    return models.save_model(model, output, example_inputs, labels, params, metrics, **options)


def load_model(uri: str, version: int | None = None, device: str = "cpu") -> Any:
    """A runnable module for a saved model, without the training script's class."""
    from ai_platform import models

    return models.load_model(uri, version, device)


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
