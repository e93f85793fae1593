"""Pipelines on a real storage_svc and scheduler_svc: steps as ordinary tasks, exact caching by Lance versions,
failures that skip dependents, cancellation, a restart in the middle of a run, dataset triggers, bad definitions."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import lance
import pyarrow as pa
import pytest
from google.protobuf import json_format

from ai_platform.client import PipelineClient, SchedulerClient, StorageClient
from tests.conftest import AIP, start_platform

TOKEN = "pipelines-test-token-of-at-least-32-bytes"

SCRIPTS = {
    "lines.py": '''
def run(input_path, output_path, params):
    with open(input_path) as handle:
        return {"lines": len(handle.read().split())}
''',
    "double.py": '''
import time
import lance
import pyarrow.compute as pc
from ai_platform.sdk import commit_properties, open_dataset, resolve_params

PARAMS = {"factor": 2, "pause": 0.0, "fail": False}

def run(input_path, output_path, params):
    params = resolve_params(params, PARAMS, "double.py")
    time.sleep(params["pause"])
    if params["fail"]:
        raise RuntimeError("asked to fail")
    table = open_dataset(input_path).to_table()
    table = table.set_column(0, "x", pc.multiply(table.column("x"), params["factor"]))
    lance.write_dataset(table, output_path, mode="overwrite", transaction_properties=commit_properties())
    return {"rows": table.num_rows}
''',
    "total.py": '''
import lance
import pyarrow as pa
import pyarrow.compute as pc
from ai_platform.sdk import commit_properties, open_dataset, resolve_params

PARAMS = {"inputs": {}}

def run(input_path, output_path, params):
    params = resolve_params(params, PARAMS, "total.py")
    total = pc.sum(open_dataset(input_path).to_table().column("x")).as_py()
    extra = {k: pc.sum(open_dataset(v["uri"], v["version"]).to_table().column("x")).as_py()
             for k, v in params["inputs"].items()}
    lance.write_dataset(pa.table({"total": [total + sum(extra.values())]}), output_path, mode="overwrite",
                        transaction_properties=commit_properties())
    return {"total": total, "extra": extra}
''',
}

CHAIN = {"steps": [
    {"name": "double", "script": "scripts/double.py", "input": "datasets/src", "output": "datasets/dbl", "params": {}},
    {"name": "total", "script": "scripts/total.py", "input": "steps.double.output", "output": "datasets/sum",
     "params": {}},
]}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipelines")
    (root / "scripts").mkdir()
    for name, text in SCRIPTS.items():
        (root / "scripts" / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def platform(project):
    """The four services with the token every deployment sets; the clients here carry it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIP_TOKEN", TOKEN)
        started = start_platform(project, token=TOKEN)
        yield started
        started.stop()


@pytest.fixture(scope="module")
def services(platform):
    return platform.storage, platform.scheduler


@pytest.fixture(scope="module")
def rest(platform):
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def lake(services):
    client = StorageClient(services[0].addr)
    yield client
    client.close()


@pytest.fixture(scope="module")
def pipelines(services):
    client = PipelineClient(services[1].addr)
    yield client
    client.close()


def write_src(lake: StorageClient, values: list[int], mode: str = "overwrite") -> int:
    return lake.write("src", pa.table({"x": pa.array(values, pa.int64())}), mode=mode).version


def result(run, step: str) -> dict:
    return json_format.MessageToDict(run.steps[step].result)


def versions(run) -> dict[str, int]:
    return {name: step.output_version for name, step in run.steps.items()}


def test_a_chain_runs_then_is_cached_whole_and_changed_data_reruns_exactly_downstream(services, lake, pipelines,
                                                                                       project):
    src_version = write_src(lake, [1, 2, 3])
    applied = pipelines.apply("chain", CHAIN)
    assert applied.revision == 1 and [s["name"] for s in applied.definition["steps"]] == ["double", "total"]

    first = pipelines.wait(pipelines.run("chain").id, timeout=120)
    assert first.status == "completed", first
    assert [first.steps[n].status for n in first.order] == ["completed", "completed"]
    assert first.steps["double"].inputs["datasets/src"] == src_version
    assert first.steps["total"].inputs["datasets/dbl"] == first.steps["double"].output_version
    assert result(first, "total")["total"] == 12
    tasks = SchedulerClient(services[1].addr)
    task = tasks.get(first.steps["double"].task_id)
    assert task.name == "chain.double" and task.input_table == "datasets/src" and task.input_version == src_version

    started = time.perf_counter()
    second = pipelines.wait(pipelines.run("chain").id, timeout=60)
    cached_s = time.perf_counter() - started
    assert second.status == "completed" and versions(second) == versions(first)
    assert {second.steps[n].status for n in second.order} == {"cached"}
    assert second.steps["double"].cached_from == first.steps["double"].task_id
    assert result(second, "total")["total"] == 12 and cached_s < 10

    write_src(lake, [1, 2, 3, 4])  # new data: both steps rerun
    third = pipelines.wait(pipelines.run("chain").id, timeout=120)
    assert [third.steps[n].status for n in third.order] == ["completed", "completed"]
    assert result(third, "total")["total"] == 20

    # the same data rewritten as a new version is new input: exact, by version
    again = pipelines.wait(pipelines.run("chain", params={"total": {}}).id, timeout=60)
    assert {again.steps[n].status for n in again.order} == {"cached"}

    # one param changes: that step and what follows rerun; nothing upstream does
    pipelines.apply("chain", {"steps": [{**CHAIN["steps"][0]}, {**CHAIN["steps"][1]}]})
    changed = pipelines.wait(pipelines.run("chain", params={"double": {"factor": 3}}).id, timeout=120)
    assert [changed.steps[n].status for n in changed.order] == ["completed", "completed"]
    assert result(changed, "total")["total"] == 30

    # one byte of the last script: only it reruns
    script = project / "scripts" / "total.py"
    script.write_text(script.read_text() + "\n# changed\n")
    edited = pipelines.wait(pipelines.run("chain").id, timeout=120)
    assert [edited.steps[n].status for n in edited.order] == ["cached", "completed"]

    # cache: false reruns everything
    forced = pipelines.wait(pipelines.run("chain", cache=False).id, timeout=120)
    assert [forced.steps[n].status for n in forced.order] == ["completed", "completed"]
    listed = pipelines.runs("chain")
    assert [r.id for r in listed][:2] == [forced.id, edited.id] and all(r.trigger == "manual" for r in listed)


def test_the_cache_never_reuses_a_removed_version(services, lake, pipelines):
    write_src(lake, [5])
    pipelines.apply("gc", {"steps": [{"name": "double", "script": "scripts/double.py", "input": "datasets/src",
                                      "output": "datasets/gc_out"}]})
    first = pipelines.wait(pipelines.run("gc").id, timeout=120)
    assert first.steps["double"].status == "completed"
    # a later write and garbage collection remove the cached version
    lake.write("gc_out", pa.table({"x": pa.array([0], pa.int64())}), mode="overwrite")
    lake.collect_garbage("gc_out", keep_versions=1, min_age_s=0)
    rerun = pipelines.wait(pipelines.run("gc").id, timeout=120)
    assert rerun.steps["double"].status == "completed", "the cached version is gone: the step ran again"
    assert rerun.steps["double"].output_version > first.steps["double"].output_version


def test_a_failed_step_fails_the_run_and_skips_its_dependents(services, lake, pipelines):
    write_src(lake, [1])
    pipelines.apply("broken", {"steps": [
        {"name": "double", "script": "scripts/double.py", "input": "datasets/src", "output": "datasets/b1",
         "params": {"fail": True}},
        {"name": "total", "script": "scripts/total.py", "input": "steps.double.output", "output": "datasets/b2"}]})
    run = pipelines.wait(pipelines.run("broken").id, timeout=120)
    assert run.status == "failed" and run.steps["double"].status == "failed"
    assert "asked to fail" in run.steps["double"].message and "double" in run.message
    assert run.steps["total"].status == "skipped" and "double" in run.steps["total"].message
    again = pipelines.wait(pipelines.run("broken").id, timeout=120)
    assert again.steps["double"].status == "failed", "a failure is never cached"


def test_several_lake_inputs_are_pinned_at_the_start_and_passed_to_the_script(services, lake, pipelines):
    write_src(lake, [1, 1])
    lake.write("other", pa.table({"x": pa.array([100], pa.int64())}), mode="overwrite")
    pipelines.apply("mixed", {"steps": [
        {"name": "total", "script": "scripts/total.py", "input": "datasets/src", "inputs": {"other":
                                                                                           "datasets/other"},
         "output": "datasets/mixed_sum"}]})
    run = pipelines.wait(pipelines.run("mixed").id, timeout=120)
    assert result(run, "total")["total"] == 2 and result(run, "total")["extra"] == {"other": 100}
    assert set(run.steps["total"].inputs) == {"datasets/src", "datasets/other"}
    lake.write("other", pa.table({"x": pa.array([7], pa.int64())}), mode="overwrite")
    rerun = pipelines.wait(pipelines.run("mixed").id, timeout=120)
    assert rerun.steps["total"].status == "completed" and result(rerun, "total")["extra"] == {"other": 7}


def test_cancelling_a_run_cancels_its_running_step_and_skips_the_rest(services, lake, pipelines):
    write_src(lake, [2])
    pipelines.apply("slow", {"steps": [
        {"name": "double", "script": "scripts/double.py", "input": "datasets/src", "output": "datasets/s1",
         "params": {"pause": 60}, "cache": False},
        {"name": "total", "script": "scripts/total.py", "input": "steps.double.output", "output": "datasets/s2"}]})
    run = pipelines.run("slow")
    deadline = time.time() + 30
    while pipelines.get_run(run.id).steps["double"].status != "running" and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(grpc.RpcError) as busy:
        pipelines.run("slow")
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "in flight" in busy.value.details()
    cancelled = pipelines.cancel(run.id)
    assert cancelled.status == "cancelled"
    assert cancelled.steps["double"].status == "cancelled" and cancelled.steps["total"].status == "skipped"
    task = SchedulerClient(services[1].addr).get(cancelled.steps["double"].task_id)
    assert task.status == 5  # CANCELLED
    with pytest.raises(grpc.RpcError) as again:
        pipelines.cancel(run.id)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_run_survives_a_scheduler_restart(services, lake, pipelines):
    write_src(lake, [3])
    pipelines.apply("restart", {"steps": [
        {"name": "double", "script": "scripts/double.py", "input": "datasets/src", "output": "datasets/r1",
         "params": {"pause": 3}, "cache": False},
        {"name": "total", "script": "scripts/total.py", "input": "steps.double.output", "output": "datasets/r2",
         "cache": False}]})
    run = pipelines.run("restart")
    deadline = time.time() + 30
    while pipelines.get_run(run.id).steps["double"].status != "running" and time.time() < deadline:
        time.sleep(0.1)
    services[1].stop()
    services[1].start()
    client = PipelineClient(services[1].addr)
    try:
        after = client.wait(run.id, timeout=120)
    finally:
        client.close()
    # the local backend cannot re-attach a task: the cut-off step fails clearly, its dependent is skipped
    assert after.status == "failed" and after.steps["double"].status == "failed"
    assert "SchedulerRestart" in after.steps["double"].message or "Shutdown" in after.steps["double"].message
    assert after.steps["total"].status == "skipped"


def test_a_dataset_trigger_runs_the_pipeline_and_records_why(services, lake, pipelines):
    lake.write("events", pa.table({"x": pa.array([1], pa.int64())}), mode="overwrite")
    pipelines.apply("triggered", {
        "steps": [{"name": "total", "script": "scripts/total.py", "input": "datasets/events",
                   "output": "datasets/events_sum"}],
        "on": {"dataset": "events", "min_new_rows": 2}})
    version = lake.write("events", pa.table({"x": pa.array([2], pa.int64())}), mode="append").version
    time.sleep(5)
    assert pipelines.runs("triggered") == [], "one new row is below min_new_rows: no run"
    version = lake.write("events", pa.table({"x": pa.array([3], pa.int64())}), mode="append").version
    deadline = time.time() + 30
    while not pipelines.runs("triggered") and time.time() < deadline:
        time.sleep(0.2)
    runs = pipelines.runs("triggered")
    assert len(runs) == 1 and runs[0].trigger == f"dataset events@{version}"
    done = pipelines.wait(runs[0].id, timeout=120)
    assert done.status == "completed" and result(done, "total")["total"] == 6


@pytest.mark.parametrize("definition, message", [
    ({"steps": [{"name": "a", "script": "scripts/double.py", "input": "steps.b.output", "output": "datasets/a"},
                {"name": "b", "script": "scripts/double.py", "input": "steps.a.output", "output": "datasets/b"}]},
     "cycle"),
    ({"steps": [{"name": "a", "script": "scripts/double.py", "input": "steps.nope.output"}]}, "no step 'nope'"),
    ({"steps": [{"name": "a", "script": "scripts/double.py", "output": "datasets/x"},
                {"name": "b", "script": "scripts/double.py", "output": "datasets/x"}]}, "both write datasets/x"),
    ({"steps": [{"name": "a", "script": "scripts/double.py"}], "on": {"dataset": "does_not_exist"}},
     "'does_not_exist' does not exist"),
    ({"steps": [{"name": "a", "script": "scripts/double.py"}], "on": {"cron": "every day"}}, "not a cron"),
    ({"steps": [{"name": "a", "script": "scripts/double.py", "retries": 3}]}, "unknown field retries"),
    ({"steps": [{"name": "a", "script": "scripts/double.py"}], "schedule": "x"}, "unknown field schedule"),
    ({"steps": [{"name": "a", "script": "scripts/missing.py"}]}, "step 'a'"),
    ({"steps": [{"name": "a", "script": "scripts/double.py", "output": "models/m@production"}]},
     "steps"),  # the model does not exist yet: fine at apply (the gate creates nothing it was not told to)
    ({"steps": []}, "1 to 100"),
    ({"steps": [{"name": "a", "script": "scripts/double.py", "resources": {"custom": {"pool": "big"}}}]},
     "resources.custom.pool must be a number"),
    ({"steps": [{"name": "a", "script": "scripts/double.py", "timeout_s": "soon"}]}, "timeout_s must be a number"),
    ({"steps": [{"name": "a", "script": "scripts/double.py"}], "max_concurrent_runs": True}, "max_concurrent_runs"),
    ({"steps": [{"name": "a b", "script": "scripts/double.py"}]}, "step name"),
])
def test_bad_definitions_are_refused_naming_the_problem_and_nothing_is_stored(pipelines, definition, message):
    if message == "steps":
        pipelines.apply("fine", definition)
        return
    with pytest.raises(grpc.RpcError) as refused:
        pipelines.apply("bad", definition)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert message in refused.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        pipelines.get("bad")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_run_params_for_an_unknown_step_are_refused(pipelines):
    pipelines.apply("chain2", CHAIN)
    with pytest.raises(grpc.RpcError) as refused:
        pipelines.run("chain2", params={"trian": {"epochs": 1}})
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no step 'trian'" in refused.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        pipelines.run("nope")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_lake_reads_of_the_written_versions(project):
    """What the chain wrote is in the lake as ordinary Lance datasets."""
    assert lance.dataset(str(project / ".ai_platform/datasets/sum.lance")).to_table().column("total")[0].as_py()


def test_rest_defines_runs_and_follows_a_pipeline_with_the_token(rest, lake):
    write_src(lake, [4, 5])
    defined = rest.put("/api/v1/pipelines/web", json=CHAIN)
    assert defined.status_code == 200, defined.text
    assert defined.json()["name"] == "web" and defined.json()["revision"] == 1
    assert "web" in [p["name"] for p in rest.get("/api/v1/pipelines").json()]
    started = rest.post("/api/v1/pipelines/web/runs", json={"params": {"double": {"factor": 10}}})
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    deadline = time.time() + 120
    while (run := rest.get(f"/api/v1/pipelines/web/runs/{run_id}").json())["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.2)
    assert run["status"] == "completed" and run["trigger"] == "manual" and run["order"] == ["double", "total"]
    assert run["steps"]["total"]["result"]["total"] == 90 and run["steps"]["double"]["task_id"]
    assert run["steps"]["total"]["inputs"] == {"datasets/dbl": run["steps"]["double"]["output_version"]}
    again = rest.post("/api/v1/pipelines/web/runs", json={"params": {"double": {"factor": 10}}}).json()
    deadline = time.time() + 60
    while (again := rest.get(f"/api/v1/pipelines/web/runs/{again['id']}").json())["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.1)
    assert {s["status"] for s in again["steps"].values()} == {"cached"}
    assert again["steps"]["double"]["cached_from"] == run["steps"]["double"]["task_id"]
    assert [r["id"] for r in rest.get("/api/v1/pipelines/web/runs").json()][:2] == [again["id"], run_id]
    assert rest.get("/api/v1/pipelines/web").json()["last_run"]["id"] == again["id"]


@pytest.mark.parametrize("method, path, body, status, code, words", [
    ("PUT", "/api/v1/pipelines/cyc", {"steps": [
        {"name": "a", "script": "scripts/double.py", "input": "steps.b.output", "output": "datasets/a"},
        {"name": "b", "script": "scripts/double.py", "input": "steps.a.output", "output": "datasets/b"}]},
     400, "INVALID_REQUEST", "cycle"),
    ("PUT", "/api/v1/pipelines/bad%20name", CHAIN, 400, "INVALID_REQUEST", "pipeline name"),
    ("PUT", "/api/v1/pipelines/list", [1, 2], 400, "INVALID_REQUEST", "dictionary"),
    ("POST", "/api/v1/pipelines/web/runs", {"cache": False, "parms": {}}, 400, "INVALID_REQUEST", "parms"),
    ("POST", "/api/v1/pipelines/web/runs", {"params": {"nope": {}}}, 400, "INVALID_REQUEST", "no step 'nope'"),
    ("POST", "/api/v1/pipelines/absent/runs", {}, 404, "PIPELINE_NOT_FOUND", "absent"),
    ("GET", "/api/v1/pipelines/web/runs/0000", None, 404, "PIPELINE_RUN_NOT_FOUND", "0000"),
])
def test_rest_bad_requests_are_clear(rest, method, path, body, status, code, words):
    response = rest.request(method, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error


def test_without_the_token_pipelines_are_refused(platform):
    response = httpx.get(f"{platform.url}/api/v1/pipelines", timeout=30)
    assert response.status_code == 401 and response.json()["error"]["code"] == "UNAUTHORIZED"


def test_a_file_input_is_cached_by_its_content(services, pipelines, project):
    data = project / "numbers.txt"
    data.write_text("1\n2\n")
    pipelines.apply("from_file", {"steps": [{"name": "count", "script": "scripts/lines.py", "input": "numbers.txt"}]})
    first = pipelines.wait(pipelines.run("from_file").id, timeout=120)
    assert first.steps["count"].status == "completed" and result(first, "count") == {"lines": 2}
    same = pipelines.wait(pipelines.run("from_file").id, timeout=60)
    assert same.steps["count"].status == "cached"
    data.write_text("1\n2\n3\n")  # the same path, new content: it runs again
    changed = pipelines.wait(pipelines.run("from_file").id, timeout=120)
    assert changed.steps["count"].status == "completed" and result(changed, "count") == {"lines": 3}


def test_a_gate_on_an_alias_that_does_not_exist_is_refused_unless_it_may_create_it(services, pipelines, project):
    import torch

    from ai_platform.sdk.models import save_model

    save_model(torch.nn.Linear(2, 2), str(project / ".ai_platform/models/gated.lance"), torch.zeros(1, 2))
    gate = {"name": "gate", "script": "scripts/double.py", "input": "datasets/src",
            "output": "models/gated@production"}
    with pytest.raises(grpc.RpcError) as refused:
        pipelines.apply("gated", {"steps": [gate]})
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "step 'gate': model 'gated' has no alias 'production'" in refused.value.details()
    applied = pipelines.apply("gated", {"steps": [{**gate, "params": {"create_alias": True}}]})
    assert applied.revision == 1


def test_the_cli_applies_a_yaml_file_runs_it_and_lists_runs(platform, project, lake):
    write_src(lake, [7])
    (project / "chain.yaml").write_text(
        "name: cli_chain\n"
        "on: {cron: '0 3 * * *'}\n"
        "steps:\n"
        "  - {name: double, script: scripts/double.py, input: datasets/src, output: datasets/cli_dbl}\n"
        "  - {name: total, script: scripts/total.py, input: steps.double.output, output: datasets/cli_sum}\n")
    env = {**os.environ, "AIP_TOKEN": TOKEN, "AIP_STORAGE_ADDR": platform.storage.addr,
           "AIP_SCHEDULER_ADDR": platform.scheduler.addr, "AIP_INFERENCE_ADDR": platform.inference.addr}

    def aip(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([AIP, *args], cwd=project, env=env, capture_output=True, text=True, timeout=180)

    applied = aip("pipelines", "apply", "chain.yaml")
    assert applied.returncode == 0 and "pipeline cli_chain: revision 1, 2 steps" in applied.stdout, applied.stderr
    ran = aip("pipelines", "run", "cli_chain", "--wait", "--params", '{"double": {"factor": 5}}', "-o", "json")
    assert ran.returncode == 0, ran.stderr
    run = json.loads(ran.stdout)
    assert run["status"] == "completed" and run["steps"]["total"]["result"]["total"] == 35
    listed = aip("pipelines", "runs", "cli_chain", "-o", "json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [run["id"]]
    shown = aip("pipelines", "ls")
    assert "cli_chain" in shown.stdout and "0 3 * * *" in shown.stdout
    bad = aip("pipelines", "run", "cli_chain", "--params", '{"nope": {}}')
    assert bad.returncode != 0 and "no step 'nope'" in bad.stderr
    (project / "broken.yaml").write_text("steps: [\n")
    broken = aip("pipelines", "apply", "broken.yaml")
    assert broken.returncode != 0 and "broken.yaml is not valid YAML" in broken.stderr


def test_the_sdk_defines_and_runs_a_pipeline(platform, lake):
    from ai_platform.client import Client

    write_src(lake, [1, 2])
    with Client(platform.storage.addr, platform.scheduler.addr, platform.inference.addr) as client:
        defined = client.pipeline("sdk_chain", [
            {"name": "double", "script": "scripts/double.py", "input": "datasets/src", "output": "datasets/sdk_dbl"}],
            description="from Python")
        assert defined["definition"]["description"] == "from Python"
        run = client.run_pipeline("sdk_chain", {"double": {"factor": 4}}, wait=True, timeout=120)
        assert run["status"] == "completed" and run["steps"]["double"]["result"] == {"rows": 2}
        assert client.pipeline_runs("sdk_chain")[0]["id"] == run["id"]
        assert "sdk_chain" in {p["name"] for p in client.list_pipelines()}


def test_feedback_is_appended_batched_and_checked(rest):
    image = [0.0] * 784
    image[300] = 1.0
    bodies = [{"image": image, "label": digit % 10, "dataset": "page_feedback"} for digit in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: rest.post("/api/v1/feedback", json=body), bodies))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    assert max(a.json()["rows"] for a in answers) == 6
    assert len({a.json()["version"] for a in answers}) < 6, "clicks that come together are one append"
    rows = rest.get("/api/v1/datasets/page_feedback/rows", params={"limit": 10}).json()
    assert rest.get("/api/v1/datasets/page_feedback").json()["schema"]["image"].startswith("fixed_size_list")
    assert len(rows["rows"]) == 6
    for body, words in (({"image": image, "label": 10}, "label"), ({"image": image[:700], "label": 1}, "image"),
                        ({"image": [2.0] * 784, "label": 1}, "image"), ({"image": image, "label": 1, "x": 1}, "x"),
                        ({"image": image, "label": 1, "dataset": "../etc"}, "dataset name")):
        refused = rest.post("/api/v1/feedback", json=body)
        assert refused.status_code == 400 and words in refused.json()["error"]["message"], refused.text


def test_a_schedule_runs_the_pipeline_and_ticks_that_find_a_run_in_flight_are_skipped(services, lake, pipelines):
    """Every second (croniter's sixth field: seconds), with a step that takes 3 s and one run at a time."""
    write_src(lake, [1])
    step = {"name": "double", "script": "scripts/double.py", "input": "datasets/src", "output": "datasets/cron_out",
            "params": {"pause": 3}, "cache": False}
    pipelines.apply("ticking", {"steps": [step], "on": {"cron": "* * * * * */1"}})
    deadline = time.time() + 60
    overlaps = 0
    while len(runs := pipelines.runs("ticking")) < 2 or runs[-1].status == "running":
        overlaps = max(overlaps, sum(r.status == "running" for r in runs))
        assert time.time() < deadline, [(r.status, r.trigger) for r in runs]
        time.sleep(0.2)
    pipelines.apply("ticking", {"steps": [step]})  # no trigger: no more runs
    assert overlaps <= 1, "max_concurrent_runs 1: a tick that finds a run in flight starts nothing"
    assert all(r.trigger == "schedule * * * * * */1" for r in runs)
    first = pipelines.wait(runs[-1].id, timeout=60)
    assert first.status == "completed" and first.steps["double"].status == "completed"
    ended = [pipelines.wait(r.id, timeout=60) for r in pipelines.runs("ticking")]
    starts = sorted(r.created_at.ToNanoseconds() / 1e9 for r in ended)
    assert all(b - a >= 3 for a, b in zip(starts, starts[1:], strict=False)), "each began after the last ended"
