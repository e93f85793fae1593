"""Short tasks on Ray in milliseconds: warm runners, Ray actors that each keep a fork server on their node.

A Ray Job per task costs about a second: Ray starts a supervisor actor and a new interpreter that imports the
worker, and ships the script's folder. A warm runner is a detached Ray actor holding one CPU of the cluster and a
fork server (``ai_platform.sdk.forkserver``) with the worker's imports loaded, so a task is a fork, as on the local
backend: its own process group (cancel and timeout end the group), its own working directory (the script's folder,
shipped with the call), a clean interpreter state, its output kept by the runner and read by the scheduler as it
comes, and its reports over gRPC with its own credential, as a Ray Job's worker sends them.

A runner runs one task at a time, so the CPU Ray counts for it is the task's. Tasks that ask for more than one CPU,
for GPUs, memory or custom resources, or whose folder is over ``FOLDER_MAX_BYTES``, still run as Ray Jobs. Runners are
named and detached: a task outlives a scheduler restart, and the new scheduler follows it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from ai_platform.core.errors import Unavailable
from scheduler_svc.backends import RunContext, task_variables, worker_env, worker_spec
from scheduler_svc.tasks import Outcome, Task, TaskStatus

log = logging.getLogger("scheduler_svc.ray_warm")
NAMESPACE = "aip"
RUNNER_NAME = "aip-warm-runner-%d"
JOB_PREFIX = "warm:"  # a task's job_id on a runner: warm:INDEX:TASK_ID
FOLDER_MAX_BYTES = 8 << 20  # a bigger script folder is shipped by a Ray Job's working_dir instead
FOLDER_MAX_FILES = 1000
POLL_WAIT_S = 1.0  # how long one poll of a runner waits for output or the end
LOG_KEEP_BYTES = 64 << 20  # output a runner keeps for the scheduler to read; older output is dropped, said in the log
CONNECT_TIMEOUT_S = 5.0
START_TIMEOUT_S = 120.0  # for a runner to start: Ray places it once one of its nodes has a CPU free
GRPC_IMPORTS = ["grpc", "ai_platform.protos.aiplatform.v1.scheduler_pb2_grpc"]  # a runner's tasks report over gRPC


class RunnerLost(RuntimeError):
    """The runner a task ran on ended (its node died, or it was killed): the task failed with it."""


class RunnerRun:
    """One task on a runner: its process, and its output since the start (``start`` is the offset of ``output``)."""

    def __init__(self, proc: Any, folder: Path) -> None:
        self.proc, self.folder = proc, folder
        self.output, self.start = bytearray(), 0
        self.code: int | None = None
        self.changed = asyncio.Event()


class WarmRunner:
    """The Ray actor (an async one: its calls share one event loop, so output is read while a poll waits)."""

    def __init__(self, env: dict[str, str], warm_imports: list[str], grace_s: float) -> None:
        from scheduler_svc.backends.forkserver import ForkServer

        self.root = Path(tempfile.mkdtemp(prefix="aip-warm-runner-"))
        # The platform's settings over this node's environment, as a Ray Job's env_vars are set over it.
        self.forkserver = ForkServer(self.root, {**os.environ, **env}, warm_imports)
        self.grace_s = grace_s
        self.runs: dict[str, RunnerRun] = {}

    async def start(self, task_id: str, files: dict[str, bytes], script: str, env: dict[str, str],
                    credential: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Fork the task's process in a folder holding ``files`` (the script's folder), its ``spec`` handed over
        (``worker_spec``; its script then in that folder); its pid, host and start."""
        folder = self.root / task_id
        shutil.rmtree(folder, ignore_errors=True)
        for name, data in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        folder.mkdir(parents=True, exist_ok=True)
        path = str(folder / script)
        proc = await self.forkserver.spawn({**env, "AIP_TASK_SCRIPT": path}, credential, {**spec, "script": path},
                                           cwd=folder, channel=False)
        proc.reports.close()  # the task reports over gRPC
        run = self.runs[task_id] = RunnerRun(proc, folder)
        asyncio.get_running_loop().add_reader(proc.output, self._read, task_id, run)
        asyncio.ensure_future(self._wait(run))
        return {"pid": proc.pid, "host": socket.gethostname(), "started_at": time.time()}

    def _read(self, task_id: str, run: RunnerRun) -> None:
        try:
            data = os.read(run.proc.output, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            run.output += data
            if len(run.output) > LOG_KEEP_BYTES:  # nobody read it: keep the newest
                cut = len(run.output) - LOG_KEEP_BYTES
                del run.output[:cut]
                run.start += cut
        else:
            asyncio.get_running_loop().remove_reader(run.proc.output)
            os.close(run.proc.output)
            run.proc.output = -1
        run.changed.set()

    async def _wait(self, run: RunnerRun) -> None:
        code = await run.proc.wait()
        self._kill(run, signal.SIGKILL)  # nothing of the task outlives it
        deadline = time.monotonic() + 2.0  # a process that escaped the group may hold the output: not for long
        while run.proc.output != -1 and time.monotonic() < deadline:
            run.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), 0.1)
        run.code = code
        run.changed.set()

    @staticmethod
    def _kill(run: RunnerRun, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, sig)

    async def poll(self, task_id: str, offset: int, wait_s: float) -> tuple[bytes, int, int | None]:
        """Output from ``offset`` on (as soon as there is some, or the task ended, or after ``wait_s``), the offset
        it starts at (later than asked when older output was dropped), and the exit code once it ended."""
        run = self.runs.get(task_id)
        if run is None:
            raise LookupError(f"this runner has no task {task_id}")
        if offset >= run.start + len(run.output) and run.code is None:
            run.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), wait_s)
        begin = max(offset, run.start)
        return bytes(run.output[begin - run.start:]), begin, run.code

    async def stop(self, task_id: str) -> None:
        """SIGTERM to the task's group, SIGKILL after the grace period."""
        run = self.runs.get(task_id)
        if run is None or run.code is not None:
            return
        self._kill(run, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.proc.wait()), self.grace_s)
        self._kill(run, signal.SIGKILL)

    async def forget(self, task_id: str) -> None:
        """Drop an ended task's output and folder."""
        run = self.runs.pop(task_id, None)
        if run is not None:
            if run.code is None:
                self._kill(run, signal.SIGKILL)
            shutil.rmtree(run.folder, ignore_errors=True)

    async def tasks(self) -> list[str]:
        """The tasks this runner holds (running, or ended and not yet read to the end)."""
        return list(self.runs)


def script_folder(script: Path, excludes: list[str]) -> dict[str, bytes] | None:
    """The files of the script's folder (as a Ray Job's ``working_dir`` ships it, less ``excludes``), or None when
    it is over FOLDER_MAX_BYTES or FOLDER_MAX_FILES."""
    files: dict[str, bytes] = {}
    size = 0
    root = script.parent
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not any(fnmatch.fnmatch(d, pattern) for pattern in excludes)]
        for name in names:
            if any(fnmatch.fnmatch(name, pattern) for pattern in excludes):
                continue
            path = Path(folder, name)
            if not path.is_file():
                continue
            size += path.stat().st_size
            if size > FOLDER_MAX_BYTES or len(files) >= FOLDER_MAX_FILES:
                return None
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


class WarmPool:
    """The scheduler's side: the runners (created on first use, or found again by name), which are free, and one
    task's run on one."""

    def __init__(self, address: str, size: int, env: dict[str, str], warm_imports: list[str], grace_s: float,
                 excludes: list[str]) -> None:
        self.address, self.size, self.env = address, size, env
        self.warm_imports, self.grace_s, self.excludes = warm_imports, grace_s, excludes
        self._runners: list[Any] = []
        self._free: asyncio.Queue[int] | None = None
        self._busy: dict[int, set[str]] = {}  # runner -> tasks left on it by a previous scheduler, until followed
        self._ready = asyncio.Lock()

    @classmethod
    def of(cls, settings: Any, excludes: list[str]) -> WarmPool:
        """The pool a scheduler's settings ask for (``SchedulerSettings``)."""
        env = worker_env(None, settings.worker_env(), {"AIP_DIE_WITH_PARENT": "1"})  # a task ends with its runner
        return cls(settings.ray_cluster_address, settings.ray_warm_runners, env,
                   [*settings.warm_imports, *GRPC_IMPORTS], settings.grace_s, excludes)

    def fits(self, task: Task) -> bool:
        """Whether the task can run on a runner: at most one CPU, nothing else asked of the cluster."""
        r = task.resources
        return r.num_cpus <= 1 and not r.num_gpus and not r.memory_mb and not r.custom

    async def _ensure(self) -> asyncio.Queue[int]:
        async with self._ready:
            if self._free is None:
                self._runners = await asyncio.to_thread(self._connect)
                for sig in (signal.SIGTERM, signal.SIGINT):  # Ray's driver put its crash handler over the service's
                    if callable(handler := signal.getsignal(sig)):
                        signal.signal(sig, handler)
                held = await asyncio.gather(*(runner.tasks.remote() for runner in self._runners))
                self._free = asyncio.Queue()
                for index, tasks in enumerate(held):
                    if tasks:
                        self._busy[index] = set(tasks)
                    else:
                        self._free.put_nowait(index)
            return self._free

    def _connect(self) -> list[Any]:
        """Join the cluster as a driver; the runners, each started (once its CPU was free) or found by name."""
        import ray

        if not ray.is_initialized():
            host, _, port = self.address.rpartition(":")
            try:  # ray.init waits minutes for a GCS that is not there: ask first
                socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
            except OSError as exc:
                raise Unavailable(f"the Ray cluster's GCS at {self.address} (AIP_RAY_CLUSTER_ADDRESS) cannot be "
                                  f"reached: {exc.strerror or exc}; the warm runners cannot start") from None
            # Joined from a thread, so Ray leaves the service's SIGTERM handler alone, as it says: expected.
            logging.getLogger("ray._private.worker").addFilter(
                lambda record: not record.getMessage().startswith("SIGTERM handler is not set"))
            ray.init(address=self.address, namespace=NAMESPACE, logging_level=logging.WARNING,
                     log_to_driver=False, configure_logging=False)
        runners = [self._create(i, wait=False) for i in range(self.size)]
        ray.get([runner.tasks.remote() for runner in runners], timeout=START_TIMEOUT_S)
        log.info("%d warm runners on the Ray cluster at %s", self.size, self.address)
        return runners

    def _create(self, index: int, wait: bool = True) -> Any:
        import ray

        runner = ray.remote(WarmRunner).options(
            name=RUNNER_NAME % index, num_cpus=1, lifetime="detached", get_if_exists=True, max_restarts=0,
            max_concurrency=1000, runtime_env={"env_vars": {"PYTHONPATH": self.env["PYTHONPATH"]}},
        ).remote(self.env, self.warm_imports, self.grace_s)
        if wait:
            ray.get(runner.tasks.remote(), timeout=START_TIMEOUT_S)
        return runner

    async def close(self) -> None:
        """End the idle runners, giving their CPUs back to the cluster, and leave it. A runner with a task on it
        stays (detached), for the next scheduler to follow the task (and end the runner when it stops)."""
        if self._free is None:
            return
        import ray

        idle = []
        while not self._free.empty():
            idle.append(self._runners[self._free.get_nowait()])
        self._free = None

        def leave() -> None:
            for runner in idle:
                if runner is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(runner)
            ray.shutdown()

        await asyncio.to_thread(leave)

    async def run(self, ctx: RunContext, files: dict[str, bytes], attach: bool) -> Outcome:
        task = ctx.task
        free = await self._ensure()
        if attach:
            index = int(task.job_id.split(":")[1])
            if index >= len(self._runners) or task.id not in self._busy.get(index, set()):
                return Outcome(TaskStatus.FAILED, error_type="RunnerLost",
                               error_message=f"the warm runner {index} that ran the task no longer holds it (the "
                                             f"runner or its node ended)")
            self._busy[index].discard(task.id)
        else:
            ctx.on_submitted("")  # admitted: it waits for a free runner, as a Ray Job waits for a free CPU
            index = await free.get()
        try:
            if self._runners[index] is None:  # it died with its node: a new one, wherever Ray places it
                self._runners[index] = await asyncio.to_thread(self._create, index)
            runner = self._runners[index]
            if not attach:
                started = await runner.start.remote(task.id, files, Path(task.script).name, task_variables(task),
                                                    ctx.credential, worker_spec(task))
                job_id = f"{JOB_PREFIX}{index}:{task.id}"
                ctx.on_submitted(job_id)
                ctx.on_running(None, job_id, started["started_at"])
            outcome = await self._follow(ctx, runner)
        except asyncio.CancelledError:
            raise  # the scheduler stops following it (it shuts down): the task runs on, for the next one to follow
        except BaseException as exc:
            from ray.exceptions import RayActorError

            if isinstance(exc, RayActorError):
                log.warning("warm runner %d is gone (%s); a new one takes its place", index, exc)
                self._runners[index] = None
                self._busy.pop(index, None)  # what it held went with it
                if self._free is not None:
                    self._free.put_nowait(index)  # the next task to take it starts a new runner
                raise RunnerLost(f"the warm runner that ran the task ended (its node or process died): "
                                 f"{str(exc).splitlines()[0][:300]}") from None
            await self._release(index, task.id)
            raise
        await self._release(index, task.id)
        return outcome

    async def _release(self, index: int, task_id: str) -> None:
        runner = self._runners[index]
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.forget.remote(task_id)
        if not self._busy.get(index) and self._free is not None:
            self._free.put_nowait(index)

    async def _follow(self, ctx: RunContext, runner: Any) -> Outcome:
        """Mirror the task's output into its log until it ends; stop it when asked."""
        task, offset, stopped = ctx.task, ctx.log.end, False
        stop_asked = asyncio.ensure_future(ctx.stop.wait())
        try:
            while True:
                poll = asyncio.ensure_future(runner.poll.remote(task.id, offset, POLL_WAIT_S))
                await asyncio.wait([poll, stop_asked], return_when=asyncio.FIRST_COMPLETED)
                if ctx.stop.is_set() and not stopped:
                    stopped = True
                    await runner.stop.remote(task.id)
                data, begin, code = await poll
                if begin > offset:
                    ctx.write_log(b"\n[platform] %d bytes of output were dropped by the runner\n" % (begin - offset))
                if data:
                    ctx.write_log(data)
                offset = begin + len(data)
                if code is not None:
                    break
        finally:
            stop_asked.cancel()
        ctx.log.close()
        from scheduler_svc.backends.local import describe_exit

        return ctx.outcome(describe_exit(code))


def is_warm(task: Task) -> bool:
    return task.job_id.startswith(JOB_PREFIX)
