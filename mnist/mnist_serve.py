"""Deploy a model table to the inference service; run again after training to hot-swap the newer version.

Task: ``run(input_path, output_path, params)``.
- input: the model table (e.g. ``models/mnist_cnn``).
- params: ``version`` (default: the newest) and the load parameters (``max_batch_size``, ``max_queue_delay_us``;
  on Ray Serve ``replicas``, ``num_cpus``, ...); one inference_svc does not know is refused.

Returns the model's name, the version now serving, and where to call it.
"""

from __future__ import annotations

from pathlib import Path

from ai_platform.sdk import deploy_model


def run(input_path: str, output_path: str, params: dict) -> dict:
    if not input_path:
        raise ValueError("mnist_serve needs an input: the model table to serve (e.g. models/mnist_cnn)")
    name = Path(input_path.rstrip("/")).name.removesuffix(".lance")
    return deploy_model(name, **params)  # inference_svc refuses a load parameter it does not know
