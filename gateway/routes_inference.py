"""The Open Inference Protocol's REST form, and the web page's predict, over GRPCInferenceService."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from google.protobuf import json_format

from ai_platform.core.errors import PlatformError
from ai_platform.core.names import NAME_PATTERN, NAME_RULE
from ai_platform.core.views import ERRORS, PROTOCOL_ERRORS, PredictView
from ai_platform.core.wire import (
    DATATYPES,
    HEALTH_TIMEOUT_S,
    INT64_MAX,
    MODEL_LOAD_TIMEOUT_S,
    datatype,
    decode_parameters,
    encode_parameters,
)
from ai_platform.protos.inference import grpc_service_pb2 as pb
from gateway.errors import ApiError, Receive, Scope, Send, TableName, from_platform, invalid, send_error

router = APIRouter()
NOT_FOUND = "MODEL_NOT_FOUND"
METADATA_TTL_S = 5.0


def _parse_json(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)  # several times faster than json on 784 floats
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


async def _json(request: Request) -> dict:
    return _parse_json(await request.body())


BINARY_HEADER = "inference-header-content-length"  # the binary tensor extension: JSON, then raw tensor bytes
REQUEST_FIELDS, INPUT_FIELDS, OUTPUT_FIELDS = {"id", "inputs", "outputs", "parameters"}, {
    "name", "shape", "datatype", "data", "parameters"}, {"name", "parameters"}
REQUEST_PARAMETERS, INPUT_PARAMETERS, OUTPUT_PARAMETERS = {"binary_data_output"}, {"binary_data_size"}, {
    "binary_data"}


def _known(what: str, given: Any, fields: set[str]) -> dict:
    """``given`` as a dict of known fields only: anything else is refused, never ignored."""
    if not isinstance(given, dict):
        raise invalid(f"{what} must be a JSON object")
    if unknown := sorted(set(given) - fields):
        raise invalid(f"{what} has unknown field(s) {unknown}; it takes {sorted(fields)}")
    return given


def _tensor_request(model: str, version: str, body: dict, binary: memoryview) -> pb.ModelInferRequest:
    """A v2 inference request (JSON, with tensors as JSON data or as raw bytes after it) as a raw-tensor gRPC
    request."""
    _known("the request", body, REQUEST_FIELDS)
    _known("the request's parameters", body.get("parameters") or {}, REQUEST_PARAMETERS)
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("'inputs' must be a non-empty list of {name, shape, datatype, data}")
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=str(body.get("id", "")))
    offset = 0
    for item in inputs:
        _known("each input", item, INPUT_FIELDS)
        name = str(item.get("name", ""))
        parameters = _known(f"input '{name}' parameters", item.get("parameters") or {}, INPUT_PARAMETERS)
        if not {"name", "shape", "datatype"} <= set(item) or ("data" in item) == ("binary_data_size" in parameters):
            raise invalid("each input needs name, shape, datatype, and either data or parameters.binary_data_size")
        try:
            dtype = np.dtype(datatype(item["datatype"], f"input '{name}'").numpy)
        except PlatformError as exc:
            raise from_platform(exc) from None
        shape = item["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= INT64_MAX for d in shape):
            raise invalid(f"input '{name}': shape must be a list of non-negative integers")
        if "data" in item:
            if not (_bools_only(item["data"]) if item["datatype"] == "BOOL" else _numbers_only(item["data"])):
                raise invalid(f"input '{name}': data must be {'booleans' if item['datatype'] == 'BOOL' else 'numbers'}"
                              f" only for {item['datatype']}")
            try:
                raw = np.asarray(item["data"], dtype=dtype).tobytes()
            except (TypeError, ValueError, OverflowError) as exc:
                raise invalid(f"input '{name}': data is not {item['datatype']}: {exc}") from None
        else:
            size = parameters["binary_data_size"]
            if not isinstance(size, int) or not 0 <= size <= len(binary) - offset:
                raise invalid(f"input '{name}': binary_data_size {size!r} is more than the {len(binary) - offset} "
                              f"bytes left after the JSON header")
            raw, offset = bytes(binary[offset:offset + size]), offset + size
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise invalid(f"input '{name}': {len(raw) // dtype.itemsize} values for shape {shape}")
        request.inputs.add(name=name, datatype=item["datatype"], shape=shape)
        request.raw_input_contents.append(raw)
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} bytes after the JSON header belong to no input")
    for output in body.get("outputs") or []:
        _known("each requested output", output, OUTPUT_FIELDS)
        _known(f"output '{output.get('name')}' parameters", output.get("parameters") or {}, OUTPUT_PARAMETERS)
        if "name" not in output:
            raise invalid("each requested output needs a name")
        request.outputs.add(name=str(output["name"]))
    return request


def _answer(body: dict, response: pb.ModelInferResponse) -> Answer:
    """The v2 response: outputs as JSON data, or, where asked (the binary tensor extension), as raw bytes after
    the JSON with ``parameters.binary_data_size`` and the Inference-Header-Content-Length header."""
    everything_binary = bool((body.get("parameters") or {}).get("binary_data_output"))
    binary_named = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", everything_binary))
                    for o in body.get("outputs") or []}
    outputs, blobs = [], []
    for index, tensor in enumerate(response.outputs):
        raw = response.raw_output_contents[index]
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary_named.get(tensor.name, everything_binary):
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = np.frombuffer(raw, DATATYPES[tensor.datatype].numpy).tolist()
        outputs.append(entry)
    header = orjson.dumps({"model_name": response.model_name, "model_version": response.model_version,
                           "id": response.id, "outputs": outputs})
    if not blobs:
        return Answer(header)
    return Answer(header + b"".join(blobs), b"application/octet-stream",
                  [(b"inference-header-content-length", str(len(header)).encode())])


async def _infer(state: Any, params: dict[str, str], headers: dict[bytes, bytes], raw: bytes) -> Answer:
    """An inference request in the protocol's JSON (or JSON and binary tensors) through ModelInfer."""
    length = headers.get(BINARY_HEADER.encode())
    if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > len(raw)):
        raise invalid(f"{BINARY_HEADER} {length.decode(errors='replace')!r} is not a length within the body's "
                      f"{len(raw)} bytes")
    split = int(length) if length is not None else len(raw)
    body = _parse_json(raw[:split])
    grpc_request = _tensor_request(params["model"], params.get("version", ""), body, memoryview(raw)[split:])
    response = await state.upstreams.model_infer(grpc_request, NOT_FOUND)
    return _answer(body, response)


async def _metadata(request: Request, model: TableName, version: str) -> dict:
    upstreams = request.app.state.upstreams
    meta = await upstreams.call("inference", upstreams.inference.ModelMetadata(
        pb.ModelMetadataRequest(name=model, version=version), timeout=upstreams.timeout_s), NOT_FOUND)
    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": [_tensor_metadata(t) for t in meta.inputs],
            "outputs": [_tensor_metadata(t) for t in meta.outputs]}


def _tensor_metadata(tensor: pb.ModelMetadataResponse.TensorMetadata) -> dict[str, Any]:
    view = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    if tensor.parameters:
        view["parameters"] = decode_parameters(tensor.parameters)
    return view


# -- Open Inference Protocol, REST ----------------------------------------------------------

@router.get("/v2/health/live", tags=["inference"], summary="The inference server is live")
async def live(request: Request) -> dict:
    upstreams = request.app.state.upstreams
    call = upstreams.inference.ServerLive(pb.ServerLiveRequest(), timeout=HEALTH_TIMEOUT_S)
    response = await upstreams.call("inference", call)
    return {"live": response.live}


@router.get("/v2/health/ready", tags=["inference"], summary="The inference server is ready")
async def ready(request: Request) -> dict:
    upstreams = request.app.state.upstreams
    call = upstreams.inference.ServerReady(pb.ServerReadyRequest(), timeout=HEALTH_TIMEOUT_S)
    response = await upstreams.call("inference", call)
    return {"ready": response.ready}


@router.get("/v2", tags=["inference"], summary="Server metadata")
async def server_metadata(request: Request) -> dict:
    upstreams = request.app.state.upstreams
    meta = await upstreams.call("inference", upstreams.inference.ServerMetadata(pb.ServerMetadataRequest(),
                                                                              timeout=upstreams.timeout_s))
    return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}


@router.get("/v2/models/{model}", tags=["inference"], responses=PROTOCOL_ERRORS, summary="Model metadata")
async def model_metadata(request: Request, model: TableName) -> dict:
    return await _metadata(request, model, "")


@router.get("/v2/models/{model}/versions/{version}", tags=["inference"], responses=PROTOCOL_ERRORS,
            summary="Model metadata, one version")
async def model_version_metadata(request: Request, model: TableName, version: str) -> dict:
    return await _metadata(request, model, version)


async def _ready(request: Request, model: TableName, version: str) -> dict:
    upstreams = request.app.state.upstreams
    response = await upstreams.call("inference", upstreams.inference.ModelReady(
        pb.ModelReadyRequest(name=model, version=version), timeout=upstreams.timeout_s), NOT_FOUND)
    if not response.ready:
        index = await upstreams.call("inference", upstreams.inference.RepositoryIndex(
            pb.RepositoryIndexRequest(), timeout=upstreams.timeout_s))
        if model not in {m.name for m in index.models}:
            raise ApiError(404, NOT_FOUND, f"model '{model}' does not exist")
        raise ApiError(503, "MODEL_NOT_READY", f"model '{model}' is not loaded (load it, or send a request)")
    return {"name": model, "ready": True}


@router.get("/v2/models/{model}/ready", tags=["inference"], responses=PROTOCOL_ERRORS, summary="Model readiness")
async def model_ready(request: Request, model: TableName) -> dict:
    return await _ready(request, model, "")


@router.get("/v2/models/{model}/versions/{version}/ready", tags=["inference"], responses=PROTOCOL_ERRORS)
async def model_version_ready(request: Request, model: TableName, version: str) -> dict:
    return await _ready(request, model, version)


@router.get("/v2/models/{model}/stats", tags=["inference"], responses=PROTOCOL_ERRORS,
            summary="Statistics of a loaded model (the protocol's statistics extension)")
@router.get("/v2/models/{model}/versions/{version}/stats", tags=["inference"], responses=PROTOCOL_ERRORS,
            summary="Statistics of one loaded version")
async def model_statistics(request: Request, model: TableName, version: str = "") -> dict:
    upstreams = request.app.state.upstreams
    stats = await upstreams.call("inference", upstreams.inference.ModelStatistics(
        pb.ModelStatisticsRequest(name=model, version=version), timeout=upstreams.timeout_s), NOT_FOUND)
    return json_format.MessageToDict(stats, preserving_proto_field_name=True)


@router.get("/v2/models/{model}/config", tags=["inference"], responses=PROTOCOL_ERRORS,
            summary="A model's configuration (Triton's model config)")
@router.get("/v2/models/{model}/versions/{version}/config", tags=["inference"], responses=PROTOCOL_ERRORS,
            summary="One version's configuration")
async def model_config(request: Request, model: TableName, version: str = "") -> dict:
    upstreams = request.app.state.upstreams
    answer = await upstreams.call("inference", upstreams.inference.ModelConfig(
        pb.ModelConfigRequest(name=model, version=version), timeout=upstreams.timeout_s), NOT_FOUND)
    return json_format.MessageToDict(answer.config, preserving_proto_field_name=True)


INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype", "data"],
                                              "properties": {"name": {"type": "string"},
                                                             "shape": {"type": "array", "items": {"type": "integer"}},
                                                             "datatype": {"type": "string", "example": "FP32"},
                                                             "data": {"type": "array", "items": {}}}}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}}}}}}


async def infer(request: Request, model: TableName) -> Response:
    """Inference (Open Inference Protocol JSON); served by :class:`DirectRoute`, this is what the router would run."""
    answer = await _infer(request.app.state, {"model": model}, dict(request.headers.raw), await request.body())
    return answer.response()


async def infer_version(request: Request, model: TableName, version: str) -> Response:
    return (await _infer(request.app.state, {"model": model, "version": version}, dict(request.headers.raw),
                         await request.body())).response()


@router.api_route("/v2/repository/index", methods=["GET", "POST"], tags=["inference"], responses=PROTOCOL_ERRORS,
                  summary="Models in the lake and whether they are loaded")
async def repository_index(request: Request) -> list[dict]:
    upstreams = request.app.state.upstreams
    response = await upstreams.call("inference", upstreams.inference.RepositoryIndex(
        pb.RepositoryIndexRequest(), timeout=upstreams.timeout_s))
    return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in response.models]


@router.post("/v2/repository/models/{model}/load", tags=["inference"], responses=PROTOCOL_ERRORS,
             summary="Load (or reload, swapping in the newest version) a model; optional JSON parameters")
async def load_model(request: Request, model: TableName) -> dict:
    upstreams = request.app.state.upstreams
    raw = await request.body()
    body = await _json(request) if raw.strip() else {}
    unknown = sorted(set(body) - {"parameters"})
    if unknown:
        raise invalid(f"unknown field(s) {unknown}; a load request takes only 'parameters'")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid("'parameters' must be a JSON object")
    await upstreams.call("inference", upstreams.inference.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(model_name=model, parameters=encode_parameters(parameters)),
        timeout=MODEL_LOAD_TIMEOUT_S), NOT_FOUND)
    return {"name": model, "state": "READY"}


@router.post("/v2/repository/models/{model}/unload", tags=["inference"], responses=PROTOCOL_ERRORS,
             summary="Unload a model")
async def unload_model(request: Request, model: TableName) -> dict:
    upstreams = request.app.state.upstreams
    await upstreams.call("inference", upstreams.inference.RepositoryModelUnload(
        pb.RepositoryModelUnloadRequest(model_name=model), timeout=upstreams.timeout_s), NOT_FOUND)
    return {"name": model, "state": "UNAVAILABLE"}


# -- predict, for the web page ----------------------------------------------------------------

async def _cached_metadata(state: Any, model: str) -> dict:
    """What predict needs of a model, from its metadata (cached briefly): the input, the labels, and whether the
    scores are logits."""
    cache: dict = state.model_cache
    hit = cache.get(model)
    if hit and time.monotonic() - hit[0] < METADATA_TTL_S:
        return hit[1]
    upstreams = state.upstreams
    meta = await upstreams.call("inference", upstreams.inference.ModelMetadata(
        pb.ModelMetadataRequest(name=model), timeout=upstreams.timeout_s), NOT_FOUND)
    scores = decode_parameters(meta.outputs[0].parameters) if meta.outputs else {}
    labels = json.loads(scores["labels"]) if "labels" in scores else None
    entry = {"input": _tensor_metadata(meta.inputs[0]), "labels": labels, "scores": scores.get("scores", "")}
    cache[model] = (time.monotonic(), entry)
    return entry


class Answer(NamedTuple):
    """A direct route's response: body, content type and extra headers."""

    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = []  # noqa: RUF012 - never mutated

    def response(self) -> Response:
        return Response(self.body, media_type=self.content_type.decode(),
                        headers={k.decode(): v.decode() for k, v in self.headers})


Handler = Callable[[Any, dict[str, str], dict[bytes, bytes], bytes], Awaitable[Answer]]


class DirectRoute(APIRoute):
    """A route documented like any other (path parameters, body, response model) that the gateway serves directly
    as plain ASGI, ahead of FastAPI's routing, request wrapping, parameter solving and response validation (about
    half of a request's time in the gateway): the hot paths, predict and the protocol's infer. The checks FastAPI
    would make are made here: no query parameters, names that follow the rule. Errors keep each route's body."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, handler: Handler, named: tuple[str, ...],
                 query_hint: str = "", **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        self.handler, self.named, self.query_hint = handler, named, query_hint

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        try:
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            if scope.get("query_string"):
                raise invalid(f"unknown query parameter(s) in {scope['query_string'].decode(errors='replace')!r}; "
                              f"{self.name} takes none{self.query_hint}")
            params = scope["path_params"]
            for name in self.named:
                if len(params[name]) > 128 or not NAME_PATTERN.fullmatch(params[name]):
                    raise invalid(f"invalid {name} {params[name][:64]!r}: must be {NAME_RULE}")
            answer = await self.handler(scope["app"].state, params, dict(scope["headers"]), b"".join(chunks))
        except ApiError as exc:
            await send_error(send, exc.status, exc.code, exc.message, path=scope["path"])
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", answer.content_type),
                                (b"content-length", str(len(answer.body)).encode()), *answer.headers]})
        await send({"type": "http.response.body", "body": answer.body})


INFER_ROUTES = [
    DirectRoute("/v2/models/{model}/infer", infer, handler=_infer, named=("model",), methods=["POST"],
                tags=["inference"], responses=PROTOCOL_ERRORS, openapi_extra=INFER_BODY,
                summary="Inference (Open Inference Protocol JSON)"),
    DirectRoute("/v2/models/{model}/versions/{version}/infer", infer_version, handler=_infer, named=("model",),
                methods=["POST"], tags=["inference"], responses=PROTOCOL_ERRORS, openapi_extra=INFER_BODY,
                summary="Inference on one version"),
]
router.routes.extend(INFER_ROUTES)


PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "either the seed's image (784 floats, 0..1) or inputs (one sample, flat "
                                     "or shaped)",
    "additionalProperties": False,
    "properties": {"image": {"type": "array", "items": {"type": "number"}, "minItems": 784, "maxItems": 784},
                   "inputs": {"type": "array", "items": {}},
                   "version": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 1}],
                               "description": "a version number or an alias (default: the newest)"}}}}}}}
PREDICT_FIELDS = {"image", "inputs", "version"}


async def predict(request: Request, id: TableName) -> Response:
    """Classify one sample: the seed's ``{"image": [784 floats]}`` or ``{"inputs": [...]}``; served by
    :class:`DirectRoute`, this is what the router would run."""
    return Response(await classify(request.app.state, id, await request.body()), media_type="application/json")


async def _predict(state: Any, params: dict[str, str], headers: dict[bytes, bytes], raw: bytes) -> Answer:
    return Answer(await classify(state, params["id"], raw))


PREDICT_ROUTE = DirectRoute("/api/v1/models/{id}/predict", predict, handler=_predict, named=("id",),
                            query_hint=" (the version goes in the body)",
                            methods=["POST"], response_model=PredictView, responses=ERRORS, tags=["models"],
                            openapi_extra=PREDICT_BODY,
                            summary="Classify one sample: prediction, label, confidence, probabilities")
router.routes.append(PREDICT_ROUTE)
DIRECT_ROUTES = [PREDICT_ROUTE, *INFER_ROUTES]


NUMBERS = {int, float}


def _numbers_only(sample: Any) -> bool:
    """Whether a sample (a list of numbers, or of such lists) holds numbers only: NumPy would take True as 1.0 and
    "1" as 1.0. One pass over types (about 16 us for 784 values)."""
    if not isinstance(sample, list):
        return type(sample) in NUMBERS
    kinds = set(map(type, sample))
    if list in kinds:
        return kinds <= NUMBERS | {list} and all(_numbers_only(item) for item in sample if type(item) is list)
    return kinds <= NUMBERS


def _bools_only(data: Any) -> bool:
    if not isinstance(data, list):
        return type(data) is bool
    return all(_bools_only(item) for item in data)


async def classify(state: Any, id: str, raw: bytes) -> bytes:
    """The prediction for one sample, as JSON bytes."""
    body = _parse_json(raw)
    unknown = sorted(set(body) - PREDICT_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s) {unknown}; predict takes {sorted(PREDICT_FIELDS)}")
    sample = body.get("image", body.get("inputs"))
    if sample is None:
        raise invalid("send {'image': [784 floats]} or {'inputs': [...]}")
    version = body.get("version", "")
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise invalid(f"version must be a version number or an alias, got {version!r}")
    if not _numbers_only(sample):
        raise invalid("the sample must be numbers only (no booleans, strings or nulls)")
    try:
        array = np.asarray(sample, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise invalid(f"the sample must be numbers: {exc}") from None
    if not np.isfinite(array).all():
        raise invalid(f"the sample has {int((~np.isfinite(array)).sum())} value(s) that are not finite numbers "
                      f"(NaN or infinity)")
    meta = await _cached_metadata(state, id)
    spec = meta["input"]
    shape = [1, *[int(d) for d in spec["shape"][1:]]]
    if array.size != math.prod(shape) or spec["datatype"] != "FP32":
        raise invalid(f"model '{id}' takes {math.prod(shape[1:])} FP32 values per sample (shape {spec['shape']}); "
                      f"got {array.size}")
    grpc_request = pb.ModelInferRequest(model_name=id, model_version=str(version),
                                        raw_input_contents=[array.reshape(shape).tobytes()])
    grpc_request.inputs.add(name=spec["name"], datatype="FP32", shape=shape)
    response = await state.upstreams.model_infer(grpc_request, NOT_FOUND)
    scores = np.frombuffer(response.raw_output_contents[0], np.float32).astype(np.float64)
    if not np.isfinite(scores).all():
        raise invalid(f"the model's scores for this sample are not finite: its values (largest "
                      f"{np.abs(array).max():g}) are far outside what the model was trained on")
    probabilities = meta["scores"] == "probabilities" or (
        not meta["scores"] and scores.min() >= 0 and abs(scores.sum() - 1) < 1e-3)  # unsaid: look at them
    if not probabilities:  # logits: turn them into probabilities
        exp = np.exp(scores - scores.max())
        scores = exp / exp.sum()
    best = int(scores.argmax())
    labels = meta.get("labels")
    answer = {"prediction": best, "label": labels[best] if labels and best < len(labels) else None,
              "confidence": float(scores[best]), "probabilities": scores.tolist(),
              "model_version": response.model_version}
    return orjson.dumps(answer)
