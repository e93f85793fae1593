"""REST predict through the gateway versus ModelInfer directly over gRPC: same model, 1 and 32 clients.

Prints req/s and p50/p99 for both and the gateway's added latency.
Run: ``.venv/bin/python bench/bench_gateway.py [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import run_load, stop_and_clean, wait_port  # noqa: E402

from ai_platform.core.ports import free_port  # noqa: E402


def main(seconds: float) -> None:
    import torch

    from ai_platform.sdk.models import save_model
    from mnist.model import MnistCNN

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    home = work / ".ai_platform"
    torch.manual_seed(0)
    save_model(MnistCNN().eval(), str(home / "models/cnn.lance"), torch.zeros(1, 1, 28, 28), labels=list(range(10)))
    ports = {name: free_port() for name in ("storage", "scheduler", "inference", "gateway")}
    env = {**os.environ, "AIP_HOME": str(home), "PYTHONPATH": str(ROOT), "AIP_LOG_LEVEL": "warning",
           **{f"AIP_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}}
    procs = [subprocess.Popen([sys.executable, "-m", module, "--metrics-addr", f"127.0.0.1:{free_port()}"],
                              env=env, cwd=work) for module in ("storage_svc", "inference_svc")]
    procs.append(subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=work))
    try:
        for name in ("storage", "inference", "gateway"):
            wait_port(ports[name])
        grpc_target = f"127.0.0.1:{ports['inference']}"
        rest_target = f"http://127.0.0.1:{ports['gateway']}/api/v1/models/cnn/predict"
        results = {}
        for clients in (1, 32):
            results[("gRPC ModelInfer", clients)] = run_load("grpc", grpc_target, clients, seconds)
            results[("REST predict", clients)] = run_load("http", rest_target, clients, seconds)
        print(f"closed-loop clients, {seconds:g}s each, everything on the same 2 cores:")
        print(f"    {'path':<18}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        for (path, clients), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print(f"    {path:<18}{clients:>8}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
        for clients in (1, 32):
            rest, direct = results[("REST predict", clients)], results[("gRPC ModelInfer", clients)]
            print(f"{clients} client(s): REST reaches {rest['rps'] / direct['rps']:.0%} of direct gRPC; "
                  f"gateway adds {rest['p50_ms'] - direct['p50_ms']:.2f} ms at p50")
    finally:
        stop_and_clean(procs, work)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    main(parser.parse_args().seconds)
