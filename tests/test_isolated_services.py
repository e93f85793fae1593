"""Level 3's deployment shape on one machine: each of the four services in its own mount namespace (a private tmpfs
over all the tests' files, its own state inside it), sharing nothing but the network and an S3-compatible lake, with
AIP_TOKEN set; the MNIST demo runs through the CLI and the model is used through the gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import httpx
import pytest

from tests.conftest import ROOT, ServiceProcess, free_port
from tests.s3lake import HOME, start_s3_server, stop, without_aws_variables

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                                reason="each service needs its own mount namespace (unshare, as root)")
TOKEN = "isolated-t0ken"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    work = tmp_path_factory.mktemp("isolated")
    server, s3 = start_s3_server(work / "s3.log")
    addrs = {name: f"127.0.0.1:{free_port()}" for name in ("storage", "scheduler", "inference", "gateway")}
    hidden = tmp_path_factory.getbasetemp()  # every file the tests make, this module's included
    env = {"AIP_HOME": HOME, "AIP_STORAGE_OPTIONS": json.dumps(s3.options()), "AIP_TOKEN": TOKEN,
           "AIP_SCRIPT_ROOTS": str(ROOT / "mnist"),
           **{f"AIP_{n.upper()}_ADDR": a for n, a in addrs.items()}}
    started: list[ServiceProcess] = []
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in os.environ:
                if name.startswith("AWS_"):
                    patch.delenv(name)
            for module, name in (("storage_svc", "storage"), ("scheduler_svc", "scheduler"),
                                 ("inference_svc", "inference"), ("gateway", "gateway")):
                service = ServiceProcess(module, work / name, env={**env, "AIP_STATE_DIR": str(work / name)},
                                         cwd=ROOT, addr=addrs[name], private_dirs=[hidden])
                started.append(service.start(timeout=60))
        yield {"env": env, "s3": s3, "work": work, "hidden": hidden, **dict(zip(addrs, started, strict=True))}
    finally:
        for service in reversed(started):
            service.stop()
        stop(server)


def test_each_service_sees_only_its_own_files(platform):
    for name in ("storage", "scheduler", "inference", "gateway"):
        pid = platform[name].proc.pid
        mounts = open(f"/proc/{pid}/mountinfo").read()
        assert f" {platform['hidden']} " in mounts, f"{name} has a private tmpfs over the tests' files"
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"), f"{name} has its own mounts"
    assert not (platform["work"] / "scheduler" / "scheduler.db").exists(), "its state stays inside its namespace"


def test_the_mnist_demo_runs_through_the_cli_and_serves_through_the_gateway(platform):
    env = {**without_aws_variables(), **platform["env"]}
    demo = subprocess.run([str(ROOT / ".venv/bin/aip"), "demo", "mnist", "--epochs", "1", "--limit", "1500"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "serving mnist_cnn" in demo.stdout
    assert platform["s3"].objects("datasets/mnist_clean.lance") and platform["s3"].objects("models/mnist_cnn.lance")
    url = f"http://{platform['gateway'].addr}"
    with httpx.Client(base_url=url, timeout=30) as anonymous:
        assert anonymous.get("/api/v1/models").status_code == 401
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        models = http.get("/api/v1/models").json()
        assert [m["id"] for m in models] == ["mnist_cnn"] and models[0]["path"].startswith(HOME)
        answer = http.post("/api/v1/models/mnist_cnn/predict", json={"image": [0.0] * 784})
        assert answer.status_code == 200, answer.text
        assert 0 <= answer.json()["prediction"] <= 9 and len(answer.json()["probabilities"]) == 10
        tasks = http.get("/api/v1/tasks").json()
        assert {t["name"]: t["status"] for t in tasks} == {"mnist_clean": "completed", "mnist_cnn": "completed",
                                                           "mnist_serve": "completed"}
