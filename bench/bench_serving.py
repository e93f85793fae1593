"""Serving side by side: the platform against MLServer and a seed-style FastAPI server, same model, same request.

In one run, on the same 2 cores, each server in its own process:
- ours: OIP gRPC straight to inference_svc; REST ``POST /api/v1/models/cnn/predict`` and OIP REST
  ``POST /v2/models/cnn/infer`` through the gateway (a separate process, reaching inference over its Unix
  socket as under ``aip up``), and REST predict through a second gateway that reaches it over gRPC;
- MLServer (the newest from the registry, in a virtual environment created under ``.bench/mlserver`` on first
  use and reused), with a TorchScript runtime (``bench/mlserver_runtime.py``) and MLServer's own adaptive
  batching: OIP REST and OIP gRPC;
- the seed's way: one FastAPI process, JSON in, one forward per request;
- for scale: the compute ceiling (the model alone in-process at batch 1 and 32) and the transport ceiling (a
  bare grpc.aio server answering ModelInfer without a model).
REST load comes from ``wrk`` (installed with apt if missing), gRPC load from one grpc.aio closed-loop generator
(bench/loadgen.py) for every gRPC server. 1 and 32 clients; ratios against MLServer on the same protocol.
Run: ``.venv/bin/python bench/bench_serving.py [--seconds 5] [--quick]``. ``--quick`` (the test suite's check):
half a second per load, MLServer left out (ratios against the seed-style server instead), and REST load from
bench/loadgen.py's HTTP generator when ``wrk`` is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_inference import compute_ceiling  # noqa: E402
from loadgen import run_load, stop_and_clean, wait_port  # noqa: E402

from ai_platform.core.ports import free_port  # noqa: E402

MLSERVER_ENV = ROOT / ".bench" / "mlserver"
CLIENTS = (1, 32)


def mlserver_python() -> Path:
    """MLServer's own environment (its protobuf and grpcio pins differ from ours), made once and reused."""
    python = MLSERVER_ENV / "bin" / "python"
    ready = MLSERVER_ENV / ".ready"
    if not ready.exists():
        import torch

        print(f"creating {MLSERVER_ENV} (MLServer and torch {torch.__version__}; once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_ENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "mlserver",
                        f"torch=={torch.__version__.split('+')[0]}"], check=True)
        ready.touch()
    return python


def ensure_wrk() -> str:
    if not shutil.which("wrk") and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk",
                       shell=True, check=False)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    return shutil.which("wrk") or "wrk"


def wrk_load(url: str, body: dict, clients: int, seconds: float, work: Path) -> dict:
    """req/s, p50 and p99 (ms) of a closed loop of ``clients`` keep-alive connections POSTing ``body``."""
    script = work / f"wrk-{abs(hash(url)) % 10**8}.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [[{json.dumps(body)}]]\n")
    done = subprocess.run([ensure_wrk(), f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds:g}s", "--latency",
                           "-s", str(script), url], capture_output=True, text=True, check=True)
    if "Non-2xx" in done.stdout:
        raise SystemExit(f"{url} answered errors under load:\n{done.stdout}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)$", done.stdout, re.M).groups()
        return float(value) * scale[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))
    return {"rps": rps, "p50_ms": percentile("50"), "p99_ms": percentile("99")}


def generator_load(url: str, body: dict, clients: int, seconds: float, work: Path) -> dict:
    """What :func:`wrk_load` measures, from bench/loadgen.py's HTTP generator (``--quick`` without wrk)."""
    return run_load("http", url, clients, seconds, body)


def start_mlserver(work: Path, program: Path, http_port: int, grpc_port: int) -> subprocess.Popen:
    folder = work / "mlserver"
    (folder / "cnn").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "mlserver_runtime.py", folder / "mlserver_runtime.py")
    (folder / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": free_port(), "parallel_workers": 0,
        "debug": False}))
    (folder / "cnn" / "model-settings.json").write_text(json.dumps({
        "name": "cnn", "implementation": "mlserver_runtime.TorchScriptRuntime", "max_batch_size": 32,
        "max_batch_time": 0.001, "parameters": {"uri": str(program)}}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = open(work / "mlserver.log", "wb")  # noqa: SIM115 - the server's output, read if it does not start
    return subprocess.Popen([str(mlserver_python().with_name("mlserver")), "start", str(folder)], cwd=folder, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def main(seconds: float, quick: bool = False) -> None:
    import numpy as np
    import torch

    from ai_platform.sdk.models import save_model
    from mnist.model import MnistCNN

    with_mlserver, with_wrk = not quick, not quick or shutil.which("wrk") is not None
    if with_wrk:
        ensure_wrk()
    else:
        print("wrk: not installed, left out in --quick; REST load from bench/loadgen.py's HTTP generator", flush=True)
    rest_load = wrk_load if with_wrk else generator_load
    if not with_mlserver:
        print("MLServer: left out in --quick (its own environment takes minutes to create); ratios against the "
              "seed-style FastAPI server instead", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    home = work / ".ai_platform"
    torch.manual_seed(0)
    model = MnistCNN().eval()
    model_uri, export_uri = str(home / "models/cnn.lance"), str(home / "models/cnn_export.lance")
    save_model(model, model_uri, torch.zeros(1, 1, 28, 28), labels=[str(i) for i in range(10)])
    save_model(model, export_uri, torch.zeros(1, 1, 28, 28), program_format="torch.export")
    program = work / "cnn.pt"
    torch.jit.save(torch.jit.script(model), str(program))

    ports = {name: free_port() for name in ("storage", "scheduler", "inference", "gateway")}
    echo, seed, ml_http, ml_grpc, grpc_gateway = (free_port() for _ in range(5))
    env = {**os.environ, "AIP_HOME": str(home), "PYTHONPATH": str(ROOT), "AIP_LOG_LEVEL": "warning",
           "AIP_INFERENCE_SOCKET": str(work / "inference.sock"),  # as `aip up` runs them, on one host
           **{f"AIP_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}}
    bench_inference = str(ROOT / "bench" / "bench_inference.py")
    procs = [subprocess.Popen([sys.executable, "-m", module, "--metrics-addr", f"127.0.0.1:{free_port()}"],
                              env=env, cwd=work) for module in ("storage_svc", "inference_svc")]
    procs += [subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=work),
              subprocess.Popen([sys.executable, "-m", "gateway", "--addr", f"127.0.0.1:{grpc_gateway}",
                                "--inference-socket", ""], env=env, cwd=work),
              subprocess.Popen([sys.executable, bench_inference, "--role", "echo", "--port", str(echo)], env=env),
              subprocess.Popen([sys.executable, bench_inference, "--role", "fastapi", "--port", str(seed),
                                "--target", model_uri], env=env)]
    try:
        if with_mlserver:
            procs.append(start_mlserver(work, program, ml_http, ml_grpc))
        for port in (*ports.values(), echo, seed, *((ml_http, ml_grpc) if with_mlserver else ()), grpc_gateway):
            if port != ports["scheduler"]:
                try:
                    wait_port(port, 180)
                except TimeoutError:
                    if port in (ml_http, ml_grpc):
                        log = (work / "mlserver.log").read_text()[-3000:]
                        raise SystemExit(f"MLServer did not start:\n{log}") from None
                    raise
        mlserver_version = ""
        if with_mlserver:
            mlserver_version = subprocess.run([str(mlserver_python()), "-c",
                                               "import mlserver; print(mlserver.__version__)"],
                                              capture_output=True, text=True, check=True).stdout.strip()
        image = np.random.default_rng(0).random(784).astype(np.float32).tolist()
        oip = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": image}]}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        paths = {  # name -> (protocol, how to load it)
            "ours, OIP gRPC": ("gRPC", lambda c, t: run_load("grpc", f"127.0.0.1:{ports['inference']}", c, t)),
            f"MLServer {mlserver_version}, OIP gRPC": (
                "gRPC", lambda c, t: run_load("grpc", f"127.0.0.1:{ml_grpc}", c, t)),
            "ours, REST predict": ("REST", lambda c, t: rest_load(f"{gateway}/api/v1/models/cnn/predict",
                                                               {"image": image}, c, t, work)),
            "ours, REST predict, gRPC hop": ("REST", lambda c, t: rest_load(
                f"http://127.0.0.1:{grpc_gateway}/api/v1/models/cnn/predict", {"image": image}, c, t, work)),
            "ours, OIP REST": ("OIP REST", lambda c, t: rest_load(f"{gateway}/v2/models/cnn/infer", oip, c, t, work)),
            f"MLServer {mlserver_version}, OIP REST": (
                "OIP REST", lambda c, t: rest_load(f"http://127.0.0.1:{ml_http}/v2/models/cnn/infer", oip, c, t,
                                                work)),
            "seed-style FastAPI, /predict": ("REST", lambda c, t: rest_load(f"http://127.0.0.1:{seed}/predict",
                                                                         {"image": image}, c, t, work)),
            "bare grpc.aio echo (transport)": ("gRPC", lambda c, t: run_load("grpc", f"127.0.0.1:{echo}", c, t)),
        }
        if not with_mlserver:
            paths = {name: path for name, path in paths.items() if not name.startswith("MLServer")}
        for _, load in paths.values():  # warm every server (model loads, first batches) before measuring
            load(8, min(seconds, 1.0))
        results = {(name, clients): load(clients, seconds) for clients in CLIENTS
                   for name, (_, load) in paths.items()}

        print("(a) compute ceiling, the model alone in-process, 1 thread:")
        for name, batch, ips in compute_ceiling(model_uri, export_uri, quick):
            if name in ("torchscript", "ts frozen") and batch in (1, 32):
                print(f"    {name:<13} batch {batch:>2}: {ips:8.0f} images/s")
        print(f"closed-loop clients, {seconds:g}s each; {'wrk' if with_wrk else 'one HTTP generator'} for REST, "
              f"one grpc.aio generator for gRPC; clients and servers share 2 cores:")
        print(f"    {'path':<34}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'vs MLServer' if with_mlserver else 'vs seed':>13}")
        if with_mlserver:
            peer = {"gRPC": f"MLServer {mlserver_version}, OIP gRPC",
                    **dict.fromkeys(("OIP REST", "REST"), f"MLServer {mlserver_version}, OIP REST")}
        else:
            peer = dict.fromkeys(("gRPC", "OIP REST", "REST"), "seed-style FastAPI, /predict")
        for clients in CLIENTS:
            for name, (protocol, _) in paths.items():
                r = results[(name, clients)]
                ratio = r["rps"] / results[(peer[protocol], clients)]["rps"]
                print(f"    {name:<34}{clients:>8}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                      f"{ratio:>12.2f}x")
        rps = {name: results[(name, 32)]["rps"] for name in paths}
        lone = {name: results[(name, 1)]["p50_ms"] for name in paths}
        print("goals:" if with_mlserver else "goals (those against MLServer left out with it):")
        against_mlserver = f"{rps['ours, OIP REST'] / rps[peer['OIP REST']]:.2f}x MLServer's (>= 3), "
        print(f"    32 clients: OIP REST {against_mlserver if with_mlserver else ''}"
              f"{rps['ours, OIP REST'] / rps['ours, REST predict']:.2f}x our REST predict (>= 1)")
        if with_mlserver:
            print(f"    32 clients: OIP gRPC {rps['ours, OIP gRPC'] / rps[peer['gRPC']]:.2f}x MLServer's (>= 4)")
        print(f"    1 client: REST predict p50 {lone['ours, REST predict']:.2f} ms (<= 1.0; the seed's single process: "
              f"{lone['seed-style FastAPI, /predict']:.2f} ms)")
        hop = lone["ours, REST predict, gRPC hop"] - lone["ours, REST predict"]
        print(f"the socket hop: at 1 client REST predict p50 {lone['ours, REST predict']:.2f} ms over inference's "
              f"socket, {lone['ours, REST predict, gRPC hop']:.2f} ms over gRPC ({hop:+.2f} ms a call for gRPC)")
    finally:
        stop_and_clean(procs, work)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="half a second per load, MLServer left out "
                        "(the test suite's check)")
    args = parser.parse_args()
    main(0.5 if args.quick else args.seconds, args.quick)
