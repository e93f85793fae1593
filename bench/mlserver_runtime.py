"""The peer in bench_serving.py: a TorchScript runtime for MLServer, batched by MLServer's own adaptive batching.

Loaded by MLServer (in its own virtual environment under ``.bench/``), never by the platform. The model settings
name the TorchScript file in ``parameters.uri``; requests are OIP tensors of shape (n, 1, 28, 28), FP32.
"""

from __future__ import annotations

import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TorchScriptRuntime(MLModel):
    async def load(self) -> bool:
        torch.set_num_threads(1)
        self.program = torch.jit.load(self.settings.parameters.uri).eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        with torch.inference_mode():
            logits = self.program(torch.from_numpy(images).reshape(-1, 1, 28, 28)).numpy()
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output", logits)])
