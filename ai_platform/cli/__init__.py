"""``aip``: run the platform and use it from a terminal, like ``ray`` or ``mlflow``.

Tables and colours when the output is a terminal, plain text when piped, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from ai_platform.core.settings import MODULES, REPO_ROOT, SERVICES, ClientSettings, SettingsError, split_addr
from ai_platform.core.wire import error_from_rpc

MNIST_DIR = REPO_ROOT / "mnist"


def _console():  # noqa: ANN202 - rich.console.Console
    from rich.console import Console

    return Console(highlight=False, soft_wrap=not sys.stdout.isatty())


def _home_and_lake(args: argparse.Namespace) -> tuple[Path, str]:
    """Where the platform keeps its state, and the lake when that is an object store (``s3://``)."""
    settings = ClientSettings.from_env(home=args.home)
    if "://" in settings.home:
        return settings.state_path(), settings.home
    return Path(settings.home), ""


def _home(args: argparse.Namespace) -> Path:
    return _home_and_lake(args)[0]


def _print_rows(rows: list[dict], columns: list[str], as_json: bool, title: str = "") -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not sys.stdout.isatty():
        print("\t".join(columns))
        for row in rows:
            print("\t".join("" if row.get(c) is None else str(row.get(c)) for c in columns))
        return
    from rich.table import Table

    table = Table(title=title or None)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    _console().print(table)


def _print_one(value: Any, as_json: bool) -> None:
    if as_json or not sys.stdout.isatty():
        print(json.dumps(value, indent=2, default=str))
    else:
        from rich.pretty import Pretty

        _console().print(Pretty(value))


# -- platform ------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from ai_platform.cli import launcher

    ports = {name: getattr(args, f"{name}_port") for name in launcher.SERVICES if getattr(args, f"{name}_port")}
    console = _console()
    with console.status("starting storage, scheduler, inference and gateway…"):
        try:
            home, lake = _home_and_lake(args)
            state = launcher.up(home, host=args.host, ports=ports, level=args.level,
                                ray_address=ClientSettings.from_env().ray_address or None, lake=lake)
        except launcher.LaunchError as exc:
            console.print(f"[red]aip up failed:[/red] {exc}")
            return 1
    where = f"home {state.home}" + (f", lake {state.lake}" if state.lake else "")
    console.print(f"[green]AI Platform is up[/green] (level {state.level}, {where})")
    console.print(f"  web page      {state.url}/")
    console.print(f"  dashboard     {state.url}/dashboard.html")
    console.print(f"  REST docs     {state.url}/docs")
    for name in ("storage", "scheduler", "inference"):
        console.print(f"  {name + ' gRPC':<13} {state.addrs[name]}")
    if state.ray:
        console.print(f"  Ray           {state.ray['dashboard_url']}")
    console.print(f"  logs          {state.home}/logs/")
    console.print("Point clients at it with: " + " ".join(f"{k}={v}" for k, v in state.env().items()))
    if args.detach:
        console.print("Stop it with: aip down" + (f" --home {args.home}" if args.home else ""))
        return 0
    console.print("Press Ctrl-C to stop.")
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    launcher.down(Path(state.home))
    console.print("stopped")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ai_platform.cli import launcher

    state = launcher.down(_home(args))
    if state is None:
        print(f"no platform was started from {_home(args).resolve()}")
        return 0
    print(f"stopped {', '.join(launcher.SERVICES[n] for n in state.pids)}"
          + (" and the Ray head" if state.ray and state.ray.get("started_here") else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ai_platform.cli import launcher

    rows = launcher.status(_home(args))
    for row in rows:
        row["healthy"] = "healthy" if row["healthy"] else "down"
    _print_rows(rows, ["service", "pid", "address", "healthy", "version"], args.json, "AI Platform")
    return 0 if all(r["healthy"] == "healthy" for r in rows) else 3


RAY_HEALTH_URL = "http://127.0.0.1:52365/api/local_raylet_healthz"  # the Ray node's dashboard agent, as KubeRay probes


def _service_of_pid1() -> tuple[str, str]:
    """In a container: the service its main process runs (``python -m MODULE --addr HOST:PORT``) and the address
    to check it at, or ``ray`` for a Ray node."""
    try:
        argv = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "", ""
    if any(part.endswith("raylet") or part == "ray" or part.endswith("/ray") for part in argv[:3]):
        return "ray", ""
    modules = {module: name for name, module in MODULES.items()}
    service = next((modules[argv[i + 1]] for i, part in enumerate(argv[:-1]) if part == "-m"
                    and argv[i + 1] in modules), "")
    addr = next((argv[i + 1] for i, part in enumerate(argv[:-1]) if part == "--addr"), "")
    return service, addr


def cmd_health(args: argparse.Namespace) -> int:
    from ai_platform.cli import launcher

    service, addr = args.service, args.addr
    if not service:
        service, addr = _service_of_pid1()
        addr = args.addr or addr
        if not service:
            print("aip health: name the service (storage, scheduler, inference, gateway or ray): this process is "
                  "not in a platform container", file=sys.stderr)
            return 2
    if service == "ray":
        import urllib.request

        try:
            with urllib.request.urlopen(RAY_HEALTH_URL, timeout=args.timeout):
                print("ray node healthy")
                return 0
        except OSError as exc:
            print(f"ray node unhealthy: {RAY_HEALTH_URL}: {exc}")
            return 1
    host, port = split_addr(addr or ClientSettings.from_env().addr_of(service))
    addr = f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    problem = launcher.health(service, addr, args.timeout)
    print(problem or f"{MODULES[service]} at {addr} healthy")
    return 1 if problem else 0


CERT_NAMES = ("storage", "scheduler", "inference", "gateway", "ray", "client")  # compose's services, nodes, you


def cmd_certs(args: argparse.Namespace) -> int:
    from ai_platform.core.tls import make_certificates

    directory = Path(args.directory)
    if (directory / "ca.pem").exists() and not args.force:
        print(f"aip certs: {directory}/ca.pem exists; --force makes a new CA (every certificate changes)",
              file=sys.stderr)
        return 2
    names = ["localhost", "127.0.0.1", *args.host]
    made = make_certificates(directory, {name: [name, *names] for name in args.name or CERT_NAMES}, days=args.days)
    if args.uid is not None:
        for files in made.values():
            os.chown(files["key"], args.uid, -1)
    print(f"wrote {directory}/ca.pem and a certificate and key for {', '.join(made)} "
          f"(valid {args.days} days for the name itself, {', '.join(names)})")
    print(f"server: AIP_TLS_CERT={directory}/NAME.pem AIP_TLS_KEY={directory}/NAME-key.pem "
          f"AIP_TLS_CLIENT_CA={directory}/ca.pem (mutual TLS)")
    print(f"client: AIP_TLS_CA={directory}/ca.pem AIP_TLS_CERT={directory}/client.pem "
          f"AIP_TLS_KEY={directory}/client-key.pem")
    return 0


def cmd_svc(args: argparse.Namespace) -> int:
    module = MODULES[args.name]
    os.execv(sys.executable, [sys.executable, "-m", module, *args.rest])
    return 0  # not reached


# -- lake --------------------------------------------------------------------------------

def _client():  # noqa: ANN202 - ai_platform.client.Client
    from ai_platform.client import Client

    return Client()


DEPLOY_OPTIONS: dict[str, tuple[type, str]] = {
    "version": (int, "the version to serve (default: the newest)"),
    "max_batch_size": (int, "most requests merged into one forward pass"),
    "replicas": (int, "Ray Serve: a fixed number of replicas"),
    "min_replicas": (int, "Ray Serve: autoscale from this many replicas ..."),
    "max_replicas": (int, "... up to this many"),
    "target_ongoing_requests": (float, "Ray Serve: requests per replica that autoscaling aims for"),
    "num_cpus": (float, "Ray Serve: CPUs each replica holds"),
    "num_gpus": (float, "Ray Serve: GPUs each replica holds"),
}


def cmd_tables(args: argparse.Namespace) -> int:
    client = _client()
    kind = args.kind
    if args.action == "ls":
        rows = client.list_datasets() if kind == "datasets" else client.list_models()
        columns = ["id", "num_rows", "version", "num_versions", "size_bytes", "updated_at"]
        if kind == "models":
            for row in rows:
                row["accuracy"] = row.get("metrics", {}).get("accuracy")
            columns.insert(1, "accuracy")
        _print_rows(rows, columns, args.json, kind)
    elif args.action == "show":
        _print_one(client.get_dataset(args.name) if kind == "datasets" else client.get_model(args.name), args.json)
    elif args.action == "versions":
        rows = client.dataset_versions(args.name) if kind == "datasets" else client.model_versions(args.name)
        _print_rows(rows, ["version", "timestamp", "created_by"], args.json, f"{args.name} versions")
    elif args.action == "rm":
        (client.delete_dataset if kind == "datasets" else client.delete_model)(args.name)
        print(f"deleted {kind[:-1]} {args.name}")
    elif args.action == "deploy":
        options = {key: getattr(args, key) for key in DEPLOY_OPTIONS if getattr(args, key) is not None}
        client.deploy(args.name, **options)
        served = next((m for m in client.inference.index() if m["name"] == args.name), {})
        if args.json:
            _print_one(served, True)
        else:
            print(f"model {args.name} version {served.get('version', '?')}: {served.get('state', '?')} "
                  f"{served.get('reason', '')}".rstrip())
    elif args.action == "alias":
        if args.delete:
            shown = client.delete_alias(args.name, args.alias)
        elif args.version is None:
            print("give the VERSION the alias points to, or --delete", file=sys.stderr)
            return 2
        else:
            shown = client.set_alias(args.name, args.alias, args.version)
        aliases = ", ".join(f"{a} -> {v}" for a, v in shown["aliases"].items()) or "none"
        print(f"model {args.name} aliases: {aliases}")
    elif args.action == "gc":
        report = client.collect_garbage(args.name, kind[:-1], keep_versions=args.keep_versions,
                                        min_age_s=args.min_age, dry_run=args.dry_run)
        if args.json:
            _print_one(report, True)
        else:
            verb = "would remove" if report["dry_run"] else "removed"
            versions = ", ".join(map(str, report["removed_versions"])) or "none"
            print(f"{kind[:-1]} {args.name}: {verb} {report['removed_files']} files "
                  f"({report['removed_bytes']:,} bytes) and versions: {versions}; "
                  f"kept {report['kept_unreferenced_files']} unreferenced files younger than the safe age")
    return 0


# -- tasks -------------------------------------------------------------------------------

TASK_COLUMNS = ["id", "name", "status", "progress", "owner", "created_at", "error"]


def _task_row(task: dict) -> dict:
    progress = task.get("progress") or {}
    return {**task, "progress": f"{progress.get('fraction', 0):.0%} {progress.get('message', '')}".strip()
            if progress else ""}


def cmd_tasks(args: argparse.Namespace) -> int:
    client = _client()
    if args.action == "submit":
        try:
            params = json.loads(args.params)
        except ValueError as exc:
            print(f"--params is not JSON: {exc}", file=sys.stderr)
            return 2
        custom = {}
        for item in args.resource:
            name, _, amount = item.partition("=")
            try:
                custom[name] = float(amount or 1)
            except ValueError:
                print(f"--resource {item!r}: expected NAME=AMOUNT, e.g. pool=1", file=sys.stderr)
                return 2
        task = client.submit(args.name, args.script, args.input, args.output, params, timeout_s=args.timeout,
                             resources={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
                                        "memory_mb": args.memory_mb, "custom": custom})
        if args.wait:
            task = client.wait(task["id"], progress=sys.stdout.isatty() and not args.json)
        _print_one(task, args.json) if args.json or args.wait else print(task["id"])
        return 0 if task["status"] != "failed" else 1
    if args.action == "ls":
        rows = [_task_row(t) for t in client.list_tasks(args.status.split(",") if args.status else None, args.name,
                                                        args.limit, owner=args.owner)]
        _print_rows(rows, TASK_COLUMNS, args.json, "tasks")
    elif args.action == "show":
        _print_one(client.get_task(args.id), args.json)
    elif args.action == "logs":
        for text in client.logs(args.id, follow=args.follow):
            sys.stdout.write(text)
            sys.stdout.flush()
    elif args.action == "metrics":
        frame = client.metrics(args.id)
        if args.json:
            series: dict[str, list] = {}
            for key, step, value, at in frame.itertuples(index=False):
                series.setdefault(key, []).append([step, value, at])
            _print_one({"series": series}, True)
        else:
            rows = [{"metric": key, "points": len(group), "last step": int(group["step"].iloc[-1]),
                     "last": f"{group['value'].iloc[-1]:.6g}", "min": f"{group['value'].min():.6g}",
                     "max": f"{group['value'].max():.6g}"} for key, group in frame.groupby("key", sort=True)]
            _print_rows(rows, ["metric", "points", "last step", "last", "min", "max"], False, f"{args.id} metrics")
    elif args.action == "cancel":
        print(client.cancel(args.id)["status"])
    elif args.action == "watch":
        task = client.wait(args.id, progress=True)
        print(f"{task['name']} {task['status']}" + (f": {task['error']}" if task.get("error") else ""))
    return 0


# -- access -------------------------------------------------------------------------------

TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _ttl(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` or plain seconds."""
    unit = text[-1:] if text[-1:] in TTL_UNITS else "s"
    number = text[:-1] if text[-1:] in TTL_UNITS else text
    try:
        seconds = float(number) * TTL_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 30d, 12h, 90m or 3600 (seconds), got {text!r}") \
            from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a duration must be above 0, got {text!r}")
    return seconds


def cmd_whoami(args: argparse.Namespace) -> int:
    who = _client().whoami()
    if args.json:
        _print_one(who, True)
    elif who["open"]:
        print(f"{who['subject']} ({who['role']}): this platform checks no credentials (no AIP_TOKEN or AIP_AUTH_KEY)")
    else:
        expires = f", until {who['expires_at']}" if who["expires_at"] else ""
        print(f"{who['subject']} ({who['role']}{expires})")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from ai_platform.core.auth import Role

    try:
        Role.named(args.role)
    except ValueError as exc:
        print(f"aip tokens create: {exc}", file=sys.stderr)
        return 2
    token = _client().create_token(args.name, args.role, args.ttl)
    print(token)
    print(f"a token for {args.name} ({args.role}), valid {args.ttl / 86400:g} days: they set AIP_TOKEN to it (or "
          f"enter it in the page's settings)", file=sys.stderr)
    return 0


# -- demo ---------------------------------------------------------------------------------

def _wait_for_platform(console: Any, timeout_s: float) -> str:
    """Wait until storage, scheduler and inference answer their health checks (a platform starting beside this
    command, as in compose); '' once they do, else what is still down."""
    import time

    from ai_platform.cli import launcher

    settings = ClientSettings.from_env()
    deadline, said = time.monotonic() + timeout_s, ""
    while True:
        problems = [p for name in ("storage", "scheduler", "inference")
                    if (p := launcher.health(name, settings.addr_of(name)))]
        if not problems:
            return ""
        if time.monotonic() > deadline:
            return "; ".join(problems)
        if problems[0] != said:
            said = problems[0]
            console.print(f"waiting for the platform: {said}")
        time.sleep(2)


def cmd_demo(args: argparse.Namespace) -> int:
    from ai_platform.client import Client

    console = _console()
    gateway = ClientSettings.from_env().gateway_addr
    if args.wait and (problem := _wait_for_platform(console, args.wait)):
        console.print(f"[red]the platform did not come up within {args.wait:g}s:[/red] {problem}")
        return 1
    custom = {}
    for item in args.resource:
        name, _, amount = item.partition("=")
        custom[name] = float(amount or 1)
    with Client() as client:
        steps = [
            ("mnist_clean", "mnist_clean.py", "download", "datasets/mnist_clean", {"limit": args.limit}, {}),
            ("mnist_cnn", "mnist_cnn.py", "datasets/mnist_clean", "models/mnist_cnn", {"epochs": args.epochs},
             {"custom": custom} if custom else {}),
            ("mnist_serve", "mnist_serve.py", "models/mnist_cnn", "", {}, {}),
        ]
        results = {}
        for name, script, given_input, output, params, resources in steps:
            console.print(f"[bold]{name}[/bold]: {given_input} → {output or 'inference_svc'}")
            try:
                task = client.submit(name, str(MNIST_DIR / script), given_input, output, params,
                                     resources=resources or None)
            except grpc.RpcError as exc:
                console.print(f"[red]{name} was refused:[/red] {exc.details()}")
                return 1
            task = client.wait(task["id"], progress=True)
            if task["status"] != "completed":
                console.print(f"[red]{name} {task['status']}:[/red] {task.get('error')} (aip tasks logs {task['id']})")
                return 1
            results[name] = task["result"]
    clean, trained, served = results["mnist_clean"], results["mnist_cnn"], results["mnist_serve"]
    console.print(f"ingested {clean['rows']} digits ({clean['source']})")
    console.print(f"trained for {trained['epochs']} epoch(s): accuracy {trained['accuracy']:.2%} on "
                  f"{trained['test_images']} held-out digits")
    console.print(f"[green]serving[/green] {served['model']} version {served['version']}")
    console.print(f"draw a digit at http://{gateway}/  ·  dashboard http://{gateway}/dashboard.html")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aip", description="AI Platform: data lake, tasks, serving.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole platform on this machine")
    up.add_argument("--level", type=int, choices=[1, 2], default=1,
                    help="1: local processes; 2: tasks as Ray Jobs, models on Ray Serve")
    settings = ClientSettings.from_env()
    up.add_argument("--home", help=f"lake and state directory (AIP_HOME, default {ClientSettings().home}); an s3:// "
                    "lake keeps the state in AIP_STATE_DIR")
    up.add_argument("--host", default="127.0.0.1", help="address the services bind")
    for name in SERVICES:
        default = split_addr(settings.addr_of(name))[1]
        up.add_argument(f"--{name}-port", type=int, default=default,
                        help=f"{name} port (AIP_{name.upper()}_ADDR; default {default})")
    up.add_argument("--detach", action="store_true", help="return once healthy; stop later with `aip down`")
    up.set_defaults(func=cmd_up)

    for name, func, text in (("down", cmd_down, "stop what `aip up` started"),
                             ("status", cmd_status, "each service: pid, address, health, version")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--home")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    health = sub.add_parser("health", help="exit 0 when a service answers its health check (a container's health "
                                           "command: with no name, the service the container runs)")
    health.add_argument("service", nargs="?", choices=[*SERVICES, "ray"],
                        help="the service to check (default: the one this container runs)")
    health.add_argument("--addr", default="", help="where it listens (default: its AIP_*_ADDR, or in a container its "
                                                   "--addr, on 127.0.0.1)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    health.set_defaults(func=cmd_health)

    certs = sub.add_parser("certs", help="make a private CA and a TLS certificate for each service (mutual TLS "
                                         "between the services of a deployment, see README)")
    certs.add_argument("directory", help="where to write ca.pem, NAME.pem and NAME-key.pem")
    certs.add_argument("--name", action="append", default=[], metavar="NAME",
                       help=f"a certificate for NAME (repeatable; default: {', '.join(CERT_NAMES)})")
    certs.add_argument("--host", action="append", default=[], metavar="DNS_OR_IP",
                       help="another name every certificate is valid for (repeatable; localhost and 127.0.0.1 are)")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    certs.add_argument("--uid", type=int, default=None,
                       help="give the keys to this user (the image's services run as uid 1000)")
    certs.add_argument("--force", action="store_true", help="replace an existing CA and its certificates")
    certs.set_defaults(func=cmd_certs)

    svc = sub.add_parser("svc", help="run one service in the foreground (per-service deployment)")
    svc.add_argument("name", choices=list(SERVICES))
    svc.add_argument("rest", nargs=argparse.REMAINDER, help="flags for the service (see its --help)")
    svc.set_defaults(func=cmd_svc)

    for kind in ("datasets", "models"):
        p = sub.add_parser(kind, help=f"{kind} in the lake")
        actions = p.add_subparsers(dest="action", required=True)
        actions.add_parser("ls").add_argument("--json", action="store_true")
        for action in ("show", "rm", "versions"):
            a = actions.add_parser(action)
            a.add_argument("name")
            a.add_argument("--json", action="store_true")
        if kind == "models":
            deploy = actions.add_parser("deploy", help="load (or hot-swap to) a model version in inference_svc")
            deploy.add_argument("name")
            for option, (kind_of, text) in DEPLOY_OPTIONS.items():
                deploy.add_argument(f"--{option.replace('_', '-')}", type=kind_of, help=text)
            deploy.add_argument("--json", action="store_true")
            alias = actions.add_parser("alias", help="point an alias (e.g. production) at a version, or --delete it")
            alias.add_argument("name")
            alias.add_argument("alias")
            alias.add_argument("version", nargs="?", type=int)
            alias.add_argument("--delete", action="store_true")
        gc = actions.add_parser("gc", help="free storage: files no version references, old versions on request")
        gc.add_argument("name")
        gc.add_argument("--keep-versions", type=int, default=0, metavar="N",
                        help="also remove every version but the newest N (default 0: keep all versions)")
        gc.add_argument("--min-age", type=int, default=None, metavar="SECONDS",
                        help="keep unreferenced files younger than this; a write in progress made them "
                             "(default 3600)")
        gc.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
        gc.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_tables, kind=kind)

    tasks = sub.add_parser("tasks", help="submit and follow tasks")
    actions = tasks.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit")
    submit.add_argument("--name", required=True)
    submit.add_argument("--script", required=True)
    submit.add_argument("--input", default="")
    submit.add_argument("--output", default="")
    submit.add_argument("--params", default="{}", help="JSON object")
    submit.add_argument("--num-cpus", type=float, default=0)
    submit.add_argument("--num-gpus", type=float, default=0)
    submit.add_argument("--memory-mb", type=int, default=0)
    submit.add_argument("--resource", action="append", default=[], metavar="NAME=AMOUNT",
                        help="a Ray custom resource the task needs, e.g. pool=1 (repeatable; Ray backend only)")
    submit.add_argument("--timeout", type=float, default=0)
    submit.add_argument("--wait", action="store_true")
    submit.add_argument("--json", action="store_true")
    ls = actions.add_parser("ls")
    ls.add_argument("--status", default="")
    ls.add_argument("--name", default="")
    ls.add_argument("--owner", default="", help="only the tasks this person submitted")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    for action in ("show", "logs", "metrics", "cancel", "watch"):
        a = actions.add_parser(action)
        a.add_argument("id")
        a.add_argument("--json", action="store_true")
        if action == "logs":
            a.add_argument("-f", "--follow", action="store_true")
    tasks.set_defaults(func=cmd_tasks)

    whoami = sub.add_parser("whoami", help="who the platform takes you for: name, role, expiry")
    whoami.add_argument("--json", action="store_true", help="as JSON")
    whoami.set_defaults(func=cmd_whoami)
    tokens = sub.add_parser("tokens", help="signed tokens for people, each with a role (admin, or with AIP_AUTH_KEY)")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", help="print a new token")
    create.add_argument("--name", required=True, help="who it is for (their name in the audit trail)")
    create.add_argument("--role", required=True, help="viewer (read, predict), editor (also write and run), or admin")
    create.add_argument("--ttl", type=_ttl, default=30 * 86400, help="how long it is valid: 30d, 12h, 90m, 3600 "
                                                                     "(default 30d; at most a year)")
    tokens.set_defaults(func=cmd_tokens)

    demo = sub.add_parser("demo", help="run an example end to end through the running platform")
    demo.add_argument("example", choices=["mnist"])
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--limit", type=int, default=0, help="images per split (0 = all)")
    demo.add_argument("--resource", action="append", default=[], metavar="NAME=AMOUNT",
                      help="a Ray custom resource training needs, e.g. pool=1: trains on a node that offers it")
    demo.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                      help="wait up to this long for the platform to come up first (a platform starting beside it)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SettingsError as exc:
        print(f"aip: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        error = error_from_rpc(exc, "the platform")
        print(f"aip: {error.grpc_code.name}: {error.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
