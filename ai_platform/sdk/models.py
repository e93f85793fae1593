"""Model artifacts in the lake: one Lance row per saved model, a new Lance version per save.

A row holds the ``weights`` (the state_dict, as the seed stored), a ``program`` that loads
and runs without the training script's Python class (TorchScript by default: it served
faster than ``torch.export`` for the MNIST CNN, see bench/bench_inference.py), and the
``signature`` that inference uses to validate requests and describe the model.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import lance
import pyarrow as pa

from ai_platform.core.errors import FailedPrecondition, InvalidArgument, NotFound
from ai_platform.core.wire import DATATYPE_OF_NUMPY

PROGRAM_FORMATS = ("torchscript", "torch.export")
SCORES = (None, "logits", "probabilities")  # what the first output's values are, when the saver says
MODEL_SCHEMA = pa.schema([
    ("weights", pa.large_binary()),
    ("program", pa.large_binary()),
    ("program_format", pa.string()),
    ("signature", pa.string()),
    ("params", pa.string()),
    ("metrics", pa.string()),
    ("framework", pa.string()),
    ("framework_version", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("lineage", pa.string()),  # where the model came from (the task's input at its version, task, script, params)
])
REQUIRED_COLUMNS = ("program", "program_format", "signature")

@dataclass
class ModelRecord:
    """A saved model as read from the lake (program still serialised)."""

    uri: str
    version: int
    program: bytes
    program_format: str
    signature: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    framework: str
    created_at: dt.datetime | None
    lineage: dict[str, Any] | None = None


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _tensor_spec(name: str, tensor: Any) -> dict[str, Any]:
    datatype = DATATYPE_OF_NUMPY.get(str(tensor.dtype).removeprefix("torch."))
    if datatype is None:
        raise InvalidArgument(f"{name}: tensors of {tensor.dtype} cannot be served")
    return {"name": name, "datatype": datatype, "shape": [-1, *tensor.shape[1:]]}


def _serialise_program(model: Any, examples: tuple, program_format: str) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices are not the user's concern here
        if program_format == "torchscript":
            torch.jit.save(torch.jit.trace(model, examples), buffer)
        else:
            batch = torch.export.Dim("batch", min=1, max=65536)
            dynamic = tuple({0: batch} for _ in examples)
            # An example batch of 1 would be specialised to a constant; export from a batch of 2.
            examples = tuple(t.expand(2, *t.shape[1:]).contiguous() if t.shape[0] == 1 else t for t in examples)
            torch.export.save(torch.export.export(model, examples, dynamic_shapes=dynamic), buffer)
    return buffer.getvalue()


def save_model(model: Any, output: str, example_inputs: Any, labels: list[str] | None = None,
               params: dict | None = None, metrics: dict | None = None, *, input_names: list[str] | None = None,
               output_names: list[str] | None = None, program_format: str = "torchscript",
               scores: str | None = None, storage_options: dict[str, str] | None = None,
               lineage: dict[str, Any] | None = None,
               transaction_properties: dict[str, str] | None = None) -> dict[str, Any]:
    """Save a PyTorch model as a new version of the model table at ``output`` (a Lance URI or path).
    ``transaction_properties`` go with the Lance commit (``created_by``: who wrote the version).

    ``example_inputs`` is a tensor (or tuple of tensors) with the batch dimension first; it
    fixes the signature. ``labels`` name the classes of the first output and ``scores`` says what
    its values are (``"logits"`` or ``"probabilities"``); inference publishes both in the model's
    metadata. Returns ``{"uri", "version", "signature"}``.
    """
    import torch

    if not output:
        raise InvalidArgument("save_model needs an output: the model table's URI (the task's output_path)")
    if program_format not in PROGRAM_FORMATS:
        raise InvalidArgument(f"program_format must be one of {PROGRAM_FORMATS}")
    if scores not in SCORES:
        raise InvalidArgument(f"scores must be one of {SCORES}")
    was_training = model.training
    model.eval()
    model_cpu = model.to("cpu")
    examples = tuple(t.detach().to("cpu") for t in _as_tuple(example_inputs))
    with torch.inference_mode():
        outputs = _as_tuple(model_cpu(*examples))
    input_names = input_names or (["input"] if len(examples) == 1 else [f"input_{i}" for i in range(len(examples))])
    output_names = output_names or (["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))])
    signature = {
        "inputs": [_tensor_spec(n, t) for n, t in zip(input_names, examples, strict=True)],
        "outputs": [_tensor_spec(n, t) for n, t in zip(output_names, outputs, strict=True)],
    }
    if labels is not None:
        labels = [str(label) for label in labels]
        if outputs[0].shape[-1] != len(labels):
            raise InvalidArgument(f"{len(labels)} labels for an output of width {outputs[0].shape[-1]}")
        signature["outputs"][0]["labels"] = labels
    if scores is not None:
        signature["outputs"][0]["scores"] = scores
    program = _serialise_program(model_cpu, examples, program_format)
    weights = io.BytesIO()
    torch.save(model_cpu.state_dict(), weights)
    model.train(was_training)
    row = pa.table({
        "weights": [weights.getvalue()], "program": [program], "program_format": [program_format],
        "signature": [json.dumps(signature)], "params": [json.dumps(params or {}, default=str)],
        "metrics": [json.dumps(metrics or {}, default=str)], "framework": ["pytorch"],
        "framework_version": [torch.__version__], "created_at": [dt.datetime.now(dt.UTC)],
        "lineage": [json.dumps(lineage or {}, default=str)],
    }, schema=MODEL_SCHEMA)
    try:
        lance.dataset(output, storage_options=storage_options)
        mode = "overwrite"
    except (ValueError, OSError):
        mode = "create"
    dataset = lance.write_dataset(row, output, mode=mode, storage_options=storage_options,
                                  transaction_properties=transaction_properties or None)
    return {"uri": output, "version": dataset.version, "signature": signature}


def read_model(uri: str, version: int | None = None, storage_options: dict[str, str] | None = None) -> ModelRecord:
    """The saved model at ``uri`` (its latest version unless one is given), program not yet loaded."""
    try:
        dataset = lance.dataset(uri, version=version or None, storage_options=storage_options)
    except (ValueError, OSError) as exc:
        what = f"version {version} of " if version else ""
        raise NotFound(f"no {what}model table at {uri}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise FailedPrecondition(f"model table {uri} is not a saved model: missing column(s) {missing}")
    columns = [c for c in MODEL_SCHEMA.names if c in dataset.schema.names and c != "weights"]
    table = dataset.to_table(columns=columns)
    if table.num_rows == 0:
        raise FailedPrecondition(f"model table {uri} (version {dataset.version}) has no rows")
    row = {name: table.column(name)[table.num_rows - 1].as_py() for name in columns}
    try:
        signature = json.loads(row["signature"])
        if not signature.get("inputs") or not signature.get("outputs"):
            raise ValueError("signature lists no inputs or outputs")
    except (TypeError, ValueError) as exc:
        raise FailedPrecondition(f"model table {uri} has an unreadable signature: {exc}") from exc
    return ModelRecord(
        uri=uri, version=dataset.version, program=row["program"] or b"", program_format=row["program_format"],
        signature=signature, params=json.loads(row.get("params") or "{}"),
        metrics=json.loads(row.get("metrics") or "{}"), framework=row.get("framework") or "pytorch",
        created_at=row.get("created_at"), lineage=json.loads(row.get("lineage") or "{}"),
    )


def load_program(record: ModelRecord, device: str = "cpu") -> Any:
    """Deserialise the program into a runnable torch module on ``device``."""
    import torch

    if not record.program:
        raise FailedPrecondition(f"model table {record.uri} (version {record.version}) has an empty program")
    try:
        if record.program_format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                return torch.jit.load(io.BytesIO(record.program), map_location=device).eval()
        if record.program_format == "torch.export":  # exported modules run in inference form already
            return torch.export.load(io.BytesIO(record.program)).module().to(device)
        raise ValueError(f"unknown program format {record.program_format!r}")
    except Exception as exc:  # noqa: BLE001 - any deserialisation failure means the artifact is unusable
        raise FailedPrecondition(f"cannot load the program of {record.uri} (version {record.version}): {exc}") from exc


def load_model(uri: str, version: int | None = None, device: str = "cpu",
               storage_options: dict[str, str] | None = None) -> Any:
    """A runnable ``torch.nn.Module`` for the saved model; needs no training code.

    The module carries ``signature``, ``labels``, ``metrics``, ``params`` and ``version``.
    """
    import torch

    record = read_model(uri, version, storage_options)
    program = load_program(record, device)

    class SavedModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.program = program
            self.signature, self.metrics, self.params = record.signature, record.metrics, record.params
            self.labels = record.signature["outputs"][0].get("labels")
            self.version, self.uri = record.version, record.uri

        def forward(self, *inputs: Any) -> Any:
            return self.program(*inputs)

    saved = SavedModel()
    saved.training = False
    return saved
