"""The MNIST pipeline at full size, on Fashion-MNIST (70,000 images, same IDX format as MNIST).

In one run: ingest (ours vs. a naive baseline that builds a Python list of 784 floats per image
and writes it with Daft, as the seed did): time, peak RSS and on-disk size; time to load the
training split into tensors; one training epoch's time and images/s; accuracy after 3 epochs on
Fashion-MNIST, on the held-out offline MNIST digits, and on canonical MNIST when it can be fetched.
The Fashion-MNIST files come from Debian's ``dataset-fashion-mnist`` (installed here if missing).
Run: ``.venv/bin/python bench/bench_pipeline.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "mnist"))
FASHION = Path("/usr/share/datasets/fashion-mnist")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def ingest_ours(src: str, out: str) -> dict:
    import mnist_clean

    started = time.perf_counter()
    result = mnist_clean.run(src, out, {})
    return {"seconds": time.perf_counter() - started, "rows": result["rows"], "peak_rss_mb": peak_rss_mb()}


def ingest_naive(src: str, out: str) -> dict:
    """The seed's way: every image a Python list of 784 floats, handed to Daft, written to Lance."""
    import daft
    import idx

    started = time.perf_counter()
    images, labels, splits = [], [], []
    for split, (image_name, label_name) in idx.SPLITS.items():
        for image, label in zip(idx.read_images(idx.find(Path(src), image_name)),
                                idx.read_labels(idx.find(Path(src), label_name)), strict=True):
            images.append([float(v) / 255.0 for v in image])
            labels.append(int(label))
            splits.append(split)
    daft.from_pydict({"image": images, "label": labels, "split": splits}).write_lance(out)
    return {"seconds": time.perf_counter() - started, "rows": len(labels), "peak_rss_mb": peak_rss_mb()}


def in_subprocess(role: str, src: str, out: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--role", role, "--src", src, "--out", out],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train(dataset: str, model: str, params: dict) -> dict:
    import mnist_cnn

    return mnist_cnn.run(dataset, model, params)


def train_fashion(src: str, out: str) -> dict:
    """3 epochs of mnist_cnn.py in a process of its own, as a task runs it: its figures and its peak RSS."""
    result = train(src, out, {"epochs": 3, "augment": False})
    return {"history": result["history"], "accuracy": result["accuracy"], "train_images": result["train_images"],
            "peak_rss_mb": peak_rss_mb()}


def ensure_fashion() -> bool:
    if FASHION.is_dir():
        return True
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                       "dataset-fashion-mnist", shell=True, check=False)
    return FASHION.is_dir()


def main() -> None:
    import mnist_clean
    import mnist_cnn

    if not ensure_fashion():
        raise SystemExit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        raw_mb = (70_000 * 784 + 70_000) / 1e6
        ours = in_subprocess("ours", str(FASHION), str(work / "fashion.lance"))
        naive = in_subprocess("naive", str(FASHION), str(work / "naive.lance"))
        print(f"ingest of Fashion-MNIST ({ours['rows']} images; raw pixels + labels {raw_mb:.1f} MB):")
        for name, r, path in (("ours (vectorised Arrow, uint8)", ours, "fashion.lance"),
                              ("naive (784 Python floats/image, Daft)", naive, "naive.lance")):
            print(f"    {name:<40}{r['seconds']:8.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                  f"on disk {dir_mb(work / path):7.1f} MB")
        print(f"    speed-up {naive['seconds'] / ours['seconds']:.0f}x; on disk "
              f"{dir_mb(work / 'fashion.lance') / raw_mb:.2f}x the raw size")

        started = time.perf_counter()
        images, _ = mnist_cnn.load_split(str(work / "fashion.lance"), "train")
        print(f"load the training split into tensors: {time.perf_counter() - started:.3f} s "
              f"({tuple(images.shape)}, {images.dtype})")

        fashion = in_subprocess("train", str(work / "fashion.lance"), str(work / "fashion_cnn.lance"))
        epoch = fashion["history"][0]
        print(f"one training epoch on {fashion['train_images']} images: {epoch['epoch_seconds']:.1f} s, "
              f"{epoch['images_per_s']} images/s (2 CPU cores); 3 epochs peak at {fashion['peak_rss_mb']:.0f} MB "
              f"RSS (the training process)")
        print(f"accuracy after 3 epochs, Fashion-MNIST test set: {fashion['accuracy']:.4f}")

        digits = mnist_clean.run(str(work / "download"), str(work / "digits.lance"), {"timeout_s": 3})
        trained = train(str(work / "digits.lance"), str(work / "digits_cnn.lance"), {"epochs": 3})
        where = "canonical MNIST test set" if digits["source"].startswith("canonical") else \
            "held-out offline MNIST digits (canonical mirrors unreachable)"
        print(f"accuracy after 3 epochs, {where}: {trained['accuracy']:.4f} ({digits['source']})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="main", choices=["main", "ours", "naive", "train"])
    parser.add_argument("--src", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.role == "main":
        main()
    else:
        roles = {"ours": ingest_ours, "naive": ingest_naive, "train": train_fashion}
        print(json.dumps(roles[args.role](args.src, args.out)))
