"""The REST gateway against the four real services, with AIP_TOKEN set on all of them as in a deployment:
seed-compatible routes, extensions, and every error. (test_access.py runs every route with and without a token.)"""

from __future__ import annotations

import io
import json
import re
import signal
import time
import urllib.request

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from ai_platform.sdk.models import save_model
from mnist.model import MnistCNN
from tests.conftest import start_platform
from tests.task_scripts import write_scripts

TOKEN = "gateway-t0ken"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("gateway-project")
    write_scripts(project / "scripts")
    torch.manual_seed(0)
    model = MnistCNN().eval()
    save_model(model, str(project / ".ai_platform/models/cnn.lance"), torch.zeros(1, 1, 28, 28),
               labels=list(range(10)), params={"epochs": 2}, metrics={"accuracy": 0.75})
    running = start_platform(project, gateway_env={"AIP_BODY_LIMIT_MB": "1", "AIP_UPLOAD_LIMIT_MB": "8"},
                             token=TOKEN)
    running.model = model
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(platform):
    with httpx.Client(base_url=platform.url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """The message of an error: the platform's body on /api/v1, the protocol's ``{"error": "<message>"}`` on /v2."""
    assert response.status_code == status, response.text
    body = response.json()
    if response.request.url.path.startswith("/v2"):
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        assert "Traceback" not in body["error"]
        return body["error"]
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert "Traceback" not in body["error"]["message"]
    return body["error"]["message"]


def table(rows: int = 100, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"label": pa.array(rng.integers(0, 10, rows)), "x": pa.array(rng.random(rows)),
                     "split": ["train"] * rows})


def parquet_bytes(data: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(data, sink)
    return sink.getvalue()


def arrow_bytes(data: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return sink.getvalue().to_pybytes()


def csv_bytes(data: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(data, sink)
    return sink.getvalue()


PARQUET = {"content-type": "application/vnd.apache.parquet"}


# -- datasets -------------------------------------------------------------------------------

def test_health_reports_every_backend(http):
    body = http.get("/healthz").json()
    assert body["status"] == "ok"
    assert {s["service"] for s in body["services"].values()} == {"storage_svc", "scheduler_svc", "inference_svc"}


def test_upload_in_each_format_then_seed_detail_and_list(http, platform):
    data = table(100)
    for name, body, content_type in (("from_parquet", parquet_bytes(data), "application/vnd.apache.parquet"),
                                     ("from_arrow", arrow_bytes(data), "application/vnd.apache.arrow.stream"),
                                     ("from_csv", csv_bytes(data), "text/csv")):
        response = http.post(f"/api/v1/datasets/{name}", content=body, headers={"content-type": content_type})
        assert response.status_code == 201, response.text
        detail = http.get(f"/api/v1/datasets/{name}").json()
        assert detail["id"] == name and detail["num_rows"] == 100
        assert detail["path"] == str(platform.home / f"datasets/{name}.lance")
        assert detail["schema"] == {"label": "int64", "x": "double", "split": "string"}
    listed = http.get("/api/v1/datasets").json()
    assert {"from_parquet", "from_arrow", "from_csv"} <= {d["id"] for d in listed}


def test_versions_preview_and_export_round_trip(http):
    first, second = table(50, seed=1), table(20, seed=2)
    assert http.post("/api/v1/datasets/versioned", content=parquet_bytes(first), headers=PARQUET).status_code == 201
    response = http.post("/api/v1/datasets/versioned?mode=append", content=parquet_bytes(second), headers=PARQUET)
    assert response.status_code == 201 and response.json()["num_rows"] == 70
    assert [v["version"] for v in http.get("/api/v1/datasets/versioned/versions").json()] == [1, 2]
    assert http.get("/api/v1/datasets/versioned?version=1").json()["num_rows"] == 50
    rows = http.get("/api/v1/datasets/versioned/rows?limit=3&offset=1").json()
    assert rows["total_rows"] == 70 and len(rows["rows"]) == 3
    assert rows["rows"][0]["label"] == first.column("label")[1].as_py()
    both = pa.concat_tables([first, second])
    exported = http.get("/api/v1/datasets/versioned/export?format=arrow")
    assert exported.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert pa.ipc.open_stream(exported.content).read_all().equals(both)
    assert pq.read_table(io.BytesIO(http.get("/api/v1/datasets/versioned/export?format=parquet").content)).equals(both)
    csv = pacsv.read_csv(io.BytesIO(http.get("/api/v1/datasets/versioned/export?format=csv").content))
    assert csv.column("label").to_pylist() == both.column("label").to_pylist()
    old = http.get("/api/v1/datasets/versioned/export?format=arrow&version=1&columns=label")
    assert pa.ipc.open_stream(old.content).read_all().equals(first.select(["label"]))


def test_delete_is_seed_compatible(http):
    http.post("/api/v1/datasets/doomed", content=parquet_bytes(table(5)), headers=PARQUET)
    assert http.delete("/api/v1/datasets/doomed").json() == {"status": "deleted"}
    error_of(http.get("/api/v1/datasets/doomed"), 404, "DATASET_NOT_FOUND")
    error_of(http.delete("/api/v1/datasets/doomed"), 404, "DATASET_NOT_FOUND")


def test_gc_over_rest_reports_then_removes_old_versions(http):
    for mode in ("create", "overwrite", "overwrite"):
        http.post(f"/api/v1/datasets/tidy?mode={mode}", content=parquet_bytes(table(5)), headers=PARQUET)
    planned = http.post("/api/v1/datasets/tidy/gc", json={"keep_versions": 1, "dry_run": True})
    assert planned.status_code == 200, planned.text
    assert planned.json()["removed_versions"] == [1, 2] and planned.json()["dry_run"] is True
    assert http.get("/api/v1/datasets/tidy").json()["num_versions"] == 3
    done = http.post("/api/v1/datasets/tidy/gc", json={"keep_versions": 1}).json()
    assert done["removed_versions"] == [1, 2] and done["removed_files"] == planned.json()["removed_files"] > 0
    assert http.get("/api/v1/datasets/tidy").json()["num_versions"] == 1
    assert http.post("/api/v1/datasets/tidy/gc").json()["removed_files"] == 0, "no body: the safe defaults"
    error_of(http.post("/api/v1/datasets/tidy/gc", json={"keep": 1}), 400, "INVALID_REQUEST")
    error_of(http.post("/api/v1/datasets/tidy/gc", json={"min_age_s": -1}), 400, "INVALID_REQUEST")
    error_of(http.post("/api/v1/datasets/absent/gc", json={}), 404, "DATASET_NOT_FOUND")


def test_model_aliases_over_rest(http, platform):
    from ai_platform.sdk.models import save_model

    save_model(platform.model, str(platform.project / ".ai_platform/models/aliased.lance"), torch.zeros(1, 1, 28, 28))
    save_model(platform.model, str(platform.project / ".ai_platform/models/aliased.lance"), torch.zeros(1, 1, 28, 28))
    shown = http.put("/api/v1/models/aliased/aliases/production", json={"version": 1})
    assert shown.status_code == 200, shown.text
    assert shown.json()["aliases"] == {"production": 1}
    assert http.put("/api/v1/models/aliased/aliases/production", json={"version": 2}).json()["aliases"] == {
        "production": 2}
    assert http.get("/api/v1/models/aliased").json()["aliases"] == {"production": 2}
    predicted = http.post("/api/v1/models/aliased/predict", json={"image": [0.0] * 784, "version": "production"})
    assert predicted.status_code == 200 and predicted.json()["model_version"] == "2", predicted.text
    assert "predict takes none" in error_of(http.post("/api/v1/models/aliased/predict?version=2",
                                                      json={"image": [0.0] * 784}), 400, "INVALID_REQUEST")
    assert "unknown query parameter(s) ['verbose']" in error_of(http.get("/v2/models/aliased?verbose=1"), 400, "")
    assert "a load request takes only 'parameters'" in error_of(http.post(
        "/v2/repository/models/aliased/load", json={"paramters": {"max_batch_size": 4}}), 400, "")
    assert "unknown field(s) ['versoin']" in error_of(http.post("/api/v1/models/aliased/predict", json={
        "image": [0.0] * 784, "versoin": "production"}), 400, "INVALID_REQUEST")
    answer = http.post("/v2/models/aliased/versions/production/infer", json={"inputs": [
        {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]})
    assert answer.status_code == 200 and answer.json()["model_version"] == "2", answer.text
    assert "a number is a version" in error_of(http.put("/api/v1/models/aliased/aliases/123", json={"version": 1}),
                                               400, "INVALID_REQUEST")
    error_of(http.put("/api/v1/models/aliased/aliases/-x", json={"version": 1}), 400, "INVALID_REQUEST")
    error_of(http.put("/api/v1/models/aliased/aliases/prod", json={"version": 1, "why": "x"}), 400, "INVALID_REQUEST")
    assert "has no version 9" in error_of(http.put("/api/v1/models/aliased/aliases/prod", json={"version": 9}),
                                          404, "MODEL_NOT_FOUND")
    http.put("/api/v1/models/aliased/aliases/production", json={"version": 1})
    refused = http.post("/api/v1/models/aliased/gc", json={"keep_versions": 1})
    assert "would remove versions that aliases point to: 'production' (version 1)" in error_of(refused, 409,
                                                                                             "CONFLICT")
    assert http.delete("/api/v1/models/aliased/aliases/production").json()["aliases"] == {}
    assert "has no alias 'production'" in error_of(http.delete("/api/v1/models/aliased/aliases/production"), 404,
                                                   "MODEL_NOT_FOUND")


def test_a_task_reads_its_pinned_input_and_its_model_records_where_it_came_from(http, platform):
    import hashlib

    http.post("/api/v1/datasets/lineage_src", content=parquet_bytes(table(5)), headers=PARQUET).raise_for_status()
    task = http.post("/api/v1/tasks", json={"name": "trained", "script": "scripts/lineage.py",
                                            "input": "datasets/lineage_src", "output": "models/lineage_model",
                                            "params": {"pause": 2.0}}).json()
    assert (task["input_table"], task["input_version"]) == ("datasets/lineage_src", 1)
    http.post("/api/v1/datasets/lineage_src?mode=overwrite", content=parquet_bytes(table(9)),
              headers=PARQUET).raise_for_status()
    deadline = time.time() + 60
    while (done := http.get(f"/api/v1/tasks/{task['id']}").json())["status"] in ("pending", "running"):
        assert time.time() < deadline
        time.sleep(0.2)
    assert done["status"] == "completed", done["error"]
    assert done["result"] == {"rows": 5}, "the task read the version it was given, not the overwrite"
    lineage = http.get("/api/v1/models/lineage_model").json()["lineage"]
    script = (platform.project / "scripts/lineage.py").read_bytes()
    assert lineage == {"task_id": task["id"], "script": "lineage.py",
                       "script_sha256": hashlib.sha256(script).hexdigest(), "params": {"pause": 2.0},
                       "input": {"kind": "dataset", "name": "lineage_src", "version": 1}}
    dataset = http.get("/api/v1/datasets/lineage_src").json()
    assert dataset["models"] == [{"model": "lineage_model", "version": 1, "dataset_version": 1,
                                  "task_id": task["id"]}]
    assert http.get("/api/v1/datasets/lineage_src?version=1").json()["num_rows"] == 5, "that version stays readable"
    golden = http.put("/api/v1/datasets/lineage_src/aliases/golden", json={"version": 1})
    assert golden.status_code == 200 and golden.json()["aliases"] == {"golden": 1}, golden.text


def test_corrupt_or_mismatched_uploads_change_nothing(http):
    http.post("/api/v1/datasets/guarded", content=parquet_bytes(table(10)), headers=PARQUET)
    good = parquet_bytes(table(30))
    for body in (b"PAR1 this is not parquet at all PAR1", good[: len(good) // 2], good[:4] + b"\x00" * 50 + good[-8:]):
        message = error_of(http.post("/api/v1/datasets/guarded?mode=overwrite", content=body, headers=PARQUET),
                           400, "INVALID_REQUEST")
        assert "not a valid parquet file" in message
    error_of(http.post("/api/v1/datasets/guarded?mode=append", content=parquet_bytes(pa.table({"z": [1.0]})),
                       headers=PARQUET), 409, "CONFLICT")
    error_of(http.post("/api/v1/datasets/guarded", content=parquet_bytes(table(3)), headers=PARQUET), 409, "CONFLICT")
    error_of(http.post("/api/v1/datasets/guarded", content=b"x", headers={"content-type": "image/png"}), 415,
             "UNSUPPORTED_MEDIA_TYPE")
    detail = http.get("/api/v1/datasets/guarded").json()
    assert (detail["num_versions"], detail["num_rows"]) == (1, 10)


def test_uploads_over_their_limit_are_413(http):
    big = b"\x00" * (9 * 2**20)
    error_of(http.post("/api/v1/datasets/huge", content=big, headers=PARQUET), 413, "PAYLOAD_TOO_LARGE")
    error_of(http.get("/api/v1/datasets/huge"), 404, "DATASET_NOT_FOUND")


# -- models and inference -----------------------------------------------------------------------

def test_models_show_metrics_params_and_labels(http):
    models = http.get("/api/v1/models").json()
    cnn = next(m for m in models if m["id"] == "cnn")
    assert cnn["metrics"] == {"accuracy": 0.75} and cnn["params"] == {"epochs": 2}
    assert cnn["labels"] == [str(i) for i in range(10)]
    assert http.get("/api/v1/models/cnn").json()["signature"]["inputs"][0]["shape"] == [-1, 1, 28, 28]
    error_of(http.get("/api/v1/models/nope"), 404, "MODEL_NOT_FOUND")


def test_predict_with_the_seed_body(http, platform):
    image = np.random.default_rng(3).random(784).astype(np.float32)
    answer = http.post("/api/v1/models/cnn/predict", json={"image": image.tolist()}).json()
    with torch.inference_mode():
        logits = platform.model(torch.from_numpy(image).reshape(1, 1, 28, 28))[0]
    expected = torch.softmax(logits, 0).numpy()
    assert answer["prediction"] == int(expected.argmax()) and answer["label"] == str(answer["prediction"])
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-4)
    assert abs(answer["confidence"] - expected.max()) < 1e-4 and len(answer["probabilities"]) == 10
    shaped = http.post("/api/v1/models/cnn/predict", json={"inputs": image.reshape(28, 28).tolist()}).json()
    assert shaped["prediction"] == answer["prediction"]
    assert "takes 784 FP32 values" in error_of(http.post("/api/v1/models/cnn/predict", json={"image": [0.1] * 10}),
                                               400, "INVALID_REQUEST")
    error_of(http.post("/api/v1/models/nope/predict", json={"image": image.tolist()}), 404, "MODEL_NOT_FOUND")


def test_open_inference_protocol_rest(http, platform):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2").json()["name"] == "ai-platform-inference"
    assert http.post("/v2/repository/models/cnn/load").json()["state"] == "READY"
    assert http.get("/v2/models/cnn/ready").json()["ready"] is True
    meta = http.get("/v2/models/cnn").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    x = np.random.default_rng(4).random((2, 1, 28, 28), dtype=np.float32)
    body = {"id": "q1", "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}
    answer = http.post("/v2/models/cnn/infer", json=body).json()
    assert answer["id"] == "q1" and answer["outputs"][0]["shape"] == [2, 10]
    with torch.inference_mode():
        expected = platform.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(2, 10), expected, atol=1e-4)
    assert http.post("/v2/models/cnn/versions/1/infer", json=body).json()["model_version"] == "1"
    assert "cnn" in [m["name"] for m in http.get("/v2/repository/index").json()]
    assert http.post("/v2/repository/models/cnn/unload").json()["state"] == "UNAVAILABLE"
    error_of(http.get("/v2/models/cnn/ready"), 503, "MODEL_NOT_READY")
    bad = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}
    assert "expected shape" in error_of(http.post("/v2/models/cnn/infer", json=bad), 400, "INVALID_REQUEST")
    short = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0]}]}
    assert "1 values for shape" in error_of(http.post("/v2/models/cnn/infer", json=short), 400, "INVALID_REQUEST")
    error_of(http.post("/v2/models/nope/infer", json=body), 404, "MODEL_NOT_FOUND")
    # infer is served ahead of FastAPI's router (the hot path): the router's checks are made there too
    assert "unknown query parameter(s) in 'verbose=1'; infer takes none" in error_of(
        http.post("/v2/models/cnn/infer?verbose=1", json=body), 400, "")
    assert "invalid model 'bad name!': must be" in error_of(
        http.post("/v2/models/bad%20name!/versions/1/infer", json=body), 400, "")
    assert "is not valid JSON" in error_of(http.post("/v2/models/cnn/infer", content=b"{nope"), 400, "")


def socket_calls(platform) -> int:
    """ModelInfer calls inference has answered over its Unix socket."""
    metrics = urllib.request.urlopen(f"http://{platform.inference.metrics_addr}/metrics", timeout=10).read().decode()
    found = re.search(r'aip_socket_requests_total\{code="OK",method="ModelInfer"\} ([\d.]+)', metrics)
    return int(float(found.group(1))) if found else 0


def test_predict_and_infer_reach_inference_over_its_socket(http, platform):
    before = socket_calls(platform)
    image = np.random.default_rng(5).random(784).astype(np.float32).tolist()
    assert http.post("/api/v1/models/cnn/predict", json={"image": image}).status_code == 200
    body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": image}]}
    assert http.post("/v2/models/cnn/infer", json=body).status_code == 200
    assert socket_calls(platform) == before + 2


# -- tasks ----------------------------------------------------------------------------------------

def wait_task(http, task_id: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        task = http.get(f"/api/v1/tasks/{task_id}?wait_s={min(max(deadline - time.time(), 0), 30):.1f}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
    raise AssertionError(f"task {task_id} did not finish")


def test_a_task_is_long_polled_until_it_finishes(http):
    task = http.post("/api/v1/tasks", json={"name": "nap", "script": "scripts/nap.py",
                                            "params": {"seconds": 1.5}}).json()
    asked = time.monotonic()
    running = http.get(f"/api/v1/tasks/{task['id']}?wait_s=0.3").json()
    assert running["status"] == "running" and time.monotonic() - asked >= 0.25, "it waited, then answered as it is"
    done = http.get(f"/api/v1/tasks/{task['id']}?wait_s=30").json()
    answered = time.monotonic()
    assert done["status"] == "completed" and answered - asked < 20, "answered as it finished, not after 30 s"
    assert done["completed_at"] and answered - asked >= 1.0
    again = http.get(f"/api/v1/tasks/{task['id']}?wait_s=30")
    assert again.json()["status"] == "completed" and time.monotonic() - answered < 5, "finished: answered at once"
    for bad in ("61", "-1", "nan", "inf", "soon", ""):
        assert "wait_s" in error_of(http.get(f"/api/v1/tasks/{task['id']}?wait_s={bad}"), 400, "INVALID_REQUEST")
    assert "unknown query parameter(s) ['wait']" in error_of(http.get(f"/api/v1/tasks/{task['id']}?wait=5"), 400,
                                                             "INVALID_REQUEST")
    error_of(http.get("/api/v1/tasks/nope?wait_s=5"), 404, "TASK_NOT_FOUND")


def test_seed_task_creation_body(http, platform):
    http.post("/api/v1/datasets/mnist_clean", content=parquet_bytes(table(7)), headers=PARQUET)
    seed_body = {"name": "mnist_serve", "input": ".ai_platform/datasets/mnist_clean.lance",
                 "script": "scripts/reads_dataset.py", "output": "", "params": {"device": "cpu", "port": 8080}}
    response = http.post("/api/v1/tasks", json=seed_body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert {"id", "name", "input", "output", "params", "status", "created_at"} <= set(created)
    assert created["params"] == {"device": "cpu", "port": 8080}
    done = wait_task(http, created["id"])
    assert done["status"] == "completed" and done["result"] == {"rows": 7} and done["completed_at"]
    assert created["id"] in [t["id"] for t in http.get("/api/v1/tasks").json()]
    assert [t["id"] for t in http.get("/api/v1/tasks?name=mnist_serve&status=completed").json()] == [created["id"]]
    http.post("/api/v1/tasks", json={"name": "another", "script": "scripts/trivial.py"})
    first = http.get("/api/v1/tasks?limit=1")
    assert len(first.json()) == 1 and first.headers["X-Next-Page-Token"]
    rest = http.get(f"/api/v1/tasks?limit=1000&page_token={first.headers['X-Next-Page-Token']}").json()
    assert first.json()[0]["id"] not in [t["id"] for t in rest]


def test_logs_plain_and_followed_as_server_sent_events(http):
    task = http.post("/api/v1/tasks", json={"name": "chat", "script": "scripts/progress.py",
                                            "params": {"steps": 3, "pause": 0.3}}).json()
    events = []
    with http.stream("GET", f"/api/v1/tasks/{task['id']}/logs?follow=true") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line:
                events.append(line)
    assert "data: epoch 0 starting" in events and "data: done training" in events
    assert events[-2:] == ["event: end", 'data: {"status": "completed"}']
    assert "epoch 2 starting" in http.get(f"/api/v1/tasks/{task['id']}/logs").text
    progress = http.get(f"/api/v1/tasks/{task['id']}").json()["progress"]
    assert progress["fraction"] == 1.0 and progress["metrics"]["epoch"] == 3


def test_metric_series_as_json_and_followed_as_server_sent_events(http):
    task = http.post("/api/v1/tasks", json={"name": "curves", "script": "scripts/metrics.py",
                                            "params": {"points": 5, "live": 4}}).json()
    events = []
    with http.stream("GET", f"/api/v1/tasks/{task['id']}/metrics?follow=true") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line for line in stream.iter_lines() if line]
    points = [p for line in events if line.startswith("data: {\"points\"") for p in json.loads(line[6:])["points"]]
    assert sum(1 for p in points if p[0] == "live") == 4 and events[-2] == "event: end"
    series = http.get(f"/api/v1/tasks/{task['id']}/metrics").json()
    assert series["dropped"] == 0 and set(series["series"]) == {"loss", "accuracy", "late", "live"}
    assert [p[:2] for p in series["series"]["late"]] == [[2, 1.0], [7, 3.0]]
    assert [p[0] for p in series["series"]["loss"]] == [0, 1, 2, 3, 4]
    error_of(http.get("/api/v1/tasks/nope/metrics"), 404, "TASK_NOT_FOUND")
    assert "unknown query parameter(s) ['folow']; /api/v1/tasks/" in error_of(
        http.get(f"/api/v1/tasks/{task['id']}/metrics?folow=true"), 400, "INVALID_REQUEST")
    assert "unknown query parameter(s) ['idz']" in error_of(http.get("/api/v1/runs?idz=x"), 400, "INVALID_REQUEST")
    error_of(http.get(f"/api/v1/tasks/{task['id']}/metrics?follow=maybe"), 400, "INVALID_REQUEST")


def test_cancel_and_task_errors(http):
    task = http.post("/api/v1/tasks", json={"name": "sleepy", "script": "scripts/nap.py",
                                            "params": {"seconds": 30}}).json()
    assert http.post(f"/api/v1/tasks/{task['id']}/cancel").json() == {"status": "cancelled"}
    assert http.get(f"/api/v1/tasks/{task['id']}").json()["status"] == "cancelled"
    assert "already cancelled" in error_of(http.post(f"/api/v1/tasks/{task['id']}/cancel"), 409, "CONFLICT")
    boom = http.post("/api/v1/tasks", json={"name": "boom", "script": "scripts/raises.py"}).json()
    failed = wait_task(http, boom["id"])
    assert failed["error"] == "ValueError: bad value 42" and failed["error_type"] == "ValueError"
    error_of(http.get("/api/v1/tasks/nope"), 404, "TASK_NOT_FOUND")
    error_of(http.get("/api/v1/tasks/nope/logs"), 404, "TASK_NOT_FOUND")
    error_of(http.post("/api/v1/tasks/nope/cancel"), 404, "TASK_NOT_FOUND")
    queued = http.post("/api/v1/tasks", json={"name": "t", "script": "scripts/trivial.py", "input": "datasets/nope"})
    assert queued.status_code == 201, "an input is resolved when the task starts, as in the seed"
    missing = wait_task(http, queued.json()["id"])
    assert missing["status"] == "failed" and missing["error_type"] == "NotFound"
    assert "datasets/nope does not exist" in missing["error"]
    assert "outside" in error_of(http.post("/api/v1/tasks", json={"name": "t", "script": "../../etc/passwd.py"}),
                                 400, "INVALID_REQUEST")
    error_of(http.get("/api/v1/tasks?status=sleeping"), 400, "INVALID_REQUEST")


# -- malformed requests ---------------------------------------------------------------------------

def test_malformed_requests_get_precise_400s(http):
    json_type = {"content-type": "application/json"}
    assert "not valid JSON" in error_of(http.post("/api/v1/tasks", content=b'{"name": "x", "scr', headers=json_type),
                                        400, "INVALID_REQUEST")
    assert "params" in error_of(http.post("/api/v1/tasks", json={"name": "x", "script": "s.py", "params": [1, 2]}),
                                400, "INVALID_REQUEST")
    assert "script" in error_of(http.post("/api/v1/tasks", json={"name": "x"}), 400, "INVALID_REQUEST")
    assert "name" in error_of(http.post("/api/v1/tasks", json={"name": 5, "script": "s.py"}), 400, "INVALID_REQUEST")
    error_of(http.get("/api/v1/datasets/x/rows?limit=abc"), 400, "INVALID_REQUEST")
    error_of(http.post("/api/v1/models/cnn/predict", content=b"[1,2", headers=json_type), 400, "INVALID_REQUEST")
    for path in ("/api/v1/datasets/..%2F..%2Fetc", "/api/v1/models/..%2Fx", "/api/v1/datasets/a%2Fb/rows"):
        assert "never paths" in error_of(http.get(path), 400, "INVALID_REQUEST")
    error_of(http.get("/api/v1/datasets/bad..name"), 400, "INVALID_REQUEST")
    assert "invalid id '-dash': must be 1-128 characters" in error_of(http.get("/api/v1/datasets/-dash"), 400,
                                                                      "INVALID_REQUEST")
    assert "invalid id 'xxxx" in error_of(http.get("/api/v1/models/" + "x" * 129), 400, "INVALID_REQUEST")
    odd_model = http.get("/v2/models/-dash/ready")
    assert odd_model.status_code == 400 and odd_model.json() == {
        "error": "invalid model '-dash': must be 1-128 characters of letters, digits, '_', '.', '-', "
                 "starting with a letter or digit"}
    document = http.get("/openapi.json").json()
    for path in ("/api/v1/datasets/{id}", "/api/v1/models/{id}/predict", "/v2/models/{model}/infer"):
        operation = next(iter(document["paths"][path].values()))
        schema = next(p["schema"] for p in operation["parameters"] if p["in"] == "path")
        assert (schema["pattern"], schema["maxLength"]) == ("^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", 128), path
    error_of(http.get("/api/v1/nothing-here"), 404, "NOT_FOUND")


def test_json_bodies_over_the_limit_are_413_without_reading_them(http):
    big = json.dumps({"image": [0.5] * 300_000}).encode()  # ~1.5 MB > the 1 MiB JSON limit
    error_of(http.post("/api/v1/models/cnn/predict", content=big, headers={"content-type": "application/json"}),
             413, "PAYLOAD_TOO_LARGE")

    def chunks():
        for _ in range(40):
            yield b" " * 65536

    error_of(http.post("/api/v1/models/cnn/predict", content=chunks(), headers={"content-type": "application/json"}),
             413, "PAYLOAD_TOO_LARGE")


def test_openapi_docs_metrics_and_page(http):
    spec = http.get("/openapi.json").json()
    assert {"/api/v1/datasets", "/api/v1/tasks", "/api/v1/models/{id}/predict", "/v2/models/{model}/infer"} <= set(
        spec["paths"])
    post_task = spec["paths"]["/api/v1/tasks"]["post"]
    assert "201" in post_task["responses"] and "404" in post_task["responses"]
    assert "ErrorBody" in spec["components"]["schemas"]
    predict = spec["paths"]["/api/v1/models/{id}/predict"]["post"]  # served as plain ASGI, documented as usual
    assert [p["name"] for p in predict["parameters"]] == ["id"] and "image" in json.dumps(predict["requestBody"])
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictView")
    assert http.get("/docs").status_code == 200
    metrics = http.get("/metrics").text
    assert 'aip_http_requests_total{method="GET",route="/api/v1/datasets",status="200"}' in metrics
    assert 'aip_http_requests_total{method="POST",route="/api/v1/models/{id}/predict",status="200"}' in metrics
    page = http.get("/")
    assert page.status_code == 200 and "<canvas" in page.text


# -- faults ----------------------------------------------------------------------------------------

def test_a_backend_killed_mid_test_is_503_naming_it_and_recovers(http, platform):
    inference = platform.inference
    inference.proc.send_signal(signal.SIGKILL)
    inference.proc.wait(10)
    message = error_of(http.get("/v2/health/live"), 503, "SERVICE_UNAVAILABLE")
    assert "inference_svc" in message and inference.addr in message
    image = {"image": [0.0] * 784}
    for _ in range(2):  # the socket is gone with the process: gRPC is tried, and says who is down
        message = error_of(http.post("/api/v1/models/cnn/predict", json=image), 503, "SERVICE_UNAVAILABLE")
        assert "inference_svc" in message and inference.addr in message
    health = http.get("/healthz").json()
    assert health["status"] == "degraded" and not health["services"]["inference"]["healthy"]
    assert http.get("/api/v1/datasets").status_code == 200, "the rest keeps serving"
    inference.proc = None
    inference.start(timeout=60)
    deadline = time.time() + 15
    while http.get("/v2/health/live").status_code != 200 and time.time() < deadline:
        time.sleep(0.2)
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/healthz").json()["status"] == "ok"
    time.sleep(1.1)  # the socket is tried again a second after it failed to connect
    before = socket_calls(platform)
    assert http.post("/api/v1/models/cnn/predict", json=image).status_code == 200
    assert socket_calls(platform) == before + 1, "the gateway is back on the new process's socket"


def test_token_guards_everything_but_health_the_page_and_the_docs(platform):
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        error_of(client.get("/api/v1/datasets"), 401, "UNAUTHORIZED")
        error_of(client.get("/api/v1/datasets", headers={"Authorization": "Bearer wrong"}), 401, "UNAUTHORIZED")
        error_of(client.get("/api/v1/datasets", headers={"Authorization": TOKEN}), 401, "UNAUTHORIZED")
        error_of(client.post("/api/v1/models/cnn/predict", json={"image": [0.0] * 784}), 401, "UNAUTHORIZED")
        assert client.get("/api/v1/datasets", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/healthz").json()["status"] == "ok", "health stays open, and reaches every service"
        for path in ("/", "/digits.js", "/dashboard.html", "/vendor/uPlot.iife.min.js", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        error_of(client.get("/v2/health/live"), 401, "UNAUTHORIZED")
        error_of(client.post("/vendor/uPlot.iife.min.js"), 401, "UNAUTHORIZED")
        preflight = client.options("/api/v1/datasets", headers={"Origin": "http://localhost:3000",
                                                                 "Access-Control-Request-Method": "GET"})
        assert preflight.headers.get("access-control-allow-origin") == "http://localhost:3000"
