"""Driving the web page in Debian's Chromium with Playwright: how to launch it here, and strokes on the pad."""

from __future__ import annotations

from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]


def open_page(browser: Any, token: str, **options: Any) -> Any:
    """A page in a fresh context whose settings hold ``token`` (as a person enters it once on the page)."""
    context = browser.new_context(**options)
    if token:
        settings = f"JSON.stringify({{apiBase: '', token: '{token}'}})"
        context.add_init_script(f"localStorage.setItem('aip.settings', {settings})")
    return context.new_page()


def draw_one(page: Any) -> None:
    """A stroke down the middle of the pad: a "1"."""
    pad = page.locator("#pad").bounding_box()
    page.mouse.move(pad["x"] + 150, pad["y"] + 50)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(pad["x"] + 145 + step * 0.5, pad["y"] + 50 + step * 9)
    page.mouse.up()
