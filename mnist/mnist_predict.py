"""Batch predictions as a task: a model from the lake over a dataset, written back as a new dataset.

Task: ``run(input_path, output_path, params)``.
- input: a dataset with an image column (``fixed_size_list<uint8>[784]``, as mnist_clean.py writes), e.g.
  ``datasets/mnist_clean``; read at the version the task was given.
- output: the predictions dataset (e.g. ``datasets/mnist_predictions``): the input's other columns (its keys and
  labels) plus ``prediction``, ``confidence`` and, where there is a ``label`` column, ``correct``. An output that
  exists gets a new version; the old ones stay readable.
- params: ``model`` (a model table's name; required), ``version`` (a number or an alias; default the newest),
  ``image_column`` ("image"), ``batch_size`` (256 images per forward pass), ``ray_runner`` (false: Daft's native
  runner; true: Daft's Ray runner, inside the Ray job the task runs as).

Daft reads the lake lazily; a class UDF loads the model once per worker and runs it batch by batch; Daft writes
Lance. Nothing is materialised whole. Returns the row count, the accuracy where labels exist, and images/s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ai_platform.core.settings import ClientSettings  # noqa: E402
from ai_platform.sdk import report_progress, resolve_params, storage_options  # noqa: E402
from ai_platform.sdk.models import ModelRecord, load_program, read_model  # noqa: E402

PIXELS = 784


def model_record(name: str, version: str | int | None) -> ModelRecord:
    """The model table ``name`` in the platform's lake, at a version or alias; FileNotFoundError naming it."""
    uri = f"{ClientSettings.from_env().home.rstrip('/')}/models/{name}.lance"
    options = storage_options()
    try:
        table = lance.dataset(uri, storage_options=options)
    except (ValueError, OSError):
        raise FileNotFoundError(f"model '{name}' does not exist (no model table at {uri})") from None
    if isinstance(version, str) and version and not version.isdigit():
        tags = table.tags.list()
        if version not in tags:
            raise FileNotFoundError(f"model '{name}' has no alias '{version}' (aliases: {sorted(tags)})")
        version = tags[version]["version"]
    return read_model(uri, int(version) if version else None, options)


class Predictor:
    """The model's program, loaded once per Daft worker; scores each batch of images in one forward pass."""

    def __init__(self, record: ModelRecord) -> None:
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.program = load_program(record, "cpu")
        self.logits = record.signature["outputs"][0].get("scores") != "probabilities"

    def predict(self, images: pa.Array) -> pa.StructArray:
        torch = self.torch
        pixels = np.asarray(images.flatten(), dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0
        with torch.inference_mode():
            scores = self.program(torch.from_numpy(pixels))
            probabilities = torch.softmax(scores, dim=1) if self.logits else scores
            confidence, prediction = probabilities.max(dim=1)
        return pa.StructArray.from_arrays([pa.array(prediction.numpy().astype(np.int64)),
                                           pa.array(confidence.numpy().astype(np.float32))],
                                          names=["prediction", "confidence"])


def scorer(record: ModelRecord, batch_size: int) -> Any:
    """A Daft class UDF: the model loaded once per worker, each batch of images scored in one forward pass into a
    struct of ``prediction`` and ``confidence``."""
    import daft
    from daft import DataType

    @daft.cls
    class Scorer:
        def __init__(self) -> None:
            self.predictor = Predictor(record)

        @daft.method.batch(return_dtype=DataType.struct({"prediction": DataType.int64(),
                                                         "confidence": DataType.float32()}),
                           batch_size=batch_size)
        def __call__(self, images: daft.Series) -> pa.StructArray:
            return self.predictor.predict(images.to_arrow())

    return Scorer()


PARAMS = {  # what the script takes, and its defaults (`aip tasks params mnist/mnist_predict.py` lists them)
    "model": "",  # the model table's name (required)
    "version": None,  # a version number or an alias (default: the newest)
    "image_column": "image",  # the column of 784 uint8 pixels
    "batch_size": 256,  # images per forward pass
    "ray_runner": False,  # Daft's Ray runner inside the task's Ray job
}


def run(input_path: str, output_path: str, params: dict) -> dict:
    import daft
    from daft import col

    params = resolve_params(params, PARAMS, "mnist_predict.py")  # recorded with the run, defaults included
    if not params.get("model"):
        raise ValueError("mnist_predict needs params.model: the name of the model to predict with")
    if not output_path:
        raise ValueError("mnist_predict needs an output: the dataset to write predictions into")
    record = model_record(params["model"], params.get("version"))
    inputs = record.signature["inputs"]
    if len(inputs) != 1 or int(np.prod(inputs[0]["shape"][1:])) != PIXELS:
        raise ValueError(f"model '{params['model']}' takes {inputs}, not one 28x28 image")
    image_column = params["image_column"]
    batch_size = int(params["batch_size"])
    if params.get("ray_runner"):
        daft.set_runner_ray()  # the cluster this Ray job runs on
    from ai_platform.sdk import open_dataset

    source = open_dataset(input_path)  # the version this task was given
    names = source.schema.names
    if image_column not in names:
        raise ValueError(f"dataset {input_path} has no column '{image_column}' (it has {names}); "
                         f"say which holds the images with params.image_column")
    width = source.schema.field(image_column).type
    if not (pa.types.is_fixed_size_list(width) and width.list_size == PIXELS):
        raise ValueError(f"column '{image_column}' is {width}, not a fixed-size list of {PIXELS} pixels")
    report_progress(0.05, f"predicting {source.count_rows()} images with {params['model']} v{record.version}")

    started = time.perf_counter()
    df = daft.read_lance(input_path, version=source.version)
    scored = df.with_column("scores", scorer(record, batch_size)(col(image_column)))
    keys = [col(name) for name in names if name != image_column]
    out = scored.select(*keys, col("scores").get("prediction").alias("prediction"),
                        col("scores").get("confidence").alias("confidence"))
    if "label" in names:
        out = out.with_column("correct", col("prediction") == col("label"))
    try:
        lance.dataset(output_path, storage_options=storage_options())
        mode = "overwrite"  # a new version; the old ones stay readable
    except (ValueError, OSError):
        mode = "create"
    out.write_lance(output_path, mode=mode)
    seconds = time.perf_counter() - started
    written = lance.dataset(output_path, storage_options=storage_options())
    result: dict = {"rows": written.count_rows(), "model": params["model"], "model_version": record.version,
                    "output_version": written.version, "images_per_s": round(written.count_rows() / seconds),
                    "runner": daft.get_or_infer_runner_type()}
    if "label" in names:
        correct = written.to_table(columns=["correct"]).column("correct")
        result["accuracy"] = round(pc.mean(correct.cast(pa.float64())).as_py() or 0.0, 4)
    report_progress(1.0, f"{result['rows']} predictions written", {k: v for k, v in result.items()
                                                                    if isinstance(v, (int, float))})
    return result
