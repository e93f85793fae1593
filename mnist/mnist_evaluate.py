"""Score a model version on a dataset version: the accuracy of its predictions, with Daft (as the batch predictions).

Task: ``run(input_path, output_path, params)``.
- input: a labelled dataset as mnist_clean.py writes it (``image``, ``label``, ``split``), read at the version the
  task was given (a pipeline pins it).
- output: none.
- params: ``model`` (a model table's name; required), ``version`` (a number or an alias; default the newest),
  ``split`` ("test": the held-out rows; "" for all), ``batch_size`` (256).

Returns ``accuracy``, ``rows``, ``model_version`` and ``dataset_version``. :func:`score` is what the promotion gate
(mnist_promote.py) calls for both models, on the same dataset version.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnist_predict import model_record, scorer  # noqa: E402

from ai_platform.sdk import open_dataset, report_progress, resolve_params  # noqa: E402

PARAMS = {  # what the script takes, and its defaults (`aip tasks params mnist/mnist_evaluate.py` lists them)
    "model": "",  # the model table's name (required)
    "version": None,  # a version number or an alias (default: the newest)
    "split": "test",  # the rows scored: the held-out split ("" for every row)
    "batch_size": 256,  # images per forward pass
}


def score(dataset_uri: str, dataset_version: int, model: str, version: int | str | None, split: str = "test",
          batch_size: int = 256) -> dict:
    """The model's accuracy on the dataset at ``dataset_version`` (only ``split``'s rows when given)."""
    import daft
    from daft import DataType, col

    record = model_record(model, version)
    df = daft.read_lance(dataset_uri, version=dataset_version)
    if split:
        df = df.where(col("split") == split)
    scored = df.select((scorer(record, batch_size)(col("image")).get("prediction") == col("label")).alias("correct"))
    totals = scored.agg(col("correct").cast(DataType.int64()).sum().alias("right"),
                        col("correct").count().alias("rows")).to_pydict()
    rows = int(totals["rows"][0] or 0)
    if not rows:
        raise ValueError(f"dataset {dataset_uri}@{dataset_version} has no rows{f' in split {split!r}' if split else ''}"
                         f" to score")
    return {"accuracy": round(int(totals["right"][0]) / rows, 4), "rows": rows, "model": model,
            "model_version": record.version, "dataset_version": dataset_version}


def run(input_path: str, output_path: str, params: dict) -> dict:
    params = resolve_params(params, PARAMS, "mnist_evaluate.py")
    if not params["model"]:
        raise ValueError("mnist_evaluate needs params.model: the name of the model to score")
    dataset = open_dataset(input_path)  # the version this task was given
    result = score(input_path, dataset.version, params["model"], params["version"], params["split"],
                   int(params["batch_size"]))
    report_progress(1.0, f"accuracy {result['accuracy']:.4f} on {result['rows']} images", result)
    return result
