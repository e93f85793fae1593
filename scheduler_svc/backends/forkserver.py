"""The scheduler's side of the warm start (``ai_platform.sdk.forkserver``): one fork server, started on the first
task and again whenever it is gone, that forks a process per task and says when each ends."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import sys
from pathlib import Path

from ai_platform.sdk.forkserver import INLINE_REQUEST_MAX

log = logging.getLogger("scheduler_svc.forkserver")
START_TIMEOUT_S = 60.0  # the server imports grpc and the warm imports (torch takes seconds) before its first answer


class ForkServerGone(RuntimeError):
    """The fork server ended (killed, out of memory): the tasks it had started are ended, the next start anew."""


class ForkedProcess:
    """A task's process forked by the server: what the backend needs of an ``asyncio.subprocess.Process``."""

    def __init__(self, pid: int, output: int, exited: asyncio.Future, reports: socket.socket) -> None:
        self.pid, self.reports = pid, reports
        self.output = output  # the read end of its output pipe (non-blocking): the backend follows it
        self.returncode: int | None = None
        self._ended = exited.get_loop().create_future()
        exited.add_done_callback(self._exited)

    def _exited(self, exited: asyncio.Future) -> None:
        # The server's death ends its children (their death signal): as if killed.
        self.last_word(-9 if exited.cancelled() or exited.exception() else exited.result())

    def last_word(self, code: int) -> None:
        """How it ended: the worker's own word as it leaves (its output closed already), or what the fork server saw,
        whichever comes first."""
        if not self._ended.done():
            self._ended.set_result(code)

    async def wait(self) -> int:
        self.returncode = await asyncio.shield(self._ended)
        return self.returncode


class ForkServer:
    def __init__(self, cwd: Path, env: dict[str, str], warm_imports: list[str]) -> None:
        self.cwd, self.env, self.warm_imports = cwd, env, warm_imports
        self._process: asyncio.subprocess.Process | None = None
        self._socket: socket.socket | None = None
        self._starting = asyncio.Lock()
        self._ids = itertools.count(1)
        self._spawned: dict[int, asyncio.Future] = {}
        self._exits: dict[int, asyncio.Future] = {}
        self._early_exits: dict[int, int] = {}  # an exit heard before its spawn's answer

    async def _ensure_started(self) -> socket.socket:
        async with self._starting:
            if self._socket is not None:
                return self._socket
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ai_platform.sdk.forkserver", str(theirs.fileno()),
                    ",".join(self.warm_imports), pass_fds=(theirs.fileno(),), cwd=self.cwd, env=self.env,
                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
            finally:
                theirs.close()
            ours.setblocking(False)
            self._socket = ours
            asyncio.get_running_loop().add_reader(ours.fileno(), self._receive)
            log.info("fork server started (pid %d, warm imports: %s)", self._process.pid,
                     ", ".join(self.warm_imports) or "none")
            return ours

    def _receive(self) -> None:
        assert self._socket is not None
        while True:
            try:
                data = self._socket.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._gone()
                return
            message = json.loads(data)
            if "spawned" in message:
                future = self._spawned.pop(message["spawned"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif "exited" in message:
                future = self._exits.pop(message["exited"], None)
                if future is None:
                    self._early_exits[message["exited"]] = message["code"]
                elif not future.done():
                    future.set_result(message["code"])

    def _gone(self) -> None:
        """The server ended: every answer it owed fails, and the next spawn starts a new one."""
        if self._socket is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
            log.warning("the fork server ended; the next task starts a new one")
        for future in [*self._spawned.values(), *self._exits.values()]:
            if not future.done():
                future.set_exception(ForkServerGone("the fork server that started the task ended"))
        self._spawned.clear()
        self._exits.clear()

    async def spawn(self, env: dict[str, str], credential: str, spec: dict, cwd: Path | None = None) \
            -> ForkedProcess:
        """A new process for one task, its output on a pipe of its own; ``env``: its own variables, over the server's
        environment; ``spec``: what its worker would otherwise ask the scheduler for in its ``started`` report;
        ``cwd``: its working directory, if not the server's."""
        control = await self._ensure_started()
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        reports, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request_id = next(self._ids)
        answer = self._spawned[request_id] = loop.create_future()
        memfd = None
        try:
            message = json.dumps({"spawn": request_id, "env": env, "cwd": str(cwd or self.cwd),
                                  "credential": credential, "spec": spec}).encode()
            fds = [write_end, theirs.fileno()]
            if len(message) > INLINE_REQUEST_MAX:  # big params: in a memfd, the packet empty
                memfd = os.memfd_create("aip-spawn-request", os.MFD_CLOEXEC)
                view = memoryview(message)
                while view:
                    view = view[os.write(memfd, view):]
                fds.append(memfd)
                message = json.dumps({"spawn": request_id}).encode()  # never empty: that is how a closed end reads
            while True:
                try:
                    socket.send_fds(control, [message], fds)
                    break
                except BlockingIOError:  # the server is behind: wait a moment, never block the loop
                    await asyncio.sleep(0.001)
        except OSError as exc:
            self._spawned.pop(request_id, None)
            os.close(read_end)
            reports.close()
            raise ForkServerGone(f"the fork server cannot be reached: {exc}") from None
        finally:
            os.close(write_end)
            theirs.close()
            if memfd is not None:
                os.close(memfd)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                reply = await answer
        except BaseException:
            os.close(read_end)
            reports.close()
            raise
        if "error" in reply:
            os.close(read_end)
            reports.close()
            raise OSError(reply["error"])
        pid = reply["pid"]
        exited = loop.create_future()
        if pid in self._early_exits:
            exited.set_result(self._early_exits.pop(pid))
        else:
            self._exits[pid] = exited
        os.set_blocking(read_end, False)
        reports.setblocking(False)
        return ForkedProcess(pid, read_end, exited, reports)

    async def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
