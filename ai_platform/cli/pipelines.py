"""``aip pipelines``: apply a definition (YAML or JSON), run it and follow its steps, list runs, cancel."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ai_platform.cli.output import Column, add_output, ago, chosen_format, json_params, print_rows, print_value

MARKS = {"completed": "✓", "cached": "↺", "failed": "✗", "cancelled": "✗", "skipped": "–", "running": "…",
         "pending": "·"}
PIPELINE_COLUMNS = [Column("name"), Column("revision", "rev"), Column("steps"), Column("on"),
                    Column("last_run", "last run"), Column("updated_at", "updated", ago, priority=2)]
RUN_COLUMNS = [Column("id"), Column("status"), Column("trigger"), Column("steps"),
               Column("created_at", "started", ago), Column("message", priority=3)]


def _client():  # noqa: ANN202 - ai_platform.client.Client
    from ai_platform.client import Client

    return Client()


def read_definition(path: Path) -> tuple[str, dict]:
    """The pipeline's name (``name:`` in the file, else the file's stem) and its definition."""
    import yaml

    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SystemExit(f"aip: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"aip: {path} must hold a mapping with steps, got {type(raw).__name__}")
    if True in raw:  # YAML 1.1 reads a bare `on:` key as the boolean true
        raw["on"] = raw.pop(True)
    name = raw.pop("name", path.stem)
    return str(name), raw


def step_line(run: dict) -> str:
    """``✓ clean  ↺ train  … gate`` : each step with its state."""
    return "  ".join(f"{MARKS.get(run['steps'][n]['status'], '?')} {n}" for n in run["order"])


def _run_row(run: dict) -> dict:
    return {**run, "steps": step_line(run)}


def show_run(run: dict, fmt: str) -> None:
    if fmt in ("json", "yaml"):
        print_value(run, fmt)
        return
    print(f"run {run['id']} of {run['pipeline']} (revision {run['revision']}): {run['status']}, "
          f"trigger {run['trigger']}")
    rows = []
    for name in run["order"]:
        step = run["steps"][name]
        version = f"{step['output']}@{step['output_version']}" if step["output_version"] else step["output"]
        rows.append({"step": f"{MARKS.get(step['status'], '?')} {name}", "status": step["status"],
                     "task": step["task_id"] or (f"cached from {step['cached_from']}" if step["cached_from"] else ""),
                     "output": version, "message": step["message"]})
    print_rows(rows, [Column("step"), Column("status"), Column("task"), Column("output"),
                      Column("message", priority=2)], fmt)
    if run["message"]:
        print(run["message"])


def follow(client: Any, run_id: str, live: bool) -> dict:
    """Until the run ends; in a terminal, its steps on one line that updates in place."""
    last = ""
    final = None
    for message in client.pipelines.watch(run_id):
        from ai_platform.core.views import PipelineRunView, as_dict

        final = as_dict(PipelineRunView.from_pb(message))
        line = f"{final['status']:<10} {step_line(final)}"
        if live and line != last:
            print(f"\r\033[K{line}", end="", flush=True)
            last = line
    if live:
        print()
    return final or client.pipeline_run(run_id)


def cmd_pipelines(args: argparse.Namespace) -> int:
    fmt = chosen_format(args)
    client = _client()
    if args.action == "apply":
        name, definition = read_definition(Path(args.file))
        pipeline = client.pipeline(args.name or name, definition=definition)
        if fmt in ("json", "yaml"):
            print_value(pipeline, fmt)
        else:
            print(f"pipeline {pipeline['name']}: revision {pipeline['revision']}, "
                  f"{len(pipeline['definition']['steps'])} steps")
        return 0
    if args.action == "ls":
        rows = [{"name": p["name"], "revision": p["revision"], "steps": len(p["definition"].get("steps", [])),
                 "on": ", ".join(str(t.get("dataset") or t.get("cron")) for t in _triggers(p["definition"])),
                 "last_run": f"{p['last_run']['status']} ({p['last_run']['trigger']})" if p["last_run"] else "",
                 "updated_at": p["updated_at"]} for p in client.list_pipelines()]
        print_rows(rows, PIPELINE_COLUMNS, fmt)
        return 0
    if args.action == "run":
        run = client.run_pipeline(args.name, args.params, cache=not args.no_cache)
        if args.wait:
            run = follow(client, run["id"], live=sys.stdout.isatty() and fmt == "table")
        show_run(run, fmt)
        return 0 if run["status"] in ("completed", "running") else 1
    if args.action == "runs":
        print_rows([_run_row(r) for r in client.pipeline_runs(args.name, args.limit)], RUN_COLUMNS, fmt)
        return 0
    if args.action == "show":
        show_run(client.pipeline_run(args.id), fmt)
        return 0
    if args.action == "watch":
        run = follow(client, args.id, live=True)
        show_run(run, fmt)
        return 0 if run["status"] == "completed" else 1
    if args.action == "cancel":
        show_run(client.cancel_pipeline_run(args.id), fmt)
        return 0
    raise AssertionError(args.action)


def _triggers(definition: dict) -> list[dict]:
    on = definition.get("on") or []
    return [on] if isinstance(on, dict) else on


def register(sub: argparse._SubParsersAction) -> None:
    pipelines = sub.add_parser("pipelines", help="graphs of tasks with exact caching, run on demand or on triggers")
    actions = pipelines.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="define a pipeline from a YAML or JSON file (a new revision if it "
                                             "exists)")
    apply.add_argument("file", help="e.g. pipelines/mnist_retrain.yaml")
    apply.add_argument("--name", default="", help="the pipeline's name (default: the file's name: field, or its "
                                                  "stem)")
    add_output(apply)
    ls = actions.add_parser("ls", help="pipelines, their triggers and last runs")
    add_output(ls)
    run = actions.add_parser("run", help="run a pipeline now; its lake inputs are pinned as it starts")
    run.add_argument("name", help="the pipeline (see `aip pipelines ls`)")
    run.add_argument("--params", default={}, type=json_params,
                     help='per step, over the definition\'s: {"train": {"epochs": 1}}')
    run.add_argument("--no-cache", action="store_true", help="run every step even when an exact earlier result "
                                                             "exists")
    run.add_argument("--wait", action="store_true", help="follow its steps live and print how each ended")
    add_output(run)
    runs = actions.add_parser("runs", help="a pipeline's runs, newest first: trigger and each step's state")
    runs.add_argument("name", help="the pipeline")
    runs.add_argument("--limit", type=int, default=20, help="most runs to list (default 20)")
    add_output(runs)
    for action, text in {"show": "one run: each step's state, task, cache hit and output version",
                         "watch": "follow a run until it ends", "cancel": "cancel a run's running steps and skip "
                                                                          "the rest"}.items():
        one = actions.add_parser(action, help=text)
        one.add_argument("id", help="the run's id")
        add_output(one)
    pipelines.set_defaults(func=cmd_pipelines)
