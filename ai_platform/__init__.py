"""AI Platform: ingest into a Lance lake, train with PyTorch, serve the model, over gRPC services.

The package is split by role, so that each process imports only what its role needs:

- ``ai_platform.core``: what every service runs on (settings, the wire layer, errors, views, server bootstrap).
- ``ai_platform.sdk``: what a task script imports and the worker that runs it (stays light: no gRPC on start).
- ``ai_platform.client``: the Python client for people and notebooks.
- ``ai_platform.cli``: ``aip``, the launcher and the local Ray head.
"""

__version__ = "0.1.0"
