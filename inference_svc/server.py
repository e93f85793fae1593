"""gRPC edge of the inference service: Open Inference Protocol messages <-> numpy, then the DataPlane.

Wire-compatible with Triton: tritonclient sends tensors as ``raw_input_contents`` and gets
``raw_output_contents`` back; a request with typed ``contents`` gets typed contents back.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from ai_platform.core.auth import allow_serve, caller
from ai_platform.core.errors import InvalidArgument
from ai_platform.core.wire import DATATYPES, datatype, decode_parameters
from ai_platform.protos.inference import grpc_service_pb2 as pb
from ai_platform.protos.inference import grpc_service_pb2_grpc, model_config_pb2
from inference_svc.dataplane import DataPlane, TensorSpec
from inference_svc.model import InferInput, ServedModel
from inference_svc.repository import ModelState


def _shape(tensor: Any) -> list[int]:
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{tensor.name}': negative dimension in shape {shape}")
    return shape


def decode_inputs(request: pb.ModelInferRequest) -> tuple[list[InferInput], bool]:
    """The request's tensors as numpy arrays, and whether they came raw."""
    raw = list(request.raw_input_contents)
    typed = [t.name for t in request.inputs if t.HasField("contents")]
    if raw and typed:
        raise InvalidArgument(
            f"give tensors either as raw_input_contents or as typed contents, not both (typed: {typed})"
        )
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    decoded = []
    for index, tensor in enumerate(request.inputs):
        shape = _shape(tensor)
        kind = datatype(tensor.datatype, f"input '{tensor.name}'")
        dtype = kind.numpy
        count = math.prod(shape)
        if raw:
            expected = count * np.dtype(dtype).itemsize
            if len(raw[index]) != expected:
                raise InvalidArgument(
                    f"input '{tensor.name}': raw contents have {len(raw[index])} bytes, expected "
                    f"{expected} for shape {shape} of {tensor.datatype}"
                )
            array = np.frombuffer(raw[index], dtype=dtype).reshape(shape)
        else:
            values = getattr(tensor.contents, kind.contents_field) if kind.contents_field else []
            if len(values) != count:
                raise InvalidArgument(
                    f"input '{tensor.name}': {len(values)} values in contents, expected {count} for shape {shape}"
                )
            array = np.asarray(values, dtype=dtype).reshape(shape)
        decoded.append(InferInput(tensor.name, tensor.datatype, shape, array))
    return decoded, bool(raw)


def encode_response(
    request: pb.ModelInferRequest, model: ServedModel, outputs: list[InferInput], raw: bool
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for output in outputs:
        tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if raw:
            response.raw_output_contents.append(np.ascontiguousarray(output.data).tobytes())
        else:
            field = DATATYPES[output.datatype].contents_field
            if field is None:
                raise InvalidArgument(f"output '{output.name}' is {output.datatype}, which travels only as raw "
                                      f"contents: send the inputs as raw_input_contents")
            getattr(tensor.contents, field).extend(output.data.ravel().tolist())
    return response


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape,
        parameters={k: pb.InferParameter(string_param=v) for k, v in spec.parameters.items()},
    )


def _duration(d: Any) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        meta = await self.dataplane.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[_tensor_metadata(t) for t in meta.inputs],
            outputs=[_tensor_metadata(t) for t in meta.outputs],
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        model = await self.dataplane.model(request.name, request.version)

        def tensors(specs: list[dict], cls: Any) -> list[Any]:
            return [cls(name=s["name"], data_type=DATATYPES[s["datatype"]].config_type, dims=s["shape"][1:])
                    for s in specs]

        config = model_config_pb2.ModelConfig(
            name=model.name,
            platform="pytorch_libtorch",
            backend="pytorch",
            max_batch_size=model.batching.max_batch_size,
            input=tensors(model.inputs, model_config_pb2.ModelInput),
            output=tensors(model.outputs, model_config_pb2.ModelOutput),
            dynamic_batching=model_config_pb2.ModelDynamicBatching(
                max_queue_delay_microseconds=int(model.batching.max_queue_delay_s * 1e6)
            ),
        )
        for key, value in model.runner.describe().items():  # how it is served: backend, replicas, application
            if value is not None:
                config.parameters[key].string_value = str(value)
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self.infer(request)

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """ModelInfer's logic, shared by gRPC, the stream and the Unix socket (ai_platform.core.infer_socket)."""
        inputs, raw = decode_inputs(request)
        requested = [o.name for o in request.outputs]
        model, outputs = await self.dataplane.infer(request.model_name, request.model_version, inputs, requested)
        return encode_response(request, model, outputs, raw)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests are served concurrently (so they batch); each answer or error comes as it is ready."""
        async for request, answer in self.dataplane.infer_stream(request_iterator, self.infer):
            if isinstance(answer, pb.ModelInferResponse):
                yield pb.ModelStreamInferResponse(infer_response=answer)
            else:
                yield pb.ModelStreamInferResponse(error_message=answer.message,
                                                  infer_response=pb.ModelInferResponse(id=request.id))

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        response = pb.ModelStatisticsResponse()
        for model in self.dataplane.statistics(request.name, request.version):
            s = model.stats
            entry = response.model_stats.add(
                name=model.name,
                version=str(model.version),
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
            )
            stats = entry.inference_stats
            for field, value in (
                ("success", s.success),
                ("fail", s.fail),
                ("queue", s.queue),
                ("compute_input", s.compute_input),
                ("compute_infer", s.compute_infer),
                ("compute_output", s.compute_output),
            ):
                getattr(stats, field).CopyFrom(_duration(value))
            for size, (c_in, c_infer, c_out) in sorted(s.batches.items()):
                entry.batch_stats.add(
                    batch_size=size,
                    compute_input=_duration(c_in),
                    compute_infer=_duration(c_infer),
                    compute_output=_duration(c_out),
                )
        return response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        states = await self.dataplane.index()
        return pb.RepositoryIndexResponse(
            models=[
                index(name=s.name, version=s.version, state=s.state.value, reason=s.reason)
                for s in states
                if not request.ready or s.state is ModelState.READY
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        allow_serve(caller(), request.model_name)  # a task serves the model it was given, no other
        await self.dataplane.load(request.model_name, decode_parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
