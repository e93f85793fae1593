"""``python -m scheduler_svc``: run the scheduler service alone."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ai_platform.config import build_parser, settings_from_args
from ai_platform.logs import setup_logging
from ai_platform.protos.aiplatform.v1 import scheduler_pb2, scheduler_pb2_grpc
from ai_platform.server import Servicer, serve
from scheduler_svc.backends import Backend
from scheduler_svc.backends.local import LocalBackend
from scheduler_svc.backends.ray import RayBackend
from scheduler_svc.refs import Resolver
from scheduler_svc.scheduler import Scheduler
from scheduler_svc.server import SchedulerServicer
from scheduler_svc.store import TaskStore


def main(argv: list[str] | None = None) -> None:
    parser = build_parser("scheduler", "Scheduler service: runs task scripts on local processes or a Ray cluster.")
    parser.add_argument(
        "--backend",
        choices=["local", "ray"],
        default=os.environ.get("AIP_BACKEND") or "local",
        help="where tasks run (AIP_BACKEND)",
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS", ""),
        help="Ray dashboard address for the Jobs API, e.g. http://127.0.0.1:8265 (RAY_ADDRESS)",
    )
    parser.add_argument(
        "--script-roots",
        default=os.environ.get("AIP_SCRIPT_ROOTS", os.getcwd()),
        help=f"'{os.pathsep}'-separated directories task scripts must live in (AIP_SCRIPT_ROOTS)",
    )
    parser.add_argument(
        "--max-parallel",
        type=int,
        default=int(os.environ.get("AIP_MAX_PARALLEL") or os.cpu_count()),
        help="local backend: tasks running at once; the rest queue (AIP_MAX_PARALLEL)",
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("AIP_STATE_DIR", ""),
        help="task records and logs (AIP_STATE_DIR; default: the home when it is a directory)",
    )
    parser.add_argument(
        "--log-max-mb",
        type=float,
        default=float(os.environ.get("AIP_LOG_MAX_MB") or 16),
        help="per-task log cap; the tail is kept (AIP_LOG_MAX_MB)",
    )
    args = parser.parse_args(argv)
    args.script_roots = [p for p in args.script_roots.split(os.pathsep) if p]
    settings = settings_from_args("scheduler", args)
    setup_logging(settings.log_level)
    home = settings.home_uri()
    state_dir = Path(args.state_dir or (home if "://" not in home else "./.ai_platform")).resolve()
    start_dir = Path.cwd()

    async def run() -> None:
        if args.backend == "ray":
            if not args.ray_address:
                raise SystemExit("scheduler: --backend ray needs --ray-address or RAY_ADDRESS")
            backend: Backend = RayBackend(args.ray_address, state_dir / "reports")
        else:
            backend = LocalBackend(start_dir, settings.grace_s)
        scheduler = Scheduler(
            TaskStore(state_dir / "scheduler.db"),
            backend,
            Resolver(settings.storage_addr, home, start_dir),
            log_dir=state_dir / "logs",
            script_roots=[Path(r) for r in settings.script_roots],
            start_dir=start_dir,
            max_parallel=max(args.max_parallel, 1),
            log_cap_bytes=int(args.log_max_mb * 2**20),
        )
        await scheduler.recover()

        servicer = Servicer(SchedulerServicer(scheduler), scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                            scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"])
        await serve("scheduler", settings, [servicer], on_shutdown=scheduler.shutdown)

    asyncio.run(run())


if __name__ == "__main__":
    main()
