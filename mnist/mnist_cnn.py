"""Train the MNIST CNN from a Lance dataset and save it as a model table.

Task: ``run(input_path, output_path, params)``.
- input: the dataset written by mnist_clean.py (``image``, ``label``, ``split``).
- output: the model table's Lance URI (e.g. ``models/mnist_cnn``); each run adds a version.
- params: ``epochs`` (4), ``learning_rate`` (3e-3), ``batch_size`` (128), ``device`` ("auto": cuda when
  available), ``seed`` (0), ``limit`` (training images, 0 = all), ``augment`` (true), ``labels``,
  ``log_every`` (50 batches), ``precision`` ("auto": bfloat16 autocast on a GPU that has it, float32 on CPUs),
  ``channels_last`` (true), ``label_smoothing`` (0.1), ``ema_decay`` (0.99), ``evals_per_epoch`` (2). A batch whose
  activations would not fit in memory is refused before any work.

Images go from Lance to tensors without per-row Python and stay uint8 until each batch is
normalised. Random affine shifts, rotations and scaling (``model.random_affine``) make hand-drawn
digits recognisable. What is scored and saved is an exponential moving average of the weights (``ema_decay``), which
smooths out the noise of the high learning rates the one-cycle schedule passes through. The test split is scored
``evals_per_epoch`` times an epoch (progress and a printed line; the last one ends the epoch); metric curves are logged
per epoch (train_loss, test_loss, accuracy) and every ``log_every`` batches (batch_loss).
"""

from __future__ import annotations

import copy
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model import MnistCNN, Normalized, random_affine  # noqa: E402

from ai_platform.sdk import log_metrics, open_dataset, report_progress, resolve_params, save_model  # noqa: E402

PARAMS = {  # what the script takes, and its defaults (`aip tasks params mnist/mnist_cnn.py` lists them)
    "epochs": 4,  # passes over the training images
    "learning_rate": 3e-3,  # Adam's step size (the one-cycle schedule peaks at 3x it, a fifth of the way in)
    "batch_size": 128,  # images per optimiser step
    "device": "auto",  # "auto" (cuda when available), "cpu" or "cuda"
    "seed": 0,  # seeds torch and numpy: the same seed, the same model
    "limit": 0,  # training images to use (0: all)
    "augment": True,  # random shifts, rotations and scaling, so drawn digits are recognised
    "labels": None,  # the class names served with the model (default: "0" to "9")
    "log_every": 50,  # batches between batch_loss points
    "precision": "auto",  # "auto" (bfloat16 autocast on a GPU that has it, float32 on CPUs), "fp32" or "bf16"
    "channels_last": True,  # the NHWC layout oneDNN's convolutions are fastest in
    "label_smoothing": 0.1,  # of the training targets' probability spread over the other classes
    "ema_decay": 0.99,  # of the weights' moving average that is scored and saved (0: the weights as trained)
    "evals_per_epoch": 2,  # times the test split is scored each epoch (the last at its end)
}
MAX_BATCH_SHARE = 0.5  # of the memory available now that one batch's activations may take
EVAL_BATCH = 512  # images per forward pass when testing: 2,000 at once held 200 MB of activations at the peak

def load_split(uri: str, split: str, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 28, 28) uint8 images and int64 labels of one split, straight from Arrow buffers."""
    dataset = open_dataset(uri)  # the task's input at the version it was given
    table = dataset.to_table(columns=["image", "label"], filter=f"split = '{split}'", limit=limit or None)
    if table.num_rows == 0:
        raise ValueError(f"the dataset at {uri} has no '{split}' rows")
    pixels = table.column("image").combine_chunks().flatten().to_numpy()
    images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return images, labels


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[float, float]:
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.inference_mode():
        for start in range(0, len(images), EVAL_BATCH):
            x = images[start: start + EVAL_BATCH].to(device).float().div_(255)
            y = labels[start: start + EVAL_BATCH].to(device)
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return correct / len(images), loss_sum / len(images)


def end_epoch(epoch: int, epochs: int, train_loss: float, accuracy: float, test_loss: float, images: int,
              seconds: float) -> dict:
    """An epoch's figures, logged as curve points, printed and reported as progress."""
    metrics = {"epoch": epoch + 1, "train_loss": train_loss, "accuracy": accuracy, "test_loss": test_loss,
               "epoch_seconds": round(seconds, 2), "images_per_s": round(images / seconds)}
    log_metrics({"train_loss": train_loss, "test_loss": test_loss, "accuracy": accuracy}, step=epoch + 1)
    print(f"epoch {epoch + 1}/{epochs}: {metrics}", flush=True)
    report_progress((epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs}: accuracy {accuracy:.4f}", metrics)
    return metrics


ACTIVATION_BYTES = 4 * (2 * 16 * 28 * 28 + 16 * 14 * 14 + 2 * 32 * 14 * 14 + 32 * 7 * 7 + 3 * 128 + 2 * 10) * 3
"""About what one image costs in a training step: the float32 activations the backward pass keeps, three times over
(the gradients, and the optimiser's and autocast's copies)."""


def check_batch(batch_size: int, images: int) -> None:
    """A batch that cannot fit is refused before any work, naming the param."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    needed = batch_size * ACTIVATION_BYTES
    if needed > available * MAX_BATCH_SHARE:
        raise ValueError(f"batch_size {batch_size:,} needs about {needed / 2**30:,.1f} GiB for one step's "
                         f"activations; {available / 2**30:,.1f} GiB of memory is available: choose a batch_size "
                         f"below {int(available * MAX_BATCH_SHARE / ACTIVATION_BYTES):,}")
    if batch_size > images:
        raise ValueError(f"batch_size {batch_size:,} is more than the {images:,} training images")


def training_settings(params: dict, device: torch.device | None = None) -> dict:
    """How a training step runs here: bfloat16 autocast where it pays (a GPU that has it; on CPUs, even with
    AVX512-BF16, oneDNN's bfloat16 ran this small model 5-20% slower than float32: bench/bench_train.py prints
    both ceilings), channels-last convolutions (15-40% faster on CPUs)."""
    device = device or torch.device("cpu")
    precision = params.get("precision", PARAMS["precision"])
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    smoothing = share({"label_smoothing": PARAMS["label_smoothing"], **params}, "label_smoothing")
    return {"bf16": bool(bf16), "channels_last": bool(params.get("channels_last", PARAMS["channels_last"])),
            "device": device.type, "label_smoothing": smoothing}


def whole(params: dict, name: str, least: int) -> int:
    """An integer param of at least ``least``; anything else (2.5, "2", true) is refused, naming it."""
    value = params[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")
    return value


def share(params: dict, name: str) -> float:
    """A param that is a number at least 0 and below 1; anything else is refused, naming it."""
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number at least 0 and below 1, got {value!r}")
    return float(value)


def adam(model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel where this torch has one for the model's device (one pass over all the
    parameters: 14% more images/s at batch 64 on a CPU), else the plain one."""
    try:
        return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=learning_rate)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, settings: dict) -> Callable:
    """One optimiser step on a batch: ``step(x, y) -> loss`` (a tensor), with ``settings``' precision and layout.
    The model is put in channels-last layout here when the settings say so."""
    if settings["channels_last"]:
        model.to(memory_format=torch.channels_last)
    autocast = functools.partial(torch.autocast, settings["device"], dtype=torch.bfloat16,
                                 enabled=settings["bf16"])

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if settings["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=settings.get("label_smoothing", 0.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def one_cycle(optimizer: torch.optim.Optimizer, learning_rate: float, steps: int) -> Any:
    """The learning rate: up to 3x ``learning_rate`` over the first fifth of the steps, then down along a cosine."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate * 3, total_steps=steps, pct_start=0.2)


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every step: it is what is scored and saved.
    It reaches a given accuracy about half an epoch sooner than the raw weights, which jump about while the learning
    rate is high, and ends where they end. The decay is shorter while training is young ((1 + n) / (10 + n) after n
    steps, up to ``decay``), so a short run is not held back by its first weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.decay, self.steps = decay, 0
        self._averaged, self._current = list(self.module.parameters()), list(model.parameters())
        self._buffers = list(zip(self.module.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        rate = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self._averaged, [p.detach() for p in self._current], 1 - rate)
        for averaged, current in self._buffers:  # running statistics, were the model to have any: copied
            averaged.copy_(current)


def weight_average(model: nn.Module, decay: float) -> WeightAverage | None:
    """The average that is scored and saved (None for ``decay`` 0: the weights as trained)."""
    return WeightAverage(model, decay) if decay else None


def scoring_points(batches_per_epoch: int, evals_per_epoch: int) -> set[int]:
    """The batch numbers within an epoch after which the test split is scored before the epoch ends."""
    return {round(batches_per_epoch * k / evals_per_epoch) for k in range(1, evals_per_epoch)} - {0, batches_per_epoch}


def midway(epoch: float, epochs: int, accuracy: float, test_loss: float) -> None:
    """A score taken within an epoch: printed and reported as progress (the curves keep one point per epoch)."""
    print(f"epoch {epoch:.2f}/{epochs}: accuracy {accuracy:.4f}, test_loss {test_loss:.4f}", flush=True)
    report_progress(epoch / epochs, f"epoch {epoch:.2f}/{epochs}: accuracy {accuracy:.4f}",
                    {"epoch": round(epoch, 2), "accuracy": accuracy, "test_loss": test_loss})


def run(input_path: str, output_path: str, params: dict) -> dict:
    params = resolve_params(params, PARAMS, "mnist_cnn.py")  # recorded with the run, defaults included
    epochs = int(params["epochs"])
    batch_size = int(params["batch_size"])
    learning_rate = float(params["learning_rate"])
    seed = int(params["seed"])
    wanted = params["device"]
    device = torch.device("cuda" if wanted == "auto" and torch.cuda.is_available() else
                          "cpu" if wanted == "auto" else wanted)
    if not output_path:
        raise ValueError("mnist_cnn needs an output: the model table to write (e.g. models/mnist_cnn)")
    settings = training_settings(params, device)  # a bad precision or smoothing is refused before any work
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    evals_per_epoch, ema_decay = whole(params, "evals_per_epoch", 1), share(params, "ema_decay")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    started = time.perf_counter()
    train_x, train_y = load_split(input_path, "train", int(params["limit"]))
    test_x, test_y = load_split(input_path, "test")
    load_s = time.perf_counter() - started
    print(f"loaded {len(train_x)} training and {len(test_x)} test images in {load_s:.2f}s; device {device}",
          flush=True)

    check_batch(batch_size, len(train_x))
    model = Normalized(MnistCNN()).to(device)
    optimizer = adam(model, learning_rate)
    step = training_step(model, optimizer, settings)
    averaged = weight_average(model, ema_decay)
    scored = averaged.module if averaged is not None else model
    per_epoch = (len(train_x) + batch_size - 1) // batch_size
    scheduler = one_cycle(optimizer, learning_rate, epochs * per_epoch)
    midway_at = scoring_points(per_epoch, evals_per_epoch)
    augment = bool(params["augment"])
    history = []
    train_seconds = 0.0
    log_every = int(params["log_every"])  # batches between points of the batch_loss curve
    batches = 0
    for epoch in range(epochs):
        model.train()
        epoch_started = time.perf_counter()
        order = torch.randperm(len(train_x), generator=generator)
        loss_sum, scoring_s = 0.0, 0.0
        for number, start in enumerate(range(0, len(order), batch_size), 1):
            index = order[start: start + batch_size]
            x = train_x[index].float().div_(255)
            if augment:
                x = random_affine(x, generator)
            loss = step(x.to(device), train_y[index].to(device))
            scheduler.step()
            if averaged is not None:
                averaged.update()
            batch_loss = loss.item()
            loss_sum += batch_loss * len(index)
            batches += 1
            if log_every and batches % log_every == 0:
                log_metrics({"batch_loss": batch_loss}, step=batches)
            if number in midway_at:
                scoring_started = time.perf_counter()
                midway(epoch + number / per_epoch, epochs, *evaluate(scored, test_x, test_y, device))
                model.train()
                scoring_s += time.perf_counter() - scoring_started
        epoch_seconds = time.perf_counter() - epoch_started - scoring_s
        train_seconds += epoch_seconds
        accuracy, test_loss = evaluate(scored, test_x, test_y, device)
        history.append(end_epoch(epoch, epochs, loss_sum / len(train_x), accuracy, test_loss, len(train_x),
                                 epoch_seconds))

    final = history[-1]
    labels = params.get("labels") or [str(i) for i in range(10)]
    metrics = {"accuracy": final["accuracy"], "test_loss": final["test_loss"], "train_loss": final["train_loss"],
               "epochs": epochs, "train_images": len(train_x), "test_images": len(test_x),
               "images_per_s": round(len(train_x) * epochs / train_seconds)}
    model = scored.cpu().to(memory_format=torch.contiguous_format)  # saved and served in the usual layout
    saved = save_model(model, output_path, torch.zeros(1, 1, 28, 28), labels=labels,
                       params={"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
                               "seed": seed, "augment": augment, "device": str(device),
                               "ema_decay": ema_decay},
                       metrics=metrics, scores="logits")
    return {**metrics, "load_seconds": round(load_s, 3), "train_seconds": round(train_seconds, 2),
            "history": history, "model_uri": saved["uri"], "model_version": saved["version"]}
