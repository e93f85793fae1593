"""The MNIST pipeline at full size, on Fashion-MNIST (70,000 images, same IDX format as MNIST).

In one run: ingest (ours vs. a naive baseline that builds a Python list of 784 floats per image
and writes it with Daft, as the seed did): time, peak RSS and on-disk size; time to load the
training split into tensors; one training epoch's time and images/s; accuracy after 3 epochs on
Fashion-MNIST, on the held-out offline MNIST digits, and on canonical MNIST when it can be fetched.
The Fashion-MNIST files come from Debian's ``dataset-fashion-mnist`` (installed here if missing).
Run: ``.venv/bin/python bench/bench_pipeline.py [--quick]`` (``--quick``: 2,000 training and 500 test images of
Fashion-MNIST, or of the offline MNIST digits when it is not installed, and 1 epoch; the test suite's check).
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
QUICK_ROWS = {"train": 2_000, "test": 500}  # images per split in --quick


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


def in_subprocess(role: str, src: str, out: str, epochs: int = 3) -> dict:
    done = subprocess.run([sys.executable, __file__, "--role", role, "--src", src, "--out", out, "--epochs",
                           str(epochs)], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train(dataset: str, model: str, params: dict) -> dict:
    import mnist_cnn

    return mnist_cnn.run(dataset, model, params)


def train_fashion(src: str, out: str, epochs: int = 3) -> dict:
    """``epochs`` of mnist_cnn.py in a process of its own, as a task runs it: its figures and its peak RSS."""
    result = train(src, out, {"epochs": epochs, "augment": False})
    return {"history": result["history"], "accuracy": result["accuracy"], "train_images": result["train_images"],
            "peak_rss_mb": peak_rss_mb()}


def ensure_fashion() -> bool:
    if FASHION.is_dir():
        return True
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                       "dataset-fashion-mnist", shell=True, check=False)
    return FASHION.is_dir()


def quick_source(work: Path) -> tuple[Path, str]:
    """The first images of each split (QUICK_ROWS) as IDX files under ``work``, and what they are: Fashion-MNIST's,
    or the offline MNIST digits' when Fashion-MNIST is not installed (--quick installs nothing)."""
    import idx

    source, name = FASHION, "Fashion-MNIST"
    if not FASHION.is_dir():
        print(f"Fashion-MNIST: not installed, left out in --quick ({FASHION} is missing); the offline MNIST digits "
              "stand in", flush=True)
        source, name = work / "offline-digits", "offline MNIST digits"
        idx.offline_digits(source)
    target = work / "quick-idx"
    for split, rows in QUICK_ROWS.items():
        image_name, label_name = idx.SPLITS[split]
        idx.write_idx(target, idx.read_images(idx.find(source, image_name))[:rows],
                      idx.read_labels(idx.find(source, label_name))[:rows], split)
    return target, f"{name}, first {' + '.join(f'{n:,}' for n in QUICK_ROWS.values())}"


def main(quick: bool = False) -> None:
    import mnist_clean
    import mnist_cnn

    if not quick and not ensure_fashion():
        raise SystemExit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        source, data = quick_source(work) if quick else (FASHION, "Fashion-MNIST")
        epochs = 1 if quick else 3
        span = f"{epochs} epoch{'s' if epochs > 1 else ''}"
        ours = in_subprocess("ours", str(source), str(work / "fashion.lance"))
        naive = in_subprocess("naive", str(source), str(work / "naive.lance"))
        raw_mb = ours["rows"] * (784 + 1) / 1e6
        print(f"ingest of {data} ({ours['rows']} images; raw pixels + labels {raw_mb:.1f} MB):")
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

        fashion = in_subprocess("train", str(work / "fashion.lance"), str(work / "fashion_cnn.lance"), epochs)
        epoch = fashion["history"][0]
        print(f"one training epoch on {fashion['train_images']} images: {epoch['epoch_seconds']:.1f} s, "
              f"{epoch['images_per_s']} images/s (2 CPU cores); {span} peak at {fashion['peak_rss_mb']:.0f} MB "
              f"RSS (the training process)")
        print(f"accuracy after {span}, {data} test set: {fashion['accuracy']:.4f}")

        if quick:
            print("canonical MNIST: left out in --quick (a download); the offline MNIST digits instead", flush=True)
        fetch = {"mirrors": []} if quick else {"timeout_s": 3}
        digits = mnist_clean.run(str(work / "download"), str(work / "digits.lance"), fetch)
        trained = train(str(work / "digits.lance"), str(work / "digits_cnn.lance"),
                        {"epochs": epochs, "limit": QUICK_ROWS["train"] if quick else 0})
        where = "canonical MNIST test set" if digits["source"].startswith("canonical") else \
            "held-out offline MNIST digits" + ("" if quick else " (canonical mirrors unreachable)")
        print(f"accuracy after {span}, {where}: {trained['accuracy']:.4f} ({digits['source']})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="main", choices=["main", "ours", "naive", "train"])
    parser.add_argument("--src", default="")
    parser.add_argument("--out", default="")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the train role")
    parser.add_argument("--quick", action="store_true", help="2,000 + 500 images, 1 epoch (the test suite's check)")
    args = parser.parse_args()
    if args.role == "main":
        main(args.quick)
    elif args.role == "train":
        print(json.dumps(train_fashion(args.src, args.out, args.epochs)))
    else:
        roles = {"ours": ingest_ours, "naive": ingest_naive}
        print(json.dumps(roles[args.role](args.src, args.out)))
