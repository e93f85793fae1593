"""Level 3 on one machine: a two-node Ray cluster whose second node shares no disk with the scheduler, a lake on an
S3-compatible server, and training pinned to the second node by a custom resource.

The second node runs in its own mount and PID namespaces, with a private tmpfs over every file the tests make, so it
sees neither the project (its scripts), the scheduler's state directory nor the head's Ray files: scripts reach it
through Ray (the job's working_dir), data through the bucket, and reports through the scheduler's gRPC port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ai_platform.cli.ray_cluster import start_local_head
from ai_platform.client import InferenceClient, SchedulerClient, status_name, task_result
from ai_platform.core.procs import session_members
from mnist import idx
from tests.conftest import ROOT, ServiceProcess, free_port
from tests.s3lake import HOME, start_s3_server, stop
from tests.task_scripts import write_scripts

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                                reason="a second Ray node needs its own mount namespace (unshare, as root)")

WHERE_AM_I = """
import os, time
def run(input_path, output_path, params):
    time.sleep(params.get("pause", 0))
    return {"sees_project": os.path.exists(params["project"]), "cwd_files": sorted(os.listdir("."))}
"""


@dataclass
class WorkerNode:
    """``ray start --address`` in a private mount namespace, in its own session so that it can be killed whole."""

    proc: subprocess.Popen
    log_path: Path

    def pids(self) -> list[int]:
        return session_members(self.proc.pid)

    def kill(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)


def start_worker_node(gcs_address: str, dashboard_url: str, resources: dict[str, float], log_path: Path,
                      hidden: Path, temp_dir: Path) -> WorkerNode:
    ray, agent_port = Path(sys.executable).with_name("ray"), free_port()
    # 127.0.0.2: loopback too, but an address Ray keeps as given (it swaps 127.0.0.1 for the machine's own).
    start = (f"{ray} start --address={gcs_address} --node-ip-address=127.0.0.2 --num-cpus=1 "
             f"--resources='{json.dumps(resources)}' --temp-dir={temp_dir} --disable-usage-stats "
             f"--dashboard-agent-listen-port={agent_port} --metrics-export-port={free_port()} --block")
    with open(log_path, "wb") as log:
        # Its own PID namespace too: Ray finds "the local raylet" by listing processes, as on a host of its own.
        proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private",
                                 "bash", "-c", f"mount -t tmpfs tmpfs {hidden} && mount -t tmpfs tmpfs {temp_dir} "
                                               f"&& exec {start}"],
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    node = WorkerNode(proc, log_path)
    from ray.util.state import list_nodes

    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker node exited:\n{log_path.read_text()[-3000:]}")
        try:
            alive = [n for n in list_nodes(address=dashboard_url, detail=True, timeout=5) if n.state == "ALIVE"]
        except Exception:  # noqa: BLE001 - the dashboard may be busy while the node joins
            alive = []
        if any((n.resources_total or {}).get(name) for n in alive for name in resources) and agent_up(agent_port):
            return node  # the head hands jobs for this node to its agent, which starts last
        time.sleep(0.5)
    node.kill()
    raise RuntimeError(f"the worker node did not join within 90s:\n{log_path.read_text()[-3000:]}")


def agent_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/api/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    # A short temp dir: Ray's Unix socket paths under it must stay within 107 characters.
    head = start_local_head(num_cpus=2, temp_dir=str(tmp_path_factory.mktemp("ray")), resources={"head": 1})
    try:
        # Its Ray files: a short path (Unix socket paths stay under 108 characters), private to it.
        node_temp = Path(tempfile.mkdtemp(prefix="aipn"))
        node = start_worker_node(head.gcs_address, head.dashboard_url, {"pool": 1}, work / "worker-node.log",
                                 tmp_path_factory.getbasetemp(), node_temp)
    except BaseException:
        head.stop()
        raise
    yield head, node
    node.kill()
    head.stop()
    shutil.rmtree(node_temp, ignore_errors=True)
    assert head.pids() == [] and node.pids() == []


@pytest.fixture(scope="module")
def platform(cluster, tmp_path_factory):
    head, _ = cluster
    project = tmp_path_factory.mktemp("multinode-project")
    write_scripts(project / "scripts")
    (project / "scripts" / "where_am_i.py").write_text(WHERE_AM_I)
    shutil.copytree(ROOT / "mnist", project / "mnist", ignore=shutil.ignore_patterns("__pycache__"))
    idx.offline_digits(project / "raw")
    server, s3 = start_s3_server(project / "s3.log")
    settings = {"AIP_HOME": HOME, "AIP_STORAGE_OPTIONS": json.dumps(s3.options())}
    started: list[ServiceProcess] = []
    try:
        with pytest.MonkeyPatch.context() as env:
            for name in os.environ:
                if name.startswith("AWS_"):
                    env.delenv(name)
            storage = ServiceProcess("storage_svc", project / "state", env=settings, cwd=project).start(60)
            started.append(storage)
            peers = {**settings, "AIP_STORAGE_ADDR": storage.addr}
            inference = ServiceProcess("inference_svc", project / "state", env=peers, cwd=project).start(60)
            started.append(inference)
            scheduler = ServiceProcess(
                "scheduler_svc", project / "state",
                ["--state-dir", str(project / "state"), "--backend", "ray", "--ray-address", head.dashboard_url],
                env={**peers, "AIP_INFERENCE_ADDR": inference.addr}, cwd=project).start(60)
            started.append(scheduler)
        yield {"project": project, "s3": s3, "storage": storage, "inference": inference, "scheduler": scheduler}
    finally:
        for service in reversed(started):
            service.stop()
        stop(server)


@pytest.fixture(scope="module")
def tasks(platform):
    client = SchedulerClient(platform["scheduler"].addr)
    yield client
    client.close()


def run(tasks: SchedulerClient, *args, timeout: float = 300, **kwargs):  # noqa: ANN002, ANN003
    task = tasks.submit(*args, **kwargs)
    done = tasks.wait(task.id, timeout)
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(task.id))[-3000:])
    return done


def driver_node(cluster, task_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster[0].dashboard_url).get_job_info(task_id).driver_node_id


def test_the_second_node_sees_none_of_the_scheduler_files(tasks, platform, cluster):
    done = run(tasks, "where", "scripts/where_am_i.py", params={"project": str(platform["project"])},
               resources={"custom": {"pool": 1}})
    assert task_result(done) == {"sees_project": False, "cwd_files": sorted(
        p.name for p in (platform["project"] / "scripts").iterdir())}, "the script came through Ray"
    on_head = run(tasks, "where-head", "scripts/where_am_i.py", params={"project": str(platform["project"])},
                  resources={"custom": {"head": 1}})
    assert task_result(on_head)["sees_project"] is True
    assert driver_node(cluster, done.id) != driver_node(cluster, on_head.id)


def test_mnist_chain_with_training_pinned_to_the_second_node(tasks, platform, cluster):
    started = time.perf_counter()
    clean = run(tasks, "mnist_clean", "mnist/mnist_clean.py", str(platform["project"] / "raw"),
                "datasets/mnist_clean", {"limit": 1500}, resources={"custom": {"head": 1}})
    assert task_result(clean)["rows"] > 1500
    timings = {}
    for where in ("head", "pool"):
        began = time.perf_counter()
        trained = tasks.submit(f"mnist_cnn_{where}", "mnist/mnist_cnn.py", "datasets/mnist_clean",
                               "models/mnist_cnn", {"epochs": 1, "limit": 1500}, resources={"custom": {where: 1}})
        fractions = [u.progress.fraction for u in tasks.watch(trained.id) if u.HasField("progress")]
        trained = tasks.get(trained.id)
        timings[where] = round(time.perf_counter() - began, 1)
        assert status_name(trained) == "completed", (trained.error, b"".join(tasks.logs(trained.id))[-3000:])
        assert fractions and fractions[-1] == 1.0, "progress arrived over gRPC"
        assert b"loaded" in b"".join(tasks.logs(trained.id)), "the log arrived"
    assert task_result(trained)["accuracy"] > 0.5 and task_result(trained)["model_version"] == 2
    pinned = driver_node(cluster, trained.id)
    assert pinned != driver_node(cluster, clean.id), "training ran on the second node"
    assert platform["s3"].objects("models/mnist_cnn.lance"), "the model landed in the bucket"
    inference = InferenceClient(platform["inference"].addr)
    try:
        inference.load("mnist_cnn")
        scores, version = inference.infer("mnist_cnn", np.zeros((4, 1, 28, 28), np.float32))
    finally:
        inference.close()
    assert scores[0].shape == (4, 10) and version == "2"
    print(f"\nMNIST chain: {time.perf_counter() - started:.1f}s; training on the head {timings['head']}s, "
          f"pinned to the second node {timings['pool']}s")


def test_a_resource_no_node_offers_keeps_the_task_pending_and_says_which(tasks):
    task = tasks.submit("wants-gpu-pool", "scripts/trivial.py", resources={"custom": {"gpu_pool": 1}})
    deadline = time.time() + 30
    while not tasks.get(task.id).progress.message and time.time() < deadline:
        time.sleep(0.3)
    waiting = tasks.get(task.id)
    assert status_name(waiting) == "pending"
    assert "no live node offers gpu_pool=1" in waiting.progress.message and "pool" in waiting.progress.message
    assert status_name(tasks.cancel(task.id)) == "cancelled"


def test_warm_runners_fork_short_tasks_on_every_node_with_the_script_shipped(platform, cluster):
    head, _ = cluster
    project = platform["project"]
    # Three runners take the cluster's three CPUs, so one is on the second node; three tasks at once take all three.
    scheduler = ServiceProcess(
        "scheduler_svc", project / "warm-state",
        ["--state-dir", str(project / "warm-state"), "--backend", "ray", "--ray-address", head.dashboard_url,
         "--ray-warm-runners", "3", "--ray-cluster-address", head.gcs_address],
        env={**platform["scheduler"].env}, cwd=project).start(60)
    client = SchedulerClient(scheduler.addr)
    from ray.util.state import list_actors

    def runners() -> list:
        return [a for a in list_actors(address=head.dashboard_url, filters=[("state", "=", "ALIVE")])
                if a.class_name == "WarmRunner"]

    try:
        deadline = time.time() + 60
        while len(runners()) < 3 and time.time() < deadline:
            time.sleep(0.5)  # the scheduler starts its runners as it starts
        ids = [client.submit(f"where-{i}", "scripts/where_am_i.py", params={"project": str(project), "pause": 2})
               .id for i in range(3)]
        done = [client.wait(task_id, 120) for task_id in ids]
        assert [status_name(d) for d in done] == ["completed"] * 3, [d.error for d in done]
        results = [task_result(d) for d in done]
    finally:
        client.close()
        scheduler.stop()
    shipped = sorted(p.name for p in (project / "scripts").iterdir())
    assert {r["sees_project"] for r in results} == {True, False}, results
    assert all(r["cwd_files"] == shipped for r in results), "each ran in a folder holding the script's folder"
    deadline = time.time() + 30
    while runners() and time.time() < deadline:
        time.sleep(0.5)
    assert not runners(), "the stopped scheduler gave the runners' CPUs back"


def test_killing_the_node_fails_its_task_with_a_clear_error(tasks, cluster):
    _, node = cluster
    task = tasks.submit("doomed", "scripts/progress.py", params={"steps": 200, "pause": 0.5},
                        resources={"custom": {"pool": 1}})
    deadline = time.time() + 60
    while not tasks.get(task.id).HasField("progress") and time.time() < deadline:
        time.sleep(0.2)
    assert status_name(tasks.get(task.id)) == "running"
    killed_at = time.time()
    node.kill()
    done = tasks.wait(task.id, 150)
    assert status_name(done) == "failed", done
    assert any(word in done.error.message.lower() for word in ("died", "node", "dead")), done.error
    print(f"\nthe task failed {time.time() - killed_at:.1f}s after its node was killed: {done.error.message}")
