"""``aip up|down|status|health|certs|svc|demo``: the platform itself, on this machine or in a container."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from ai_platform.cli.output import Column, add_output, chosen_format, print_rows
from ai_platform.core.settings import MODULES, REPO_ROOT, SERVICES, ClientSettings, split_addr

MNIST_DIR = REPO_ROOT / "mnist"
PIPELINES_DIR = REPO_ROOT / "pipelines"
RAY_HEALTH_URL = "http://127.0.0.1:52365/api/local_raylet_healthz"  # the Ray node's dashboard agent, as KubeRay probes
CERT_NAMES = ("storage", "scheduler", "inference", "gateway", "ray", "client")  # compose's services, nodes, you


def console():  # noqa: ANN201 - rich.console.Console
    from rich.console import Console

    return Console(highlight=False, soft_wrap=not sys.stdout.isatty())


def home_and_lake(home: str | None) -> tuple[Path, str]:
    """Where the platform keeps its state, and the lake when that is an object store (``s3://``)."""
    settings = ClientSettings.from_env(home=home)
    if "://" in settings.home:
        return settings.state_path(), settings.home
    return Path(settings.home), ""


# -- up, down, status ------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from ai_platform.cli import launcher

    ports = {name: getattr(args, f"{name}_port") for name in launcher.SERVICES if getattr(args, f"{name}_port")}
    out = console()
    if args.port is not None and not args.port.strip().isdigit():
        out.print(f"[red]aip up failed:[/red] {args.port_hint}={args.port!r} is not a port number (e.g. 30850)")
        return 2
    with out.status("starting storage, scheduler, inference and gateway…"):
        try:
            home, lake = home_and_lake(args.home)
            state = launcher.up(home, host=args.host, ports=ports, level=args.level,
                                ray_address=ClientSettings.from_env().ray_address or None, lake=lake,
                                base_port=int(args.port) if args.port is not None else None,
                                port_hint=args.port_hint)
        except launcher.LaunchError as exc:
            out.print(f"[red]aip up failed:[/red] {exc}")
            return 1
    where = f"home {state.home}" + (f", lake {state.lake}" if state.lake else "")
    out.print(f"[green]AI Platform is up[/green] (level {state.level}, {where})")
    out.print(f"  web page        {state.url}/")
    out.print(f"  dashboard       {state.url}/dashboard.html")
    out.print(f"  REST docs       {state.url}/docs  ·  {state.url}/redoc")
    for name in ("storage", "scheduler", "inference"):
        out.print(f"  {name + ' gRPC':<15} {state.addrs[name]}  (metrics http://{state.metrics[name]}/metrics)")
    if state.ray:
        out.print(f"  Ray             {state.ray['dashboard_url']}")
    out.print(f"  logs            {state.home}/logs/")
    out.print("aip commands run from this directory find it (platform.json in the home); elsewhere point them at it "
              "with: " + " ".join(f"{k}={v}" for k, v in state.env().items()))
    if args.detach:
        out.print("Stop it with: aip down" + (f" --home {args.home}" if args.home else ""))
        return 0
    out.print("Press Ctrl-C to stop.")
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
    out.print("stopped")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ai_platform.cli import launcher

    home = home_and_lake(args.home)[0]
    state = launcher.down(home)
    if state is None:
        print(f"no platform was started from {home.resolve()}")
        return 0
    print(f"stopped {', '.join(launcher.SERVICES[n] for n in state.pids)}"
          + (" and the Ray head" if state.ray and state.ray.get("started_here") else ""))
    return 0


STATUS_COLUMNS = [Column("service"), Column("pid", priority=3), Column("address"),
                  Column("metrics", priority=4), Column("healthy"), Column("version", priority=2)]


def cmd_status(args: argparse.Namespace) -> int:
    from ai_platform.cli import launcher

    home = home_and_lake(args.home)[0]
    rows = launcher.status(home)
    for row in rows:
        row["healthy"] = "healthy" if row["healthy"] else "down"
    print_rows(rows, STATUS_COLUMNS, chosen_format(args), "AI Platform")
    if any(r["healthy"] != "healthy" for r in rows):
        if launcher.read_state(home) is None:
            print(f"no platform was started from {home.resolve()} (no {launcher.state_file(home).name} there): "
                  f"these are the default addresses. Start one with `aip up` (or `make demo`), or name its home "
                  f"with --home or AIP_HOME", file=sys.stderr)
        return 3
    return 0


# -- health, certs, svc ----------------------------------------------------------------------

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


# -- demo ---------------------------------------------------------------------------------

def _wait_for_platform(out: Any, timeout_s: float) -> str:
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
            out.print(f"waiting for the platform: {said}")
        time.sleep(2)


def resource(item: str) -> tuple[str, float]:
    """A ``NAME=AMOUNT`` flag (AMOUNT defaults to 1): a Ray custom resource."""
    name, _, amount = item.partition("=")
    try:
        return name, float(amount or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=AMOUNT, e.g. pool=1") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from ai_platform.client import Client

    out = console()
    gateway = ClientSettings.from_env().gateway_addr
    if args.wait and (problem := _wait_for_platform(out, args.wait)):
        out.print(f"[red]the platform did not come up within {args.wait:g}s:[/red] {problem}")
        return 1
    custom = dict(args.resource)
    source = str(Path(args.input).resolve()) if args.input else "download"
    with Client() as client:
        steps = [
            ("mnist_clean", "mnist_clean.py", source, "datasets/mnist_clean", {"limit": args.limit}, {}),
            ("mnist_cnn", "mnist_cnn.py", "datasets/mnist_clean", "models/mnist_cnn", {"epochs": args.epochs},
             {"custom": custom} if custom else {}),
            ("mnist_serve", "mnist_serve.py", "models/mnist_cnn", "", {}, {}),
        ]
        results = {}
        for name, script, given_input, output, params, resources in steps:
            out.print(f"[bold]{name}[/bold]: {given_input} → {output or 'inference_svc'}")
            try:
                task = client.submit(name, str(MNIST_DIR / script), given_input, output, params,
                                     resources=resources or None)
            except grpc.RpcError as exc:
                out.print(f"[red]{name} was refused:[/red] {exc.details()}")
                return 1
            task = client.wait(task["id"], progress=True)
            if task["status"] != "completed":
                out.print(f"[red]{name} {task['status']}:[/red] {task.get('error')} (aip tasks logs {task['id']})")
                return 1
            results[name] = task["result"]
        retrain = _loop_back(client, results["mnist_cnn"]["model_version"])
    clean, trained, served = results["mnist_clean"], results["mnist_cnn"], results["mnist_serve"]
    out.print(f"ingested {clean['rows']} digits from {clean['source']}")
    out.print(f"trained for {trained['epochs']} epoch(s): accuracy {trained['accuracy']:.2%} on "
              f"{trained['test_images']} held-out digits")
    out.print(f"[green]serving[/green] {served['model']} version {served['version']}")
    out.print(f"mnist_cnn@production is version {trained['model_version']}; pipeline {retrain} retrains on the page's "
              f"corrections (datasets/mnist_feedback) and moves it only to a better model")
    out.print(f"draw a digit at http://{gateway}/  ·  dashboard http://{gateway}/dashboard.html  ·  API docs "
              f"http://{gateway}/docs")
    return 0


def _loop_back(client: Any, version: int) -> str:
    """Close the loop from the page to training: production points at the trained version, the corrections'
    dataset exists (empty), and pipelines/mnist_retrain.yaml is applied with its trigger on it."""
    import pyarrow as pa

    from ai_platform.cli.pipelines import read_definition
    from ai_platform.sdk import digits_schema

    client.set_alias("mnist_cnn", "production", version)
    if "mnist_feedback" not in {d["id"] for d in client.list_datasets()}:
        client.write_dataset("mnist_feedback", pa.table({"image": [], "label": [], "split": []},
                                                        schema=digits_schema("digit page feedback")))
    name, definition = read_definition(PIPELINES_DIR / "mnist_retrain.yaml")
    for step in definition["steps"]:  # the shipped scripts wherever the platform was started
        step["script"] = str(MNIST_DIR / Path(step["script"]).name)
    client.pipeline(name, definition=definition)
    return name


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start the whole platform on this machine")
    up.add_argument("--level", type=int, choices=[1, 2], default=1,
                    help="1: local processes; 2: tasks as Ray Jobs, models on Ray Serve")
    settings = ClientSettings.from_env()
    up.add_argument("--home", help=f"lake and state directory (AIP_HOME, default {ClientSettings().home}); an s3:// "
                    "lake keeps the state in AIP_STATE_DIR")
    up.add_argument("--host", default="127.0.0.1", help="address the services bind (default 127.0.0.1)")
    up.add_argument("--port", default=None, metavar="BASE",
                    help="move all seven ports together: gateway BASE, storage BASE+1, scheduler BASE+2, inference "
                         "BASE+3, their metrics BASE+4..BASE+6 (e.g. 30850; `make demo PORT=30850`)")
    up.add_argument("--port-hint", default="--port", help=argparse.SUPPRESS)  # `make demo` says PORT in messages
    for name in SERVICES:
        default = split_addr(settings.addr_of(name))[1]
        up.add_argument(f"--{name}-port", type=int, default=None,
                        help=f"{name} port alone (AIP_{name.upper()}_ADDR; default {default})")
    up.add_argument("--detach", action="store_true", help="return once healthy; stop later with `aip down`")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop what `aip up` started")
    down.add_argument("--home", help="the home it was started with (default: AIP_HOME or ./.ai_platform)")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="each service (and the Ray head at level 2): pid, address, health, "
                                           "version; exit 3 when one is down")
    status.add_argument("--home", help="the home it was started with (default: AIP_HOME or ./.ai_platform)")
    add_output(status)
    status.set_defaults(func=cmd_status)

    health = sub.add_parser("health", help="exit 0 when a service answers its health check (a container's health "
                                           "command: with no name, the service the container runs)")
    health.add_argument("service", nargs="?", choices=[*SERVICES, "ray"],
                        help="the service to check (default: the one this container runs)")
    health.add_argument("--addr", default="", help="where it listens (default: its AIP_*_ADDR, or in a container its "
                                                   "--addr, on 127.0.0.1)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
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
    svc.add_argument("name", choices=list(SERVICES), help="the service to run")
    svc.add_argument("rest", nargs=argparse.REMAINDER, help="flags for the service (see its --help)")
    svc.set_defaults(func=cmd_svc)

    demo = sub.add_parser("demo", help="run an example end to end through the running platform")
    demo.add_argument("example", choices=["mnist"], help="the example: mnist (ingest, train, serve)")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    demo.add_argument("--limit", type=int, default=0, help="images per split (0 = all)")
    demo.add_argument("--input", default="",
                      help="a directory holding the four MNIST IDX files (.gz or raw) to ingest instead of "
                           "downloading them (default: the home's download area: the canonical mirrors, else the "
                           "digits bundled for offline use)")
    demo.add_argument("--resource", action="append", default=[], metavar="NAME=AMOUNT", type=resource,
                      help="a Ray custom resource training needs, e.g. pool=1: trains on a node that offers it")
    demo.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                      help="wait up to this long for the platform to come up first (a platform starting beside it)")
    demo.set_defaults(func=cmd_demo)
