"""scheduler_svc on the Ray backend: tasks become Ray jobs on a real local Ray cluster started for this module."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from ai_platform.cli.ray_cluster import start_local_head
from ai_platform.client import SchedulerClient, StorageClient, status_name, task_result
from scheduler_svc.backends.ray import LogCursor
from tests.conftest import ROOT, ServiceProcess
from tests.task_scripts import write_scripts

DAFT_SCRIPT = '''
import os
import daft

def run(input_path, output_path, params):
    if params.get("ray_runner"):
        daft.set_runner_ray()  # joins the cluster the job runs on (RAY_ADDRESS is set by Ray for the job)
    df = daft.read_lance(input_path).where(daft.col("label") > 0)
    totals = df.groupby("label").agg(daft.col("value").sum()).sort("label").to_pydict()
    return {"totals": totals["value"], "runner": daft.get_or_infer_runner_type()}
'''


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    head = start_local_head(num_cpus=2, temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield head
    head.stop()
    assert head.pids() == [], "every process of the Ray cluster we started has ended"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-project")
    write_scripts(root / "scripts")
    (root / "scripts/daft_job.py").write_text(DAFT_SCRIPT)
    (root / "mnist").symlink_to(ROOT / "mnist")
    return root


@pytest.fixture(scope="module")
def services(project, ray_head):
    home = project / ".ai_platform"
    storage = ServiceProcess("storage_svc", home, cwd=project).start()
    inference = ServiceProcess("inference_svc", home, ["--storage-addr", storage.addr], cwd=project).start(60)
    scheduler_args = ["--storage-addr", storage.addr, "--backend", "ray", "--ray-address", ray_head.dashboard_url,
                      "--script-roots", f"{project}{os.pathsep}{ROOT / 'mnist'}"]
    scheduler = ServiceProcess("scheduler_svc", home, scheduler_args, cwd=project,
                               env={"AIP_INFERENCE_ADDR": inference.addr}).start()
    yield storage, scheduler, scheduler_args
    scheduler.stop()
    inference.stop()
    storage.stop()


@pytest.fixture(scope="module")
def tasks(services):
    client = SchedulerClient(services[1].addr)
    yield client
    client.close()


def test_a_task_runs_as_a_ray_job_with_result_progress_and_logs(tasks, ray_head, services):
    task = tasks.submit("ray-train", "scripts/progress.py", params={"steps": 3, "pause": 0.2}, num_cpus=1)
    assert task.backend == "ray"
    fractions = [u.progress.fraction for u in tasks.watch(task.id) if u.HasField("progress")]
    done = tasks.get(task.id)
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(task.id))[-2000:])
    assert task_result(done) == {"epochs": 3}
    assert fractions[-1] == 1.0
    log = b"".join(tasks.logs(task.id))
    assert b"epoch 0 starting" in log and b"done training" in log
    from ray.job_submission import JobSubmissionClient

    ray_client = JobSubmissionClient(ray_head.dashboard_url)
    info = ray_client.get_job_info(task.id)
    assert str(info.status).endswith("SUCCEEDED") and info.metadata["aip_task"] == "ray-train"
    assert log == ray_client.get_job_logs(task.id).encode(), "the task log mirrors Ray's byte for byte"
    assert "polling its log instead" not in services[1].log(), "the log came through Ray's log tail"


def test_log_cursor_appends_each_byte_of_rays_log_once():
    cursor = LogCursor(written=5)  # after a restart the task log already holds 5 bytes
    assert cursor.take(b"hello", 0) == b"", "the stream replays from the start: nothing new yet"
    assert cursor.take(b" world", 5) == b" world"
    assert cursor.take(b"hello world!", 0) == b"!", "a whole-log fetch adds only the missing tail"
    assert cursor.take(b"ld!", 9) == b"" and cursor.written == 12


def test_resources_map_to_ray_so_a_full_cluster_queues_jobs(tasks):
    first = tasks.submit("ray-big1", "scripts/nap.py", params={"seconds": 4}, num_cpus=2)
    deadline = time.time() + 60
    while status_name(tasks.get(first.id)) != "running" and time.time() < deadline:
        time.sleep(0.1)
    second = tasks.submit("ray-big2", "scripts/nap.py", params={"seconds": 0.1}, num_cpus=2)
    time.sleep(2)
    assert status_name(tasks.get(first.id)) == "running"
    assert status_name(tasks.get(second.id)) == "pending", "the cluster's 2 CPUs are taken by the first job"
    done = [tasks.wait(t.id, 120) for t in (first, second)]
    assert [status_name(t) for t in done] == ["completed", "completed"]
    first_run, second_run = (task_result(t) for t in done)
    assert second_run["began"] >= first_run["ended"], "the second job ran only once the first had ended"
    # completed_at is Ray's own end stamp, so it precedes the queued job's start however late polling noticed it.
    assert done[0].completed_at.ToNanoseconds() <= done[1].started_at.ToNanoseconds()


def test_failures_on_ray_say_why(tasks):
    raised = tasks.wait(tasks.submit("ray-raise", "scripts/raises.py").id, 120)
    assert status_name(raised) == "failed" and raised.error.type == "ValueError"
    assert "bad value 42" in raised.error.message
    exited = tasks.wait(tasks.submit("ray-exit", "scripts/hard_exit.py").id, 120)
    assert status_name(exited) == "failed" and "Ray job failed" in exited.error.message


def test_cancel_stops_the_ray_job_and_its_processes(tasks, tmp_path):
    pidfile = tmp_path / "pids"
    task = tasks.submit("ray-sleep", "scripts/sleeper.py", params={"pidfile": str(pidfile)})
    deadline = time.time() + 60
    while not (pidfile.exists() and pidfile.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    worker, child, escaped = map(int, pidfile.read_text().split())
    assert status_name(tasks.cancel(task.id)) == "cancelled"
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in (worker, child, escaped)):
        time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists(), "the job's worker process is gone"
    assert not Path(f"/proc/{escaped}").exists(), "so is a child that left its process group"


def test_daft_inside_a_ray_job_with_native_and_ray_runners(tasks, services):
    StorageClient(services[0].addr).write(
        "daft_input", pa.table({"label": [0, 1, 1, 2, 2, 2], "value": [100, 1, 2, 3, 4, 5]}))
    for ray_runner, expected in ((False, "native"), (True, "ray")):
        task = tasks.submit("daft", "scripts/daft_job.py", "datasets/daft_input", params={"ray_runner": ray_runner})
        done = tasks.wait(task.id, 180)
        assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(task.id))[-3000:])
        assert task_result(done) == {"totals": [3, 12], "runner": expected}


def test_ray_jobs_are_reattached_after_a_scheduler_restart(project, services, tmp_path, ray_head):
    storage, scheduler, scheduler_args = services
    task_client = SchedulerClient(scheduler.addr)
    task = task_client.submit("ray-survivor", "scripts/progress.py", params={"steps": 6, "pause": 1.0})
    deadline = time.time() + 60
    while b"epoch 0 starting" not in b"".join(task_client.logs(task.id)) and time.time() < deadline:
        time.sleep(0.2)  # running, and some of its log already mirrored
    task_client.close()
    scheduler.proc.send_signal(signal.SIGKILL)
    scheduler.proc.wait(10)
    scheduler.proc = None
    time.sleep(7)  # the script ends while the scheduler is down: its worker keeps retrying the result report
    scheduler.start()
    client = SchedulerClient(scheduler.addr)
    done = client.wait(task.id, 120)
    assert status_name(done) == "completed" and task_result(done) == {"epochs": 6}
    assert done.progress.fraction == 1.0
    log = b"".join(client.logs(task.id))
    assert log.count(b"epoch 0 starting") == 1 and b"done training" in log, "logs mirrored once across the restart"
    from ray.job_submission import JobSubmissionClient

    assert log == JobSubmissionClient(ray_head.dashboard_url).get_job_logs(task.id).encode()
    client.close()
    assert os.path.exists(project / ".ai_platform/scheduler.db")


def test_the_mnist_chain_runs_unchanged_on_ray(tasks, services, project):
    steps = [
        ("mnist_clean", "mnist/mnist_clean.py", "download", ".ai_platform/datasets/mnist_clean.lance",
         {"mirrors": [], "limit": 1500}),
        ("mnist_cnn", "mnist/mnist_cnn.py", "datasets/mnist_clean", "models/mnist_cnn", {"epochs": 1}),
        ("mnist_serve", "mnist/mnist_serve.py", "models/mnist_cnn", "", {}),
    ]
    results = []
    for name, script, given_input, output, params in steps:
        done = tasks.wait(tasks.submit(name, script, given_input, output, params, num_cpus=1).id, 300)
        assert status_name(done) == "completed", (name, done.error, b"".join(tasks.logs(done.id))[-3000:])
        assert done.backend == "ray"
        results.append(task_result(done))
    assert results[0]["splits"] == {"train": 1500, "test": 1000}
    assert results[1]["train_images"] == 1500 and results[1]["accuracy"] > 0.5
    assert results[2] == {**results[2], "model": "mnist_cnn", "version": 1}


def test_batch_predictions_on_daft_s_ray_runner_inside_a_ray_job(tasks, project):
    """After the chain test: mnist_cnn exists. The same script as on the local backend, on Daft's Ray runner."""
    task = tasks.submit("mnist_predict", "mnist/mnist_predict.py", "datasets/mnist_clean",
                        "datasets/mnist_predictions", {"model": "mnist_cnn", "ray_runner": True})
    done = tasks.wait(task.id, 300)
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(task.id))[-3000:])
    result = task_result(done)
    assert result["runner"] == "ray" and result["rows"] == 2500 and result["accuracy"] > 0.5
    written = lance.dataset(str(project / ".ai_platform/datasets/mnist_predictions.lance"))
    assert written.count_rows() == 2500 and "correct" in written.schema.names


def test_end_to_end_training_on_daft_s_ray_runner_inside_a_ray_job(tasks, project):
    """After the chain test: the offline digits are in the download area. The script the local backend runs,
    with the plan executed by Daft's Ray runner on the cluster the job runs on."""
    task = tasks.submit("mnist_e2e", "mnist/mnist_e2e.py", "download", "models/mnist_e2e",
                        {"ray_runner": True, "epochs": 1, "limit": 1500, "chunk_rows": 500, "window_rows": 1000,
                         "batch_size": 50})  # 30 steps: 12 at the default 128 may stay near chance
    done = tasks.wait(task.id, 300)
    assert status_name(done) == "completed", (done.error, b"".join(tasks.logs(task.id))[-3000:])
    result = task_result(done)
    assert result["runner"] == "ray" and result["train_images"] == 1500 and result["test_images"] == 1000
    assert result["accuracy"] > 0.5 and result["model_version"] == 1
    assert lance.dataset(str(project / ".ai_platform/models/mnist_e2e.lance")).count_rows() == 1


def test_a_pipeline_runs_on_ray_and_goes_on_after_a_scheduler_restart(services):
    """Steps are Ray jobs; the scheduler is killed while the first runs: after its restart the job is re-attached,
    its dependent starts, and the run completes; a second run is all cached."""
    from ai_platform.client import PipelineClient

    storage, scheduler, _ = services
    lake = StorageClient(storage.addr)
    lake.write("ray_points", pa.table({"x": [1.0, 2.0, 3.0]}), mode="overwrite")
    lake.close()
    definition = {"steps": [
        {"name": "train", "script": "scripts/lineage.py", "input": "datasets/ray_points",
         "output": "models/ray_pipe", "params": {"pause": 5}},
        {"name": "after", "script": "scripts/trivial.py", "input": "steps.train.output"}]}
    pipelines = PipelineClient(scheduler.addr)
    pipelines.apply("on_ray", definition)
    run = pipelines.run("on_ray")
    deadline = time.time() + 60
    while pipelines.get_run(run.id).steps["train"].status != "running" and time.time() < deadline:
        time.sleep(0.2)
    pipelines.close()
    scheduler.proc.send_signal(signal.SIGKILL)
    scheduler.proc.wait(10)
    scheduler.proc = None
    scheduler.start()
    pipelines = PipelineClient(scheduler.addr)
    try:
        done = pipelines.wait(run.id, timeout=180)
        assert done.status == "completed", done
        assert [done.steps[n].status for n in done.order] == ["completed", "completed"]
        model_version = done.steps["train"].output_version
        assert done.steps["after"].inputs["models/ray_pipe"] == model_version
        tasks = SchedulerClient(scheduler.addr)
        assert tasks.get(done.steps["train"].task_id).backend == "ray"
        assert task_result(tasks.get(done.steps["after"].task_id))["input"].endswith("ray_pipe.lance")
        tasks.close()
        again = pipelines.wait(pipelines.run("on_ray").id, timeout=60)
        assert {again.steps[n].status for n in again.order} == {"cached"}
    finally:
        pipelines.close()
