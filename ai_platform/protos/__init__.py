"""Generated gRPC stubs (do not edit; run ``python -m ai_platform.protos.generate``)."""
