"""From raw IDX files to a saved model in one task, streaming through Daft: nothing intermediate is written.

Task: ``run(input_path, output_path, params)``.
- input: a directory of the four IDX files (``.gz`` or raw), or the home's ``download`` area (fetched first,
  as in mnist_clean.py).
- output: the model table (e.g. ``models/mnist_e2e``); each run adds a version, served like any other.
- params: those of mnist_cnn.py (``epochs`` 4, ``learning_rate``, ``batch_size`` 128, ``seed``, ``augment``,
  ``precision``, ``channels_last``, ``label_smoothing``, ``ema_decay``, ``evals_per_epoch``,
  ``limit`` training images, ``labels``, ``log_every``, ``device``) plus ``chunk_rows`` (4096 images per record
  batch the source decodes), ``window_rows`` (32768 images per execution of the plan), ``shuffle_buffer``
  (16384 images shuffled together; the stream is never held whole), ``ray_runner`` (false: Daft's native
  runner; true: Daft's Ray runner, inside the Ray job the task runs as; the source reads the files on the Ray
  workers, so they must see the input directory) and ``mirrors``/``checksums``/``timeout_s`` for a download.

The plan is lazy and runs again every epoch, split by split: a Daft data source decodes the split's IDX files
(raw files a chunk per scan task, in parallel; ``.gz`` in one pass), a batch UDF scales the pixels to 0..1
floats, and the record batches stream into the PyTorch loop through a bounded shuffle buffer. Memory holds two
windows and the buffer whatever the files' size. Bad files are refused before any work, naming the file; a
failure writes nothing.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import idx  # noqa: E402
from mnist_cnn import (  # noqa: E402
    EVAL_BATCH,
    PARAMS,
    adam,
    check_batch,
    end_epoch,
    midway,
    one_cycle,
    scoring_points,
    share,
    training_settings,
    training_step,
    weight_average,
    whole,
)
from model import MnistCNN, Normalized, random_affine  # noqa: E402

from ai_platform.sdk import log_metrics, report_progress, resolve_params, save_model  # noqa: E402

ARROW_SCHEMA = pa.schema([("image", pa.list_(pa.uint8(), 784)), ("label", pa.int64())])


@dataclass(frozen=True)
class Span:
    """Images ``start`` to ``start + count`` of one split's IDX file pair."""

    images: Path
    labels: Path
    start: int
    count: int


def split_plan(span: Span, chunk_rows: int):  # noqa: ANN201 - a lazy daft.DataFrame
    """A span of IDX images as a lazy Daft plan of ``pixels`` (784 float32 in 0..1) and ``label``: a data source
    yielding record batches of ``chunk_rows`` images, then a batch UDF that scales the pixels."""
    import daft
    from daft import DataType, col
    from daft.io.source import DataSource, DataSourceTask
    from daft.recordbatch import RecordBatch
    from daft.schema import Schema

    schema = Schema.from_pyarrow_schema(ARROW_SCHEMA)

    class IdxChunk(DataSourceTask):
        def __init__(self, start: int, count: int) -> None:
            self.start, self.count = start, count

        @property
        def schema(self) -> Schema:
            return schema

        async def read(self) -> AsyncIterator[RecordBatch]:
            for images, labels in idx.iter_chunks(span.images, span.labels, chunk_rows, self.start, self.count):
                batch = pa.record_batch([pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 784),
                                         pa.array(labels.astype(np.int64))], schema=ARROW_SCHEMA)
                yield RecordBatch.from_arrow_record_batches([batch], ARROW_SCHEMA)

    class IdxSource(DataSource):
        @property
        def name(self) -> str:
            return f"IdxSource({span.images.name})"

        @property
        def schema(self) -> Schema:
            return schema

        async def get_tasks(self, pushdowns) -> AsyncIterator[IdxChunk]:  # noqa: ANN001 - daft Pushdowns
            end = span.start + span.count
            for start in range(span.start, end, step):
                yield IdxChunk(start, min(step, end - start))

    # A raw file is read a chunk per task, in parallel; a gzip stream can only be decompressed from its start,
    # so one task reads the whole span in a single pass.
    step = span.count if span.images.suffix == ".gz" else chunk_rows

    @daft.func.batch(return_dtype=DataType.fixed_size_list(DataType.float32(), 784))
    def to_unit_range(images: daft.Series) -> pa.Array:
        pixels = images.to_arrow()
        scaled = np.asarray(pixels.flatten(), dtype=np.float32) * np.float32(1 / 255)
        return pa.FixedSizeListArray.from_arrays(pa.array(scaled), 784)

    return IdxSource().read().select(to_unit_range(col("image")).alias("pixels"), col("label"))


def _tensors(batch: pa.RecordBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 28, 28) float32 and int64 tensors over a record batch's buffers, without copying the pixels."""
    pixels = batch.column("pixels")
    values = pixels.values.slice(pixels.offset * 784, len(pixels) * 784).to_numpy(zero_copy_only=False)
    with warnings.catch_warnings():  # Arrow's buffers are read-only; nothing writes into these tensors
        warnings.simplefilter("ignore", UserWarning)
        return (torch.from_numpy(values).view(-1, 1, 28, 28),
                torch.from_numpy(batch.column("label").to_numpy(zero_copy_only=False)))


def stream(split: Span, chunk_rows: int, window_rows: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Execute the plan a window of ``window_rows`` images at a time and hand over its record batches as
    tensors; the next window runs in a thread while this one is consumed.

    Daft's native runner reads ahead of a slow consumer without bound when a plan has a Python source or UDF
    (measured: the whole 10x dataset in memory), so the window is what bounds memory: about two windows,
    whatever the files' size."""
    def execute(start: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        span = replace(split, start=start, count=min(window_rows, split.start + split.count - start))
        return [_tensors(batch) for batch in split_plan(span, chunk_rows).to_arrow_iter()]

    starts = range(split.start, split.start + split.count, window_rows)
    if not starts:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="daft-window") as pool:
        ahead = pool.submit(execute, starts[0])
        for following in [*starts[1:], None]:
            window = ahead.result()
            ahead = pool.submit(execute, following) if following is not None else None
            yield from window
            del window


def shuffled(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], batch_size: int, buffer: int,
             generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches drawn in random order from a buffer of about ``buffer`` images that the stream refills: the
    whole stream is never held, and each image is seen once per pass."""
    held_x: list[torch.Tensor] = []
    held_y: list[torch.Tensor] = []
    held = 0
    for x, y in chunks:
        held_x.append(x)
        held_y.append(y)
        held += len(y)
        if held < buffer:
            continue
        xs, ys = torch.cat(held_x), torch.cat(held_y)
        order = torch.randperm(len(ys), generator=generator)
        full = len(order) - len(order) % batch_size
        for start in range(0, full, batch_size):
            index = order[start: start + batch_size]
            yield xs[index], ys[index]
        rest = order[full:]
        held_x, held_y, held = [xs[rest]], [ys[rest]], len(rest)
    if held:
        xs, ys = torch.cat(held_x), torch.cat(held_y)
        order = torch.randperm(len(ys), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start: start + batch_size]
            yield xs[index], ys[index]


def evaluate(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device) -> tuple[float, float, int]:
    """Accuracy, mean loss and image count over a streamed split."""
    model.eval()
    correct, loss_sum, seen = 0, 0.0, 0
    with torch.inference_mode():
        for chunk_x, chunk_y in batches:
            for x, y in zip(chunk_x.split(EVAL_BATCH), chunk_y.split(EVAL_BATCH), strict=True):
                logits = model(x.to(device))
                y = y.to(device)
                loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
    if not seen:
        raise ValueError("the test split is empty")
    return correct / seen, loss_sum / seen, seen


E2E_PARAMS = {  # what the script takes, and its defaults (`aip tasks params mnist/mnist_e2e.py` lists them)
    **PARAMS,
    "chunk_rows": 4096,  # images per record batch the source decodes
    "window_rows": 32768,  # images per execution of the plan
    "shuffle_buffer": 16384,  # images shuffled together; the stream is never held whole
    "ray_runner": False,  # Daft's Ray runner inside the task's Ray job (the workers must see the input)
    **idx.FETCH_PARAMS,
}


def run(input_path: str, output_path: str, params: dict) -> dict:
    import daft

    params = resolve_params(params, E2E_PARAMS, "mnist_e2e.py")  # recorded with the run, defaults included
    if not output_path:
        raise ValueError("mnist_e2e needs an output: the model table to write (e.g. models/mnist_e2e)")
    epochs = int(params["epochs"])
    batch_size = int(params["batch_size"])
    learning_rate = float(params["learning_rate"])
    seed = int(params["seed"])
    limit = int(params["limit"])
    chunk_rows = int(params["chunk_rows"])
    window_rows = int(params["window_rows"])
    buffer = int(params["shuffle_buffer"])
    if min(epochs, batch_size, chunk_rows, window_rows, buffer) < 1 or limit < 0:
        raise ValueError("epochs, batch_size, chunk_rows, window_rows and shuffle_buffer must be at least 1, "
                         "limit at least 0")
    wanted = params["device"]
    device = torch.device("cuda" if wanted == "auto" and torch.cuda.is_available() else
                          "cpu" if wanted == "auto" else wanted)
    settings = training_settings(params, device)  # a bad precision or smoothing is refused before any work
    evals_per_epoch, ema_decay = whole(params, "evals_per_epoch", 1), share(params, "ema_decay")
    directory, origin = idx.locate(input_path, params, lambda message: report_progress(0.01, message))
    spans = {}
    for split, (image_name, label_name) in idx.SPLITS.items():  # every file checked before any work
        images, labels = idx.find(directory, image_name), idx.find(directory, label_name)
        count = idx.image_count(images)
        if idx.label_count(labels) != count:
            raise idx.IdxError(f"{images.name} has {count} images but {labels.name} has "
                               f"{idx.label_count(labels)} labels")
        spans[split] = Span(images, labels, 0, min(count, limit) if limit and split == "train" else count)
    train_images = spans["train"].count
    if not train_images or not spans["test"].count:
        raise ValueError(f"the IDX files in {directory} hold {train_images} training and {spans['test'].count} test "
                         f"images; both splits need some")
    if params.get("ray_runner"):
        daft.set_runner_ray()  # the cluster this Ray job runs on
    print(f"streaming {train_images} training and {spans['test'].count} test images from {directory} ({origin}); "
          f"Daft runner {daft.get_or_infer_runner_type()}; device {device}", flush=True)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    check_batch(batch_size, train_images)
    model = Normalized(MnistCNN()).to(device)
    optimizer = adam(model, learning_rate)
    step = training_step(model, optimizer, settings)
    averaged = weight_average(model, ema_decay)
    scored = averaged.module if averaged is not None else model
    per_epoch = (train_images + batch_size - 1) // batch_size
    steps = epochs * per_epoch
    scheduler = one_cycle(optimizer, learning_rate, steps)
    midway_at = scoring_points(per_epoch, evals_per_epoch)
    augment = bool(params["augment"])
    log_every = int(params["log_every"])
    history, train_seconds, batches = [], 0.0, 0
    for epoch in range(epochs):
        model.train()
        epoch_started = time.perf_counter()
        loss_sum, seen, scoring_s = 0.0, 0, 0.0
        batches_in_epoch = 0
        for x, y in shuffled(stream(spans["train"], chunk_rows, window_rows), batch_size, buffer, generator):
            if augment:
                x = random_affine(x, generator)
            loss = step(x.to(device), y.to(device))
            if batches < steps:
                scheduler.step()
            if averaged is not None:
                averaged.update()
            batches_in_epoch += 1
            if batches_in_epoch in midway_at:
                scoring_started = time.perf_counter()
                accuracy, test_loss, _ = evaluate(scored, stream(spans["test"], chunk_rows, window_rows), device)
                midway(epoch + batches_in_epoch / per_epoch, epochs, accuracy, test_loss)
                model.train()
                scoring_s += time.perf_counter() - scoring_started
            batch_loss = loss.item()
            loss_sum += batch_loss * len(y)
            seen += len(y)
            batches += 1
            if log_every and batches % log_every == 0:
                log_metrics({"batch_loss": batch_loss}, step=batches)
                report_progress((epoch + seen / train_images) / epochs, f"epoch {epoch + 1}/{epochs}: {seen} images")
        epoch_seconds = time.perf_counter() - epoch_started - scoring_s
        train_seconds += epoch_seconds
        accuracy, test_loss, test_images = evaluate(scored, stream(spans["test"], chunk_rows, window_rows), device)
        history.append(end_epoch(epoch, epochs, loss_sum / seen, accuracy, test_loss, seen, epoch_seconds))

    final = history[-1]
    metrics = {"accuracy": final["accuracy"], "test_loss": final["test_loss"], "train_loss": final["train_loss"],
               "epochs": epochs, "train_images": seen, "test_images": test_images,
               "images_per_s": round(seen * epochs / train_seconds)}
    saved = save_model(scored.cpu().to(memory_format=torch.contiguous_format), output_path, torch.zeros(1, 1, 28, 28),
                       labels=params.get("labels") or [str(i) for i in range(10)],
                       params={"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
                               "seed": seed, "augment": augment, "device": str(device),
                               "ema_decay": ema_decay, "source": "mnist_e2e: streamed from IDX files"},
                       metrics=metrics, scores="logits")
    return {**metrics, "train_seconds": round(train_seconds, 2), "history": history, "files": origin,
            "runner": daft.get_or_infer_runner_type(), "model_uri": saved["uri"], "model_version": saved["version"]}
