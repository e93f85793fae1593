"""`aip` and the Python client, against platforms that `aip up` really starts with AIP_TOKEN set, as a team runs
it (every command and the client send the token from the environment)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ai_platform.cli import launcher
from ai_platform.client import Client
from tests.conftest import ROOT, free_port

AIP = str(Path(sys.executable).with_name("aip"))


def aip(*args: str, env: dict | None = None, cwd: Path | None = None, check: bool = True, timeout: float = 300):
    done = subprocess.run([AIP, *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check:
        assert done.returncode == 0, f"aip {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def port_args(ports: dict[str, int]) -> list[str]:
    return [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]


def alive(pid: int) -> bool:
    try:
        return b"Z" != Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False


TOKEN = "cli-t0ken"


@pytest.fixture(scope="module", autouse=True)
def token():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIP_TOKEN", TOKEN)
        yield TOKEN


@pytest.fixture(scope="module")
def running(tmp_path_factory, token):
    project = tmp_path_factory.mktemp("cli-project")
    (project / "mnist").symlink_to(ROOT / "mnist")
    home = project / ".ai_platform"
    ports = {name: free_port() for name in ("storage", "scheduler", "inference", "gateway")}
    started = aip("up", "--detach", "--home", str(home), *port_args(ports), cwd=project,
                  env={"AIP_SCRIPT_ROOTS": f"{project}{os.pathsep}{ROOT / 'mnist'}"})
    state = launcher.read_state(home)
    env = {**state.env(), "AIP_TOKEN": token}
    yield {"home": home, "state": state, "env": env, "project": project, "up": started.stdout}
    aip("down", "--home", str(home), check=False)


def test_up_prints_the_urls_and_status_reports_each_service(running):
    state = running["state"]
    assert f"http://{state.addrs['gateway']}/" in running["up"] and "REST docs" in running["up"]
    assert state.addrs["storage"] in running["up"]
    rows = json.loads(aip("status", "--home", str(running["home"]), "--json").stdout)
    assert [r["service"] for r in rows] == ["storage_svc", "scheduler_svc", "inference_svc", "gateway"]
    assert all(r["healthy"] == "healthy" and alive(r["pid"]) for r in rows)
    assert aip("up", "--detach", "--home", str(running["home"]), check=False).returncode == 1


def test_demo_mnist_ends_with_a_served_model_that_predicts(running):
    done = aip("demo", "mnist", "--epochs", "1", "--limit", "1500", env=running["env"], cwd=running["project"])
    assert "serving mnist_cnn version 1" in done.stdout and "accuracy" in done.stdout
    assert f"http://{running['state'].addrs['gateway']}/" in done.stdout
    from ai_platform.client import Client

    with Client(running["state"].addrs["storage"], running["state"].addrs["scheduler"],
                running["state"].addrs["inference"]) as client:
        test = client.read_dataset("mnist_clean", columns=["image", "label"], filter="split = 'test'", limit=100)
        images = test.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 28, 28)
        scores = client.predict("mnist_cnn", images.astype(np.float32) / 255)
        assert scores.shape == (100, 10)
        assert (scores.argmax(1) == test.column("label").to_numpy()).mean() > 0.7


def test_lake_and_task_commands(running):
    env = running["env"]
    datasets = json.loads(aip("datasets", "ls", "--json", env=env).stdout)
    assert "mnist_clean" in [d["id"] for d in datasets]
    shown = json.loads(aip("datasets", "show", "mnist_clean", "--json", env=env).stdout)
    assert shown["schema"]["image"] == "fixed_size_list<item: uint8>[784]"
    assert json.loads(aip("models", "versions", "mnist_cnn", "--json", env=env).stdout)[0]["version"] == 1
    deployed = aip("models", "deploy", "mnist_cnn", "--max-batch-size", "8", env=env).stdout
    assert deployed.startswith("model mnist_cnn version 1: READY"), deployed
    aliased = aip("models", "alias", "mnist_cnn", "production", "1", env=env).stdout
    assert aliased.strip() == "model mnist_cnn aliases: production -> 1"
    assert aip("models", "alias", "mnist_cnn", "production", "--delete", env=env).stdout.strip() == (
        "model mnist_cnn aliases: none")
    odd = aip("models", "alias", "mnist_cnn", "7", "1", env=env, check=False)
    assert odd.returncode == 1 and "a number is a version" in odd.stderr
    refused = aip("models", "deploy", "mnist_cnn", "--replicas", "2", env=env, check=False)
    assert refused.returncode == 1 and "need Ray Serve (--serving ray)" in refused.stderr
    gc = aip("datasets", "gc", "mnist_clean", "--keep-versions", "1", "--dry-run", env=env).stdout
    assert "mnist_clean: would remove 0 files (0 bytes) and versions: none" in gc
    refused = aip("datasets", "gc", "mnist_clean", "--min-age", "-1", env=env, check=False)
    assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr and "min_age_s" in refused.stderr
    plain = aip("tasks", "ls", env=env).stdout.splitlines()
    assert plain[0].split("\t") == ["id", "name", "status", "progress", "owner", "created_at", "error"], (
        "plain when piped")
    submitted = aip("tasks", "submit", "--name", "echo", "--script", "mnist/mnist_serve.py", "--input",
                    "models/mnist_cnn", "--wait", "--json", env=env, cwd=running["project"])
    task = json.loads(submitted.stdout)
    assert task["status"] == "completed" and task["result"]["model"] == "mnist_cnn"
    logs = aip("tasks", "logs", task["id"], env=env).stdout
    assert isinstance(logs, str)
    trained = next(t for t in json.loads(aip("tasks", "ls", "--json", env=env).stdout) if t["name"] == "mnist_cnn")
    table = aip("tasks", "metrics", trained["id"], env=env).stdout.splitlines()
    assert table[0].split("\t") == ["metric", "points", "last step", "last", "min", "max"]
    assert {row.split("\t")[0] for row in table[1:]} == {"accuracy", "test_loss", "train_loss"}, (
        "1,500 images make 24 batches: fewer than log_every (50), so no batch_loss point")
    curves = json.loads(aip("tasks", "metrics", trained["id"], "--json", env=env).stdout)["series"]
    assert [point[0] for point in curves["accuracy"]] == [1], "one epoch: one point at step 1"
    addrs = running["state"].addrs
    with Client(addrs["storage"], addrs["scheduler"], addrs["inference"]) as client:
        frame = client.metrics(trained["id"])
    assert list(frame.columns) == ["key", "step", "value", "time"]
    assert frame[frame.key == "accuracy"].value.iloc[0] == curves["accuracy"][0][1]
    missing = aip("tasks", "show", "nope", env=env, check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "task 'nope' does not exist" in missing.stderr
    bad = aip("tasks", "submit", "--name", "x", "--script", "mnist/mnist_serve.py", "--params", "{oops", env=env,
              check=False)
    assert bad.returncode == 2 and "--params is not JSON" in bad.stderr
    pinned = aip("tasks", "submit", "--name", "x", "--script", "mnist/mnist_serve.py", "--resource", "pool=1",
                 env=env, check=False, cwd=running["project"])
    assert pinned.returncode == 1 and "INVALID_ARGUMENT" in pinned.stderr
    assert "the local backend has no custom resources (pool)" in pinned.stderr
    odd = aip("tasks", "submit", "--name", "x", "--script", "mnist/mnist_serve.py", "--resource", "pool=lots",
              env=env, check=False)
    assert odd.returncode == 2 and "expected NAME=AMOUNT" in odd.stderr


def test_python_client_round_trips_pandas_and_follows_tasks(running):
    from ai_platform.client import Client

    addrs = running["state"].addrs
    with Client(addrs["storage"], addrs["scheduler"], addrs["inference"]) as client:
        frame = pd.DataFrame({"x": [1, 2, 3], "name": ["a", "b", "c"]})
        assert client.write_dataset("frame", frame)["num_rows"] == 3
        client.write_dataset("frame", frame.head(1), mode="append")
        assert [v["version"] for v in client.dataset_versions("frame")] == [1, 2]
        back = client.read_dataset_pandas("frame", version=1)
        pd.testing.assert_frame_equal(back, frame)
        task = client.submit("serve-again", "mnist/mnist_serve.py", "models/mnist_cnn")
        done = client.wait(task["id"], progress=True)
        assert done["status"] == "completed" and done["result"]["version"] == 1
        assert task["id"] in [t["id"] for t in client.list_tasks(name="serve-again")]
        assert client.get_model("mnist_cnn")["metrics"]["epochs"] == 1


def test_down_stops_every_process(tmp_path):
    home = tmp_path / ".ai_platform"
    ports = {name: free_port() for name in ("storage", "scheduler", "inference", "gateway")}
    aip("up", "--detach", "--home", str(home), *port_args(ports), cwd=tmp_path)
    pids = launcher.read_state(home).pids
    assert all(alive(pid) for pid in pids.values())
    assert "stopped storage_svc, scheduler_svc, inference_svc, gateway" in aip("down", "--home", str(home)).stdout
    assert not any(alive(pid) for pid in pids.values())
    assert launcher.read_state(home) is None
    assert "no platform was started" in aip("down", "--home", str(home)).stdout


def test_a_port_in_use_is_named_and_nothing_is_left_running(tmp_path):
    ports = {name: free_port() for name in ("storage", "scheduler", "inference", "gateway")}
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["gateway"]))
        blocker.listen()
        done = aip("up", "--detach", "--home", str(tmp_path / "home"), *port_args(ports), cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert f"gateway cannot start: 127.0.0.1:{ports['gateway']} is already in use" in done.stdout
    assert launcher.read_state(tmp_path / "home") is None


def test_an_unwritable_home_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    done = aip("up", "--detach", "--home", str(tmp_path / "file" / "home"), cwd=tmp_path, check=False)
    assert done.returncode == 1 and "is not writable" in done.stdout


def test_a_service_that_fails_to_start_is_named_and_the_rest_are_stopped(tmp_path):
    ports = {name: free_port() for name in ("storage", "scheduler", "inference", "gateway")}
    home = tmp_path / "home"
    done = aip("up", "--detach", "--home", str(home), *port_args(ports), cwd=tmp_path, check=False,
               env={"AIP_MAX_PARALLEL": "lots"})
    assert done.returncode == 1
    assert "scheduler_svc exited with status 2 while starting" in done.stdout and "lots" in done.stdout
    assert launcher.read_state(home) is None
    for port in ports.values():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # every port is free again: nothing was left running
