"""TLS for gRPC on one host: the four services with mutual TLS and the token, a task whose worker reports over TLS,
the gateway and the clients over it; and every way it goes wrong said clearly (plaintext against TLS either way, a
certificate for another host, an expired certificate, a key that is not the certificate's), at start where it can."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import httpx
import pytest

from ai_platform.client import Client, SchedulerClient, StorageClient
from ai_platform.core.tls import TlsConfig, make_certificates
from tests.conftest import ROOT, ServiceProcess, free_port
from tests.task_scripts import write_scripts

TOKEN = "tls-t0ken"
SERVICES = {"storage": "storage_svc", "scheduler": "scheduler_svc", "inference": "inference_svc",
            "gateway": "gateway"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    hosts = {name: [name, "localhost", "127.0.0.1"] for name in (*SERVICES, "client")}
    made = make_certificates(directory, {**hosts, "elsewhere": ["elsewhere.example"]})
    made["expired"] = make_certificates(directory / "old", {"expired": ["localhost", "127.0.0.1"]},
                                        expired=True)["expired"]
    return made


def tls_env(files: dict) -> dict[str, str]:
    return {"AIP_TLS_CERT": str(files["cert"]), "AIP_TLS_KEY": str(files["key"]), "AIP_TLS_CA": str(files["ca"])}


@pytest.fixture(scope="module")
def platform(tmp_path_factory, certs):
    project = tmp_path_factory.mktemp("tls-project")
    write_scripts(project / "scripts")
    home = project / ".ai_platform"
    addrs = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    common = {"AIP_TOKEN": TOKEN, "AIP_TLS_CLIENT_CA": str(certs["client"]["ca"]),
              **{f"AIP_{n.upper()}_ADDR": a for n, a in addrs.items()}}
    client_tls = TlsConfig.load(**{k: str(v) for k, v in certs["client"].items()})
    started: list[ServiceProcess] = []
    try:
        for name, module in SERVICES.items():
            service = ServiceProcess(module, home, env={**common, **tls_env(certs[name])}, cwd=project,
                                     addr=addrs[name], health_tls=client_tls)
            started.append(service.start(timeout=60))
        yield {"addrs": addrs, "project": project, "home": home, "client_env": {**common, **tls_env(certs["client"])},
               **dict(zip(SERVICES, started, strict=True))}
    finally:
        for service in reversed(started):
            service.stop()


def test_the_whole_platform_over_mutual_tls(platform, monkeypatch):
    for key, value in platform["client_env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AIP_TLS_CLIENT_CA")
    with Client() as client:
        import pyarrow as pa

        client.write_dataset("points", pa.table({"x": [1.0, 2.0]}))
        # The scheduler resolves the input through storage over TLS; the worker reports over TLS.
        task = client.submit("tls-progress", "scripts/progress.py", "datasets/points", "", {"steps": 2, "pause": 0})
        done = client.wait(task["id"], timeout=60)
        assert done["status"] == "completed", (done["error"], "".join(client.logs(task["id"])))
        assert done["progress"]["fraction"] == 1.0
    with httpx.Client(base_url=f"http://{platform['addrs']['gateway']}", timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert http.get("/healthz").json()["status"] == "ok", "the gateway reaches every service over TLS"
        logs = http.get(f"/api/v1/tasks/{task['id']}/logs", params={"follow": "true"})
        assert "event: end" in logs.text and "event: error" not in logs.text
    log = platform["storage"].log()
    assert '"tls": "mutual"' in log


def test_plaintext_against_tls_is_refused_naming_tls(platform, monkeypatch):
    monkeypatch.setenv("AIP_TOKEN", TOKEN)
    lake = StorageClient(platform["addrs"]["storage"])  # no AIP_TLS_*: plaintext
    try:
        with pytest.raises(grpc.RpcError) as refused:
            lake.list()
    finally:
        lake.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    health = subprocess.run([str(ROOT / ".venv/bin/aip"), "health", "storage", "--addr", platform["addrs"]["storage"]],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "AIP_TOKEN": TOKEN})
    assert health.returncode == 1 and "TLS" in health.stdout and "plaintext" in health.stdout, health.stdout


def test_a_plaintext_scheduler_against_a_tls_storage_names_both(platform, tmp_path):
    scheduler = ServiceProcess("scheduler_svc", tmp_path / "state", cwd=platform["project"],
                               env={"AIP_TOKEN": TOKEN, "AIP_STORAGE_ADDR": platform["addrs"]["storage"]}).start()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AIP_TOKEN", TOKEN)
            tasks = SchedulerClient(scheduler.addr)
            try:
                with pytest.raises(grpc.RpcError) as refused:
                    tasks.submit("x", "scripts/trivial.py", input="datasets/points", timeout_s=0)
            finally:
                tasks.close()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"storage_svc at {platform['addrs']['storage']} is unavailable" in refused.value.details()
        assert "TLS" in refused.value.details()
    finally:
        scheduler.stop()


def test_a_certificate_for_another_host_is_refused_naming_tls(platform, certs, tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    storage = ServiceProcess("storage_svc", tmp_path / "home", env=tls_env(certs["elsewhere"]), addr=addr)
    storage.health_tls = TlsConfig.load(**{k: str(v) for k, v in certs["client"].items()})
    with pytest.raises(TimeoutError):
        storage.start(timeout=5)  # it serves, but no client that checks the name accepts it
    try:
        env = {**os.environ, **tls_env(certs["client"])}
        health = subprocess.run([str(ROOT / ".venv/bin/aip"), "health", "storage", "--addr", addr],
                                capture_output=True, text=True, timeout=60, env=env)
        assert health.returncode == 1 and "TLS" in health.stdout and "certificate" in health.stdout, health.stdout
    finally:
        storage.stop()


@pytest.mark.parametrize("problem", ["expired", "wrong key", "missing key", "unreadable"])
def test_unusable_tls_files_stop_a_service_at_start_naming_them(certs, tmp_path, problem):
    files = {"expired": tls_env(certs["expired"]),
             "wrong key": {**tls_env(certs["storage"]), "AIP_TLS_KEY": str(certs["gateway"]["key"])},
             "missing key": {"AIP_TLS_CERT": str(certs["storage"]["cert"])},
             "unreadable": {**tls_env(certs["storage"]), "AIP_TLS_CA": str(tmp_path / "nope.pem")}}[problem]
    done = subprocess.run([sys.executable, "-m", "storage_svc", "--home", str(tmp_path / "home"), "--addr",
                           f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **files})
    assert done.returncode == 2, done.stderr
    said = {"expired": "AIP_TLS_CERT", "wrong key": "is not the key of the certificate",
            "missing key": "AIP_TLS_CERT and AIP_TLS_KEY go together", "unreadable": "AIP_TLS_CA"}[problem]
    assert said in done.stderr and ("expired" in done.stderr or problem != "expired"), done.stderr


def test_tritonclient_connects_with_the_certificates(platform, certs):
    session = """
import json, sys, numpy as np, tritonclient.grpc as tc
ca, cert, key, addr, token = sys.argv[1:]
client = tc.InferenceServerClient(addr, ssl=True, root_certificates=ca, private_key=key, certificate_chain=cert)
print(json.dumps({"live": client.is_server_live(headers={"authorization": "Bearer " + token})}))
"""
    files = certs["client"]
    done = subprocess.run([sys.executable, "-c", session, str(files["ca"]), str(files["cert"]), str(files["key"]),
                           platform["addrs"]["inference"], TOKEN], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"live": true}'
