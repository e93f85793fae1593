"""The local backend's warm start: a process that has imported what a worker needs, and forks one child per task.

A fresh interpreter spends some 0.2 s of CPU importing grpc and the platform's stubs before a task's script runs; a
fork of this process starts with all of that in memory, in about a millisecond, and still runs each task in a
process of its own: its own session and process group (cancel, timeout and the memory limit act on it as before),
its environment and working directory, its output on a pipe of its own, its credential handed over here rather
than in its environment. This process never runs a task (it only compiles each task's script, so that the fork
starts with the code), so every child starts from the same clean state: nothing one task imports or changes
reaches the next.

Protocol, over the SOCK_SEQPACKET socket whose descriptor is the first argument (the second lists modules to import
ahead, AIP_WARM_IMPORTS), one JSON object per packet, UTF-8 with nothing before or after it (as ``json.dumps``
writes it), each spawn named by an integer ID:
- ``{"spawn": ID, "env": {...}, "cwd": DIR, "credential": TOKEN, "spec": {...}}`` (``env``: the task's variables,
  set over this server's environment, which is every task's) with two descriptors (SCM_RIGHTS):
  the write end of the task's output pipe, and its end of a socket to report on (``report.ChannelReporter``); the
  spec is what the worker would otherwise ask for in its ``started`` report. A request over
  ``INLINE_REQUEST_MAX`` bytes (big params: a packet of some 200 KB already fails with EMSGSIZE) travels in a memfd
  passed as a third descriptor, and the packet holds ``{"spawn": ID}`` alone.
  Answer: ``{"spawned": ID, "pid": PID}``, or ``{"spawned": ID, "error": "..."}``.
- later, for each child: ``{"exited": PID, "code": CODE}`` (negative: the signal that ended it, as subprocess says).
The server ends when the socket closes, and with the scheduler (PR_SET_PDEATHSIG); its children then get SIGTERM
from their own death signal and end what they started.
"""

from __future__ import annotations

import _signal
import array
import contextlib
import gc
import importlib
import importlib.util
import json
import json.scanner
import os
import select
import signal
import socket
import stat
import sys
from typing import Any

from ai_platform.core.procs import PR_SET_NAME, PR_SET_PDEATHSIG, not_dumpable, prctl, process_name
from ai_platform.core.settings import TaskSettings
from ai_platform.sdk import report, worker

INLINE_REQUEST_MAX = 64 * 1024  # a spawn request in its packet; a bigger one comes in a memfd (a packet holds ~200 KB)
MAX_REQUEST = 16 << 20  # a task's variables, credential and spec (params up to 256 KiB as JSON, escaped further)


WARM_UP_RUNS = 10  # CPython 3.11 specialises a function's code after its 8th call, writing to it: done here, once


def warm_up(modules: list[str]) -> None:
    """Import what a worker needs and run once what every task runs (its settings, a report), so that each fork
    finds it compiled and specialised rather than writing to (and so copying) those pages itself; then ``modules``,
    what tasks will import anyway (e.g. numpy, pyarrow, torch: AIP_WARM_IMPORTS). A module that fails to import is
    left out (the task that needs it then fails with the real error). Neither gRPC nor protobuf is among them: a
    forked worker reports JSON on its socket, and a script that calls the platform imports them itself."""
    for _ in range(WARM_UP_RUNS):
        TaskSettings.from_env({}).overlaid({"AIP_TASK_ID": "warm-up", "AIP_TASK_SCRIPT": "warm-up.py"})
        report.ChannelReporter.request("result", {"rows": 1, "scores": [0.5, "x"], "nested": {"none": None}})
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


class Scripts:
    """Task scripts compiled here, once per text: a fork inherits the code and runs it without compiling. The
    text is read and compared at every spawn, so an edited script is compiled anew, never run stale; one that does
    not compile, or is over ``MAX_BYTES``, is left to the task (which reports the real error)."""

    MAX_BYTES = 1 << 20
    KEPT = 64  # scripts; the least recently used goes first

    def __init__(self) -> None:
        self._compiled: dict[str, tuple[bytes, tuple[Any, Any, str, dict[str, Any]]]] = {}  # script -> (text, compiled)

    def compiled(self, script: Any) -> tuple[Any, Any, str, dict[str, Any]] | None:
        """``script`` as the worker loads it (``worker.give_compiled``): its module spec, code, directory and the
        attributes its module starts with, worked out here once rather than in every fork; or None."""
        if not isinstance(script, str):
            return None
        try:
            fd = os.open(script, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put in its place must not hold this server
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode):
                    return None
                size = status.st_size
                text = os.read(fd, min(size, self.MAX_BYTES) + 1)
            finally:
                os.close(fd)
        except OSError:
            return None
        if len(text) != size:  # over MAX_BYTES, or written to as it was read: the task reads it itself
            return None
        kept = self._compiled.pop(script, None)
        if kept is None or kept[0] != text:
            try:
                code = compile(text, script, "exec", dont_inherit=True)
                spec = importlib.util.spec_from_file_location("__aip_task__", script)
                attributes = dict(vars(importlib.util.module_from_spec(spec)))
                kept = (text, (spec, code, os.path.dirname(script), attributes))
            except Exception:  # noqa: BLE001 - a SyntaxError, a NUL byte: the task's own load says so
                return None
        self._compiled[script] = kept  # the newest last
        while len(self._compiled) > self.KEPT:
            del self._compiled[next(iter(self._compiled))]
        return kept[1]


SIGCHLD = int(signal.SIGCHLD)  # a plain int: the enum member lives on a page of its own that a fork would copy


def _child(request: dict[str, Any], output: int, reports: int, control: int, wakeup: int,
           compiled: tuple[Any, Any, str, dict[str, Any]] | None, settings: TaskSettings) -> None:
    """In the forked child: become the task's process, run it, and leave without returning into the server.

    Every step here costs the fork the pages it writes (some 4 us each): what the server could do once, it did
    (the settings every task shares, its non-dumpable state, which a fork inherits). The server's handlers are a new
    interpreter's but for SIGCHLD's, which is reset here (a module in AIP_WARM_IMPORTS that installs one of its own
    passes it on to every task, as importing it in the task would)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        # _signal's own function: signal.signal would turn the old handler into an enum, raising and catching a
        # ValueError for a Python one, which costs a fork more than the rest of its setup.
        _signal.signal(SIGCHLD, _signal.SIG_DFL)
        os.close(control)
        os.close(wakeup)
        os.setsid()  # its own session and process group: the backend ends the group
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        for fd in (null, output):
            os.close(fd)
        os.chdir(request["cwd"])
        for name, value in request["env"].items():  # the task's own variables over the platform's (this server's);
            os.environ[name] = value  # one by one: MutableMapping.update's checks cost a fork twice as much
        prctl(PR_SET_NAME, process_name(request["env"].get("AIP_TASK_ID", "")).encode())
        gc.enable()  # its output is written as it comes: the server runs unbuffered (PYTHONUNBUFFERED, worker_env)
        if "numpy" in sys.modules:  # a warm import of numpy: its global generator must not repeat between tasks
            sys.modules["numpy"].random.seed()
        os.set_inheritable(reports, False)  # the worker's alone: not the processes the script starts
        report.give_settings(settings.overlaid(request["env"]))
        report.give_credential(request["credential"], reports)
        report.give_spec(request["spec"])
        if compiled is not None:
            worker.give_compiled(request["spec"]["script"], compiled)
        code = worker.main()
    except BaseException:  # noqa: BLE001 - whatever happens, this process must not return into the server
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        worker.leave(code)


def _read_all(fd: int) -> bytes:
    """The contents of a memfd holding a spawn request (closed after); b"" when it cannot be read or holds more
    than MAX_REQUEST bytes."""
    try:
        chunks, size = [], 0
        while chunk := os.pread(fd, 1 << 20, size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REQUEST:
                return b""
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


_scan = json.scanner.make_scanner(json.JSONDecoder())  # json.loads less its Python steps, which a fork would copy


def _request(data: bytes | bytearray) -> dict[str, Any]:
    """A spawn request as JSON, {} when it is not one (the error answer then says so)."""
    try:
        text = data.decode()
        request, end = _scan(text, 0)
    except (ValueError, StopIteration):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return {}
    if end != len(text):
        return {}
    if not isinstance(request, dict) or not isinstance(request.get("spec", {}), dict):
        return {}
    return request


MSG_TRUNC = int(socket.MSG_TRUNC)  # plain ints: an enum's operators run Python code (and touch its pages) each time
SOL_SOCKET, SCM_RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)
READABLE = int(select.EPOLLIN)


def serve(control: socket.socket) -> None:
    """Answer spawn requests and tell of children's exits until the socket closes.

    After each fork every page of this process is shared with the child, so each page the loop then writes is
    copied (a few microseconds each): the loop keeps to few objects, an epoll object rather than a selector, answers
    formatted as bytes rather than encoded by ``json``, plain ints rather than enum flags."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup descriptor hears of children
    control_fd = control.fileno()
    poller = select.epoll()
    poller.register(control_fd, READABLE)
    poller.register(wake_read, READABLE)
    scripts = Scripts()
    received = bytearray(INLINE_REQUEST_MAX)  # one buffer for every request
    ancillary_size = socket.CMSG_LEN(3 * array.array("i").itemsize)
    settings = TaskSettings.from_env()  # every task's, but for its own variables (the child reads those over it)

    def send(message: bytes) -> None:
        try:
            os.write(control_fd, message)  # one packet, as send(2) without flags
        except OSError:
            pass

    while True:
        for fd, _ in poller.poll():
            if fd == wake_read:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
                while True:  # every child that ended, also one that ended before its spawn was answered
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    send(b'{"exited": %d, "code": %d}' % (pid, os.waitstatus_to_exitcode(status)))
                continue
            fds = array.array("i")
            try:
                size, ancillary, flags, _ = control.recvmsg_into([received], ancillary_size)
            except OSError:
                return
            if not size:
                return  # the scheduler closed the socket: stop (the children end with us)
            for level, kind, payload in ancillary:
                if level == SOL_SOCKET and kind == SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            request = _request(received[:size]) if not flags & MSG_TRUNC else {}
            spawn_id = request.get("spawn")
            if len(fds) == 3:  # the request is in the third, a memfd; the packet names it
                request = _request(_read_all(fds.pop()))
            if len(fds) != 2 or type(spawn_id) is not int or request.get("spawn") != spawn_id:
                for fd in fds:
                    os.close(fd)
                send(json.dumps({"spawned": spawn_id if type(spawn_id) is int else None,
                                 "error": "a spawn request is JSON with two descriptors, or {\"spawn\": ID} with "
                                          f"a third, a memfd holding it (of at most {MAX_REQUEST} bytes)"}).encode())
                continue
            compiled = scripts.compiled(request.get("spec", {}).get("script"))
            try:
                pid = os.fork()
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                send(json.dumps({"spawned": spawn_id, "error": f"fork failed: {exc.strerror or exc}"}).encode())
                continue
            if pid == 0:
                _child(request, fds[0], fds[1], control_fd, wake_read, compiled, settings)
            os.close(fds[0])
            os.close(fds[1])
            send(b'{"spawned": %d, "pid": %d}' % (spawn_id, pid))


def main() -> None:
    """``python -m ai_platform.sdk.forkserver FD [MODULE,MODULE...]``: serve on socket FD, after warming up."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # it ends with the scheduler
    not_dumpable()  # credentials pass through it, and each task it forks is born so (the flag survives a fork)
    control = socket.socket(fileno=int(sys.argv[1]))
    warm_up([m.strip() for m in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if m.strip()])
    # What is in memory now stays out of the collector's way: a child's collections would otherwise touch (and so
    # copy) every page of it. The server itself allocates next to nothing, and never collects.
    gc.collect()
    gc.freeze()
    gc.disable()
    sys.stdout.flush()  # nothing a child could write out twice: the server itself prints nothing from here on
    sys.stderr.flush()
    serve(control)


if __name__ == "__main__":
    main()
