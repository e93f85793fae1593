"""AI Platform: ingest into a Lance lake, train with PyTorch, serve the model, over gRPC services."""

__version__ = "0.1.0"
