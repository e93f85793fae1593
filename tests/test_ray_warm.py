"""Short tasks on Ray's warm runners (AIP_RAY_WARM_RUNNERS): Ray actors on a real local Ray cluster that fork each
task, with what a Ray Job gives a task kept: logs, progress, cancel, a clean process per task, and following a task
again after a scheduler restart."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ai_platform.cli.ray_cluster import start_local_head
from ai_platform.client import SchedulerClient, status_name, task_result
from tests.conftest import ROOT, ServiceProcess, free_port
from tests.task_scripts import write_scripts
from tests.test_warm_start import CHANNEL_PROBE

TOKEN = "warm-runner-t0ken"
LEAKY = '''
import hashlib, os, sys

def run(input_path, output_path, params):
    seen = {"env": os.environ.get("AIP_LEAK"), "module": "aip_leak" in sys.modules, "cwd": os.getcwd(),
            "pid": os.getpid(), "pgid": os.getpgid(0),
            "token": hashlib.sha256(os.environ.get("AIP_TOKEN", "").encode()).hexdigest(),  # never the token itself
            "task_token_variable": "AIP_TASK_TOKEN" in os.environ}
    os.environ["AIP_LEAK"] = "set"
    sys.modules["aip_leak"] = sys
    print("leaky ran", flush=True)
    return seen
'''


SPAN = '''
import os, time

def run(input_path, output_path, params):
    began = time.time()
    time.sleep(params.get("seconds", 0.5))
    server = os.getppid()  # the fork server, whose parent is the runner
    with open(f"/proc/{server}/stat") as stat:
        runner = int(stat.read().rsplit(")", 1)[1].split()[1])
    return {"runner": runner, "began": began, "ended": time.time()}
'''


USES_RAY = '''
import ray

@ray.remote
def square(x):
    return x * x

def run(input_path, output_path, params):
    ray.init()  # RAY_ADDRESS: the cluster the runner is on
    return {"cluster_cpus": ray.cluster_resources()["CPU"], "squares": ray.get([square.remote(i) for i in range(3)])}
'''


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    head = start_local_head(num_cpus=4, temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield head
    head.stop()
    assert head.pids() == [], "every process of the Ray cluster we started has ended (its runners too)"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm-project")
    write_scripts(root / "scripts")
    (root / "scripts/leaky.py").write_text(LEAKY)
    (root / "scripts/uses_ray.py").write_text(USES_RAY)
    (root / "scripts/span.py").write_text(SPAN)
    (root / "scripts/deep.py").write_text("def run(i, o, p):\n    return {'n': eval('[' * 40 + ']' * 40)}\n")
    return root


@pytest.fixture(scope="module")
def services(project, ray_head):
    home = project / ".ai_platform"
    storage = ServiceProcess("storage_svc", home, cwd=project, env={"AIP_TOKEN": TOKEN}).start()
    args = ["--storage-addr", storage.addr, "--backend", "ray", "--ray-address", ray_head.dashboard_url,
            "--ray-warm-runners", "2", "--ray-cluster-address", ray_head.gcs_address, "--grace-s", "2",
            "--script-roots", str(project)]
    scheduler = ServiceProcess("scheduler_svc", home, args, cwd=project, env={"AIP_TOKEN": TOKEN}).start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIP_TOKEN", TOKEN)  # a deployment's: clients here carry it, tasks never see it
        yield storage, scheduler, args
    scheduler.stop()
    storage.stop()


@pytest.fixture(scope="module")
def tasks(services):
    client = SchedulerClient(services[1].addr)
    yield client
    client.close()


def finished(tasks: SchedulerClient, task_id: str, timeout: float = 120):
    return tasks.wait(task_id, timeout=timeout)


def test_a_short_task_forks_on_a_runner_with_result_progress_and_logs(tasks):
    task = tasks.submit("warm", "scripts/progress.py", params={"steps": 3, "pause": 0.1})
    fractions = [u.progress.fraction for u in tasks.watch(task.id) if u.HasField("progress")]
    done = tasks.get(task.id)
    log = b"".join(tasks.logs(task.id))
    assert status_name(done) == "completed", (done.error, log[-2000:])
    assert task_result(done) == {"epochs": 3}
    assert fractions[-1] == 1.0
    assert b"epoch 2 starting" in log and b"done training" in log and b"runs on" in log


def test_many_short_tasks_each_in_a_clean_process_of_its_own(tasks):
    ids = [tasks.submit("leaky", "scripts/leaky.py").id for _ in range(6)]
    seen = []
    for task_id in ids:
        done = finished(tasks, task_id)
        assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(task_id))[-2000:])
        seen.append(task_result(done))
    assert all(s["env"] is None and not s["module"] for s in seen), "nothing one task changed reaches the next"
    # Its own narrow credential, which the worker hands its SDK clients; never the deployment's token.
    unset, deployment = (hashlib.sha256(t.encode()).hexdigest() for t in ("", TOKEN))
    assert all(s["token"] not in (unset, deployment) and not s["task_token_variable"] for s in seen), seen
    assert len({s["token"] for s in seen}) == len(seen), "each task its own credential"
    assert len({s["pid"] for s in seen}) == len(seen)
    assert all(s["pid"] == s["pgid"] for s in seen), "each task leads its own process group"
    assert all(Path(s["cwd"]).name == task_id and Path(s["cwd"]).parent.name.startswith("aip-warm-runner-")
               for s, task_id in zip(seen, ids, strict=True)), "on a runner, in a folder of its own"


def test_reports_pass_through_the_runner_as_reporttask_checks_them(tasks):
    done = finished(tasks, tasks.submit("metrics", "scripts/metrics.py", params={"points": 50}).id)
    assert status_name(done) == "completed", done.error
    points = [p for batch in tasks.metrics(done.id) for p in batch.points]
    assert len([p for p in points if p.key == "loss"]) == 50 and {p.step for p in points if p.key == "late"} == {2, 7}
    refused = finished(tasks, tasks.submit("deep", "scripts/deep.py").id)  # nests past what a task may keep
    assert status_name(refused) == "failed" and refused.error.type == "ResultNotDelivered", refused.error
    log = b"".join(tasks.logs(refused.id)).decode()
    assert "the scheduler refused the result report: INVALID_ARGUMENT" in log, log


def test_the_runner_checks_reports_as_the_local_backend_does(tasks, project):
    (project / "scripts/channel_probe.py").write_text(CHANNEL_PROBE)
    done = finished(tasks, tasks.submit("probe", "scripts/channel_probe.py").id)
    assert status_name(done) == "completed", done.error  # refused reports leave the task as it was
    answers = task_result(done)
    assert all(status == 1 and text.startswith("INVALID_ARGUMENT") for status, text in answers.values()), answers
    assert "must be JSON" in answers["not JSON"][1] and "nothing else" in answers["unknown field"][1]
    assert "unknown report kind 'started'" in answers["started"][1]
    assert "progress report" in answers["bad progress"][1] and "step must be >= 0" in answers["bad metric"][1]
    assert "params report nests deeper than 32 levels" in answers["deep params"][1]
    assert all("exit code, 0-255" in answers[name][1] for name in ("exit code 256", "exit code text")), answers
    log = b"".join(tasks.logs(done.id)).decode()
    assert log.count("the scheduler refused the result report: INVALID_ARGUMENT") == 3, log


def test_bad_scripts_fail_alone_with_their_real_errors(tasks):
    expected = {"raises": ("ValueError", "bad value 42"), "syntax_error": ("SyntaxError", "line 1"),
                "no_run": ("ScriptError", "defines no run"), "hard_exit": ("ProcessExit", "code 7"),
                "killed": ("ProcessExit", "SIGKILL")}
    failing = {name: tasks.submit(name, f"scripts/{name}.py").id for name in expected}
    for name, task_id in failing.items():
        done = finished(tasks, task_id)
        assert status_name(done) == "failed", name
        assert done.error.type == expected[name][0] and expected[name][1] in done.error.message, (name, done.error)
    after = finished(tasks, tasks.submit("after", "scripts/trivial.py").id)
    assert status_name(after) == "completed", "the runners go on"


def _sleeping(tasks: SchedulerClient, tmp_path: Path, name: str) -> tuple:
    """A sleeper.py task once it runs: the task, its process and the child it started."""
    pidfile = tmp_path / f"{name}.pids"
    task = tasks.submit(name, "scripts/sleeper.py", params={"pidfile": str(pidfile)})
    deadline = time.monotonic() + 60
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid, child, _escaped = (int(p) for p in pidfile.read_text().split())
    return task, pid, child


def _gone(*pids: int) -> None:
    for pid in pids:
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), f"process {pid} of the task is gone"


def test_cancel_and_timeout_end_the_task_and_its_processes(tasks, tmp_path):
    task, pid, child = _sleeping(tasks, tmp_path, "sleeper")
    tasks.cancel(task.id)
    done = finished(tasks, task.id)
    assert status_name(done) == "cancelled"
    _gone(pid, child)
    timed = tasks.submit("timed", "scripts/sleeper.py", params={"seconds": 60}, timeout_s=1)
    done = finished(tasks, timed.id)
    assert status_name(done) == "failed" and done.error.type == "Timeout"
    # Both runners busy: a third task waits for one, and is cancelled at once.
    busy = [tasks.submit("busy", "scripts/sleeper.py", params={"seconds": 60}) for _ in range(2)]
    waiting = tasks.submit("waiting", "scripts/trivial.py")
    deadline = time.monotonic() + 10
    while not tasks.get(waiting.id).progress.message and time.monotonic() < deadline:
        time.sleep(0.2)
    record = tasks.get(waiting.id)
    assert status_name(record) == "pending" and not record.HasField("started_at")
    assert record.progress.message == "waiting for a free warm runner: 2 of 2 running, each busy with a task"
    began = time.monotonic()
    assert status_name(tasks.cancel(waiting.id)) == "cancelled" and time.monotonic() - began < 5
    for task in busy:
        tasks.cancel(task.id)
    assert {status_name(finished(tasks, task.id)) for task in busy} == {"cancelled"}


def test_ray_inside_a_task_on_a_runner_joins_the_cluster(tasks):
    done = finished(tasks, tasks.submit("ray-inside", "scripts/uses_ray.py").id)
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(done.id))[-2000:])
    assert task_result(done) == {"cluster_cpus": 4.0, "squares": [0, 1, 4]}, "the cluster's 4 CPUs, not this machine's"


def test_a_task_asking_for_more_than_a_runner_runs_as_a_ray_job(tasks):
    done = finished(tasks, tasks.submit("big", "scripts/leaky.py", num_cpus=2).id)
    assert status_name(done) == "completed", done.error
    assert "aip-warm-runner-" not in task_result(done)["cwd"], "two CPUs: a Ray Job"


def _running(scheduler: ServiceProcess, name: str, params: dict):
    """A progress.py task, once it runs and some of its log was read."""
    client = SchedulerClient(scheduler.addr)
    try:
        task = client.submit(name, "scripts/progress.py", params=params)
        deadline = time.monotonic() + 30
        while b"epoch 0 starting" not in b"".join(client.logs(task.id)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return task
    finally:
        client.close()


def _runners(ray_head) -> list:
    from ray.util.state import list_actors

    return [a for a in list_actors(address=ray_head.dashboard_url, filters=[("state", "=", "ALIVE")])
            if a.class_name == "WarmRunner"]


def test_a_task_on_a_runner_is_followed_again_after_a_scheduler_restart(services, project, ray_head):
    storage, scheduler, args = services
    before = {a.name for a in _runners(ray_head)}
    task = _running(scheduler, "long", {"steps": 8, "pause": 0.5})
    scheduler.proc.send_signal(signal.SIGKILL)  # the task runs on, on its runner
    scheduler.proc.wait(10)
    scheduler.proc = None
    time.sleep(2)
    scheduler.start()  # the same configuration: the same runners
    client = SchedulerClient(scheduler.addr)
    try:
        spans = [client.submit("span", "scripts/span.py", params={"seconds": 0.5}).id for _ in range(4)]
        done = finished(client, task.id)
        log = b"".join(client.logs(task.id))
        assert status_name(done) == "completed", (done.error, log[-2000:])
        assert done.HasField("started_at")
        assert log.count(b"epoch 0 starting") == 1 and b"done training" in log, "its log whole, each line once"
        ran = [task_result(finished(client, span)) for span in spans]
    finally:
        client.close()
    assert {a.name for a in _runners(ray_head)} == before, "the restarted scheduler found its runners again"
    by_runner: dict[int, list] = {}
    for r in ran:
        by_runner.setdefault(r["runner"], []).append((r["began"], r["ended"]))
    assert len(by_runner) <= 2
    for spans_on_one in by_runner.values():
        spans_on_one.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans_on_one, spans_on_one[1:], strict=False)), \
            "one task at a time on a runner"
    # Another configuration: new runners, and the old ones end once what they hold was followed.
    task = _running(services[1], "long", {"steps": 8, "pause": 0.5})
    scheduler.proc.send_signal(signal.SIGKILL)
    scheduler.proc.wait(10)
    scheduler.proc = None
    scheduler.extra_args[scheduler.extra_args.index("--grace-s") + 1] = "3"
    scheduler.start()
    client = SchedulerClient(scheduler.addr)
    try:
        done = finished(client, task.id)
        assert status_name(done) == "completed", done.error
        assert status_name(finished(client, client.submit("next", "scripts/trivial.py").id)) == "completed"
    finally:
        client.close()
    deadline = time.monotonic() + 30
    while before & {a.name for a in _runners(ray_head)} and time.monotonic() < deadline:
        time.sleep(0.5)
    now = {a.name for a in _runners(ray_head)}
    assert len(now) == 2 and not before & now, "the old configuration's runners ended once done; two new ones run"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"



def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_task_whose_runner_dies_fails_saying_so_and_a_new_runner_takes_its_place(tasks, tmp_path):
    task, pid, child = _sleeping(tasks, tmp_path, "orphaned")
    runner = _parent(_parent(pid))  # the task's parent is the fork server, whose parent is the runner actor
    assert "WarmRunner" in Path(f"/proc/{runner}/cmdline").read_bytes().decode(errors="replace")
    os.kill(runner, signal.SIGKILL)  # as if its node died
    done = finished(tasks, task.id)
    assert status_name(done) == "failed" and done.error.type == "RunnerLost", done.error
    _gone(pid, child)  # they ended with their runner
    for _ in range(3):  # whichever runner each takes, the dead one's place is filled
        after = finished(tasks, tasks.submit("after", "scripts/trivial.py").id)
        assert status_name(after) == "completed", after.error


def test_a_scheduler_that_stops_gives_its_idle_runners_cpus_back(services, ray_head):
    from ray.util.state import list_actors

    def runners() -> list:
        return _runners(ray_head)

    client = SchedulerClient(services[1].addr)
    try:
        assert status_name(finished(client, client.submit("last", "scripts/trivial.py").id)) == "completed"
    finally:
        client.close()
    assert len(runners()) == 2, [(a.class_name, a.name, a.state) for a in list_actors(address=ray_head.dashboard_url)]
    services[1].stop()
    deadline = time.monotonic() + 30
    while runners() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert runners() == [], "the runners ended with the scheduler, none running a task"


def test_warm_runners_need_a_cluster_they_can_reach(tmp_path):
    (tmp_path / "trivial.py").write_text("def run(input_path, output_path, params):\n    return {}\n")
    base = [sys.executable, "-m", "scheduler_svc", "--backend", "ray", "--ray-address", "http://127.0.0.1:1"]
    env = {**os.environ, "AIP_HOME": str(tmp_path / ".ai_platform"), "PYTHONPATH": str(ROOT)}
    refused = subprocess.run([*base, "--ray-warm-runners", "1"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=60)
    assert refused.returncode != 0 and "--ray-cluster-address" in refused.stderr, refused.stderr
    refused = subprocess.run([*base, "--ray-warm-runners", "-1"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=60)
    assert refused.returncode != 0 and "ray-warm-runners" in refused.stderr.replace("_", "-").lower(), refused.stderr
    nowhere = f"127.0.0.1:{free_port()}"
    scheduler = ServiceProcess("scheduler_svc", tmp_path / ".ai_platform",
                               [*base[3:], "--ray-warm-runners", "1", "--ray-cluster-address", nowhere,
                                "--script-roots", str(tmp_path)], cwd=tmp_path).start()
    client = SchedulerClient(scheduler.addr)
    try:
        done = finished(client, client.submit("lost", "trivial.py").id, timeout=60)
        assert status_name(done) == "failed" and done.error.type == "Unavailable", done.error
        assert nowhere in done.error.message and "AIP_RAY_CLUSTER_ADDRESS" in done.error.message
    finally:
        client.close()
        scheduler.stop()
