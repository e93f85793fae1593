"""Short tasks on Ray in milliseconds: warm runners, Ray actors that each keep a fork server on their node.

A Ray Job per task costs about a second: Ray starts a supervisor actor and a new interpreter that imports the
worker, and ships the script's folder. A warm runner is a detached Ray actor holding one CPU of the cluster and a
fork server (``ai_platform.sdk.forkserver``) with the worker's imports loaded, so a task is a fork, as on the local
backend: its own process group (cancel and timeout end the group), its own working directory (the script's folder,
shipped with the call), a clean interpreter state, its output kept by the runner and read by the scheduler as it
comes. Its reports go on its own socket to the runner (JSON, as on the local backend), which passes them on to the
scheduler over one gRPC channel with the task's own credential: a forked task spares itself starting gRPC (some
20 ms for its first call).

A runner runs one task at a time, so the CPU Ray counts for it is the task's. Tasks that ask for more than one CPU,
for GPUs, memory or custom resources, or whose folder is over ``FOLDER_MAX_BYTES``, still run as Ray Jobs. Runners are
named and detached: a task outlives a scheduler restart, and the new scheduler follows it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from ai_platform.core.errors import InvalidArgument, Unavailable
from ai_platform.core.settings import child_environment
from scheduler_svc.backends import RunContext, channel_report, task_variables, worker_env, worker_spec
from scheduler_svc.tasks import Outcome, Task, TaskStatus

log = logging.getLogger("scheduler_svc.ray_warm")
RUNNER_PREFIX = "aip-warm-runner-"  # then the configuration's hash and the index
JOB_PREFIX = "warm:"  # a task's job_id on a runner: warm:RUNNER:TASK_ID
FOLDER_MAX_BYTES = 8 << 20  # a bigger script folder is shipped by a Ray Job's working_dir instead
FOLDER_MAX_FILES = 1000
POLL_WAIT_S = 1.0  # how long one poll of a runner waits for output or the end
LOG_KEEP_BYTES = 64 << 20  # output a runner keeps for the scheduler to read; older output is dropped, said in the log
CONNECT_TIMEOUT_S = 5.0
PENDING_SAY_S = 2.0  # a task still waiting for a runner then says why
RETRY_START_S = 30.0  # a runner that could not start is tried again after this
RECLAIM_S = 60.0  # after a restart, a task left on a runner that no re-attachment claims by then is ended
UNREACHABLE_S = 60.0  # a runner Ray cannot reach for longer fails its task
REPORT_MAX_BYTES = 64 << 20  # one report on a task's socket, as on the local backend
RELAY_PATIENCE_S = 330.0  # a result being passed on is retried for 300 s (report.FINAL_PATIENCE_S); the end waits
DRAIN_S = 2.0  # after the task's process ends, how long its output and reports may still arrive


class RunnerLost(RuntimeError):
    """The runner a task ran on ended (its node died, or it was killed): the task failed with it."""


class RunnerRun:
    """One task on a runner: its process, and its output since the start (``start`` is the offset of ``output``)."""

    def __init__(self, proc: Any, folder: Path) -> None:
        self.proc, self.folder = proc, folder
        self.output, self.start = bytearray(), 0
        self.code: int | None = None
        self.changed = asyncio.Event()
        self.relay: asyncio.Future | None = None
        self.delivering = False  # a report is being passed on (retried while the scheduler is away)
        self.refusal = ""  # why the scheduler refused the result, if it did (the task then fails, saying so)
        self.started_at = time.time()


class WarmRunner:
    """The Ray actor (an async one: its calls share one event loop, so output is read while a poll waits)."""

    def __init__(self, env: dict[str, str], warm_imports: list[str], grace_s: float) -> None:
        from scheduler_svc.backends.forkserver import ForkServer

        self.root = Path(tempfile.mkdtemp(prefix="aip-warm-runner-"))
        # The platform's settings over this node's environment (as a Ray Job's env_vars are), less any credential.
        self.env = child_environment(env, secrets=False)
        self.forkserver = ForkServer(self.root, self.env, warm_imports)
        self.grace_s = grace_s
        self.runs: dict[str, RunnerRun] = {}
        self._stub: Any = None

    def _scheduler(self) -> Any:
        """The scheduler's ReportTask, over one channel for every task (this node's TLS files, as a worker's)."""
        if self._stub is None:
            from ai_platform.core.settings import TaskSettings
            from ai_platform.core.wire import aio_channel
            from ai_platform.protos.aiplatform.v1 import scheduler_pb2_grpc

            settings = TaskSettings.from_env(self.env)
            channel = aio_channel(settings.scheduler_addr, tls=settings.tls())
            self._stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        return self._stub

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
        try:
            proc = await self.forkserver.spawn({**env, "AIP_TASK_SCRIPT": path}, credential,
                                               {**spec, "script": path}, cwd=folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        run = self.runs[task_id] = RunnerRun(proc, folder)
        self._say(run, f"[platform] task {task_id} runs on {socket.gethostname()} (pid {proc.pid}, a warm runner)\n")
        asyncio.get_running_loop().add_reader(proc.output, self._read, task_id, run)
        run.relay = asyncio.ensure_future(self._relay(task_id, run, credential))
        run.relay.add_done_callback(lambda _: run.changed.set())  # the end waits for it
        asyncio.ensure_future(self._wait(run))
        return {"pid": proc.pid, "host": socket.gethostname(), "started_at": run.started_at}

    async def _relay(self, task_id: str, run: RunnerRun, credential: str) -> None:
        """Pass the task's reports (``report.ChannelReporter``: each framed by its length, answered with a status
        byte and the refusal, if any) on to the scheduler, until its last word or until it closes its socket."""
        loop, sock, buffer = asyncio.get_running_loop(), run.proc.reports, bytearray()

        async def take(size: int) -> bytes:
            while len(buffer) < size:
                chunk = await loop.sock_recv(sock, 1 << 16)
                if not chunk:
                    raise EOFError
                buffer.extend(chunk)
            data = bytes(buffer[:size])
            del buffer[:size]
            return data

        try:
            while True:
                size = int.from_bytes(await take(4), "big")
                if size > REPORT_MAX_BYTES:
                    return  # not a report: the channel ends
                try:  # checked as the local backend checks its tasks' reports
                    kind, value = channel_report(await take(size))
                except InvalidArgument as exc:
                    kind, refusal = "", f"INVALID_ARGUMENT: {exc.message}"
                if kind == "exit":  # its last word: it ends as it leaves (its output closed already)
                    run.proc.last_word(value)
                    return
                if kind:
                    run.delivering = True
                    try:
                        refusal = await self._deliver(task_id, credential, kind, value)
                    finally:
                        run.delivering = False
                if kind == "result":  # not waited for: a refusal is the scheduler's to record, as on the local backend
                    if refusal:
                        run.refusal = refusal
                        self._say(run, f"[platform] the scheduler refused the result report: {refusal}\n")
                    continue
                answer = refusal.encode()
                await loop.sock_sendall(sock, bytes([1 if refusal else 0]) + len(answer).to_bytes(4, "big") + answer)
        except (EOFError, OSError):
            return  # it closed its socket: the channel ends
        except Exception as exc:  # noqa: BLE001 - a bug here ends this task's channel, said in its log
            self._say(run, f"[platform] the runner stopped passing on the task's reports: {exc!r}"[:1024] + "\n")
        finally:
            sock.close()

    async def _deliver(self, task_id: str, credential: str, kind: Any, value: Any) -> str:
        """One report as ReportTask, retried with backoff while the scheduler cannot be reached (as a worker's own
        reports are); '' when taken, else why not."""
        import grpc

        from ai_platform.sdk import report

        try:
            request = report.report_request(task_id, kind, value)
        except Exception as exc:  # noqa: BLE001 - anything ReportTask could not carry (protobuf's own errors too)
            return f"INVALID_ARGUMENT: a {kind} report is malformed: {exc!r}"[:512]
        patience = report.FINAL_PATIENCE_S if kind in ("result", "error") else report.PROGRESS_PATIENCE_S
        deadline, delay = time.monotonic() + patience, report.RETRY_FIRST_S
        while True:
            try:
                await self._scheduler().ReportTask(request, timeout=report.REPORT_TIMEOUT_S,
                                                   metadata=[("authorization", f"Bearer {credential}")])
                return ""
            except grpc.aio.AioRpcError as exc:
                retry = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retry or time.monotonic() + delay > deadline:
                    return f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(delay)
            delay = min(delay * 2, report.RETRY_MAX_S)

    @staticmethod
    def _say(run: RunnerRun, line: str) -> None:
        run.output += line.encode()
        run.changed.set()

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
        try:
            self._kill(run, signal.SIGKILL)  # nothing of the task outlives it
            deadline = time.monotonic() + DRAIN_S  # a process that escaped the group may hold its pipes: not long
            while (run.proc.output != -1 or (run.relay is not None and not run.relay.done())) and \
                    (time.monotonic() < deadline or run.delivering):  # a report being passed on is waited for
                if time.monotonic() > deadline + RELAY_PATIENCE_S:
                    break
                run.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.changed.wait(), 0.1)
            if run.relay is not None and not run.relay.done():
                run.relay.cancel()
        finally:
            run.code = code
            run.changed.set()

    @staticmethod
    def _kill(run: RunnerRun, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, sig)

    async def poll(self, task_id: str, offset: int, wait_s: float) -> tuple[bytes, int, int | None, str]:
        """Output from ``offset`` on (as soon as there is some, or the task ended, or after ``wait_s``), the offset
        it starts at (later than asked when older output was dropped), the exit code once it ended, and why the
        scheduler refused the task's result ('' if it did not)."""
        run = self.runs.get(task_id)
        if run is None:
            raise LookupError(f"this runner has no task {task_id}")
        if offset >= run.start + len(run.output) and run.code is None:
            run.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), wait_s)
        begin = max(offset, run.start)
        return bytes(run.output[begin - run.start:]), begin, run.code, run.refusal

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
            if run.relay is not None:
                run.relay.cancel()
            if run.proc.output != -1:  # held open past the drain by a process that escaped the group
                asyncio.get_running_loop().remove_reader(run.proc.output)
                os.close(run.proc.output)
                run.proc.output = -1
            shutil.rmtree(run.folder, ignore_errors=True)

    async def tasks(self) -> dict[str, float]:
        """The tasks this runner holds (running, or ended and not yet read to the end), with their start times."""
        return {task_id: run.started_at for task_id, run in self.runs.items()}


def _folder_files(root: Path, excludes: list[str]) -> list[Path] | None:
    """The files of the folder ``root`` (as a Ray Job's ``working_dir`` ships it, less ``excludes``), or None when
    they are over FOLDER_MAX_BYTES or FOLDER_MAX_FILES."""
    files, size = [], 0
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
            files.append(path)
    return files


def folder_fits(script: Path, excludes: list[str]) -> bool:
    """Whether the script's folder is small enough to ship with the call that starts the task."""
    return _folder_files(script.parent, excludes) is not None


def script_folder(script: Path, excludes: list[str]) -> dict[str, bytes] | None:
    """The script's folder, each file by its path in it; None when it is too big (``folder_fits``)."""
    files = _folder_files(script.parent, excludes)
    return None if files is None else {str(path.relative_to(script.parent)): path.read_bytes() for path in files}


class WarmPool:
    """The scheduler's side: the runners (started on first use, or found again by name), which are free, and one
    task's run on one.

    Runners are named after this scheduler's state directory and its configuration, in a namespace of their own: two
    schedulers on one cluster never share one, and a restarted scheduler whose configuration changed starts new
    ones (an old one is kept while a task it holds is followed, then ended)."""

    def __init__(self, address: str, size: int, env: dict[str, str], warm_imports: list[str], grace_s: float,
                 excludes: list[str], owner: str) -> None:
        self.address, self.size, self.env = address, size, env
        self.warm_imports, self.grace_s, self.excludes = warm_imports, grace_s, excludes
        config = hashlib.sha256(json.dumps([env, warm_imports, grace_s], sort_keys=True).encode()).hexdigest()[:10]
        self.namespace = f"aip-{hashlib.sha256(owner.encode()).hexdigest()[:12]}"
        self.names = [f"{RUNNER_PREFIX}{config}-{i}" for i in range(size)]
        self._runners: dict[str, Any] = {}  # name -> handle: this pool's, and older ones still holding tasks
        self._held: dict[str, dict[str, float]] = {}  # runner -> tasks a previous scheduler left on it (and their
        # start), until followed
        self._following: dict[str, int] = {}  # runner -> tasks being followed on it
        self._free: asyncio.Queue[str] | None = None
        self._free_names: set[str] = set()  # what the queue holds: a runner is in it once, and only when idle
        self._ready = asyncio.Lock()
        self._starting: dict[str, asyncio.Future] = {}  # runner -> until it answered what it holds
        self._connecting: asyncio.Future | None = None

    @classmethod
    def of(cls, settings: Any, excludes: list[str]) -> WarmPool:
        """The pool a scheduler's settings ask for (``SchedulerSettings``). Its tasks end with their runner, and
        reach the cluster as a Job's driver does (Ray and Daft's Ray runner inside a task)."""
        env = worker_env(None, settings.worker_env(), {"AIP_DIE_WITH_PARENT": "1",
                                                      "RAY_ADDRESS": settings.ray_cluster_address})
        return cls(settings.ray_cluster_address, settings.ray_warm_runners, env, settings.warm_imports,
                   settings.grace_s, excludes, owner=_scheduler_id(settings.state_path()))

    def start(self) -> None:
        """Join the cluster now, not at the first task: the runners start, and what a previous scheduler left on
        them is followed or, unclaimed, ended."""
        async def connect() -> None:
            try:
                await self._ensure()
            except Exception as exc:  # noqa: BLE001 - the first task that needs a runner tries again, and says why
                log.warning("the warm runners could not start: %s", str(exc).splitlines()[0][:300])

        self._connecting = asyncio.ensure_future(connect())

    async def takes(self, task: Task) -> bool:
        """Whether the task runs on a runner: it asks for at most one CPU and nothing else of the cluster, and its
        script's folder is small enough to ship with the call that starts it."""
        r = task.resources
        if r.num_cpus > 1 or r.num_gpus or r.memory_mb or r.custom:
            return False
        return await asyncio.to_thread(folder_fits, Path(task.script), self.excludes)

    async def _ensure(self) -> asyncio.Queue[str]:
        async with self._ready:
            if self._free is None:
                found = await asyncio.to_thread(self._connect)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    # Ray's driver put its crash handler over the service's; set again, Python's own is back.
                    if callable(handler := signal.getsignal(sig)):
                        signal.signal(sig, handler)
                self._free = asyncio.Queue()
                for name, handle in found.items():
                    self._runners[name] = handle
                    self._starting[name] = asyncio.ensure_future(self._started(name))
            return self._free

    def _connect(self) -> dict[str, Any]:
        """Join the cluster as a driver; this pool's runners (started, or found by name) and older ones of this
        scheduler's (another configuration) that may hold tasks."""
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
            ray.init(address=self.address, namespace=self.namespace, logging_level=logging.WARNING,
                     log_to_driver=False, configure_logging=False)
        found = {name: self._create(name) for name in self.names}
        for actor in ray.util.list_named_actors(all_namespaces=True):
            name = actor["name"]
            if actor["namespace"] == self.namespace and name.startswith(RUNNER_PREFIX) and name not in found:
                with contextlib.suppress(ValueError):
                    found[name] = ray.get_actor(name, namespace=self.namespace)
        return found

    def _create(self, name: str) -> Any:
        import ray

        return ray.remote(WarmRunner).options(
            name=name, namespace=self.namespace, num_cpus=1, lifetime="detached", get_if_exists=True,
            max_restarts=0, max_concurrency=1000,
            runtime_env={"env_vars": {"PYTHONPATH": self.env["PYTHONPATH"]}},
        ).remote(self.env, self.warm_imports, self.grace_s)

    async def _started(self, name: str) -> None:
        """Once the runner runs (Ray places it when one of its nodes has a CPU free): free, or holding the tasks a
        previous scheduler left on it until they are followed (or, unclaimed after RECLAIM_S, ended)."""
        try:
            held = await self._runners[name].tasks.remote()
        except Exception as exc:  # noqa: BLE001 - a runner that cannot start is tried again, said in the log
            log.error("warm runner %s could not start (tried again in %.0f s): %s", name, RETRY_START_S,
                      str(exc).splitlines()[0][:300])
            self._runners.pop(name, None)
            if name in self.names:
                asyncio.get_running_loop().call_later(RETRY_START_S, self._restart, name)
            return
        if held:
            self._held[name] = dict(held)
            asyncio.get_running_loop().call_later(RECLAIM_S, lambda: asyncio.ensure_future(self._reclaim(name)))
        else:
            self._give_back(name)

    def _restart(self, name: str) -> None:
        if self._free is not None and name not in self._runners:
            async def restart() -> None:
                self._runners[name] = await asyncio.to_thread(self._create, name)
                await self._started(name)

            self._starting[name] = asyncio.ensure_future(restart())

    async def _reclaim(self, name: str) -> None:
        """End what no restarted scheduler claimed on the runner (a task that was being started as it stopped)."""
        for task_id in list(self._held.get(name, ())):
            if task_id not in self._held.get(name, ()):
                continue  # claimed meanwhile
            log.warning("task %s on warm runner %s was not followed after the restart; it is ended", task_id, name)
            self._held[name].pop(task_id, None)
            runner = self._runners.get(name)
            if runner is not None:
                with contextlib.suppress(Exception):
                    await runner.stop.remote(task_id)
                    await runner.forget.remote(task_id)
        self._give_back(name)

    def _give_back(self, name: str) -> None:
        """A runner with nothing on it and nobody following it: free again (once), or, from an older
        configuration, ended. One still busy is left as it is."""
        if self._held.get(name) or self._following.get(name) or name in self._free_names:
            return
        self._held.pop(name, None)
        if name in self.names:
            if self._free is not None:
                self._free_names.add(name)
                self._free.put_nowait(name)
        elif (runner := self._runners.pop(name, None)) is not None:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(runner)

    async def close(self) -> None:
        """End the idle runners, giving their CPUs back to the cluster, and leave it. A runner with a task on it
        stays (detached), for the next scheduler to follow the task (and end the runner when it stops)."""
        if self._free is None:
            return
        import ray

        for starting in self._starting.values():
            starting.cancel()
        # Idle or still starting: nothing on it for the next scheduler to follow.
        idle = [runner for name, runner in self._runners.items()
                if not self._held.get(name) and not self._following.get(name)]
        self._free, self._free_names = None, set()

        def leave() -> None:
            for runner in idle:
                if runner is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(runner)
            ray.shutdown()

        await asyncio.to_thread(leave)

    async def _take(self, ctx: RunContext, free: asyncio.Queue[str]) -> str | None:
        """A free runner, or None when the task was stopped (cancelled) while it waited for one."""
        taking = asyncio.ensure_future(free.get())
        stop = asyncio.ensure_future(ctx.stop.wait())
        try:
            done, _ = await asyncio.wait([taking, stop], timeout=PENDING_SAY_S, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # say why it waits, as a pending Ray Job says which resource it lacks
                ctx.on_progress({"fraction": 0.0, "message": self._waiting(), "metrics": {}, "time": time.time()})
                await asyncio.wait([taking, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not taking.done():
                taking.cancel()
        if ctx.stop.is_set():
            if taking.done() and not taking.cancelled():
                free.put_nowait(taking.result())
            return None
        self._free_names.discard(taking.result())
        return taking.result()

    def _waiting(self) -> str:
        ready = [n for n in self.names if n in self._runners and (n not in self._starting or self._starting[n].done())]
        message = f"waiting for a free warm runner: {len(ready)} of {self.size} running, each busy with a task"
        if len(ready) < self.size:
            message += (f"; {self.size - len(ready)} not started yet (Ray places a runner once a node has a CPU "
                        f"free)")
        return message

    async def run(self, ctx: RunContext, script: Path | None, attach: bool) -> Outcome:
        """Run the task on a free runner (``script``'s folder shipped with it), or, with ``attach``, follow it on
        the runner its job id names."""
        task = ctx.task
        free = await self._ensure()
        if attach:
            name = task.job_id.split(":")[1]
            if name in self._starting:
                await asyncio.shield(self._starting[name])  # its runner says what it holds first
            if task.id not in self._held.get(name, {}):
                return Outcome(TaskStatus.FAILED, error_type="RunnerLost",
                               error_message=f"the warm runner {name} that ran the task no longer holds it (the "
                                             f"runner or its node ended)")
            started_at = self._held[name].pop(task.id)
            self._following[name] = self._following.get(name, 0) + 1
            ctx.on_running(None, task.job_id, started_at)  # it may have been saved as queued, just before it started
        else:
            ctx.on_submitted("")  # admitted: it waits for a free runner, as a Ray Job waits for a free CPU
            taken = await self._take(ctx, free)
            if taken is None:
                return Outcome(TaskStatus.CANCELLED)
            name = taken
            self._following[name] = self._following.get(name, 0) + 1
        try:
            if name not in self._runners:  # it died with its node: a new one, wherever Ray places it
                self._runners[name] = await asyncio.to_thread(self._create, name)
            runner = self._runners[name]
            if not attach:
                assert script is not None
                files = await asyncio.to_thread(script_folder, script, self.excludes)
                if files is None:
                    raise ValueError(f"the folder of {script.name} grew over {FOLDER_MAX_BYTES} bytes or "
                                     f"{FOLDER_MAX_FILES} files as the task started")
                job_id = f"{JOB_PREFIX}{name}:{task.id}"
                ctx.on_submitted(job_id)  # saved before it starts: a restart finds it on this runner
                started = await asyncio.shield(runner.start.remote(
                    task.id, files, script.name, task_variables(task), ctx.credential, worker_spec(task)))
                ctx.on_running(None, job_id, started["started_at"])
            outcome = await self._follow(ctx, runner)
        except asyncio.CancelledError:
            raise  # the scheduler stops following it (it shuts down): the task runs on, for the next one to follow
        except BaseException as exc:
            from ray.exceptions import ActorDiedError

            if isinstance(exc, ActorDiedError):
                log.warning("warm runner %s is gone (%s); a new one takes its place", name, exc)
                self._runners.pop(name, None)
                self._held.pop(name, None)  # what it held went with it
                self._following[name] -= 1
                self._give_back(name)  # once nobody follows it: the next task to take it starts a new runner
                raise RunnerLost(f"the warm runner that ran the task ended (its node or process died): "
                                 f"{str(exc).splitlines()[0][:300]}") from None
            await self._release(name, task.id)
            raise
        await self._release(name, task.id)
        return outcome

    async def _release(self, name: str, task_id: str) -> None:
        runner = self._runners.get(name)
        if runner is not None:
            try:
                await runner.forget.remote(task_id)
            except Exception as exc:  # noqa: BLE001 - it ended, or cannot be reached: the next task finds out
                log.warning("warm runner %s could not forget task %s: %s", name, task_id, exc)
        self._following[name] -= 1
        self._give_back(name)

    async def _follow(self, ctx: RunContext, runner: Any) -> Outcome:
        """Mirror the task's output into its log until it ends; stop it when asked. A runner that cannot be
        reached for a moment (Ray says so) is asked again, for up to UNREACHABLE_S."""
        from ray.exceptions import ActorUnavailableError

        task, offset, stopped, unreachable_since = ctx.task, ctx.log.end, False, 0.0
        stop_asked = asyncio.ensure_future(ctx.stop.wait())
        try:
            while True:
                poll = asyncio.ensure_future(runner.poll.remote(task.id, offset, POLL_WAIT_S))
                await asyncio.wait([poll, stop_asked], return_when=asyncio.FIRST_COMPLETED)
                try:
                    if ctx.stop.is_set() and not stopped:
                        await runner.stop.remote(task.id)
                        stopped = True
                    data, begin, code, refusal = await poll
                except ActorUnavailableError:
                    if not poll.done():
                        poll.cancel()
                    elif not poll.cancelled():
                        poll.exception()  # retrieved: asked again below
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > UNREACHABLE_S:
                        raise
                    await asyncio.sleep(0.5)
                    continue
                unreachable_since = 0.0
                if begin > offset:
                    ctx.write_log(b"\n[platform] %d bytes of output were dropped by the runner\n" % (begin - offset))
                if data:
                    ctx.write_log(data)
                offset = begin + len(data)
                if code is not None:
                    break
        finally:
            stop_asked.cancel()
        ctx.result_refusal = refusal  # said in the log by the runner already
        ctx.log.close()
        from scheduler_svc.backends.local import describe_exit

        return ctx.outcome(describe_exit(code))


def _scheduler_id(state_dir: Path) -> str:
    """This scheduler's own id, kept in its state directory: its runners are named after it, so two schedulers on
    one cluster never share one, whatever their paths."""
    path = state_dir / "ray-warm-runners.id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(8))
        return path.read_text().strip()


def is_warm(task: Task) -> bool:
    return task.job_id.startswith(JOB_PREFIX)
