"""Streaming training and batch predictions on Daft, against the two-step chain and a plain loop.

In one run, on Fashion-MNIST (Debian's ``dataset-fashion-mnist``, installed here if missing):
- ``mnist_e2e.py`` (raw IDX files -> Daft plan -> PyTorch, nothing written in between) on 1x the training images
  (2 epochs) and 10x (the files repeated, uncompressed; 1 epoch): peak RSS of the process, training images/s;
- beside it, the two-step chain on the same files: ``mnist_clean.py`` (ingest into Lance) then ``mnist_cnn.py``
  (train), in one process: ingest seconds, peak RSS, training images/s;
- batch predictions over the 70,000 images: ``mnist_predict.py`` on Daft's native runner (reads Lance, scores,
  writes a new dataset) against a plain loop calling the same model on the same batches in one process.

Goals: peak RSS at 10x under 1.3x the 1x figure; e2e training throughput at least 80% of the chain's; batch
predictions at least 70% of the plain loop. Each training run is a fresh process, so peaks do not mix.
Run: ``.venv/bin/python bench/bench_stream.py [--scale 10] [--quick]`` (``--quick``: 2,000 training and 500 test
images, as bench_pipeline.py's --quick picks them, repeated twice; the test suite's check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "mnist"), str(ROOT / "bench")]

from bench_pipeline import FASHION, ensure_fashion, quick_source  # noqa: E402

PREDICT_BATCH = 256


def repeated(source: Path, target: Path, times: int) -> Path:
    """The training files repeated ``times`` over (raw IDX, so the chunks are read in parallel); test as is."""
    import idx

    target.mkdir(parents=True, exist_ok=True)
    for split, (image_name, label_name) in idx.SPLITS.items():
        images = idx.read_images(idx.find(source, image_name))
        labels = idx.read_labels(idx.find(source, label_name))
        copies = times if split == "train" else 1
        with open(target / image_name, "wb") as out:
            out.write(struct.pack(">IIII", idx.IMAGE_MAGIC, len(images) * copies, 28, 28))
            for _ in range(copies):
                out.write(images.tobytes())
        with open(target / label_name, "wb") as out:
            out.write(struct.pack(">II", idx.LABEL_MAGIC, len(labels) * copies))
            for _ in range(copies):
                out.write(labels.tobytes())
    return target


def in_child(role: str, **args: str) -> dict:
    """Run one role of this file in a fresh process (which reports its own peak RSS); its JSON answer."""
    done = subprocess.run([sys.executable, __file__, "--role", role, "--args", json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{role} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _figures(result: dict, wall: float) -> dict:
    """Training images/s of the best epoch (this machine's figures wander by a fifth from run to run, and the
    first epoch carries one-time costs) and of the whole run; files-to-model seconds; peak RSS."""
    import resource

    return {"best_epoch": max(h["images_per_s"] for h in result["history"]), "overall": result["images_per_s"],
            "wall_seconds": wall, "accuracy": result["accuracy"], "images": result["train_images"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def role_e2e(files: str, model: str, epochs: str) -> dict:
    import mnist_e2e

    started = time.perf_counter()
    result = mnist_e2e.run(files, model, {"epochs": int(epochs), "augment": False})
    return _figures(result, time.perf_counter() - started)


def role_chain(files: str, dataset: str, model: str, epochs: str) -> dict:
    import mnist_clean
    import mnist_cnn

    started = time.perf_counter()
    mnist_clean.run(files, dataset, {})
    result = mnist_cnn.run(dataset, model, {"epochs": int(epochs), "augment": False})
    return _figures(result, time.perf_counter() - started)


def role_predict(dataset: str, model: str) -> dict:
    """Daft's native runner through the task script, then the plain loop over the same batches."""
    import lance
    import mnist_predict
    import numpy as np
    import torch

    from ai_platform.sdk.models import load_program, read_model

    output = str(Path(dataset).with_name("predictions.lance"))
    started = time.perf_counter()
    daft_result = mnist_predict.run(dataset, output, {"model": model, "batch_size": PREDICT_BATCH})
    daft_seconds = time.perf_counter() - started

    torch.set_num_threads(1)  # as the UDF does: one thread per worker, the workers in parallel
    home = os.environ["AIP_HOME"]
    program = load_program(read_model(f"{home}/models/{model}.lance"), "cpu")
    started = time.perf_counter()
    predictions, rows = [], 0
    with torch.inference_mode():
        for batch in lance.dataset(dataset).to_batches(columns=["image"], batch_size=PREDICT_BATCH):
            pixels = np.asarray(batch.column("image").flatten(), dtype=np.float32).reshape(-1, 1, 28, 28) / 255
            confidence, prediction = torch.softmax(program(torch.from_numpy(pixels)), 1).max(1)
            predictions.append(prediction.numpy())
            rows += len(prediction)
    loop_seconds = time.perf_counter() - started
    return {"rows": daft_result["rows"], "daft_seconds": daft_seconds, "loop_seconds": loop_seconds,
            "loop_rows": rows, "accuracy": daft_result["accuracy"]}


def main(scale: int, quick: bool = False) -> None:
    if not quick and not ensure_fashion():
        raise SystemExit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    os.environ["AIP_HOME"] = str(work / "home")
    try:
        source, data = quick_source(work) if quick else (FASHION, "Fashion-MNIST")
        scaled = repeated(source, work / f"x{scale}", scale)
        rows = {}
        for label, files, epochs in (("1x", source, 2), (f"{scale}x", scaled, 1)):
            rows[f"e2e {label}"] = in_child("e2e", files=str(files), model=str(work / f"e2e_{label}.lance"),
                                            epochs=str(epochs))
            rows[f"chain {label}"] = in_child("chain", files=str(files), dataset=str(work / f"clean_{label}.lance"),
                                              model=str(work / f"cnn_{label}.lance"), epochs=str(epochs))
            shutil.rmtree(work / f"clean_{label}.lance", ignore_errors=True)
        print(f"Training on {data} (1x: 2 epochs, {scale}x: 1; no augmentation; 2 CPU cores), each run a fresh "
              "process. Files-to-model seconds include the chain's ingest:")
        print(f"    {'run':<11}{'images':>9}{'best epoch img/s':>18}{'overall img/s':>15}{'files->model s':>16}"
              f"{'peak RSS MB':>13}{'accuracy':>10}")
        for name, r in rows.items():
            print(f"    {name:<11}{r['images']:>9}{r['best_epoch']:>18}{r['overall']:>15}{r['wall_seconds']:>16.1f}"
                  f"{r['peak_rss_mb']:>13.0f}{r['accuracy']:>10.4f}")
        one, many = rows["e2e 1x"], rows[f"e2e {scale}x"]
        print(f"    e2e peak RSS {scale}x / 1x: {many['peak_rss_mb'] / one['peak_rss_mb']:.2f} (goal < 1.3)")
        for label in ("1x", f"{scale}x"):
            e2e, chain = rows[f"e2e {label}"], rows[f"chain {label}"]
            print(f"    e2e / chain at {label}: training throughput {e2e['best_epoch'] / chain['best_epoch']:.2f} "
                  f"(best epoch; goal >= 0.8), files to model {chain['wall_seconds'] / e2e['wall_seconds']:.2f}x "
                  f"as fast")

        # Batch predictions: all the images (70,000 at full size) ingested once, the 1x chain's model saved under
        # the home.
        dataset = str(work / "fashion.lance")
        import mnist_clean

        mnist_clean.run(str(source), dataset, {})
        (work / "home" / "models").mkdir(parents=True, exist_ok=True)
        shutil.copytree(work / "cnn_1x.lance", work / "home" / "models" / "fashion.lance")
        predicted = in_child("predict", dataset=dataset, model="fashion")
        daft_rate = predicted["rows"] / predicted["daft_seconds"]
        loop_rate = predicted["loop_rows"] / predicted["loop_seconds"]
        print(f"Batch predictions over {predicted['rows']} images ({PREDICT_BATCH} per forward pass):")
        print(f"    mnist_predict.py, Daft native runner (read, score, write Lance): {daft_rate:8.0f} images/s "
              f"(accuracy {predicted['accuracy']:.4f})")
        print(f"    plain loop, one process, same batches (read, score):             {loop_rate:8.0f} images/s")
        print(f"    Daft / plain loop: {daft_rate / loop_rate:.2f} (goal >= 0.7)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="how many times the training files are repeated")
    parser.add_argument("--role", default="main", choices=["main", "e2e", "chain", "predict"])
    parser.add_argument("--args", default="{}")
    parser.add_argument("--quick", action="store_true", help="2,000 + 500 images, repeated twice (the test suite's "
                        "check)")
    options = parser.parse_args()
    if options.role == "main":
        main(2 if options.quick else options.scale, options.quick)
    else:
        roles = {"e2e": role_e2e, "chain": role_chain, "predict": role_predict}
        print(json.dumps(roles[options.role](**json.loads(options.args))))
