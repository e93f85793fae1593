"""scheduler_svc on the local backend: real worker processes, real storage_svc, real SQLite, over gRPC."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import grpc
import pyarrow as pa
import pytest

from ai_platform.client import SchedulerClient, StorageClient, status_name, task_result
from ai_platform.core.views import MetricsView
from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as pb
from tests.conftest import ServiceProcess, free_port
from tests.task_scripts import write_scripts


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's project directory: scripts under it, the lake in ./.ai_platform, services started from it."""
    root = tmp_path_factory.mktemp("project")
    write_scripts(root / "scripts")
    return root


@pytest.fixture(scope="module")
def services(project):
    home = project / ".ai_platform"
    storage = ServiceProcess("storage_svc", home, cwd=project).start()
    scheduler = ServiceProcess(
        "scheduler_svc", home, ["--storage-addr", storage.addr, "--max-parallel", "2", "--grace-s", "2",
                                "--log-max-mb", "1"], cwd=project,
    ).start()
    yield storage, scheduler
    scheduler.stop()
    storage.stop()


@pytest.fixture(scope="module")
def tasks(services):
    client = SchedulerClient(services[1].addr)
    yield client
    client.close()


@pytest.fixture(scope="module")
def lake(services):
    client = StorageClient(services[0].addr)
    yield client
    client.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate, timeout: float = 20, step: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    return info.value


# -- running tasks ----------------------------------------------------------------------

def test_trivial_task_completes_with_its_result(tasks, project):
    params = {"epochs": 3, "lr": 0.5, "tag": "a", "nested": {"k": 1}}
    task = tasks.submit("trivial", "scripts/trivial.py", params=params)
    assert status_name(task) in ("pending", "running") and task.backend == "local"
    assert task.script == str(project / "scripts/trivial.py")
    done = tasks.wait(task.id, timeout=30)
    assert status_name(done) == "completed", done.error
    result = task_result(done)
    assert result["types"] == {"epochs": "int", "lr": "float", "tag": "str", "nested": "dict"}
    assert result["params"]["nested"] == {"k": 1}
    assert done.created_at.ToNanoseconds() <= done.started_at.ToNanoseconds() <= done.completed_at.ToNanoseconds()
    assert not done.HasField("error")


def test_inputs_and_outputs_are_resolved_through_storage(tasks, lake, project):
    lake.write("mnist_clean", pa.table({"label": [1, 2, 3]}))
    home = project / ".ai_platform"
    seed_style = ".ai_platform/datasets/mnist_clean.lance"
    for given in ("datasets/mnist_clean", seed_style, str(home / "datasets/mnist_clean.lance")):
        done = tasks.wait(tasks.submit("resolve", "scripts/reads_dataset.py", given, "models/mnist_cnn").id, 60)
        assert status_name(done) == "completed", (given, done.error)
        assert task_result(done) == {"rows": 3}
        assert done.resolved_input == str(home / "datasets/mnist_clean.lance")
        assert done.resolved_output == str(home / "models/mnist_cnn.lance")
        assert done.input == given
    raw = tasks.wait(tasks.submit("raw", "scripts/trivial.py", "scripts", "download/mnist").id, 30)
    assert task_result(raw)["input"] == str(project / "scripts")
    assert task_result(raw)["output"] == str(home / "download/mnist")
    uri = tasks.wait(tasks.submit("uri", "scripts/trivial.py", "s3://bucket/raw", "").id, 30)
    assert task_result(uri)["input"] == "s3://bucket/raw"


CREDENTIAL_SCRIPT = """
import os, time
def run(input_path, output_path, params):
    time.sleep(params.get("sleep", 0))
    with open("/proc/self/environ", "rb") as f:
        started_with = f.read().decode(errors="replace")
    return {"credential": os.environ.get("AIP_TOKEN", ""), "id": os.environ["AIP_TASK_ID"],
            "in_environ": "AIP_TOKEN=" in started_with or "AIP_TASK_TOKEN=" in started_with}
"""


def test_reports_travel_over_grpc_and_need_the_task_own_credential(tasks, project, services):
    (project / "scripts" / "credential.py").write_text(CREDENTIAL_SCRIPT)
    done = tasks.wait(tasks.submit("credential", "scripts/credential.py").id, 30)
    credential = task_result(done)["credential"]
    assert credential.count(".") == 2, "a signed credential of its own"
    assert not task_result(done)["in_environ"], "it came down a pipe, not in the environment /proc shows"
    shown = pb.Task()
    shown.CopyFrom(done)
    shown.ClearField("result")
    assert done.id == task_result(done)["id"] and credential not in str(shown)  # never shown on the task
    running = tasks.submit("credential-running", "scripts/credential.py", params={"sleep": 3})
    wait_for(lambda: status_name(tasks.get(running.id)) == "running")

    def report(task_id: str, given: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            tasks.stub.ReportTask(pb.ReportTaskRequest(task_id=task_id, result={"string_value": "x"}),
                                  metadata=[("authorization", f"Bearer {given}")] if given else None)
        return caught.value

    wrong = report(running.id, credential)  # another task's credential
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED and running.id in wrong.details()
    assert report(running.id, "").code() == grpc.StatusCode.PERMISSION_DENIED
    assert report("no-such-task", credential).code() == grpc.StatusCode.NOT_FOUND
    ended = report(done.id, credential)
    assert ended.code() == grpc.StatusCode.FAILED_PRECONDITION and "completed" in ended.details()
    with pytest.raises(grpc.RpcError) as empty:
        tasks.stub.ReportTask(pb.ReportTaskRequest(task_id=done.id),
                              metadata=[("authorization", f"Bearer {credential}")])
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    final = tasks.wait(running.id, 30)
    assert status_name(final) == "completed" and task_result(final)["id"] == running.id  # the forgery changed nothing
    assert not (project / ".ai_platform" / "reports").exists()
    record = sqlite3.connect(project / ".ai_platform" / "scheduler.db").execute(
        "SELECT report_secret FROM tasks").fetchall()
    assert {row[0] for row in record} <= {"", None}, "no credential is stored"
    assert oct((project / ".ai_platform" / "scheduler.db").stat().st_mode & 0o777) == "0o600"


def test_metrics_are_buffered_sent_in_batches_and_read_sorted(tasks, tmp_path):
    task = tasks.submit("curves", "scripts/metrics.py", params={"points": 12_000})
    done = tasks.wait(task.id, 60)
    assert status_name(done) == "completed", done.error
    view = MetricsView.from_pb(list(tasks.metrics(task.id)))
    assert set(view.series) == {"loss", "accuracy", "late"} and view.dropped == 0
    assert [step for step, _, _ in view.series["loss"]] == list(range(12_000)), "steps default to last + 1"
    assert view.series["loss"][3][1] == 0.25 and view.series["accuracy"][-1][1] == 11.999
    assert [(step, value) for step, value, _ in view.series["late"]] == [(2, 1.0), (7, 3.0)]
    log = b"".join(tasks.logs(task.id)).decode()
    assert "log_metrics: loss = nan is not a finite number; not logged" in log
    assert "log_metrics: accuracy = 'high' is not a finite number" in log
    assert "log_metrics: 'bad key!' is not a metric name" in log
    assert "log_metrics: metrics must be a dict of name -> number, got list" in log
    live = tasks.submit("live-curve", "scripts/metrics.py", params={"points": 1, "live": 10})
    arrivals = []
    for message in tasks.metrics(live.id, follow=True):
        arrivals.append((time.monotonic(), [p.key for p in message.points]))
    assert status_name(tasks.get(live.id)) == "completed"
    live_points = [t for t, keys in arrivals if "live" in keys]
    assert sum(keys.count("live") for _, keys in arrivals) == 10
    assert live_points[-1] - live_points[0] > 1.0, "points arrived while the task ran, not all at its end"
    missing = rpc_error(lambda: list(tasks.metrics("nope")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_metric_caps_and_records_survive_reopening(tmp_path):
    from scheduler_svc import store as store_module
    from scheduler_svc.store import TaskStore
    from scheduler_svc.tasks import MetricPoint

    path = tmp_path / "tasks.db"
    store = TaskStore(path)
    series = [MetricPoint(f"s{i}", 0, float(i), 0.0) for i in range(store_module.MAX_METRIC_SERIES + 5)]
    assert store.add_metrics("t1", series) == 5, "a series past the cap is dropped"
    store.close()
    again = TaskStore(path)
    points, last = again.metrics("t1")
    assert len(points) == store_module.MAX_METRIC_SERIES and last > 0
    assert again.metrics("t1", last) == ([], last)
    again.close()


def test_progress_is_watched_and_logs_follow_while_running(tasks):
    task = tasks.submit("train", "scripts/progress.py", params={"steps": 4, "pause": 0.4})
    fractions, messages = [], []
    for update in tasks.watch(task.id):
        if update.HasField("progress"):
            fractions.append(update.progress.fraction)
            messages.append(update.progress.message)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) >= 3
    assert "epoch 4/4" in messages
    final = tasks.get(task.id)
    assert status_name(final) == "completed"
    assert final.progress.metrics["epoch"] == 4 and final.progress.metrics["loss"] == 0.25

    task = tasks.submit("train-logs", "scripts/progress.py", params={"steps": 3, "pause": 0.4})
    seen_while_running = []
    text = b""
    for data in tasks.logs(task.id, follow=True):
        text += data
        seen_while_running.append(status_name(tasks.get(task.id)))
    assert b"epoch 0 starting" in text and text.rstrip().endswith(b"done training")
    assert "running" in seen_while_running
    assert status_name(tasks.get(task.id)) == "completed"
    assert b"".join(tasks.logs(task.id, tail_bytes=14)) == b"done training\n"


def test_two_slots_run_in_parallel_and_the_rest_queue_fifo(tasks):
    ids = [tasks.submit(f"nap{i}", "scripts/nap.py", params={"seconds": 1.0}).id for i in range(4)]
    states = wait_for(lambda: [status_name(tasks.get(i)) for i in ids] if status_name(tasks.get(ids[1])) == "running"
                      else None)
    assert states[:2] == ["running", "running"] and states[2:] == ["pending", "pending"]
    done = [tasks.wait(i, 30) for i in ids]
    assert all(status_name(t) == "completed" for t in done)
    spans = [(t.started_at.ToNanoseconds(), t.completed_at.ToNanoseconds()) for t in done]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], "the first two ran at the same time"
    for start, _ in spans[2:]:
        running_then = sum(1 for s, e in spans if s <= start < e)
        assert running_then <= 2
    assert spans[2][0] <= spans[3][0], "queued tasks start in submission order"


def test_get_task_long_polls_until_the_task_ends_or_wait_s_passes(tasks):
    napping = tasks.submit("long-poll", "scripts/nap.py", params={"seconds": 1.0})
    started = time.monotonic()
    early = tasks.stub.GetTask(pb.GetTaskRequest(id=napping.id, wait_s=0.3))
    assert status_name(early) == "running" and 0.25 < time.monotonic() - started < 0.9, "answered after wait_s"
    done = tasks.stub.GetTask(pb.GetTaskRequest(id=napping.id, wait_s=30))
    assert status_name(done) == "completed" and time.monotonic() - started < 5, "answered as the task ended"
    started = time.monotonic()
    assert status_name(tasks.stub.GetTask(pb.GetTaskRequest(id=napping.id, wait_s=30))) == "completed"
    assert time.monotonic() - started < 0.5, "a finished task is answered at once"
    with pytest.raises(TimeoutError):
        tasks.wait(tasks.submit("long-poll", "scripts/nap.py", params={"seconds": 2.0}).id, 0.5)
    for wrong in (-1.0, 61.0, float("nan")):
        refused = rpc_error(lambda w=wrong: tasks.stub.GetTask(pb.GetTaskRequest(id=napping.id, wait_s=w)))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "wait_s" in refused.details()
    assert rpc_error(lambda: tasks.stub.GetTask(pb.GetTaskRequest(id="nope", wait_s=1))).code() == \
        grpc.StatusCode.NOT_FOUND


def test_timeout_fails_the_task_and_ends_its_processes(tasks, tmp_path):
    pidfile = tmp_path / "pids"
    task = tasks.submit("slow", "scripts/sleeper.py", params={"pidfile": str(pidfile), "seconds": 60}, timeout_s=1.5)
    done = tasks.wait(task.id, 30)
    assert status_name(done) == "failed" and done.error.type == "Timeout"
    assert "timeout_s=1.5" in done.error.message
    worker, child, escaped = map(int, pidfile.read_text().split())
    wait_for(lambda: not any(map(alive, (worker, child, escaped))), timeout=10)


def test_cancel_stops_the_process_and_its_children(tasks, tmp_path):
    pidfile = tmp_path / "pids"
    task = tasks.submit("cancel-me", "scripts/sleeper.py", params={"pidfile": str(pidfile)})
    wait_for(lambda: pidfile.exists() and pidfile.read_text())
    worker, child, escaped = map(int, pidfile.read_text().split())
    assert alive(worker) and alive(child) and alive(escaped)
    cancelled = tasks.cancel(task.id)
    assert status_name(cancelled) == "cancelled" and cancelled.HasField("completed_at")
    wait_for(lambda: not any(map(alive, (worker, child, escaped))), timeout=5)
    error = rpc_error(lambda: tasks.cancel(task.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "already cancelled" in error.details()


def test_cancel_kills_a_task_that_ignores_sigterm_after_the_grace_period(tasks, tmp_path):
    pidfile = tmp_path / "pid"
    task = tasks.submit("stubborn", "scripts/stubborn.py", params={"pidfile": str(pidfile)})
    wait_for(lambda: pidfile.exists() and pidfile.read_text())
    pid = int(pidfile.read_text())
    assert status_name(tasks.cancel(task.id)) == "cancelled"
    wait_for(lambda: not alive(pid), timeout=10)


def test_cancel_of_a_queued_task_means_it_never_runs(tasks, tmp_path):
    blockers = [tasks.submit(f"block{i}", "scripts/nap.py", params={"seconds": 1.5}).id for i in range(2)]
    marker = tmp_path / "ran"
    queued = tasks.submit("queued", "scripts/sleeper.py", params={"pidfile": str(marker), "seconds": 0.1})
    assert status_name(tasks.get(queued.id)) == "pending"
    assert status_name(tasks.cancel(queued.id)) == "cancelled"
    for b in blockers:
        tasks.wait(b, 30)
    time.sleep(0.5)
    assert not marker.exists() and status_name(tasks.get(queued.id)) == "cancelled"


@pytest.mark.parametrize(
    ("script", "params", "error_type", "words"),
    [
        ("syntax_error.py", {}, "SyntaxError", "line 1"),
        ("no_run.py", {}, "ScriptError", "defines no run"),
        ("raises.py", {}, "ValueError", "bad value 42"),
        ("not_json.py", {}, "ResultNotJSON", "not JSON-serialisable"),
        ("exits.py", {}, "SystemExit", "sys.exit(3)"),
        ("hard_exit.py", {}, "ProcessExit", "exited with code 7"),
        ("killed.py", {}, "ProcessExit", "killed by SIGKILL"),
    ],
)
def test_broken_scripts_fail_with_a_message_that_says_which(tasks, script, params, error_type, words):
    done = tasks.wait(tasks.submit("broken", f"scripts/{script}", params=params).id, 30)
    assert status_name(done) == "failed"
    assert done.error.type == error_type and words in done.error.message, done.error


def test_traceback_goes_to_the_log_not_the_error(tasks):
    done = tasks.wait(tasks.submit("raises", "scripts/raises.py").id, 30)
    assert "Traceback" not in done.error.message
    assert b"Traceback (most recent call last)" in b"".join(tasks.logs(done.id))


def test_memory_limit_is_enforced(tasks):
    done = tasks.wait(tasks.submit("hog", "scripts/hog.py", params={"mb": 600}, memory_mb=200).id, 60)
    assert status_name(done) == "failed" and done.error.type == "OutOfMemory"
    assert "memory_mb=200" in done.error.message


def test_a_flood_of_output_is_capped_and_the_scheduler_stays_responsive(tasks):
    task = tasks.submit("chatty", "scripts/chatty.py", params={"mb": 40})
    answered = 0
    while status_name(tasks.stub.GetTask(pb.GetTaskRequest(id=task.id), timeout=2)) in ("pending", "running"):
        answered += 1
        time.sleep(0.05)
    done = tasks.get(task.id)
    assert status_name(done) == "completed" and answered > 0
    text = b"".join(tasks.logs(task.id))
    assert len(text) <= 1024 * 1024 + 200
    assert text.rstrip().endswith(b"END OF OUTPUT")
    assert text.startswith(b"[... ") and b"bytes of earlier output dropped" in text


def test_list_filters_newest_first_and_paginates(tasks):
    ids = [tasks.submit("listed", "scripts/trivial.py").id for _ in range(5)]
    for i in ids:
        tasks.wait(i, 30)
    page = tasks.list(name="listed", page_size=2)
    assert [t.id for t in page.tasks] == ids[::-1][:2] and page.next_page_token
    rest = tasks.list(name="listed", page_size=10, page_token=page.next_page_token)
    assert [t.id for t in rest.tasks] == ids[::-1][2:] and not rest.next_page_token
    failed = tasks.list(statuses=["failed"], page_size=1000).tasks
    assert failed and all(status_name(t) == "failed" for t in failed)
    assert rpc_error(lambda: tasks.list(page_token="garbage!")).code() == grpc.StatusCode.INVALID_ARGUMENT


# -- bad input at submit ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "code", "words"),
    [
        ({"script": "scripts/missing.py"}, grpc.StatusCode.INVALID_ARGUMENT, "does not exist"),
        ({"script": "../../etc/passwd.py"}, grpc.StatusCode.INVALID_ARGUMENT, "outside the allowed script roots"),
        ({"script": "/usr/lib/python3/dist-packages/README.py"}, grpc.StatusCode.INVALID_ARGUMENT, "outside"),
        ({"script": "scripts/notes.txt"}, grpc.StatusCode.INVALID_ARGUMENT, "not a .py file"),
        ({"script": ""}, grpc.StatusCode.INVALID_ARGUMENT, "script is required"),
        ({"name": "../evil"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid task name"),
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "invalid task name"),
        ({"input": "datasets/../../x"}, grpc.StatusCode.INVALID_ARGUMENT, "input"),
        ({"output": "models/a b"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid model name"),
        ({"num_cpus": -1}, grpc.StatusCode.INVALID_ARGUMENT, "must not be negative"),
        ({"timeout_s": -5}, grpc.StatusCode.INVALID_ARGUMENT, "timeout_s"),
    ],
)
def test_bad_submissions_are_refused_and_create_nothing(tasks, kwargs, code, words):
    before = len(tasks.list(page_size=1000).tasks)
    args = {"name": "bad", "script": "scripts/trivial.py", **kwargs}
    error = rpc_error(lambda: tasks.submit(**args))
    assert error.code() == code and words in error.details(), error.details()
    assert len(tasks.list(page_size=1000).tasks) == before


WRITES_POINTS = """
import time, lance, pyarrow as pa
def run(input_path, output_path, params):
    time.sleep(1)
    lance.write_dataset(pa.table({"x": [1, 2, 3]}), output_path)
    return {}
"""


def test_a_task_queues_behind_the_task_that_makes_its_input(project, services):
    """As in the seed: its input need not exist when it is submitted; it is pinned when the task starts."""
    (project / "scripts" / "writes_points.py").write_text(WRITES_POINTS)
    scheduler = ServiceProcess("scheduler_svc", project / ".ai_platform", ["--storage-addr", services[0].addr,
                                                                        "--max-parallel", "1"], cwd=project,
                               env={"AIP_STATE_DIR": str(project / "state-one-slot")}).start()
    client = SchedulerClient(scheduler.addr)
    try:
        maker = client.submit("maker", "scripts/writes_points.py", output="datasets/made_later")
        reader = client.submit("reader", "scripts/reads_dataset.py", input="datasets/made_later")
        assert status_name(reader) == "pending" and reader.input_version == 0, "queued, not refused"
        done = client.wait(reader.id, 60)
        assert status_name(client.get(maker.id)) == "completed"
        assert status_name(done) == "completed" and task_result(done) == {"rows": 3}
        assert (done.input_table, done.input_version) == ("datasets/made_later", 1), "pinned when it started"
        orphan = client.wait(client.submit("orphan", "scripts/reads_dataset.py", input="datasets/never").id, 60)
        assert status_name(orphan) == "failed" and orphan.error.type == "NotFound"
        assert "datasets/never does not exist" in orphan.error.message
        # a producer still running when the reader is submitted (one that failed at once could end before it)
        broken = client.submit("broken", "scripts/nap.py", output="datasets/never_made", params={"seconds": 30},
                               timeout_s=2)
        orphan = client.wait(client.submit("orphan", "scripts/reads_dataset.py", input="datasets/never_made").id, 60)
        assert status_name(client.get(broken.id)) == "failed"
        assert status_name(orphan) == "failed" and orphan.error.type == "UpstreamFailed"
        assert f"broken ({broken.id}) failed" in orphan.error.message
    finally:
        client.close()
        scheduler.stop()


def test_unknown_task_ids_are_not_found(tasks):
    for call in (lambda: tasks.get("nope"), lambda: tasks.cancel("nope"), lambda: tasks.logs("nope"),
                 lambda: tasks.watch("nope")):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND and "task 'nope' does not exist" in error.details()


def test_storage_down_at_submit_is_unavailable_and_creates_nothing(project, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    scheduler = ServiceProcess("scheduler_svc", project / ".ai_platform-alt", ["--storage-addr", dead],
                               cwd=project).start()
    try:
        client = SchedulerClient(scheduler.addr)
        error = rpc_error(lambda: client.submit("needs-lake", "scripts/trivial.py", "datasets/mnist_clean"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert f"storage_svc at {dead} is unavailable" in error.details()
        assert client.list().tasks == []
        done = client.wait(client.submit("no-lake", "scripts/trivial.py", "scripts").id, 30)
        assert status_name(done) == "completed", "tasks that need no lake still run"
        client.close()
    finally:
        scheduler.stop()


def test_records_survive_a_scheduler_kill_and_cut_off_work_is_failed(project, tmp_path):
    home = tmp_path / "home"
    args = ["--storage-addr", f"127.0.0.1:{free_port()}", "--max-parallel", "1"]
    scheduler = ServiceProcess("scheduler_svc", home, args, cwd=project).start()
    client = SchedulerClient(scheduler.addr)
    finished = client.wait(client.submit("before", "scripts/trivial.py", params={"x": 1}).id, 30)
    pidfile = tmp_path / "pids"
    running = client.submit("running", "scripts/sleeper.py", params={"pidfile": str(pidfile)})
    queued = client.submit("queued", "scripts/nap.py", params={"seconds": 0.1})
    wait_for(lambda: pidfile.exists() and pidfile.read_text())
    worker, child, escaped = map(int, pidfile.read_text().split())
    client.close()
    scheduler.proc.send_signal(signal.SIGKILL)
    scheduler.proc.wait(10)

    restarted = ServiceProcess("scheduler_svc", home, args, cwd=project).start()
    try:
        client = SchedulerClient(restarted.addr)
        again = client.get(finished.id)
        assert status_name(again) == "completed" and task_result(again) == task_result(finished)
        cut = client.get(running.id)
        assert status_name(cut) == "failed" and cut.error.type == "SchedulerRestart"
        wait_for(lambda: not any(map(alive, (worker, child, escaped))), timeout=10)
        assert status_name(client.wait(queued.id, 30)) == "completed", "queued work runs after the restart"
        assert {t.id for t in client.list().tasks} == {finished.id, running.id, queued.id}
        client.close()
    finally:
        restarted.stop()
