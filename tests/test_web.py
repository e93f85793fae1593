"""The web page in a real headless Chromium (Debian's), driven by Playwright, against a running platform whose every
service wants a token: the page and the dashboard take it from their settings."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import torch
from playwright.sync_api import expect, sync_playwright

from ai_platform.core.auth import Authority, Role, derived_key
from ai_platform.sdk.models import save_model
from mnist.model import MnistCNN
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, draw_one, open_page
from tests.conftest import ROOT, start_platform
from tests.task_scripts import write_scripts

ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "web-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("web-project")
    write_scripts(project / "scripts")
    torch.manual_seed(0)
    save_model(MnistCNN().eval(), str(project / ".ai_platform/models/digits.lance"), torch.zeros(1, 1, 28, 28),
               labels=list(range(10)), metrics={"accuracy": 0.5})
    running = start_platform(project, token=TOKEN)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "make test installs Debian's chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def test_draw_a_digit_and_see_the_prediction(platform, browser):
    page = open_page(browser, TOKEN, viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(platform.url + "/")
    expect(page.locator("#model option")).to_have_text("digits (v1 · acc 50.0%)")
    draw_one(page)
    page.click("#predict")
    expect(page.locator("[data-testid=bar]")).to_have_count(10)
    digit = page.locator("#digit").inner_text()
    assert digit.isdigit(), digit
    expect(page.locator("#confidence")).to_contain_text("confidence")
    widths = page.locator("[data-testid=bar] > span").evaluate_all("els => els.map(e => parseFloat(e.style.width))")
    assert abs(sum(widths) - 100) < 1 and max(widths) == widths[int(digit)]
    seen = page.locator("#preview").evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, 0, 84, 84).data).filter((v, i) => i % 4 == 0 && v > 0)"
        ".length")
    assert seen > 50, "the 28x28 the model saw has ink in it"
    page.screenshot(path=str(ARTIFACTS / "digits.png"))
    page.click("#clear")
    expect(page.locator("#digit")).to_have_text("–")
    assert not errors, errors


def test_a_viewer_sees_who_is_signed_in_and_no_buttons_it_may_not_use(platform, browser):
    viewer = Authority(token=TOKEN, key=derived_key(TOKEN)).person_token("vera", Role.VIEWER, 600)
    page = open_page(browser, viewer, viewport={"width": 1200, "height": 1000})
    page.goto(platform.url + "/dashboard.html")
    expect(page.get_by_test_id("who")).to_have_text("signed in as vera · viewer")
    expect(page.locator("#models tbody tr").first).to_be_visible()
    assert page.locator("#models button").count() == 0, "a viewer may neither load nor unload"
    admin = open_page(browser, TOKEN, viewport={"width": 1200, "height": 1000})
    admin.goto(platform.url + "/dashboard.html")
    expect(admin.get_by_test_id("who")).to_have_text("signed in as admin · admin")
    expect(admin.locator("#models button").first).to_be_visible()


def test_without_a_token_in_its_settings_the_page_says_it_needs_one(platform, browser):
    page = open_page(browser, "")
    page.goto(platform.url + "/")
    expect(page.locator("#notice")).to_contain_text("needs a token")


def test_page_says_what_to_do_without_a_model(platform, browser):
    page = open_page(browser, TOKEN)
    page.route("**/api/v1/models", lambda route: route.fulfill(status=200, body="[]",
                                                                content_type="application/json"))
    page.goto(platform.url + "/")
    expect(page.locator("#notice")).to_contain_text("No model yet")
    page.click("#predict")
    expect(page.locator("#notice")).to_contain_text("train one")


def test_dashboard_shows_datasets_models_and_a_task_log(platform, browser):
    with httpx.Client(base_url=platform.url, timeout=30, headers=AUTH) as http:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.table({"label": [1, 2, 3], "split": ["train", "train", "test"]}), sink)
        assert http.post("/api/v1/datasets/shown", content=sink.getvalue(),
                         headers={"content-type": "application/vnd.apache.parquet"}).status_code == 201
        task = http.post("/api/v1/tasks", json={"name": "visible", "script": "scripts/progress.py",
                                                "params": {"steps": 4, "pause": 0.5}}).json()
    page = open_page(browser, TOKEN, viewport={"width": 1200, "height": 1000})
    page.goto(platform.url + "/dashboard.html")
    expect(page.locator("#datasets tbody tr", has_text="shown")).to_have_count(1)
    expect(page.locator("#models tbody tr", has_text="digits")).to_have_count(1)
    row = page.locator(f"#tasks tr[data-task-id='{task['id']}']")
    expect(row).to_have_count(1)
    row.click()
    expect(page.locator("[data-testid=task-log]")).to_contain_text("epoch 0 starting", timeout=15000)
    expect(page.locator("[data-testid=task-log]")).to_contain_text("[task completed]", timeout=30000)
    expect(page.locator(f"#tasks tr[data-task-id='{task['id']}'] .status")).to_have_text("completed", timeout=10000)
    page.locator("#datasets tbody tr", has_text="shown").click()
    expect(page.locator("#dataset-versions")).to_contain_text("3 rows")
    expect(page.locator("#dataset-rows")).to_contain_text("train")
    time.sleep(0.3)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_task_curves_grow_while_it_runs_and_runs_compare(platform, browser):
    with httpx.Client(base_url=platform.url, timeout=30, headers=AUTH) as http:
        done = [http.post("/api/v1/tasks", json={"name": f"sweep-{i}", "script": "scripts/metrics.py",
                                                   "params": {"points": 20 * (i + 1)}}).json() for i in range(2)]
        for task in done:
            deadline = time.time() + 30
            while http.get(f"/api/v1/tasks/{task['id']}").json()["status"] != "completed" and time.time() < deadline:
                time.sleep(0.2)
        live = http.post("/api/v1/tasks", json={"name": "live-curve", "script": "scripts/metrics.py",
                                                "params": {"points": 5, "live": 25}}).json()
    page = open_page(browser, TOKEN, viewport={"width": 1200, "height": 1400})
    page.goto(platform.url + "/dashboard.html")
    page.locator(f"#tasks tr[data-task-id='{live['id']}']").click()
    chart = page.locator("[data-testid=chart-live]")
    expect(chart).to_have_count(1, timeout=15000)
    expect(chart.locator("canvas")).to_have_count(1)
    first = int(chart.get_attribute("data-points"))
    time.sleep(1.5)
    grown = int(chart.get_attribute("data-points"))
    assert grown > first, f"the curve grew while the task ran ({first} -> {grown} points)"
    page.screenshot(path=str(ARTIFACTS / "task-curves.png"), full_page=True)
    expect(page.locator("[data-testid=task-log]")).to_contain_text("[task completed]", timeout=30000)
    expect(chart).to_have_attribute("data-points", "25")
    expect(page.locator("#task-info [data-fact='result · logged']")).to_have_text("true")
    for task in done:
        page.locator(f"#tasks tr[data-task-id='{task['id']}'] input[type=checkbox]").check()
    page.locator("#compare-button").click()
    loss = page.locator("[data-testid=compare-charts] [data-testid=chart-loss]")
    expect(loss).to_have_attribute("data-points", "40")
    table = page.locator("[data-testid=compare-table]")
    expect(table.locator("tr")).to_have_count(3)
    expect(table).to_contain_text("points")
    best = table.locator("td.best")
    expect(best.first).to_be_visible()
    header = [h.strip() for h in table.locator("th").all_inner_texts()]
    loss_column = header.index("loss (final)")
    winner = table.locator("tr").nth(2).locator("td").nth(loss_column)
    expect(winner).to_have_class("best"), "the longer run ends with the lower loss"
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)


def test_image_columns_preview_as_thumbnails(platform, browser):
    import io

    import numpy as np
    import pyarrow as pa

    pixels = np.zeros((3, 784), np.uint8)
    pixels[:, 300:500] = 255
    table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), 784),
                      "label": [7, 1, 4]})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with httpx.Client(base_url=platform.url, timeout=30, headers=AUTH) as http:
        assert http.post("/api/v1/datasets/pictures", content=sink.getvalue(),
                         headers={"content-type": "application/vnd.apache.arrow.stream"}).status_code == 201
    page = open_page(browser, TOKEN, viewport={"width": 1200, "height": 1000})
    page.goto(platform.url + "/dashboard.html")
    page.locator("#datasets tbody tr", has_text="pictures").click()
    expect(page.locator("#dataset-rows canvas.thumb")).to_have_count(3)
    expect(page.locator("#dataset-rows")).to_contain_text("7")
    page.screenshot(path=str(ARTIFACTS / "dataset-thumbnails.png"), full_page=True)


def test_model_lineage_links_to_its_dataset_version_and_task(platform, browser):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0]}), sink)
    with httpx.Client(base_url=platform.url, timeout=30, headers=AUTH) as http:
        http.post("/api/v1/datasets/source", content=sink.getvalue(),
                  headers={"content-type": "application/vnd.apache.parquet"}).raise_for_status()
        task = http.post("/api/v1/tasks", json={"name": "lineage", "script": "scripts/lineage.py",
                                                "input": "datasets/source", "output": "models/traced"}).json()
        deadline = time.time() + 60
        while http.get(f"/api/v1/tasks/{task['id']}").json()["status"] != "completed":
            assert time.time() < deadline, "the lineage task did not complete"
            time.sleep(0.3)
    page = open_page(browser, TOKEN, viewport={"width": 1200, "height": 1000})
    page.goto(platform.url + "/dashboard.html")
    page.locator("#models tbody tr", has_text="traced").click()
    lineage = page.locator("[data-testid=model-lineage]")
    expect(lineage).to_contain_text(f"source@1 → task {task['id'][:8]} → traced@1")
    lineage.get_by_text("source@1").click()
    expect(page.locator("#dataset-title")).to_have_text("source · version 1")
    lineage.get_by_text(f"task {task['id'][:8]}").click()
    expect(page.locator("#task-title")).to_contain_text(task["id"])
    page.screenshot(path=str(ARTIFACTS / "lineage.png"), full_page=True)


def test_the_digit_page_picks_a_model_by_alias(platform, browser):
    with httpx.Client(base_url=platform.url, timeout=30, headers=AUTH) as http:
        http.put("/api/v1/models/digits/aliases/production", json={"version": 1}).raise_for_status()
    page = open_page(browser, TOKEN, viewport={"width": 1100, "height": 800})
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/predict") else None)
    page.goto(platform.url + "/")
    expect(page.locator("#model option", has_text="digits@production (v1)")).to_have_count(1)
    page.select_option("#model", "digits@production")
    pad = page.locator("#pad").bounding_box()
    page.mouse.move(pad["x"] + 150, pad["y"] + 50)
    page.mouse.down()
    page.mouse.move(pad["x"] + 150, pad["y"] + 230, steps=10)
    page.mouse.up()
    page.click("#predict")
    expect(page.locator("[data-testid=bar]")).to_have_count(10)
    assert sent and sent[-1]["version"] == "production" and len(sent[-1]["image"]) == 784
