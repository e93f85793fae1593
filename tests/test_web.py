"""The web page and the dashboard in a real headless Chromium (Debian's), driven by Playwright, on what the demo
wrote: `aip up` with a token, then `aip demo mnist` (the shipped scripts' dataset, trained model and runs). Each
page fails its test on a console error or a failed request; screenshots of each view land in test-artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from playwright.sync_api import expect, sync_playwright

from ai_platform.client import StorageClient
from ai_platform.core.auth import Authority, Role, derived_key
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, DRAWN_DIGITS, draw_one, open_page, stroke, watch
from tests.conftest import ROOT, Demo

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module", autouse=True)
def token(demo: Demo):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIP_TOKEN", demo.token)
        yield demo.token


@pytest.fixture(scope="module")
def http(demo: Demo):
    with httpx.Client(base_url=demo.url, timeout=60, headers={"Authorization": f"Bearer {demo.token}"}) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "make test installs Debian's chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def wait_task(http: httpx.Client, task_id: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while (task := http.get(f"/api/v1/tasks/{task_id}").json())["status"] not in ("completed", "failed", "cancelled"):
        assert time.time() < deadline, f"task {task_id} did not end"
        time.sleep(0.3)
    return task


def test_drawn_digits_get_the_right_prediction_from_the_demo_model(demo, browser):
    page = open_page(browser, demo.token, viewport={"width": 1100, "height": 800})
    problems = watch(page)
    page.goto(demo.url + "/")
    expect(page.locator("#model option", has_text="mnist_cnn (v")).to_have_count(1)
    page.select_option("#model", "mnist_cnn")
    got = {}
    for name, digit, strokes in DRAWN_DIGITS:
        page.click("#clear")
        expect(page.locator("#digit")).to_have_text("–")
        for points in strokes:
            stroke(page, points)
        page.click("#predict")
        expect(page.locator("#digit")).not_to_have_text("–")
        expect(page.locator("[data-testid=bar]")).to_have_count(10)
        got[name] = (digit, page.locator("#digit").inner_text())
        page.screenshot(path=str(ARTIFACTS / f"digits-{name.replace(' ', '-')}.png"))
    wrong = {name: answer for name, (want, answer) in got.items() if answer != str(want)}
    assert not wrong, f"drawn digits the demo's model got wrong: {wrong}"
    widths = page.locator("[data-testid=bar] > span").evaluate_all("els => els.map(e => parseFloat(e.style.width))")
    assert abs(sum(widths) - 100) < 1
    seen = page.locator("#preview").evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, 0, 84, 84).data).filter((v, i) => i % 4 == 0 && v > 0)"
        ".length")
    assert seen > 50, "the 28x28 the model saw has ink in it"
    expect(page.locator("#notice")).to_be_hidden()
    assert not problems, problems


def test_a_viewer_sees_who_is_signed_in_and_no_buttons_it_may_not_use(demo, browser):
    viewer = Authority(token=demo.token, key=derived_key(demo.token)).person_token("vera", Role.VIEWER, 600)
    page = open_page(browser, viewer, viewport={"width": 1200, "height": 1000})
    problems = watch(page)
    page.goto(demo.url + "/dashboard.html")
    expect(page.get_by_test_id("who")).to_have_text("signed in as vera · viewer")
    expect(page.locator("#models tbody tr").first).to_be_visible()
    assert page.locator("#models button").count() == 0, "a viewer may neither load nor unload"
    admin = open_page(browser, demo.token, viewport={"width": 1200, "height": 1000})
    admin.goto(demo.url + "/dashboard.html")
    expect(admin.get_by_test_id("who")).to_have_text("signed in as admin · admin")
    expect(admin.locator("#models button").first).to_be_visible()
    assert not problems, problems


def test_without_a_token_in_its_settings_the_page_says_it_needs_one(demo, browser):
    page = open_page(browser, "")
    page.goto(demo.url + "/")
    expect(page.locator("#notice")).to_contain_text("needs a token")


def test_page_says_what_to_do_without_a_model(demo, browser):
    page = open_page(browser, demo.token)
    problems = watch(page)
    page.route("**/api/v1/models", lambda route: route.fulfill(status=200, body="[]",
                                                                content_type="application/json"))
    page.goto(demo.url + "/")
    expect(page.locator("#notice")).to_contain_text("No model yet")
    page.click("#predict")
    expect(page.locator("#notice")).to_contain_text("train one")
    assert not problems, problems


def test_the_dashboard_on_the_demo_data(demo, browser, http):
    """Each view, as a person goes through it after `make demo`: the lists, the dataset's preview with its digits,
    the model's facts and lineage, a task's facts, curves and log."""
    model = http.get("/api/v1/models/mnist_cnn").json()
    page = open_page(browser, demo.token, viewport={"width": 1280, "height": 1000})
    problems = watch(page)
    page.goto(demo.url + "/dashboard.html")
    expect(page.locator("#health .dot.up")).to_have_count(3)
    models = page.locator("#models tbody tr", has_text="mnist_cnn").first
    expect(models).to_contain_text("accuracy 0.")
    expect(models.locator("td.serving")).to_have_text(f"serving v{model['version']}"), "the newest, followed"
    box = page.locator("#models").bounding_box()
    card = page.locator("#models").locator("xpath=ancestor::section").bounding_box()
    assert box["x"] + box["width"] <= card["x"] + card["width"] + 1, "the models table fits its card"
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

    page.locator("#datasets tbody tr", has_text="mnist_clean").click()
    rows = page.locator("#dataset-rows tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() >= 5
    thumbs = page.locator("#dataset-rows canvas.thumb")
    expect(thumbs.first).to_be_visible()
    shades = thumbs.first.evaluate("c => new Set(Array.from(c.getContext('2d').getImageData(0, 0, c.width, "
                                   "c.height).data).filter((v, i) => i % 4 == 0)).size")
    assert shades > 2, "a thumbnail shows a digit, not one flat colour"
    expect(page.locator("#dataset-versions")).to_contain_text("admin (task ")
    page.screenshot(path=str(ARTIFACTS / "dashboard-dataset.png"), full_page=True)

    page.locator("#models tbody tr", has_text="mnist_cnn").first.click()
    lineage = page.locator("[data-testid=model-lineage]")
    source = model["lineage"]["input"]
    expect(lineage).to_contain_text(f"mnist_clean@{source['version']} → task {model['lineage']['task_id'][:8]} → "
                                    f"mnist_cnn@{model['version']}")
    info = page.locator("[data-testid=model-info]")
    expect(info.locator("[data-fact='written by']")).to_have_text(f"admin (task {model['lineage']['task_id']})")
    expect(info.locator("[data-fact=inputs]")).to_have_text("input FP32 [-1, 1, 28, 28]")
    page.screenshot(path=str(ARTIFACTS / "dashboard-model.png"), full_page=True)

    lineage.get_by_text(f"task {model['lineage']['task_id'][:8]}").click()
    expect(page.locator("#task-title")).to_contain_text(model["lineage"]["task_id"])
    facts = page.locator("#task-info")
    expect(facts.locator("[data-fact='result · accuracy']")).to_have_text(f"{model['metrics']['accuracy']:.3g}")
    expect(facts.locator("[data-fact=params]")).to_contain_text("batch_size 128"), "defaults shown, as the run used"
    expect(page.locator("[data-testid=chart-accuracy]")).to_have_attribute("data-points", "3")
    expect(page.locator("[data-testid=task-log]")).to_contain_text("[task completed]")
    page.screenshot(path=str(ARTIFACTS / "dashboard-task.png"), full_page=True)
    assert not problems, problems


def test_a_training_run_draws_its_curves_as_it_runs_and_compares_with_the_demo_run(demo, browser, http):
    demo_run = next(t for t in http.get("/api/v1/tasks?name=mnist_cnn").json() if t["status"] == "completed")
    live = http.post("/api/v1/tasks", json={"name": "mnist_cnn_sweep", "script": "mnist/mnist_cnn.py",
                                            "input": "datasets/mnist_clean", "output": "models/mnist_cnn_sweep",
                                            "params": {"epochs": 6, "log_every": 2, "learning_rate": 0.001}})
    assert live.status_code == 201, live.text
    live = live.json()
    page = open_page(browser, demo.token, viewport={"width": 1280, "height": 1400})
    problems = watch(page)
    page.goto(demo.url + "/dashboard.html")
    page.locator(f"#tasks tr[data-task-id='{live['id']}']").click()
    chart = page.locator("[data-testid=chart-batch_loss]")
    expect(chart).to_have_count(1, timeout=60000)
    expect(chart.locator("canvas")).to_have_count(1)
    first = int(chart.get_attribute("data-points"))
    time.sleep(2)
    grown = int(chart.get_attribute("data-points"))
    assert grown > first, f"the curve grew while the task ran ({first} -> {grown} points)"
    page.screenshot(path=str(ARTIFACTS / "dashboard-live-curves.png"), full_page=True)
    expect(page.locator("[data-testid=task-log]")).to_contain_text("[task completed]", timeout=120000)
    expect(page.locator("[data-testid=chart-accuracy]")).to_have_attribute("data-points", "6")

    for task in (demo_run, live):
        page.locator(f"#tasks tr[data-task-id='{task['id']}'] input[type=checkbox]").check()
    page.locator("#compare-button").click()
    expect(page.locator("[data-testid=compare-charts] [data-testid=chart-accuracy]")).to_have_attribute(
        "data-points", "6")
    expect(page.locator("[data-testid=compare-charts] [data-testid=legend]")).to_have_count(1)
    table = page.locator("[data-testid=compare-table]")
    expect(table.locator("tr")).to_have_count(3)
    header = [h.strip() for h in table.locator("th").all_inner_texts()]
    runs = {r["id"]: r for r in http.get(f"/api/v1/runs?ids={demo_run['id']},{live['id']}").json()}
    assert all(r["params"]["batch_size"] == 128 for r in runs.values()), "effective params, defaults included"
    batch = header.index("batch_size")
    for row in (1, 2):
        expect(table.locator("tr").nth(row).locator("td").nth(batch)).to_have_text("128")
    best = max(runs.values(), key=lambda r: r["final"]["accuracy"])
    column = header.index("accuracy (final)")
    winner = 1 + [r["id"] for r in (demo_run, live)].index(best["id"])
    expect(table.locator("tr").nth(winner).locator("td").nth(column)).to_have_class("best")
    scroller = table.locator("xpath=..")
    assert scroller.evaluate("e => getComputedStyle(e).overflowX") == "auto", "the table scrolls inside its card"
    page.screenshot(path=str(ARTIFACTS / "dashboard-compare.png"), full_page=True)
    assert not problems, problems


def test_a_malformed_image_shape_is_said_in_place(demo, browser):
    pixels = np.arange(3 * 784, dtype=np.uint8).reshape(3, 784)
    images = pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), 784)
    lake = StorageClient(demo.addrs["storage"])
    for name, shape in (("odd_shape", "28,x"), ("wrong_shape", "20,20"), ("json_shape", "[28, 28]")):
        lake.write(name, pa.table({"image": images, "label": [1, 2, 3]}), mode="overwrite",
                   metadata={"image_shape": shape})
    lake.close()
    page = open_page(browser, demo.token, viewport={"width": 1200, "height": 1000})
    problems = watch(page)
    page.goto(demo.url + "/dashboard.html")
    for name, says in (("odd_shape", 'image_shape "28,x" is not "height,width"'),
                       ("wrong_shape", 'image_shape "20,20" does not fit 784 values')):
        page.locator("#datasets tbody tr", has_text=name).click()
        expect(page.locator("#dataset-title")).to_contain_text(name)
        expect(page.locator("#dataset-rows")).to_contain_text(says)
        expect(page.locator("#dataset-rows canvas.thumb")).to_have_count(0)
    page.locator("#datasets tbody tr", has_text="json_shape").click()
    expect(page.locator("#dataset-title")).to_contain_text("json_shape")
    expect(page.locator("#dataset-rows canvas.thumb")).to_have_count(3), "the JSON form is read too"
    expect(page.locator("#notice")).to_be_hidden()
    assert not problems, problems


def test_the_digit_page_picks_a_model_by_alias(demo, browser, http):
    http.put("/api/v1/models/mnist_cnn/aliases/production", json={"version": 1}).raise_for_status()
    page = open_page(browser, demo.token, viewport={"width": 1100, "height": 800})
    problems = watch(page)
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/predict") else None)
    page.goto(demo.url + "/")
    expect(page.locator("#model option", has_text="mnist_cnn@production (v1)")).to_have_count(1)
    page.select_option("#model", "mnist_cnn@production")
    draw_one(page)
    page.click("#predict")
    expect(page.locator("#digit")).to_have_text("1")
    assert sent and sent[-1]["version"] == "production" and len(sent[-1]["image"]) == 784
    assert not problems, problems


def offline_page(browser, demo: Demo) -> tuple:
    """A page that may reach the gateway and nothing else; the URLs it tried elsewhere."""
    page = open_page(browser, demo.token, viewport={"width": 1200, "height": 900})
    outside: list[str] = []

    def only_the_gateway(route, request) -> None:
        if request.url.startswith(demo.url):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    page.route("**/*", only_the_gateway)
    return page, outside


def test_the_api_docs_work_offline(demo, browser):
    """Swagger UI at /docs and ReDoc at /redoc, from the gateway alone: any request elsewhere is refused."""
    for path, ready in (("/docs", ".opblock"), ("/redoc", "[role=menuitem], .menu-content li")):
        page, outside = offline_page(browser, demo)
        problems = watch(page)
        page.goto(demo.url + path)
        expect(page.locator(ready).first).to_be_visible(timeout=30000)
        assert page.locator(ready).count() > 10, f"{path} lists the API's operations"
        page.screenshot(path=str(ARTIFACTS / f"api-docs-{path.strip('/')}.png"))
        assert not outside, f"{path} asked for {outside}"
        assert not problems, problems


# -- the loop from the page back to training (last: these move mnist_cnn@production) -----------------------------------

def wait_run(http: httpx.Client, run_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while (run := http.get(f"/api/v1/pipelines/mnist_retrain/runs/{run_id}").json())["status"] == "running":
        assert time.time() < deadline, f"pipeline run {run_id} did not end: {run}"
        time.sleep(0.3)
    return run


class Predicting:
    """REST predictions on mnist_cnn@production, one after another, while a pipeline runs: none may fail."""

    def __init__(self, demo: Demo) -> None:
        import threading

        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(demo,), daemon=True)
        self._thread.start()

    def _loop(self, demo: Demo) -> None:
        image = np.zeros((28, 28), np.float32)
        image[4:24, 13:15] = 1.0
        with httpx.Client(base_url=demo.url, timeout=30, headers={"Authorization": f"Bearer {demo.token}"}) as http:
            while not self._stop.is_set():
                response = http.post("/api/v1/models/mnist_cnn/predict",
                                     json={"image": image.ravel().tolist(), "version": "production"})
                self.count += 1
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    self.versions.add(str(response.json()["model_version"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_a_worse_candidate_leaves_production_where_it_was(demo, http):
    """`make demo` applied pipelines/mnist_retrain.yaml; a run whose training is starved (1 epoch on 300 images)
    gives a worse model, and the gate keeps the alias."""
    defined = http.get("/api/v1/pipelines/mnist_retrain").json()
    assert [s["name"] for s in defined["definition"]["steps"]] == ["mix", "train", "gate"]
    assert defined["definition"]["on"]["dataset"] == "mnist_feedback"
    before = http.get("/api/v1/models/mnist_cnn").json()["aliases"]["production"]
    predicting = Predicting(demo)
    try:
        started = http.post("/api/v1/pipelines/mnist_retrain/runs",
                            json={"params": {"train": {"epochs": 1, "limit": 300}}})
        assert started.status_code == 201, started.text
        run = wait_run(http, started.json()["id"])
    finally:
        predicting.stop()
    assert run["status"] == "completed", run
    gate = run["steps"]["gate"]["result"]
    assert gate["decision"] == "kept" and gate["current_version"] == before, gate
    assert gate["candidate_accuracy"] < gate["current_accuracy"]
    assert gate["eval_dataset_version"] == run["steps"]["gate"]["inputs"]["datasets/mnist_clean"]
    assert http.get("/api/v1/models/mnist_cnn").json()["aliases"]["production"] == before
    assert not predicting.failures and predicting.count > 0
    # the same run again: nothing changed (data versions, params, scripts, the alias), so every step is cached
    started_at = time.perf_counter()
    again = wait_run(http, http.post("/api/v1/pipelines/mnist_retrain/runs",
                                     json={"params": {"train": {"epochs": 1, "limit": 300}}}).json()["id"])
    print(f"the shipped pipeline, all cached: {time.perf_counter() - started_at:.2f} s")
    assert {s["status"] for s in again["steps"].values()} == {"cached"}, again
    assert again["steps"]["train"]["cached_from"] == run["steps"]["train"]["task_id"]
    assert again["steps"]["gate"]["result"]["decision"] == "kept"


def test_corrections_on_the_page_retrain_and_a_better_model_takes_production(demo, browser, http):
    """Production is pointed at the starved model; people correct drawn digits on the page; the corrections'
    dataset triggers mnist_retrain; the gate promotes the better model; the page predicts with it, and no request
    failed in between."""
    versions = [v["version"] for v in http.get("/api/v1/models/mnist_cnn/versions").json()]
    weak = max(versions)
    http.put("/api/v1/models/mnist_cnn/aliases/production", json={"version": weak}).raise_for_status()
    runs_before = {r["id"] for r in http.get("/api/v1/pipelines/mnist_retrain/runs").json()}
    feedback_before = http.get("/api/v1/datasets/mnist_feedback").json()["num_rows"]

    page = open_page(browser, demo.token, viewport={"width": 1100, "height": 800})
    problems = watch(page)
    page.goto(demo.url + "/")
    expect(page.locator("#model")).to_have_value("mnist_cnn@production")
    predicting = Predicting(demo)
    try:
        for _name, digit, strokes in DRAWN_DIGITS[:6]:
            page.click("#clear")
            for points in strokes:
                stroke(page, points)
            page.click("#predict")
            expect(page.locator("#feedback")).to_be_visible()
            page.locator("[data-testid=correct]", has_text=str(digit)).click()
            expect(page.locator("[data-testid=thanks]")).to_contain_text(f"saved as a {digit}")
        clicked = time.perf_counter()
        page.screenshot(path=str(ARTIFACTS / "digits-feedback.png"))
        assert http.get("/api/v1/datasets/mnist_feedback").json()["num_rows"] == feedback_before + 6
        deadline = time.time() + 60
        while not (new := [r for r in http.get("/api/v1/pipelines/mnist_retrain/runs").json()
                           if r["id"] not in runs_before]):
            assert time.time() < deadline, "the corrections did not trigger mnist_retrain"
            time.sleep(0.5)
        assert new[0]["trigger"].startswith("dataset mnist_feedback@")
        run = wait_run(http, new[0]["id"])
    finally:
        predicting.stop()
    print(f"from the last correction to the gate's decision: {time.perf_counter() - clicked:.1f} s "
          f"({predicting.count} predictions meanwhile, {len(predicting.failures)} failed)")
    assert run["status"] == "completed", run
    assert run["steps"]["mix"]["result"]["feedback_rows"] >= 5  # the trigger fires at its min_new_rows
    gate = run["steps"]["gate"]["result"]
    assert gate["decision"] == "promoted" and gate["current_version"] == weak, gate
    promoted = gate["candidate_version"]
    assert http.get("/api/v1/models/mnist_cnn").json()["aliases"]["production"] == promoted
    assert not predicting.failures, predicting.failures[:3]
    assert str(promoted) in predicting.versions or predicting.count > 0
    # the page, as it is, now predicts with the promoted version
    deadline = time.time() + 30
    while True:
        page.click("#clear")
        draw_one(page)
        page.click("#predict")
        expect(page.locator("#confidence")).to_contain_text("model version")
        if f"model version {promoted}" in page.locator("#confidence").inner_text() or time.time() > deadline:
            break
        time.sleep(1)
    expect(page.locator("#confidence")).to_contain_text(f"model version {promoted}")
    assert not problems, problems

    # the dashboard draws the runs as rows of steps: the triggered one completed, the earlier rerun cached
    board = open_page(browser, demo.token, viewport={"width": 1300, "height": 1000})
    problems = watch(board)
    board.goto(demo.url + "/dashboard.html")
    board.locator("#pipelines tr", has_text="mnist_retrain").click()
    runs = board.locator("[data-testid=pipeline-runs] .run")
    expect(runs.first).to_contain_text("dataset mnist_feedback@")
    expect(runs.first.locator(".step.completed")).to_have_count(3)
    expect(board.locator("[data-testid=pipeline-runs] .step.cached").first).to_contain_text("↺")
    board.locator("[data-testid=pipeline-runs] .run").first.locator(".step", has_text="train").click()
    expect(board.locator("#task-title")).to_contain_text("mnist_retrain.train")
    board.screenshot(path=str(ARTIFACTS / "dashboard-pipelines.png"), full_page=True)
    assert not problems, problems
