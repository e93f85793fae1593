"""``python -m scheduler_svc``: run the scheduler service alone (``--help`` lists its settings)."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from ai_platform.core.auth import Authority
from ai_platform.core.logs import setup_logging
from ai_platform.core.procs import not_dumpable
from ai_platform.core.server import Servicer, serve
from ai_platform.core.settings import SchedulerSettings
from ai_platform.protos.aiplatform.v1 import pipelines_pb2, pipelines_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from scheduler_svc.backends import Backend
from scheduler_svc.backends.local import LocalBackend
from scheduler_svc.backends.ray import WORKING_DIR_EXCLUDES, RayBackend
from scheduler_svc.backends.ray_warm import WarmPool
from scheduler_svc.pipelines import Pipelines, PipelineStore
from scheduler_svc.refs import Resolver
from scheduler_svc.scheduler import Scheduler
from scheduler_svc.server import PipelineServicer, SchedulerServicer
from scheduler_svc.store import TaskStore


def task_key(state_dir: Path) -> bytes:
    """The key that signs tasks' credentials where the platform has no key of its own (AIP_AUTH_KEY or AIP_TOKEN):
    made once and kept with the task records (0600), so tasks re-attached after a restart still report."""
    path = state_dir / "task-key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(secrets.token_bytes(32))
    return path.read_bytes()


def main(argv: list[str] | None = None) -> None:
    settings = SchedulerSettings.load(argv)
    setup_logging(settings.log_level)
    not_dumpable()  # the tasks it starts run as its user: they must not read its credentials from /proc
    state_dir = settings.state_path()
    start_dir = Path.cwd()
    if settings.backend == "ray" and not settings.ray_address:
        raise SystemExit("scheduler: --backend ray needs --ray-address or RAY_ADDRESS")
    if settings.backend == "ray" and settings.ray_warm_runners and not settings.ray_cluster_address:
        raise SystemExit("scheduler: --ray-warm-runners needs --ray-cluster-address (the cluster's GCS host:port)")

    async def run() -> None:
        ray = settings.backend == "ray"
        warm = WarmPool.of(settings, WORKING_DIR_EXCLUDES) if ray and settings.ray_warm_runners else None
        if ray:
            backend: Backend = RayBackend(settings.ray_address, settings.worker_env(), warm=warm)
        else:
            backend = LocalBackend(start_dir, settings.grace_s, settings.worker_env(), settings.max_parallel,
                                   warm_start=settings.warm_start, warm_imports=settings.warm_imports)
        store = TaskStore(state_dir / "scheduler.db")
        (state_dir / "logs").mkdir(mode=0o700, exist_ok=True)
        for private in (state_dir, state_dir / "logs"):
            private.chmod(0o700)  # task records and logs: this service's user only
        authority = Authority.of(settings, task_key=task_key(state_dir))
        scheduler = Scheduler(
            store,
            backend,
            Resolver(settings, start_dir),
            log_dir=state_dir / "logs",
            script_roots=[Path(r) for r in settings.script_roots],
            start_dir=start_dir,
            log_cap_bytes=int(settings.log_max_mb * 2**20),
            authority=authority,
        )
        servicer = Servicer(SchedulerServicer(scheduler), scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                            scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"])
        pipelines = Pipelines(scheduler, PipelineStore(store.db))
        pipeline_servicer = Servicer(PipelineServicer(pipelines),
                                     pipelines_pb2_grpc.add_PipelineServiceServicer_to_server,
                                     pipelines_pb2.DESCRIPTOR.services_by_name["PipelineService"])
        await scheduler.recover()
        if warm is not None:
            warm.start()
        await pipelines.start()

        async def shutdown() -> None:
            await pipelines.shutdown()
            await scheduler.shutdown()

        await serve(settings, [servicer, pipeline_servicer], on_shutdown=shutdown, authority=authority)

    asyncio.run(run())


if __name__ == "__main__":
    main()
