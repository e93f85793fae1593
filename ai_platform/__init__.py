"""AI Platform: ingest into a Lance lake, train with PyTorch, serve the model, over gRPC services."""

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202 - lazy, so task workers importing ai_platform stay light
    if name == "Client":
        from ai_platform.client import Client

        return Client
    raise AttributeError(name)
