"""The web page in a real headless Chromium (Debian's), driven by Playwright, against a running platform."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import torch
from playwright.sync_api import expect, sync_playwright

from ai_platform.sdk.models import save_model
from mnist.model import MnistCNN
from tests.conftest import ROOT, start_platform
from tests.task_scripts import write_scripts

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("web-project")
    write_scripts(project / "scripts")
    torch.manual_seed(0)
    save_model(MnistCNN().eval(), str(project / ".ai_platform/models/digits.lance"), torch.zeros(1, 1, 28, 28),
               labels=list(range(10)), metrics={"accuracy": 0.5})
    running = start_platform(project)
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
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(platform.url + "/")
    expect(page.locator("#model option")).to_have_text("digits (v1 · acc 50.0%)")
    pad = page.locator("#pad").bounding_box()
    page.mouse.move(pad["x"] + 150, pad["y"] + 50)
    page.mouse.down()
    for step in range(1, 21):  # a stroke down the middle: a "1"
        page.mouse.move(pad["x"] + 145 + step * 0.5, pad["y"] + 50 + step * 9)
    page.mouse.up()
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


def test_page_says_what_to_do_without_a_model(platform, browser):
    page = browser.new_page()
    page.route("**/api/v1/models", lambda route: route.fulfill(status=200, body="[]",
                                                                content_type="application/json"))
    page.goto(platform.url + "/")
    expect(page.locator("#notice")).to_contain_text("No model yet")
    page.click("#predict")
    expect(page.locator("#notice")).to_contain_text("train one")


def test_dashboard_shows_datasets_models_and_a_task_log(platform, browser):
    with httpx.Client(base_url=platform.url, timeout=30) as http:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.table({"label": [1, 2, 3], "split": ["train", "train", "test"]}), sink)
        assert http.post("/api/v1/datasets/shown", content=sink.getvalue(),
                         headers={"content-type": "application/vnd.apache.parquet"}).status_code == 201
        task = http.post("/api/v1/tasks", json={"name": "visible", "script": "scripts/progress.py",
                                                "params": {"steps": 4, "pause": 0.5}}).json()
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
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
