"""What user scripts import: progress reporting, and saving and loading models.

A task script defines ``run(input_path, output_path, params) -> dict``, may call
:func:`report_progress` as it goes (clients see it on the task and in WatchTask), and saves
what it trained with :func:`save_model` so that inference_svc can serve it.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from ai_platform.core.settings import ClientSettings
from ai_platform.sdk import report


def save_model(model: Any, output: str, example_inputs: Any, labels: list[str] | None = None,
               params: dict | None = None, metrics: dict | None = None, **options: Any) -> dict[str, Any]:
    """Save a PyTorch model as a new version of the model table ``output`` (see ``ai_platform.sdk.models``).

    An ``s3://`` output uses the platform's storage options (``AIP_STORAGE_OPTIONS``) unless given.
    """
    from ai_platform.sdk import models

    options.setdefault("storage_options", storage_options())
    options.setdefault("lineage", _lineage())
    options.setdefault("transaction_properties", commit_properties())
    return models.save_model(model, output, example_inputs, labels, params, metrics, **options)


def open_dataset(uri: str, version: int | None = None) -> Any:
    """The Lance dataset at ``uri``, with the lake's storage options.

    The task's own input opens at the version the scheduler pinned when the task was submitted, so a training
    run reads exactly the data it was given even if the dataset is overwritten while it runs; ``version``
    chooses another.
    """
    import lance

    spec = _task_spec()
    if version is None and spec.get("input_version") and uri == spec.get("input"):
        version = spec["input_version"]
    return lance.dataset(uri, version=version, storage_options=storage_options())


def _task_spec() -> dict[str, Any]:
    return report.spec()


def commit_properties() -> dict[str, str]:
    """What a task records with each Lance commit it makes itself (``lance.write_dataset(...,
    transaction_properties=sdk.commit_properties())``): who wrote the version, shown as its ``created_by`` as for
    writes through the platform ("alice (task 3f2a...)"). Empty outside a task."""
    spec = _task_spec()
    return {"created_by": f"{spec.get('owner') or '?'} (task {spec['id']})"} if spec.get("id") else {}


def _lineage() -> dict[str, Any] | None:
    """Where a model saved by this task comes from: its input at the pinned version, the task, the script's
    sha256 and the params. None outside a platform task."""
    spec = _task_spec()
    if not spec:
        return None
    try:
        with open(spec["script"], "rb") as script:
            digest = hashlib.sha256(script.read()).hexdigest()
    except OSError:
        digest = ""
    table = spec.get("input_table") or ""
    kind, _, name = table.partition("/")
    return {"task_id": spec.get("id", ""), "script": os.path.basename(spec.get("script", "")),
            "script_sha256": digest, "params": spec.get("params") or {},
            "input": {"kind": kind.rstrip("s"), "name": name, "version": spec.get("input_version", 0)}
            if table else None}


def check_params(params: dict[str, Any], known: Iterable[str], script: str) -> dict[str, Any]:
    """``params`` when a script takes every one of them; otherwise a ValueError naming the unknown ones and the
    known ones, before any work: a mistyped parameter is refused, never silently ignored."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{script} does not take the parameter(s) {unknown}; it takes {sorted(known)}")
    return params


IMAGE_SHAPE = "image_shape"  # a table's schema metadata: its image column's shape as "HEIGHT,WIDTH" (thumbnails)


def image_metadata(height: int, width: int) -> dict[str, str]:
    """Schema metadata that says a table's fixed-size-list column holds ``height`` x ``width`` images: the dashboard
    previews such a column as thumbnails."""
    return {IMAGE_SHAPE: f"{height},{width}"}


def digits_schema(source: str) -> Any:
    """The schema of labelled 28x28 digits (mnist_clean.py's, the page's corrections): ``image`` (784 uint8
    pixels), ``label``, ``split``; ``source`` says who wrote the table."""
    import pyarrow as pa

    return pa.schema([("image", pa.list_(pa.uint8(), 784)), ("label", pa.int64()), ("split", pa.string())],
                     metadata={"source": source, **image_metadata(28, 28)})


def log_params(params: dict[str, Any]) -> None:
    """Record the params the script runs with, its defaults included, with the task: runs then compare what each
    really used (``GET /api/v1/runs``, the dashboard, ``aip runs compare``). Outside a task they are printed."""
    if report.is_task():
        report.send("params", params)
    else:
        print(f"[params] {params}", file=sys.stderr)


def resolve_params(params: dict[str, Any], defaults: dict[str, Any], script: str) -> dict[str, Any]:
    """The params a script runs with: ``defaults`` (its ``PARAMS``, which ``aip tasks params`` lists) overridden by
    those given, recorded with :func:`log_params`; ValueError naming any it does not take (:func:`check_params`)."""
    check_params(params, defaults, script)
    effective = {**defaults, **params}
    log_params(effective)
    return effective


def storage_options() -> dict[str, str] | None:
    """The lake's storage options (endpoint, keys) for a script's own Lance reads and writes, e.g.
    ``lance.dataset(input_path, storage_options=sdk.storage_options())``; None for a lake on local disk."""
    return ClientSettings.from_env().storage_options or None


def filesystem(uri: str) -> tuple[Any, str]:
    """An Arrow filesystem and the path in it for ``uri`` (a local path, or a lake URI such as ``s3://...``),
    with the lake's storage options, for a script's own files beside its tables (raw downloads, artefacts).

    Example::

        fs, path = sdk.filesystem(input_path)
        with fs.open_input_stream(f"{path}/mnist/train-images-idx3-ubyte.gz") as stream: ...
    """
    from ai_platform.core.lakefs import lake_filesystem

    if "://" not in uri:
        import os.path

        uri = os.path.abspath(uri)
    return lake_filesystem(uri, storage_options() or {})


def deploy_model(name: str, *, version: int | None = None, inference_addr: str | None = None,
                 **parameters: int | float | str | None) -> dict[str, Any]:
    """Load the model table ``name`` into inference_svc (the newest version unless one is given).

    Loading again after a new version was saved swaps it in without failing requests in flight. ``parameters``
    are the load parameters (``max_batch_size``; on Ray Serve ``replicas=2``, ``num_cpus``, ...), as in
    ``Client.deploy``.
    Addresses come from ``AIP_INFERENCE_ADDR`` and ``AIP_GATEWAY_ADDR``, as the platform sets them.
    """
    from ai_platform.core.wire import CALL_TIMEOUT_S, MODEL_LOAD_TIMEOUT_S, encode_parameters, sync_channel
    from ai_platform.protos.inference import grpc_service_pb2 as pb
    from ai_platform.protos.inference import grpc_service_pb2_grpc

    settings = ClientSettings.from_env()
    addr = inference_addr or settings.inference_addr
    encoded = encode_parameters({"version": version, **parameters})
    with sync_channel(addr, settings.token, tls=settings.tls()) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name, parameters=encoded),
                                 timeout=MODEL_LOAD_TIMEOUT_S)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=str(version or "")),
                                  timeout=CALL_TIMEOUT_S)
    gateway = f"http://{settings.gateway_addr}"
    return {"model": name, "version": int(meta.versions[0]), "endpoints": {
        "grpc": addr, "rest_infer": f"{gateway}/v2/models/{name}/infer",
        "predict": f"{gateway}/api/v1/models/{name}/predict", "page": f"{gateway}/"}}


def load_model(uri: str, version: int | None = None, device: str = "cpu") -> Any:
    """A runnable module for a saved model, without the training script's class."""
    from ai_platform.sdk import models

    return models.load_model(uri, version, device, storage_options())


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Record one point of each series in ``metrics`` (e.g. ``{"loss": 0.3, "accuracy": 0.9}``) at ``step``.

    Clients see the series as curves while the task runs (``GET /api/v1/tasks/{id}/metrics``). Cheap enough to
    call per batch: points are buffered and sent in batches. ``step`` defaults to one more than the series' last.
    A value that is not a finite number is not logged and said on stderr; the task goes on. Outside a platform
    task the points are printed to stderr.
    """
    if report.is_task():
        report.metrics.add(metrics, step)
    else:
        print(f"[metrics{'' if step is None else f' step {step}'}] {metrics}", file=sys.stderr)


def report_progress(fraction: float, message: str = "", metrics: dict[str, Any] | None = None) -> None:
    """Tell the platform how far the task is (``fraction`` in 0..1), with optional metrics.

    Outside a platform task it prints the progress to stderr instead.
    """
    fraction = float(fraction)
    if not math.isfinite(fraction):
        raise ValueError(f"fraction must be a finite number, got {fraction}")
    progress = {"fraction": min(max(fraction, 0.0), 1.0), "message": str(message), "metrics": dict(metrics or {}),
                "time": time.time()}
    if report.is_task():
        report.send("progress", progress)
    else:
        print(f"[progress {progress['fraction']:.0%}] {message} {metrics or ''}", file=sys.stderr)
