"""`aip` and the Python client, against platforms that `aip up` really starts with AIP_TOKEN set, as a team runs
it (every command and the client send the token from the environment)."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from ai_platform.cli import build_parser, launcher
from ai_platform.client import Client
from ai_platform.core.ports import free_port_block
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
NO_ADDRESSES = {f"AIP_{name.upper()}_ADDR": "" for name in ("storage", "scheduler", "inference", "gateway")}


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
    base = free_port_block(7)
    started = aip("up", "--detach", "--port", str(base), cwd=project,
                  env={"AIP_SCRIPT_ROOTS": f"{project}{os.pathsep}{ROOT / 'mnist'}", **NO_ADDRESSES})
    state = launcher.read_state(home)
    env = {**state.env(), "AIP_TOKEN": token}
    yield {"home": home, "state": state, "env": env, "project": project, "up": started.stdout, "base": base}
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


def test_one_base_port_moves_all_seven_and_commands_find_the_platform_from_its_directory(running):
    base, state, project = running["base"], running["state"], running["project"]
    assert state.addrs == {"gateway": f"127.0.0.1:{base}", "storage": f"127.0.0.1:{base + 1}",
                           "scheduler": f"127.0.0.1:{base + 2}", "inference": f"127.0.0.1:{base + 3}"}
    assert state.metrics == {"storage": f"127.0.0.1:{base + 4}", "scheduler": f"127.0.0.1:{base + 5}",
                             "inference": f"127.0.0.1:{base + 6}"}
    for port in range(base + 4, base + 7):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert b"grpc_server" in answer.read() or answer.status == 200
    bare = {"AIP_TOKEN": TOKEN, **NO_ADDRESSES, "AIP_HOME": ""}
    found = aip("datasets", "ls", "-o", "json", env=bare, cwd=project)
    assert isinstance(json.loads(found.stdout), list), "platform.json in ./.ai_platform points the command"
    lost = aip("datasets", "ls", env=bare, cwd=project / "mnist", check=False)
    assert lost.returncode == 1 and "UNAVAILABLE" in lost.stderr
    assert "aip tried storage 127.0.0.1:50051" in lost.stderr and "no platform.json in" in lost.stderr
    assert "AIP_HOME=/its/home" in lost.stderr and "AIP_STORAGE_ADDR" in lost.stderr
    rows = aip("status", env=bare, cwd=project).stdout.splitlines()
    assert rows[0].split("\t") == ["service", "pid", "address", "metrics", "healthy", "version"]
    assert rows[1].split("\t")[2:4] == [f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 4}"]


def test_bad_ports_are_named_with_the_variable(tmp_path):
    for port, says in (("80", "PORT=80 is out of range"), ("65534", "PORT=65534 is out of range"),
                       ("lots", "PORT='lots' is not a port number")):
        done = aip("up", "--detach", "--home", str(tmp_path / "home"), "--port", port, "--port-hint", "PORT",
                   cwd=tmp_path, check=False)
        assert done.returncode in (1, 2) and says in done.stdout, done.stdout
    base = free_port_block(7)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base + 5))
        blocker.listen()
        done = aip("up", "--detach", "--home", str(tmp_path / "home"), "--port", str(base), "--port-hint", "PORT",
                   cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert f"scheduler_svc cannot start: 127.0.0.1:{base + 5} is already in use (the scheduler metrics port" in (
        done.stdout) and "PORT=BASE moves all seven ports" in done.stdout
    assert launcher.read_state(tmp_path / "home") is None


def every_action(parser: argparse.ArgumentParser, path: str = "aip"):
    """Each option and argument of every command, with the command it belongs to."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from every_action(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_flag_says_what_it_does_and_read_commands_take_o():
    parser = build_parser()
    silent = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in every_action(parser)
              if not a.help]
    assert silent == [], f"flags without help: {silent}"
    readers = {path for path, a in every_action(parser) if "-o" in a.option_strings}
    for command in ("aip status", "aip datasets ls", "aip datasets show", "aip datasets versions", "aip models ls",
                    "aip models show", "aip models versions", "aip models predict", "aip tasks ls", "aip tasks show",
                    "aip tasks metrics", "aip tasks params", "aip tasks submit", "aip runs compare", "aip whoami"):
        assert command in readers, f"{command} has no -o"
    done = aip("datasets", "ls", "-o", "xml", check=False)
    assert done.returncode == 2 and "invalid choice: 'xml' (choose from 'table', 'json', 'yaml')" in done.stderr


def test_tasks_params_lists_what_a_script_takes_without_running_it(tmp_path):
    listed = json.loads(aip("tasks", "params", "mnist/mnist_e2e.py", "-o", "json").stdout)
    params = {p["name"]: p for p in listed["params"]}
    assert params["epochs"] == {"name": "epochs", "default": "4", "note": "passes over the training images"}
    assert params["augment"]["default"] == "true" and params["labels"]["default"] == "null"
    assert {"chunk_rows", "timeout_s", "mirrors", "learning_rate"} <= set(params), "spreads followed into siblings"
    assert listed["declared_in"] == "E2E_PARAMS"
    plain = aip("tasks", "params", "mnist/mnist_clean.py").stdout.splitlines()
    assert plain[0].split("\t") == ["name", "default", "note"] and plain[1].startswith("limit\t0\trows per split")
    (tmp_path / "bare.py").write_text('def run(input_path, output_path, params):\n    """Adds one."""\n')
    assert "declares no params dict" in aip("tasks", "params", str(tmp_path / "bare.py")).stdout
    (tmp_path / "broken.py").write_text("def run(:\n")
    broken = aip("tasks", "params", str(tmp_path / "broken.py"), check=False)
    assert broken.returncode == 2 and "not valid Python (line 1" in broken.stderr
    (tmp_path / "lib.py").write_text("X = 1\n")
    assert "defines no run(" in aip("tasks", "params", str(tmp_path / "lib.py"), check=False).stderr


def test_runs_compare_versions_and_predictions_for_people(running):
    env, project = running["env"], running["project"]
    other = json.loads(aip("tasks", "submit", "--name", "mnist_cnn_small", "--script", "mnist/mnist_cnn.py",
                           "--input", "datasets/mnist_clean", "--output", "models/mnist_small", "--params",
                           '{"epochs": 1, "limit": 300, "augment": false}', "--wait", "-o", "json", env=env,
                           cwd=project).stdout)
    assert other["status"] == "completed" and other["effective_params"]["batch_size"] == 128, "defaults recorded"
    trained = next(t for t in json.loads(aip("tasks", "ls", "-o", "json", env=env).stdout) if t["name"] == "mnist_cnn")
    compared = aip("runs", "compare", trained["id"], other["id"], env=env)
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in compared.stdout.splitlines()}
    assert rows["param limit"] == ["0", "300"] and rows["param augment"] == ["true", "false"]
    assert "param batch_size" not in rows, "params the runs share are left out unless --all-params"
    assert rows["accuracy"][0].endswith("*") and not rows["accuracy"][1].endswith("*"), "the best is marked"
    assert f"best by accuracy (highest): mnist_cnn {trained['id']}" in compared.stderr
    as_json = json.loads(aip("runs", "compare", trained["id"], other["id"], "-o", "json", env=env).stdout)
    assert [r["id"] for r in as_json] == [trained["id"], other["id"]] and "final" in as_json[0]
    assert "no run logged the metric 'f1'" in aip("runs", "compare", trained["id"], "--by", "f1", env=env,
                                                   check=False).stderr
    aip("models", "alias", "mnist_small", "candidate", "1", env=env)
    versions = aip("models", "versions", "mnist_small", env=env).stdout.splitlines()
    header, first = versions[0].split("\t"), dict(zip(versions[0].split("\t"), versions[1].split("\t"), strict=True))
    assert header == ["version", "timestamp", "created_by", "aliases", "summary"]
    assert first["aliases"] == "candidate" and first["summary"].startswith("accuracy=")
    assert first["created_by"] == f"admin (task {other['id']})", "who wrote a version a task saved itself"
    assert yaml.safe_load(aip("models", "versions", "mnist_small", "-o", "yaml", env=env).stdout)[0]["version"] == 1

    with Client(**{f"{n}_addr": a for n, a in running["state"].addrs.items() if n != "gateway"}) as client:
        test = client.read_dataset("mnist_clean", columns=["image"], filter="split = 'test'", limit=8)
    pictures = []
    for i, pixels in enumerate(test.column("image").to_pylist()):
        digit = Image.fromarray(255 - np.array(pixels, np.uint8).reshape(28, 28)).resize((90 + 10 * i, 90 + 10 * i))
        page = Image.new("L", (320, 240), 255)  # dark ink on white paper, somewhere on a bigger page
        page.paste(digit, (15 * i, 10 * i))
        pictures.append(project / f"digit-{i}.png")
        page.save(pictures[-1])
    from_rows = [r["prediction"] for r in json.loads(aip(
        "models", "predict", "mnist_cnn", "--dataset", "mnist_clean", "--filter", "split = 'test'", "--limit", "8",
        "-o", "json", env=env).stdout)]
    from_files = [r["prediction"] for r in json.loads(aip("models", "predict", "mnist_cnn", *map(str, pictures),
                                                          "-o", "json", env=env).stdout)]
    agree = sum(a == b for a, b in zip(from_rows, from_files, strict=True))
    assert agree >= 7, f"a picture of a digit, anywhere and any size, reads as the digit ({from_rows} {from_files})"
    (project / "notes.png").write_text("not a picture")
    refused = aip("models", "predict", "mnist_cnn", str(project / "notes.png"), env=env, check=False)
    assert refused.returncode == 2 and "notes.png: not a picture this can read" in refused.stderr
    Image.new("L", (50, 50), 255).save(project / "blank.png")
    blank = aip("models", "predict", "mnist_cnn", str(project / "blank.png"), env=env, check=False)
    assert blank.returncode == 2 and "no ink found" in blank.stderr
    neither = aip("models", "predict", "mnist_cnn", env=env, check=False)
    assert neither.returncode == 2 and "give IMAGE files or --dataset NAME" in neither.stderr


def in_terminal(*args: str, env: dict, columns: int = 80) -> str:
    """What `aip ARGS` prints to a terminal ``columns`` wide (a pseudo-terminal, as a person sees it)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen([AIP, *args], stdout=child, stderr=child, stdin=child,
                               env={**os.environ, **env, "COLUMNS": str(columns), "TERM": "xterm-256color"})
    os.close(child)
    chunks = []
    while True:  # read as it prints (a full terminal buffer would stop it), until it closes the terminal
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert process.wait(120) == 0, b"".join(chunks).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode(errors="replace")).replace("\r", "")


def test_tables_for_people_fit_the_terminal_with_human_sizes_and_times(running):
    env = running["env"]
    for command in (("datasets", "ls"), ("models", "ls"), ("tasks", "ls"), ("models", "versions", "mnist_cnn"),
                    ("status",)):
        shown = in_terminal(*command, env=env)
        assert all(len(line) <= 80 for line in shown.splitlines()), f"aip {' '.join(command)}:\n{shown}"
    datasets = in_terminal("datasets", "ls", env=env)
    assert re.search(r"\d+\.\d (KB|MB)", datasets) and "ago" in datasets and "Z" not in datasets
    narrow = in_terminal("tasks", "ls", env=env, columns=60)
    assert "left out to fit 60 columns" in narrow and all(len(line) <= 60 for line in narrow.splitlines())
    task = in_terminal("tasks", "show", json.loads(aip("tasks", "ls", "-o", "json", env=env).stdout)[-1]["id"],
                       env=env, columns=100)
    assert "status" in task and "completed" in task and "{'" not in task and "'history'" not in task
    assert re.search(r"created_at\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(", task), "local time and how long ago"


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
