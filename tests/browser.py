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


def watch(page: Any, allowed: tuple[str, ...] = ()) -> list[str]:
    """What goes wrong on ``page`` as it runs: console errors, uncaught exceptions, failed requests and HTTP error
    answers (those whose URL contains one of ``allowed`` excepted). A test asserts the list stays empty."""
    problems: list[str] = []

    def note(text: str, url: str = "") -> None:
        if not any(part in url for part in allowed):
            problems.append(text)

    page.on("console", lambda m: note(f"console {m.type}: {m.text}", m.location.get("url", "")) if m.type == "error"
            else None)
    page.on("pageerror", lambda exc: note(f"uncaught: {exc}"))
    page.on("requestfailed", lambda r: note(f"request failed: {r.method} {r.url} {r.failure}", r.url))
    page.on("response", lambda r: note(f"HTTP {r.status}: {r.request.method} {r.url}", r.url) if r.status >= 400
            else None)
    return problems


def stroke(page: Any, points: list[tuple[float, float]]) -> None:
    """One stroke through ``points`` (pad pixels, 280x280)."""
    pad = page.locator("#pad").bounding_box()
    scale = pad["width"] / 280
    page.mouse.move(pad["x"] + points[0][0] * scale, pad["y"] + points[0][1] * scale)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(pad["x"] + x * scale, pad["y"] + y * scale)
    page.mouse.up()


def line(start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> list[tuple[float, float]]:
    return [(start[0] + (end[0] - start[0]) * i / steps, start[1] + (end[1] - start[1]) * i / steps)
            for i in range(steps + 1)]


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, steps: int = 24) \
        -> list[tuple[float, float]]:
    """Points on an ellipse from angle ``start`` to ``end`` (turns, clockwise from the top)."""
    import math

    return [(cx + rx * math.sin(2 * math.pi * (start + (end - start) * i / steps)),
             cy - ry * math.cos(2 * math.pi * (start + (end - start) * i / steps))) for i in range(steps + 1)]


# Digits as a person draws them with a mouse, in different places and sizes: (digit, strokes).
DRAWN_DIGITS = [
    ("1 down the middle", 1, [line((140, 40), (145, 240))]),
    ("a small 1 to the left", 1, [line((70, 100), (72, 180))]),
    ("7", 7, [line((80, 60), (200, 60)) + line((200, 60), (120, 240))[1:]]),
    ("a small 7 low right", 7, [line((160, 120), (240, 120)) + line((240, 120), (190, 250))[1:]]),
    ("0", 0, [arc(140, 140, 60, 90, 0, 1, 36)]),
    ("a small 0 top left", 0, [arc(80, 80, 30, 45, 0, 1, 36)]),
    ("4", 4, [line((100, 50), (70, 160)) + line((70, 160), (190, 160))[1:], line((170, 60), (170, 250))]),
    ("3", 3, [arc(130, 95, 60, 50, 0, 0.5, 12), arc(130, 195, 65, 50, 0, 0.5, 12)]),
]
