"""An S3-compatible server on loopback (moto's) for the tests of a lake on an object store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from tests.conftest import free_port

BUCKET = "lake"
HOME = f"s3://{BUCKET}/platform"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_region": "us-east-1"}


def without_aws_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


@dataclass
class S3Lake:
    endpoint: str
    fs: pafs.S3FileSystem  # to look at the bucket directly

    def options(self) -> dict[str, str]:
        return {**KEYS, "aws_endpoint": self.endpoint, "allow_http": "true"}

    def objects(self, prefix: str) -> list[str]:
        selector = pafs.FileSelector(f"{BUCKET}/platform/{prefix}", recursive=True, allow_not_found=True)
        return [i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]


def start_s3_server(log_path: Path, port: int | None = None, bucket: bool = True) -> tuple[subprocess.Popen, S3Lake]:
    """moto's S3 server on a free loopback port (or ``port``), with the bucket created unless told otherwise."""
    port = port or free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=without_aws_variables(),
        )
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise RuntimeError(f"the S3 server did not start:\n{log_path.read_text()}") from None
            time.sleep(0.2)
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
    if bucket:
        fs.create_dir(BUCKET)
    return server, S3Lake(f"http://127.0.0.1:{port}", fs)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)


