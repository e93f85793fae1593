"""inference_svc: serves models from the lake over the Open Inference Protocol (``inference.GRPCInferenceService``)."""
