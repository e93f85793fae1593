"""Task entry point: ``python -m ai_platform.sdk.worker`` runs one user script's ``run`` and reports the outcome.

The same entry point runs under the local backend (a child process) and as a Ray job, on any node.
The worker's environment names the task and its script; the rest of the spec comes from the scheduler in answer to
the worker's first report, and reports go to the scheduler over gRPC (``ai_platform.sdk.report``). Nothing heavier
than gRPC is imported before the script's own imports. A worker the local backend's fork server forked
(``ai_platform.sdk.forkserver``) gets its spec, credential, compiled script and a report socket of its own handed
over, and imports neither.
"""

from __future__ import annotations

import _signal
import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

from ai_platform.core.procs import PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, not_dumpable, prctl
from ai_platform.sdk import report


def _fail(kind: str, message: str) -> int:
    report.metrics.flush()  # the points logged before the failure are part of the record
    report.send("error", {"type": kind, "message": message})
    print(f"task failed: {kind}: {message}", file=sys.stderr, flush=True)
    return 1


_compiled: dict[str, tuple[Any, Any, str, dict[str, Any]]] = {}  # script -> what the fork server compiled


def give_compiled(script: str, compiled: tuple[Any, Any, str, dict[str, Any]]) -> None:
    """The script already compiled by the fork server that forked this process (from the text it has now): its
    module spec, code, directory, and the attributes its module starts with (as ``module_from_spec`` sets them)."""
    _compiled[script] = compiled


def _load(script: str) -> Any:
    """The script as a module: what ``exec_module`` does, less its search for a bytecode cache (a task's script is
    read once, and may have changed since the last task), and less the compiling where the fork server did it."""
    spec, code, _, attributes = _compiled.pop(script, (None, None, "", None))
    if attributes is not None:  # the module as module_from_spec makes it, from what the fork server worked out
        module = type(sys)(spec.name)
        module.__dict__.update(attributes)
    else:
        spec = importlib.util.spec_from_file_location("__aip_task__", script)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {script}")
        module = importlib.util.module_from_spec(spec)
    sys.modules["__aip_task__"] = module
    try:
        if code is None:
            with open(script, "rb") as source:
                code = compile(source.read(), script, "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - running the task's script is the point
    finally:
        # Not importable elsewhere (a Ray worker, a Daft UDF actor): out of sys.modules, cloudpickle ships the
        # script's functions and classes by value instead of by a reference that no other process can resolve.
        del sys.modules["__aip_task__"]
    return module


def _adopt_orphans() -> None:
    """Become a child subreaper: processes the script starts and abandons stay this worker's descendants."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def _read(path: str) -> bytes:
    """A /proc file's bytes, without the buffered file objects ``open`` builds (a task's last step, kept light)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = b""
        while chunk := os.read(fd, 1 << 16):
            data += chunk
        return data
    finally:
        os.close(fd)


def _children(pid: int) -> list[int] | None:
    """``pid``'s children from /proc/PID/task/*/children (None where the kernel does not offer the file)."""
    found = []
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            found += [int(child) for child in _read(f"/proc/{pid}/task/{thread}/children").split()]
    except FileNotFoundError:
        return None if pid == os.getpid() else found
    except OSError:
        pass
    return found


def _end_descendants() -> None:
    """SIGKILL every process below this one: a task ends when its run returns, and so does all it started. (This
    worker is a subreaper, so what the script started and abandoned is still below it.)"""
    try:
        os.waitpid(-1, os.WNOHANG)  # one call tells whether it has any child at all (most tasks start none)
    except ChildProcessError:
        return
    if (mine := _children(os.getpid())) is not None:  # the tree from this process down, not all of /proc
        pending, found = list(mine), []
        while pending:
            child = pending.pop()
            found.append(child)
            pending += _children(child) or []
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    pending, found = [os.getpid()], []
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process if the scheduler that started it dies (then ``_on_sigterm`` runs)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _on_sigterm(signum: int, frame: object) -> None:
    """Stopped (cancel, timeout, Ray's job stop, the scheduler's death): end everything the script started too,
    including children that left the process group and cleared their environment, which nobody else can find."""
    _end_descendants()
    os._exit(128 + signum)


def _keep_to_itself() -> None:
    """Take the task's credential in, hand it to the platform's clients in this process (and the processes the
    script starts), and make this process non-dumpable: other processes of the same user can then read neither its
    environment nor its memory from /proc."""
    token = report.credential()
    if token:
        os.environ["AIP_TOKEN"] = token  # Client(), sdk.deploy_model(): the task's own, narrow credential
    if report.forked():  # its stdin is /dev/null already, and the fork server it came from was not dumpable
        return
    if report.task_settings().task_token_stdin:
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the pipe has served its purpose
    not_dumpable()


def main() -> int:
    _adopt_orphans()
    _signal.signal(signal.SIGTERM, _on_sigterm)  # signal.signal's enum conversions cost a forked worker 0.1 ms
    _keep_to_itself()
    try:
        return _run_task()
    finally:
        _end_descendants()


def _run_task() -> int:
    settings = report.task_settings()
    if settings.die_with_parent:
        _die_with_parent()
    spec = report.spec() or report.start(time.time())  # a forked worker's was handed over
    if spec is None:
        print(f"task failed: the scheduler at {settings.scheduler_addr} could not be told the task started, so its "
              f"spec did not arrive", file=sys.stderr, flush=True)
        return 1
    if not report.forked():  # the local backend says it for a task it forked
        print(f"[platform] task {settings.task_id} runs on {socket.gethostname()} (pid {os.getpid()})", flush=True)
    script = spec["script"]  # relative to the job's working directory (shipped by Ray) when it was given so
    sys.path.insert(0, _compiled[script][2] if script in _compiled else os.path.dirname(script))
    sys.argv = [script]
    try:
        module = _load(script)
    except SyntaxError as exc:
        traceback.print_exc()
        return _fail("SyntaxError", f"{exc.msg} ({os.path.basename(exc.filename or script)}, line {exc.lineno})")
    except BaseException as exc:  # noqa: BLE001 - any failure while importing the script fails the task
        traceback.print_exc()
        return _fail(type(exc).__name__, f"importing {os.path.basename(script)} failed: {exc}")
    run = getattr(module, "run", None)
    if not callable(run):
        return _fail("ScriptError", f"{os.path.basename(script)} defines no run(input_path, output_path, params)")
    try:
        result = run(spec["input"], spec["output"], spec["params"])
    except SystemExit as exc:
        return _fail("SystemExit", f"the script called sys.exit({exc.code!r}) instead of returning from run")
    except BaseException as exc:  # noqa: BLE001 - the task fails with the exception's type and message
        traceback.print_exc()
        return _fail(type(exc).__name__, str(exc) or repr(exc))
    report.metrics.flush()
    try:
        delivered = report.send("result", result)
    except (TypeError, ValueError) as exc:
        return _fail("ResultNotJSON", f"run returned a {type(result).__name__} that is not JSON-serialisable: {exc}")
    except Exception as exc:  # noqa: BLE001 - plain JSON that no report can carry: a number past float, too deep
        return _fail("ResultNotJSON", f"run returned a {type(result).__name__} that a report cannot carry: {exc}")
    if not delivered and report.is_task():  # refused (it says why above): the task fails saying so, not with exit 1
        return _fail("ResultNotDelivered", "the scheduler did not take the result run returned; the lines above "
                                           "in the task's log say why")
    return 0 if delivered else 1


def leave(code: int) -> None:
    """End this process once its task has: what the script registered with atexit runs, output is flushed, and
    threads the script left running end with it (an interpreter's normal exit would wait for them). A forked worker
    closes its output and says its exit code on its report socket first: its task ends then, without waiting for
    the kernel to take the process apart (a fraction of a millisecond, on every task). Plain try blocks, not
    contextlib.suppress: each object a fork touches costs it a copied page."""
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001, S110 - leaving regardless
        pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001, S110
        pass
    if report.forked():
        try:  # its output ends here (/dev/null in its place for any thread left)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
        except BaseException:  # noqa: BLE001, S110
            pass
        try:
            report.last_word(code)
        except BaseException:  # noqa: BLE001, S110
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    leave(main())
