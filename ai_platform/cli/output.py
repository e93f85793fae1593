"""How ``aip`` prints: tables for people in a terminal (human sizes, times people read, columns that fit), tab-separated
text when piped, and ``-o json|yaml`` with the REST API's shapes for scripts, like ``kubectl -o`` and ``gh``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FORMATS = ("table", "json", "yaml")


def add_output(parser: argparse.ArgumentParser, long: bool = True) -> None:
    """``-o table|json|yaml`` (also ``--output`` where the command has no ``--output`` of its own) and ``--json``,
    the same as ``-o json``, on a command that reads something."""
    flags = ("-o", "--output") if long else ("-o",)
    parser.add_argument(*flags, dest="output_format", choices=FORMATS, default=None,
                        help="table (for people; the default in a terminal, tab-separated when piped), json or yaml "
                             "(the REST API's shapes, for scripts)")
    parser.add_argument("--json", action="store_true", help="the same as -o json")


def json_params(text: str) -> dict:
    """``--params``: a JSON object (argparse says what is wrong with anything else, exit status 2)."""
    import argparse
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--params is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--params must be a JSON object, got {text!r}")
    return value


def chosen_format(args: Any) -> str:
    """``-o`` as given; ``--json`` is ``-o json``; unset: a table in a terminal, plain text when piped."""
    if getattr(args, "json", False):
        return "json"
    return getattr(args, "output_format", None) or ("table" if sys.stdout.isatty() else "plain")


def size(value: Any) -> str:
    """``3923831`` as ``3.7 MB``."""
    if not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    units, number = ["B", "KB", "MB", "GB", "TB"], float(value)
    for unit in units:
        if number < 1024 or unit == units[-1]:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return str(value)


def ago(value: Any, now: dt.datetime | None = None) -> str:
    """An ISO timestamp as people read it: ``12 s ago``, ``3 min ago``, ``5 h ago``, then the local date."""
    if not value:
        return ""
    try:
        at = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    seconds = ((now or dt.datetime.now(dt.UTC)) - at).total_seconds()
    if seconds < 0:
        return at.astimezone().strftime("%Y-%m-%d %H:%M")
    for limit, unit, per in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600)):
        if seconds < limit:
            return f"{seconds / per:.0f} {unit} ago"
    return at.astimezone().strftime("%Y-%m-%d %H:%M")


def local_time(value: Any) -> str:
    """An ISO timestamp in this machine's time zone, to the second."""
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return "" if value is None else str(value)
    return f"{value:.4g}"


@dataclass(frozen=True)
class Column:
    """A table column: the field it shows, its heading, how a value reads, and its priority (1 stays longest when
    the terminal is narrow)."""

    field: str
    heading: str = ""
    show: Any = str
    priority: int = 1

    @property
    def title(self) -> str:
        return self.heading or self.field


def _cell(column: Column, row: dict) -> str:
    value = row.get(column.field)
    return "" if value is None else column.show(value)


def fitting(columns: list[Column], rows: list[dict], width: int) -> list[Column]:
    """The columns that fit ``width``, dropping the lowest priorities first (never the first column)."""
    kept = list(columns)

    def needed(chosen: list[Column]) -> int:
        widths = [max([len(c.title), *(len(_cell(c, r)) for r in rows)]) for c in chosen]
        return sum(min(w, 40) for w in widths) + 3 * len(chosen) + 1

    while len(kept) > 1 and needed(kept) > width:
        drop = max(kept[1:], key=lambda c: (c.priority, kept.index(c)))
        kept.remove(drop)
    return kept


def print_rows(rows: list[dict], columns: list[Column], fmt: str, title: str = "",
               best: Callable[[dict, Column], bool] | None = None) -> None:
    """Rows as a table (fitting the terminal), plain text, JSON or YAML (the rows as the REST API shapes them).
    ``best`` marks cells to highlight: bold green in a table, a trailing ``*`` in plain text."""
    if fmt in ("json", "yaml"):
        print_value(rows, fmt)
        return
    if fmt == "plain":  # for grep and cut: field names and raw values, tab-separated
        print("\t".join(c.field for c in columns))
        for row in rows:
            print("\t".join(("" if row.get(c.field) is None else str(row.get(c.field)))
                            + ("*" if best and best(row, c) else "") for c in columns))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    width = shutil.get_terminal_size((80, 24)).columns
    console = Console(highlight=False, width=width)
    shown = fitting(columns, rows, width)
    table = Table(title=title or None, expand=False)
    for column in shown:
        table.add_column(column.title, overflow="fold", max_width=40)
    for row in rows:
        table.add_row(*(Text(_cell(c, row), style="bold green" if best and best(row, c) else "") for c in shown))
    console.print(table)
    if len(shown) < len(columns):
        hidden = ", ".join(c.title for c in columns if c not in shown)
        console.print(f"[dim]({hidden} left out to fit {width} columns; -o json shows everything)[/dim]")


def print_value(value: Any, fmt: str) -> None:
    """One value (a task, a table, a report): JSON, YAML, or for people a key/value table."""
    if fmt == "json" or fmt == "plain":
        print(json.dumps(value, indent=2, default=str))
    elif fmt == "yaml":
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(value, default=str)), sort_keys=False).rstrip())
    else:
        print_facts(value)


def print_facts(value: Any) -> None:
    """A value as ``key  value`` lines: nested objects one level deep, long lists summarised."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not isinstance(value, dict):
        print(json.dumps(value, indent=2, default=str))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, item in value.items():
        if item in (None, "", {}, []):
            continue
        if isinstance(item, dict):
            item = ", ".join(f"{k}={_short(v)}" for k, v in item.items())
        elif isinstance(item, list):
            item = _short(item)
        elif key.endswith("_at"):
            item = f"{local_time(item)} ({ago(item)})"
        elif key.endswith("bytes"):
            item = size(item)
        table.add_row(key, Text(str(item)))
    Console(highlight=False).print(table)


def _short(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return number(value)
    if isinstance(value, list):
        return f"[{len(value)} items]" if len(value) > 6 else ", ".join(_short(v) for v in value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in list(value.items())[:6]) + \
            (", …}" if len(value) > 6 else "}")
    return str(value)
