"""Level 1: each task is a process in its own process group, so cancel stops its children too. Forked from a warm
fork server (``backends.forkserver``) in milliseconds, or, with AIP_WARM_START=false, a new interpreter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from ai_platform.core.procs import group_members, process_name
from ai_platform.core.settings import child_environment
from scheduler_svc.backends import WORKER_COMMAND, RunContext, task_variables, worker_env, worker_spec
from scheduler_svc.backends.forkserver import ForkedProcess, ForkServer, ForkServerGone
from scheduler_svc.tasks import Outcome, Task, TaskStatus

log = logging.getLogger("scheduler_svc.local")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PUMP_DRAIN_S = 2.0  # after the worker exits, how long its output may still arrive
HOST = socket.gethostname().encode()
REPORT_MAX_BYTES = 64 << 20  # one report on a forked task's socket (a result, a batch of metric points)


def group_rss_mb(pgid: int) -> float:
    total = 0
    for pid in group_members(pgid):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * PAGE_SIZE / 2**20


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def task_processes(pgid: int, task_id: str) -> list[int]:
    """Members of ``pgid`` that belong to ``task_id`` (by environment, or the name a forked task process carries),
    for cleanup after a restart."""
    marker, name = f"AIP_TASK_ID={task_id}".encode(), process_name(task_id).encode()
    owned = []
    for pid in group_members(pgid):
        try:
            if Path(f"/proc/{pid}/comm").read_bytes().strip() == name or \
                    marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                owned.append(pid)
        except OSError:
            continue
    return owned


def describe_exit(returncode: int) -> str | None:
    if returncode == 0:
        return None
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -returncode == signal.SIGKILL else ""
        return f"the process was killed by {sig}{hint}"
    return f"the process exited with code {returncode} before run returned"


def _follow(fd: int, on_data: Callable[[bytes], bool | None]) -> asyncio.Future:
    """Hand what arrives on the non-blocking descriptor ``fd`` to ``on_data`` straight from the loop's reader
    callback, until its end or until ``on_data`` returns False; the future is done then, and ``fd`` closed (also
    when it is cancelled). ``on_data`` must not raise."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        if done.done():  # ended (or cancelled) earlier in this turn of the loop: the descriptor is being closed
            return
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            more = bool(data) and on_data(data) is not False
        except Exception:  # noqa: BLE001 - a bug in handling it must not leave the descriptor unread
            log.exception("reading a task's output or reports failed")
            more = bool(data)
        if not more and not done.done():
            done.set_result(None)

    def close(_: asyncio.Future) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    loop.add_reader(fd, readable)
    done.add_done_callback(close)
    return done


def _answer_reports(reports: socket.socket, ctx: RunContext) -> asyncio.Future:
    """A forked task's reports on its own socket, each framed by its length, answered in turn (a status byte, then
    the answer framed by its length) until the worker's last word or until the task closes it; done then, the
    socket closed."""
    fd, buffer = reports.detach(), bytearray()

    def on_data(data: bytes) -> bool:
        buffer.extend(data)
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if size > REPORT_MAX_BYTES:
                return False  # not a report: the channel ends
            if len(buffer) < 4 + size:
                return True
            request = bytes(buffer[4:4 + size])
            del buffer[:4 + size]
            try:
                ok, answer = ctx.answer_report(request) if ctx.answer_report else (
                    False, b"UNAVAILABLE: this scheduler takes no reports on the task's socket")
            except Exception:  # noqa: BLE001 - a bug here ends this task's channel, not the scheduler's loop
                log.exception("task %s: a report on its socket could not be answered", ctx.task.id)
                return False
            if ctx.exit_code is not None:  # the worker's last word: nothing follows it
                return False
            if answer is None:  # its result: the worker does not wait for an answer
                continue
            # The worker reads each answer before it reports again, so the socket has room for this one; a task
            # that never reads them ends its channel here.
            reply = memoryview(bytes([0 if ok else 1]) + len(answer).to_bytes(4, "big") + answer)
            try:
                while reply:
                    reply = reply[os.write(fd, reply):]
            except OSError:  # the task is gone, or not reading: the channel ends
                return False
        return True

    return _follow(fd, on_data)


class LocalBackend:
    name = "local"
    detached = False  # a task's processes end with the scheduler
    custom_resources = False  # one machine, one kind of node

    def __init__(self, cwd: Path, grace_s: float, platform_env: dict[str, str], max_parallel: int,
                 warm_start: bool = True, warm_imports: list[str] | None = None) -> None:
        self.cwd = cwd
        self.grace_s = grace_s
        self.platform_env = platform_env
        self.slots = asyncio.Semaphore(max_parallel)
        # The fork server's environment is every task's, less the task's own variables (sent with each spawn).
        common = child_environment(worker_env(None, platform_env, {"AIP_DIE_WITH_PARENT": "1"}), secrets=False)
        self.forkserver = ForkServer(cwd, common, warm_imports or []) if warm_start else None

    def can_reattach(self, task: Task) -> bool:
        return False

    def end_orphans(self, task: Task) -> None:
        if task.pid:  # the process group may outlive us if a child ignored the parent's death
            for pid in task_processes(task.pid, task.id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def close(self) -> None:
        if self.forkserver is not None:
            await self.forkserver.close()

    async def _start(self, ctx: RunContext) -> asyncio.subprocess.Process | ForkedProcess:
        """The task's process: forked by the warm fork server, else a new interpreter. Either way its own session,
        its output on a pipe, and its credential handed over, never in its environment (/proc/<pid>/environ is
        readable by the same user)."""
        if self.forkserver is not None:
            try:
                return await self.forkserver.spawn(task_variables(ctx.task), ctx.credential, worker_spec(ctx.task))
            except (ForkServerGone, OSError) as exc:  # a fresh interpreter still runs the task
                log.warning("task %s: the warm start failed (%s); starting a new interpreter", ctx.task.id, exc)
        # The credential waits in a pipe of its own, written before the worker starts (a few hundred bytes: the
        # pipe holds them), read as the first line of the worker's stdin.
        credential, give = os.pipe()
        try:
            os.write(give, ctx.credential.encode() + b"\n")
        finally:
            os.close(give)
        try:
            proc = await asyncio.create_subprocess_exec(
                *WORKER_COMMAND,
                stdin=credential,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
                env=child_environment(worker_env(ctx.task, self.platform_env, {"AIP_DIE_WITH_PARENT": "1",
                                                                               "AIP_TASK_TOKEN_STDIN": "1"}),
                                      secrets=False),
                limit=1 << 20,
            )
        finally:
            os.close(credential)
        return proc

    async def run(self, ctx: RunContext, attach: bool) -> Outcome:
        task = ctx.task
        ctx.on_running(None, "", None)  # it holds its slot and its process is starting: running, as submit answers
        proc = await self._start(ctx)
        ctx.on_running(proc.pid, "", None)
        if isinstance(proc, ForkedProcess):
            # Said here, not by the worker: one write (and one wake-up of this loop) less for every task.
            ctx.write_log(b"[platform] task %s runs on %s (pid %d)\n" % (task.id.encode(), HOST, proc.pid))
            ctx.on_exit = proc.last_word
            pumps = [_follow(proc.output, ctx.write_log), _answer_reports(proc.reports, ctx)]
        else:
            pumps = [asyncio.ensure_future(self._pump_log(proc, ctx))]
        over_memory: list[float] = []
        watchers = [asyncio.ensure_future(self._stop_when_asked(proc, ctx))]
        if task.resources.memory_mb:
            watchers.append(asyncio.ensure_future(self._watch_memory(proc, task.resources.memory_mb, over_memory)))
        try:
            returncode = await proc.wait()
        finally:
            for watcher in watchers:
                watcher.cancel()
            kill_group(proc.pid, signal.SIGKILL)  # nothing of the task outlives it
            # A process that escaped the group may still hold the output pipe: drain briefly, then let go.
            held = [pump for pump in pumps if not pump.done()]  # mostly none: the output ended with the process
            if held:
                _, held = await asyncio.wait(held, timeout=PUMP_DRAIN_S)
            for pump in held:
                pump.cancel()
            ctx.log.close()
        if over_memory:
            return Outcome(
                TaskStatus.FAILED,
                error_type="OutOfMemory",
                error_message=f"the task used {over_memory[0]:.0f} MB, over its memory_mb="
                f"{task.resources.memory_mb}, and was killed",
            )
        return ctx.outcome(describe_exit(returncode))

    async def _pump_log(self, proc: asyncio.subprocess.Process, ctx: RunContext) -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(1 << 16):
            ctx.write_log(data)  # never raises: the pipe is drained whatever happens to the log

    async def _stop_when_asked(self, proc: asyncio.subprocess.Process | ForkedProcess, ctx: RunContext) -> None:
        await ctx.stop.wait()
        kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self.grace_s)
        except TimeoutError:
            log.info("task %s ignored SIGTERM for %.1fs; sending SIGKILL", ctx.task.id, self.grace_s)
            kill_group(proc.pid, signal.SIGKILL)

    async def _watch_memory(self, proc: asyncio.subprocess.Process | ForkedProcess, limit_mb: int,
                            over: list[float]) -> None:
        while proc.returncode is None:
            used = await asyncio.to_thread(group_rss_mb, proc.pid)
            if used > limit_mb:
                over.append(used)
                kill_group(proc.pid, signal.SIGKILL)
                return
            await asyncio.sleep(0.25)
