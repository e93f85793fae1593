"""``aip``: run the platform and use it from a terminal, like ``ray``, ``mlflow`` or ``kubectl``.

Tables that fit the terminal for people, tab-separated text when piped, ``-o json|yaml`` (the REST API's shapes)
for scripts. Every command finds a platform that ``aip up`` started through ``platform.json`` in its home, as
``aip status`` does; ``AIP_*_ADDR`` point it elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from ai_platform.cli import access, lake, pipelines, services, tasks
from ai_platform.core.settings import (
    PLATFORM_FILE,
    ClientSettings,
    SettingsError,
    given_addresses,
    running_platform,
)
from ai_platform.core.wire import error_from_rpc

# Commands that start, stop or build the platform rather than call one: they need no discovery.
NO_PLATFORM = {"up", "down", "svc", "certs"}


def discover(home: str | None = None) -> str:
    """Where this command's addresses come from, for messages: the ``AIP_*_ADDR`` variables, else the platform
    ``aip up`` started from the home (``platform.json``, which :class:`ClientSettings` reads), else the defaults.
    ``--home`` points the command at that platform."""
    if home:
        os.environ["AIP_HOME"] = home
    settings = ClientSettings.from_env()
    given = given_addresses()
    found = running_platform(settings.state_path())
    if not found:
        return ", ".join(given) if given else f"the defaults: no {PLATFORM_FILE} in {settings.state_path().resolve()}"
    return f"{(settings.state_path() / PLATFORM_FILE).resolve()}" + (f" and {', '.join(given)}" if given else "")


def _unreachable_hint(source: str) -> str:
    settings = ClientSettings.from_env()
    tried = ", ".join(f"{name} {settings.addr_of(name)}" for name in ("storage", "scheduler", "inference"))
    return (f"aip tried {tried} ({source}). Start a platform with `aip up` (or `make demo`), run aip from the "
            f"directory it was started in, or point aip at it: AIP_HOME=/its/home (the platform.json there), or "
            f"AIP_STORAGE_ADDR=HOST:PORT (and AIP_SCHEDULER_ADDR, AIP_INFERENCE_ADDR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aip", description="AI Platform: data lake, tasks, serving. `aip COMMAND --help` says more.",
        epilog="Read commands print tables in a terminal, tab-separated text when piped, and -o json|yaml. The "
               "platform is found through platform.json in AIP_HOME (default ./.ai_platform), or the AIP_*_ADDR "
               "variables.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    services.register(sub)
    lake.register(sub)
    tasks.register(sub)
    pipelines.register(sub)
    access.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    source = ""
    try:
        args = build_parser().parse_args(argv)
        if args.command not in NO_PLATFORM:
            source = discover(getattr(args, "home", None))
        return args.func(args)
    except SettingsError as exc:
        print(f"aip: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        error = error_from_rpc(exc, "the platform")
        print(f"aip: {error.grpc_code.name}: {error.message}", file=sys.stderr)
        if error.grpc_code is grpc.StatusCode.UNAVAILABLE and source:
            print(_unreachable_hint(source), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `aip tasks ls | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
