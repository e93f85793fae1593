"""Local serving vs Ray Serve replicas, side by side: what the Ray path costs.

One run: a local Ray head, storage_svc, two inference_svc processes (``--serving local`` and ``--serving ray``) and
a gateway in front of each; the same TorchScript MNIST CNN; closed-loop clients at 1 and 32 over OIP gRPC and over
REST predict. Ray Serve runs with 1 and 2 replicas (the model is reloaded between). On a 2-core machine the point is
the overhead of the extra hop (inference_svc -> DeploymentHandle -> replica), not scaling.
Run: ``.venv/bin/python bench/bench_serving_ray.py [--seconds 5] [--quick]`` (``--quick``: half a second per load
and Ray Serve with 1 replica only; the test suite's check).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from loadgen import run_load, stop_and_clean, wait_port  # noqa: E402

from ai_platform.core.ports import free_port  # noqa: E402

CONCURRENCY = (1, 32)


def load(addr: str, **parameters: int | float) -> None:
    import grpc

    from ai_platform.core.wire import encode_parameters
    from ai_platform.protos.inference import grpc_service_pb2 as pb
    from ai_platform.protos.inference import grpc_service_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="cnn", parameters=encode_parameters(parameters)), timeout=300)


def main(seconds: float, quick: bool = False) -> None:
    import torch

    from ai_platform.cli.ray_cluster import start_local_head
    from ai_platform.sdk.models import save_model
    from mnist.model import MnistCNN

    work = Path(tempfile.mkdtemp(prefix="bench-serving-ray-"))
    home = work / ".ai_platform"
    torch.manual_seed(0)
    save_model(MnistCNN(), str(home / "models/cnn.lance"), torch.randn(1, 1, 28, 28), labels=list(range(10)))
    ray_dir = tempfile.mkdtemp(prefix="bench-ray-")
    head = start_local_head(num_cpus=4, temp_dir=ray_dir)
    env = {**os.environ, "AIP_HOME": str(home), "PYTHONPATH": str(ROOT), "AIP_LOG_LEVEL": "warning"}
    ports = {name: free_port() for name in ("storage", "local", "ray", "gw_local", "gw_ray")}

    def service(module: str, port: int, *args: str, **extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, "--addr", f"127.0.0.1:{port}", "--metrics-addr",
                                 f"127.0.0.1:{free_port()}", *args], env={**env, **extra}, cwd=ROOT)

    storage = f"127.0.0.1:{ports['storage']}"
    procs = [service("storage_svc", ports["storage"])]
    procs += [service("inference_svc", ports["local"], "--storage-addr", storage),
              service("inference_svc", ports["ray"], "--storage-addr", storage, "--serving", "ray",
                      "--serve-address", head.gcs_address, "--replica-num-cpus", "1")]
    for backend in ("local", "ray"):
        procs.append(service("gateway", ports[f"gw_{backend}"], AIP_STORAGE_ADDR=storage,
                             AIP_INFERENCE_ADDR=f"127.0.0.1:{ports[backend]}"))
    results: dict[tuple[str, str, int], dict] = {}
    try:
        for port in ports.values():
            wait_port(port)
        setups = [("local", "local", {}), ("ray, 1 replica", "ray", {"replicas": 1}),
                  ("ray, 2 replicas", "ray", {"replicas": 2})]
        if quick:
            setups.pop()
            print("ray, 2 replicas: left out in --quick (moving the model onto a second replica takes ~10 s "
                  "on 2 cores)", flush=True)
        for label, backend, parameters in setups:
            load(f"127.0.0.1:{ports[backend]}", **parameters)
            for clients in CONCURRENCY:
                results[(label, "grpc", clients)] = run_load("grpc", f"127.0.0.1:{ports[backend]}", clients, seconds)
                results[(label, "rest", clients)] = run_load(
                    "http", f"http://127.0.0.1:{ports[f'gw_{backend}']}/api/v1/models/cnn/predict", clients, seconds)
    finally:
        stop_and_clean(procs, work)  # inference_svc deletes its Ray Serve applications as it stops
        head.stop()
        shutil.rmtree(ray_dir, ignore_errors=True)
    print(f"closed-loop clients, {seconds:g}s each; client, services and Ray on the same machine "
          f"({os.cpu_count()} cores):")
    print(f"    {'serving':<18}{'path':<11}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs local':>10}")
    for (label, path, clients), r in results.items():
        local = results[("local", path, clients)]["rps"]
        print(f"    {label:<18}{path:<11}{clients:>8}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['rps'] / local:>9.2f}x")
    for path in ("grpc", "rest"):
        best = max(r["rps"] for (label, p, clients), r in results.items()
                   if label.startswith("ray") and p == path and clients == 32)
        local = results[("local", path, 32)]["rps"]
        print(f"{path} at 32 clients: local is {local / best:.2f}x the best Ray Serve figure (goal: within 2x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="half a second per load, 1 replica only "
                        "(the test suite's check)")
    args = parser.parse_args()
    main(0.5 if args.quick else args.seconds, args.quick)
