"""Ingest MNIST (or Fashion-MNIST: the same IDX format) into one Lance dataset.

Task: ``run(input_path, output_path, params)``.
- input: a directory of the four IDX files (``.gz`` or raw), or the home's ``download`` area,
  where the files are fetched first (canonical mirrors, else the offline digits); for a lake on an
  object store they are fetched into local scratch space.
- output: the dataset's Lance URI (e.g. the task output ``datasets/mnist_clean``).
- params: ``limit`` (rows per split, 0 = all), ``mirrors`` (base URLs) with their ``checksums``
  (sha256 per file name; default: the canonical ones), ``timeout_s``.

Writes ``image: fixed_size_list<uint8>[784], label: int64, split: string`` with vectorised Arrow
building (no per-row Python). Returns the rows per split and where the files came from.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import idx  # noqa: E402

from ai_platform.sdk import (  # noqa: E402
    commit_properties,
    digits_schema,
    report_progress,
    resolve_params,
    storage_options,
)

SCHEMA = digits_schema("mnist_clean.py")


def split_table(images: np.ndarray, labels: np.ndarray, split: str) -> pa.Table:
    """One split as Arrow, built from the numpy buffers directly."""
    if len(images) != len(labels):
        raise idx.IdxError(f"{split}: {len(images)} images but {len(labels)} labels")
    if images.shape[1] != 784:
        raise idx.IdxError(f"{split}: images of {images.shape[1]} pixels, expected 28x28 = 784")
    column = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(images).reshape(-1)), 784)
    return pa.table([column, pa.array(labels.astype(np.int64)),
                     pa.DictionaryArray.from_arrays(np.zeros(len(labels), np.int8), [split]).dictionary_decode()],
                    schema=SCHEMA)


PARAMS = {  # what the script takes, and its defaults (`aip tasks params mnist/mnist_clean.py` lists them)
    "limit": 0,  # rows per split to keep (0: all)
    **idx.FETCH_PARAMS,
}


def run(input_path: str, output_path: str, params: dict) -> dict:
    params = resolve_params(params, PARAMS, "mnist_clean.py")
    started = time.perf_counter()
    source_dir, source = idx.locate(input_path, params, lambda message: report_progress(0.05, message))
    limit = int(params["limit"])
    tables, counts = [], {}
    for step, (split, (image_name, label_name)) in enumerate(idx.SPLITS.items()):
        images = idx.read_images(idx.find(source_dir, image_name))
        labels = idx.read_labels(idx.find(source_dir, label_name))
        if len(images) != len(labels):
            raise idx.IdxError(f"{image_name} has {len(images)} images but {label_name} has {len(labels)} labels")
        if limit:
            images, labels = images[:limit], labels[:limit]
        tables.append(split_table(images, labels, split))
        counts[split] = len(labels)
        report_progress(0.2 + 0.3 * step, f"read {split}: {len(labels)} images")
    if not output_path:
        raise ValueError("mnist_clean needs an output: the dataset to write (e.g. datasets/mnist_clean)")
    table = pa.concat_tables(tables)
    options = storage_options()  # the lake's endpoint and keys when it is on an object store
    try:
        lance.dataset(output_path, storage_options=options)
        mode = "overwrite"
    except (ValueError, OSError):
        mode = "create"
    dataset = lance.write_dataset(table, output_path, mode=mode, max_rows_per_file=1 << 20, storage_options=options,
                                  transaction_properties=commit_properties())
    seconds = time.perf_counter() - started
    report_progress(1.0, f"wrote {table.num_rows} rows", {"rows": table.num_rows, "seconds": round(seconds, 3)})
    return {"rows": table.num_rows, "splits": counts, "source": source, "version": dataset.version,
            "uri": output_path, "seconds": round(seconds, 3)}
