"""Inference serving: the MNIST CNN over gRPC with adaptive batching, against its ceilings and a simple baseline.

Closed-loop load from a separate process with 1, 8 and 32 concurrent clients, each sending
one 28x28 float32 image per request (raw tensor bytes, as tritonclient sends them). In the
same run: (a) compute ceiling: in-process forward passes at batch 1, 8 and 32 (TorchScript,
its frozen oneDNN variant that the service runs for batches, torch.export, eager);
(b) transport ceiling: a bare grpc.aio server answering ModelInfer without a model;
(c) baseline: the model behind a plain FastAPI JSON endpoint, one forward per request.
Run: ``.venv/bin/python bench/bench_inference.py [--seconds 5] [--quick]`` (``--quick``: half a second per load
at 1 and 32 clients, a tenth of the forward passes; the test suite's check).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import run_load, stop_and_clean, wait_port  # noqa: E402

from ai_platform.core.ports import free_port  # noqa: E402

CONCURRENCY = (1, 8, 32)
QUICK_CONCURRENCY = (1, 32)


# -- servers used only by the benchmark ----------------------------------------------------

def serve_echo(port: int) -> None:
    """Transport ceiling: ModelInfer answered with a fixed 10-float response, no model, no batching."""
    import grpc

    from ai_platform.protos.inference import grpc_service_pb2 as pb
    from ai_platform.protos.inference import grpc_service_pb2_grpc

    answer = pb.ModelInferResponse(model_name="cnn", model_version="1", raw_output_contents=[bytes(40)])
    answer.outputs.add(name="output", datatype="FP32", shape=[1, 10])

    class Echo(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            return answer

    async def main() -> None:
        server = grpc.aio.server()
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_fastapi(port: int, model_uri: str) -> None:
    """Baseline: how simple demos serve — JSON in, one forward per request, JSON out."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from ai_platform.sdk.models import load_model

    torch.set_num_threads(1)
    model = load_model(model_uri)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict) -> dict:
        x = torch.tensor(body["image"], dtype=torch.float32).reshape(1, 1, 28, 28)
        with torch.inference_mode():
            probabilities = torch.softmax(model(x), dim=1)[0]
        return {"prediction": int(probabilities.argmax()), "probabilities": probabilities.tolist()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- the benchmark ----------------------------------------------------------------------------

def compute_ceiling(model_uri: str, export_uri: str, quick: bool = False) -> list[tuple[str, int, float]]:
    """images/s of each program at batch 1, 8 and 32 (``quick``: a tenth of the passes)."""
    import torch

    from ai_platform.sdk.models import load_model
    from mnist.model import MnistCNN

    torch.set_num_threads(1)
    rows = []
    eager = MnistCNN().eval()
    script = load_model(model_uri)
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(script.program.eval()))  # serves batches of 2+
    programs = (("torchscript", script), ("ts frozen", frozen), ("torch.export", load_model(export_uri)),
                ("eager", eager))
    for name, module in programs:
        for batch in (1, 8, 32):
            x = torch.randn(batch, 1, 28, 28)
            with torch.inference_mode():
                for _ in range(2 if quick else 10):
                    module(x)
                n, t0 = (300 if batch == 1 else 60) // (10 if quick else 1), time.perf_counter()
                for _ in range(n):
                    module(x)
                rows.append((name, batch, n * batch / (time.perf_counter() - t0)))
    return rows


def main(seconds: float, server_args: list[str], quick: bool = False) -> None:
    import torch

    from ai_platform.sdk.models import save_model
    from mnist.model import MnistCNN

    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    home = work / ".ai_platform"
    model_uri = str(home / "models/cnn.lance")
    torch.manual_seed(0)
    model = MnistCNN()
    save_model(model, model_uri, torch.randn(1, 1, 28, 28), labels=list(range(10)))  # TorchScript: what serves
    export_uri = str(home / "models/cnn_export.lance")
    save_model(model, export_uri, torch.randn(1, 1, 28, 28), program_format="torch.export")
    env = {**os.environ, "AIP_HOME": str(home), "PYTHONPATH": str(ROOT), "AIP_LOG_LEVEL": "warning"}
    storage_port, inference_port, echo_port, http_port = (free_port() for _ in range(4))
    procs = [
        subprocess.Popen([sys.executable, "-m", "storage_svc", "--addr", f"127.0.0.1:{storage_port}",
                          "--metrics-addr", f"127.0.0.1:{free_port()}"], env=env, cwd=ROOT),
        subprocess.Popen([sys.executable, "-m", "inference_svc", "--addr", f"127.0.0.1:{inference_port}",
                          "--metrics-addr", f"127.0.0.1:{free_port()}", "--storage-addr",
                          f"127.0.0.1:{storage_port}", *server_args], env=env, cwd=ROOT),
        subprocess.Popen([sys.executable, __file__, "--role", "echo", "--port", str(echo_port)], env=env, cwd=ROOT),
        subprocess.Popen([sys.executable, __file__, "--role", "fastapi", "--port", str(http_port), "--target",
                          f"{model_uri}"], env=env, cwd=ROOT),
    ]
    try:
        for port in (storage_port, inference_port, echo_port, http_port):
            wait_port(port)
        import grpc

        from ai_platform.protos.inference import grpc_service_pb2 as pb
        from ai_platform.protos.inference import grpc_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{inference_port}") as channel:
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="cnn"))

        print("(a) compute ceiling, in-process, 1 thread:")
        for name, batch, ips in compute_ceiling(model_uri, export_uri, quick):
            print(f"    {name:<13} batch {batch:>2}: {ips:8.0f} images/s")
        results = {}
        concurrency = QUICK_CONCURRENCY if quick else CONCURRENCY
        for clients in concurrency:
            results[("inference_svc", clients)] = run_load("grpc", f"127.0.0.1:{inference_port}", clients, seconds)
            results[("grpc echo", clients)] = run_load("grpc", f"127.0.0.1:{echo_port}", clients, seconds)
            results[("fastapi json", clients)] = run_load("http", f"http://127.0.0.1:{http_port}/predict", clients,
                                                          seconds)
        print(f"closed-loop clients, {seconds:g}s each, client and servers on the same 2 cores:")
        print(f"    {'server':<26}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        for (server, clients), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            label = {"inference_svc": "inference_svc (batching)", "grpc echo": "(b) bare grpc.aio echo",
                     "fastapi json": "(c) FastAPI JSON baseline"}[server]
            print(f"    {label:<26}{clients:>8}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
        top = concurrency[-1]
        ours, echo, base = (results[(s, top)]["rps"] for s in ("inference_svc", "grpc echo", "fastapi json"))
        print(f"at {top} clients: {ours / echo:.0%} of the transport ceiling, {ours / base:.1f}x the baseline; "
              f"p99 at 1 client {results[('inference_svc', 1)]['p99_ms']:.2f} ms")
        with grpc.insecure_channel(f"127.0.0.1:{inference_port}") as channel:
            stats = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(name="cnn")).model_stats[0]
        sizes = {b.batch_size: b.compute_infer.count for b in stats.batch_stats}
        print(f"batches formed: {stats.execution_count} passes for {stats.inference_count} images; "
              f"largest batch {max(sizes)}; mean {stats.inference_count / stats.execution_count:.1f} images/pass")
    finally:
        stop_and_clean(procs, work)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--role", default="main", choices=["main", "echo", "fastapi"])
    parser.add_argument("--target", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--server-args", default="", help="extra inference_svc flags, e.g. '--torch-threads 2'")
    parser.add_argument("--quick", action="store_true", help="half a second per load, 1 and 32 clients "
                        "(the test suite's check)")
    args = parser.parse_args()
    if args.role == "echo":
        serve_echo(args.port)
    elif args.role == "fastapi":
        serve_fastapi(args.port, args.target)
    else:
        main(0.5 if args.quick else args.seconds, args.server_args.split(), args.quick)
