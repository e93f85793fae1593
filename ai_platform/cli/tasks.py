"""``aip tasks`` and ``aip runs``: submit and follow tasks, see what a script takes, compare runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ai_platform.cli.output import (
    Column,
    add_output,
    ago,
    chosen_format,
    json_params,
    number,
    print_rows,
    print_value,
)
from ai_platform.cli.services import resource


def _client():  # noqa: ANN202 - ai_platform.client.Client
    from ai_platform.client import Client

    return Client()


TASK_COLUMNS = [Column("id"), Column("name"), Column("status"), Column("progress", priority=3),
                Column("owner", priority=4), Column("created_at", "created", ago, priority=2),
                Column("error", priority=2, show=lambda v: v if len(v) <= 60 else v[:59] + "…")]


def _task_row(task: dict) -> dict:
    progress = task.get("progress") or {}
    return {**task, "progress": f"{progress.get('fraction', 0):.0%} {progress.get('message', '')}".strip()
            if progress else ""}


def _shown_task(task: dict, fmt: str) -> dict:
    """A task for people: its facts without the long history (``aip tasks metrics`` has the curves)."""
    if fmt in ("json", "yaml"):
        return task
    result = task.get("result")
    if isinstance(result, dict) and "history" in result:
        task = {**task, "result": {k: v for k, v in result.items() if k != "history"}}
    return task


def cmd_tasks(args: argparse.Namespace) -> int:
    fmt = chosen_format(args)
    if args.action == "params":
        return _params(args, fmt)
    client = _client()
    if args.action == "submit":
        custom = dict(args.resource)
        task = client.submit(args.name, args.script, args.input, args.output, args.params, timeout_s=args.timeout,
                             resources={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
                                        "memory_mb": args.memory_mb, "custom": custom})
        if args.wait:
            task = client.wait(task["id"], progress=sys.stdout.isatty() and fmt == "table")
        if args.wait or fmt in ("json", "yaml"):
            print_value(_shown_task(task, fmt), "json" if fmt == "plain" else fmt)
        else:
            print(task["id"])
        return 0 if task["status"] != "failed" else 1
    if args.action == "ls":
        tasks = client.list_tasks(args.status.split(",") if args.status else None, args.name, args.limit,
                                  owner=args.owner)
        print_rows(tasks if fmt in ("json", "yaml") else [_task_row(t) for t in tasks], TASK_COLUMNS, fmt, "tasks")
    elif args.action == "show":
        print_value(_shown_task(client.get_task(args.id), fmt), "json" if fmt == "plain" else fmt)
    elif args.action == "logs":
        for text in client.logs(args.id, follow=args.follow):
            sys.stdout.write(text)
            sys.stdout.flush()
    elif args.action == "metrics":
        _metrics(client, args.id, fmt)
    elif args.action == "cancel":
        print(client.cancel(args.id)["status"])
    elif args.action == "watch":
        task = client.wait(args.id, progress=True)
        print(f"{task['name']} {task['status']}" + (f": {task['error']}" if task.get("error") else ""))
    return 0


METRIC_COLUMNS = [Column("metric"), Column("points"), Column("last step"), Column("last"), Column("min"),
                  Column("max")]


def _metrics(client: Any, task_id: str, fmt: str) -> None:
    if fmt in ("json", "yaml"):  # GET /api/v1/tasks/{id}/metrics
        from ai_platform.core.views import MetricsView, as_dict

        print_value(as_dict(MetricsView.from_pb(list(client.scheduler.metrics(task_id)))), fmt)
        return
    frame = client.metrics(task_id)
    rows = [{"metric": key, "points": len(group), "last step": int(group["step"].iloc[-1]),
             "last": f"{group['value'].iloc[-1]:.6g}", "min": f"{group['value'].min():.6g}",
             "max": f"{group['value'].max():.6g}"} for key, group in frame.groupby("key", sort=True)]
    print_rows(rows, METRIC_COLUMNS, fmt, f"{task_id} metrics")


def _params(args: argparse.Namespace, fmt: str) -> int:
    from ai_platform.cli.script_params import ScriptError, script_params

    try:
        declared = script_params(Path(args.script))
    except ScriptError as exc:
        print(f"aip tasks params: {exc}", file=sys.stderr)
        return 2
    if fmt in ("json", "yaml"):
        print_value(declared.as_dict(), fmt)
        return 0
    if fmt == "table" and declared.summary:
        print(declared.summary)
    if not declared.declared_in:
        print(f"{args.script} declares no params dict (sdk.resolve_params(params, PARAMS, ...)); its run() says:\n"
              f"{declared.run_doc or '(nothing)'}")
        return 0
    print_rows([p.as_dict() for p in declared.params],
               [Column("name", "param"), Column("default"), Column("note", "what it does", priority=2)], fmt,
               f"params of {Path(args.script).name}")
    return 0


# -- runs ----------------------------------------------------------------------------------

LOWER_IS_BETTER = ("loss", "error", "err", "mse", "mae", "rmse", "perplexity", "latency", "time")


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def cmd_runs(args: argparse.Namespace) -> int:
    fmt = chosen_format(args)
    runs = _client().runs(args.ids or None, name_prefix=args.name, script=args.script, limit=args.limit)
    if fmt in ("json", "yaml"):
        print_value(runs, fmt)
        return 0
    if not runs:
        print("no runs match (give task ids, or --name PREFIX / --script PATH)", file=sys.stderr)
        return 1
    params = sorted({k for run in runs for k in run["params"]})
    metrics = sorted({k for run in runs for k in run["final"]})
    headings = {run["id"]: f"{run['name']} {run['id'][:6]}" for run in runs}
    rows: list[dict] = [{"what": "status", **{run["id"]: run["status"] for run in runs}}]
    differing = [p for p in params if len({json.dumps(r["params"].get(p), sort_keys=True) for r in runs}) > 1]
    for key in (params if args.all_params else differing) or params:
        rows.append({"what": f"param {key}", **{run["id"]: _param(run["params"].get(key)) for run in runs}})
    best: dict[str, str] = {}
    for key in metrics:
        values = {run["id"]: run["final"][key] for run in runs if key in run["final"]}
        pick = min if lower_is_better(key) else max
        if len(values) > 1:  # a value only one run has is no one's best
            best[key] = pick(values, key=values.get)
        rows.append({"what": key, "metric": key, **{i: number(v) for i, v in values.items()}})
    columns = [Column("what", "")] + [Column(run["id"], headings[run["id"]], priority=2 + i)
                                      for i, run in enumerate(runs)]
    print_rows(rows, columns, fmt, "runs", best=lambda row, column: best.get(row.get("metric", "")) == column.field)
    ranked_by = args.by or next((m for m in ("accuracy", "val_accuracy", "test_loss") if m in best),
                                metrics[0] if metrics else "")
    if ranked_by in best:
        winner = next(run for run in runs if run["id"] == best[ranked_by])
        direction = "lowest" if lower_is_better(ranked_by) else "highest"
        print(f"best by {ranked_by} ({direction}): {winner['name']} {winner['id']}", file=sys.stderr)
    elif args.by:
        print(f"no run logged the metric {args.by!r} (they logged: {', '.join(metrics) or 'none'})",
              file=sys.stderr)
        return 1
    return 0


def _param(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def register(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("tasks", help="submit and follow tasks")
    actions = tasks.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="run a script's run(input_path, output_path, params) as a task")
    submit.add_argument("--name", required=True, help="the task's name (letters, digits, _ . -)")
    submit.add_argument("--script", required=True,
                        help="the .py file defining run(); relative to where the platform was started")
    submit.add_argument("--input", default="",
                        help="datasets/NAME or models/NAME (pinned when the task starts), download, a path or URI")
    submit.add_argument("--output", default="", help="datasets/NAME or models/NAME, a path or URI")
    submit.add_argument("--params", default={}, type=json_params,
                        help="a JSON object of params (see `aip tasks params SCRIPT` for what it takes)")
    submit.add_argument("--num-cpus", type=float, default=0, help="CPUs the task holds (Ray backend)")
    submit.add_argument("--num-gpus", type=float, default=0, help="GPUs the task holds (Ray backend)")
    submit.add_argument("--memory-mb", type=int, default=0, help="memory the task holds, in MB (Ray backend)")
    submit.add_argument("--resource", action="append", default=[], metavar="NAME=AMOUNT", type=resource,
                        help="a Ray custom resource the task needs, e.g. pool=1 (repeatable; Ray backend only)")
    submit.add_argument("--timeout", type=float, default=0, help="seconds before the task is stopped (0: none)")
    submit.add_argument("--wait", action="store_true", help="follow it with a progress bar and print how it ended")
    add_output(submit, long=False)
    ls = actions.add_parser("ls", help="tasks, newest first")
    ls.add_argument("--status", default="", help="only these statuses, comma-separated (e.g. running,pending)")
    ls.add_argument("--name", default="", help="only tasks with this name")
    ls.add_argument("--owner", default="", help="only the tasks this person submitted")
    ls.add_argument("--limit", type=int, default=50, help="most tasks to list (default 50)")
    add_output(ls)
    texts = {"show": "one task: status, params (effective), result, error, owner, times",
             "logs": "the task's output (stdout and stderr)",
             "metrics": "each metric series: points, last value, min, max",
             "cancel": "stop a queued or running task", "watch": "a progress bar until the task ends"}
    for action, text in texts.items():
        one = actions.add_parser(action, help=text)
        one.add_argument("id", help="the task's id")
        if action in ("show", "metrics"):
            add_output(one)
        if action == "logs":
            one.add_argument("-f", "--follow", action="store_true", help="keep printing while the task runs")
    params = actions.add_parser("params", help="what a script takes: each param, its default and what it does "
                                               "(read from the script's PARAMS, nothing run)")
    params.add_argument("script", help="the task script (.py)")
    add_output(params)
    tasks.set_defaults(func=cmd_tasks)

    runs = sub.add_parser("runs", help="compare runs: params and final metrics side by side")
    run_actions = runs.add_subparsers(dest="action", required=True)
    compare = run_actions.add_parser("compare", help="params that differ and final metrics, the best of each "
                                                     "highlighted (bold green; * when piped)")
    compare.add_argument("ids", nargs="*", metavar="ID", help="task ids (default: the newest --limit matching "
                                                              "--name and --script)")
    compare.add_argument("--name", default="", metavar="PREFIX", help="runs whose name starts with this")
    compare.add_argument("--script", default="", help="runs of this script (its full path, as tasks show it)")
    compare.add_argument("--limit", type=int, default=20, help="most runs when choosing by name (default 20)")
    compare.add_argument("--by", default="", metavar="METRIC",
                         help="the metric that names the best run (default accuracy; loss-like ones: lowest)")
    compare.add_argument("--all-params", action="store_true", help="every param, not only those that differ")
    add_output(compare)
    runs.set_defaults(func=cmd_runs)
