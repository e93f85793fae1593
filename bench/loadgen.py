"""Closed-loop load generators for the benchmarks, run in their own process so the client and server do
not share an interpreter: ``python bench/loadgen.py grpc|http TARGET CLIENTS SECONDS [BODY]`` prints JSON."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the inference stubs, for grpc_load


def wait_port(port: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def stop_and_clean(procs: list[subprocess.Popen], work: Path) -> None:
    """End the servers a benchmark started (SIGTERM, then SIGKILL after 30 s) and remove its folder."""
    stop(procs)
    shutil.rmtree(work, ignore_errors=True)


def stop(procs: list[subprocess.Popen]) -> None:
    """End the servers a benchmark started: SIGTERM, then SIGKILL after 30 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def summary(latencies: list[float], elapsed: float) -> dict:
    return {"rps": len(latencies) / elapsed, "p50_ms": pct(latencies, 50) * 1e3, "p99_ms": pct(latencies, 99) * 1e3}


async def grpc_load(addr: str, clients: int, seconds: float, model: str = "cnn") -> dict:
    """ModelInfer with one 28x28 float32 image as raw tensor bytes, as tritonclient sends it."""
    import grpc
    import numpy as np

    from ai_platform.protos.inference import grpc_service_pb2 as pb
    from ai_platform.protos.inference import grpc_service_pb2_grpc

    image = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[image.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request)
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await stub.ModelInfer(request)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return summary(latencies, time.perf_counter() - started)


async def http_load(url: str, clients: int, seconds: float, payload: str = "") -> dict:
    """POST ``payload`` (JSON; by default {"image": [784 floats]}, the web page's request) over keep-alive HTTP/1.1
    connections.

    A minimal client on raw asyncio streams, so that the client's own cost does not cap the figures.
    """
    import numpy as np

    parsed = urllib.parse.urlsplit(url)
    body = (payload or json.dumps({"image": np.random.default_rng(0).random(784).astype(np.float32).tolist()})).encode()
    request = (f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        await reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")

    connections = [await asyncio.open_connection(parsed.hostname, parsed.port) for _ in range(clients)]
    await exchange(*connections[0])
    deadline = time.perf_counter() + seconds

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await exchange(reader, writer)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client(*c) for c in connections))
    elapsed = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return summary(latencies, elapsed)


def run_load(kind: str, target: str, clients: int, seconds: float, body: dict | None = None) -> dict:
    """req/s, p50 and p99 (ms) from a generator in a process of its own; ``body``: what http POSTs instead."""
    extra = [json.dumps(body)] if body is not None else []
    out = subprocess.run([sys.executable, __file__, kind, target, str(clients), str(seconds), *extra],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    kind, target, clients, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if kind == "grpc":
        print(json.dumps(asyncio.run(grpc_load(target, clients, seconds))))
    else:
        print(json.dumps(asyncio.run(http_load(target, clients, seconds, *sys.argv[5:6]))))
