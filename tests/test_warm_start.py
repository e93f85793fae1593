"""The local backend's warm start: each task a fork of a warmed-up server, each still its own process with nothing of
the tasks before it. A task that changes global state, crashes the process or kills the server changes nothing for
the next one."""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ai_platform.client import SchedulerClient, status_name, task_result
from tests.conftest import ServiceProcess

MESSY = '''
import ctypes, os, random, signal, sys, threading, time
from pathlib import Path

def run(input_path, output_path, params):
    here = Path(__file__).parent
    (here / "left_behind.py").write_text("VALUE = 1\\n")
    seen = {
        "env": os.environ.get("LEFT_BEHIND"), "cwd": os.getcwd(), "path": "/left/behind" in sys.path,
        "imported": "left_behind" in sys.modules, "signal": signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL,
        "threads": threading.active_count(), "random": random.random(), "pid": os.getpid(),
        "pgid": os.getpgid(0), "sid": os.getsid(0), "task_env": os.environ.get("AIP_TASK_ID"),
        "token_in_env": os.environ.get("AIP_TOKEN", "") != "" and "AIP_TASK_TOKEN" not in os.environ,
        "stdin": sys.stdin.read(), "sigpipe_ignored": signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN,
        "handlers": [signal.getsignal(signal.SIGCHLD) is signal.SIG_DFL,
                     signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                     signal.getsignal(signal.SIGTERM).__module__ == "ai_platform.sdk.worker"],
        "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),  # PR_GET_DUMPABLE
        "line_written_at_once": sys.stdout.write_through or sys.stdout.line_buffering,
        "module": [__name__, __file__, __cached__, __package__, __spec__.name, __spec__.origin,
                   type(__loader__).__name__, __spec__.loader is __loader__, sys.path[0]],
    }
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["LEFT_BEHIND"] = "yes"
    os.chdir("/tmp")
    sys.path.append("/left/behind")
    sys.path.insert(0, str(here))
    import left_behind  # noqa: F401
    signal.signal(signal.SIGUSR1, lambda *_: None)
    threading.Thread(target=time.sleep, args=(60,)).start()  # a non-daemon thread: the task still ends
    print("messy was here", flush=True)
    return seen
'''

CRASHES = {
    "segfault.py": "import ctypes\n\ndef run(i, o, p):\n    ctypes.string_at(0)\n",
    "hard_exit.py": "import os\n\ndef run(i, o, p):\n    os._exit(7)\n",
    "exit_on_import.py": "import sys\nsys.exit(2)\n\ndef run(i, o, p):\n    return {}\n",
    "bounded_bomb.py": '''
import os, time

def run(i, o, p):
    # Children that each hold memory, as a fork bomb would, bounded here (the memory limit must stop it first).
    for _ in range(60):
        if os.fork() == 0:
            block = bytearray(30 * 1024 * 1024)
            time.sleep(60)
            os._exit(0)
        time.sleep(0.05)
    time.sleep(60)
    return {}
''',
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    (root / "scripts").mkdir()
    (root / "scripts" / "messy.py").write_text(MESSY)
    (root / "scripts" / "fine.py").write_text("def run(i, o, p):\n    return {'ok': True}\n")
    (root / "scripts" / "huge.py").write_text("def run(i, o, p):\n    return {'n': 10 ** 400}\n")
    (root / "scripts" / "deep.py").write_text("def run(i, o, p):\n    return {'n': eval('[' * 40 + ']' * 40)}\n")
    for name, text in CRASHES.items():
        (root / "scripts" / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def scheduler(project):
    service = ServiceProcess("scheduler_svc", project / ".ai_platform",
                             ["--storage-addr", "127.0.0.1:1", "--max-parallel", "2", "--grace-s", "2"],
                             cwd=project, env={"AIP_TOKEN": "warm-t0ken"}).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def tasks(scheduler):
    os.environ["AIP_TOKEN"] = "warm-t0ken"
    client = SchedulerClient(scheduler.addr)
    yield client
    client.close()
    os.environ.pop("AIP_TOKEN", None)


def script_module(script: Path) -> list:
    """What a task's script module is as the worker loads it: named ``__aip_task__``, with the file's spec, loader
    and cache path, and its directory first on sys.path."""
    return ["__aip_task__", str(script), importlib.util.cache_from_source(str(script)), "", "__aip_task__",
            str(script), "SourceFileLoader", True, str(script.parent)]


def fork_server(scheduler: ServiceProcess) -> int:
    """The scheduler's fork server: its child running ai_platform.sdk.forkserver."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == scheduler.proc.pid and b"ai_platform.sdk.forkserver" in cmdline:
                return int(entry)
    raise AssertionError("the scheduler runs no fork server")


def test_nothing_one_task_changes_reaches_the_next(tasks, project):
    first = tasks.wait(tasks.submit("messy", "scripts/messy.py").id, 60)
    second = tasks.wait(tasks.submit("messy", "scripts/messy.py").id, 60)
    assert status_name(first) == status_name(second) == "completed", (first.error, second.error)
    before, after = task_result(first), task_result(second)
    for seen in (before, after):
        assert seen["env"] is None and not seen["path"] and not seen["imported"] and seen["signal"]
        assert seen["module"] == script_module(project / "scripts" / "messy.py"), "as a new interpreter loads it"
        assert seen["cwd"] == str(project), "each task starts in the project directory"
        assert seen["threads"] == 1, "a task starts with one thread, whatever the last one left running"
        assert seen["pid"] == seen["pgid"] == seen["sid"], "its own session and process group"
        assert seen["token_in_env"], "its own credential, handed over rather than in its starting environment"
        assert seen["stdin"] == ""
        assert seen["sigpipe_ignored"], "as in a new interpreter: a closed pipe is BrokenPipeError, not death"
        assert seen["handlers"] == [True, True, True], "default handlers, and the worker's own for SIGTERM (cancel)"
        assert seen["dumpable"] == 0, "other processes of its user read neither its memory nor its environment"
        assert seen["line_written_at_once"], "its prints reach the log as they happen"
    assert before["task_env"] == first.id and after["task_env"] == second.id
    assert before["pid"] != after["pid"]
    assert before["random"] != after["random"], "random state is not inherited from the fork server"
    assert "messy was here" in b"".join(tasks.logs(first.id)).decode()
    assert "messy was here" in b"".join(tasks.logs(second.id)).decode()


def test_an_edited_script_runs_as_it_is_now_never_as_the_fork_server_compiled_it(tasks, project):
    script = project / "scripts" / "edited.py"
    answers = []
    for version in ("1", "2", "3"):  # the same size every time: only the text tells them apart
        script.write_text(f"def run(i, o, p):\n    return {{'version': {version}}}\n")
        answers.append(task_result(tasks.wait(tasks.submit("edited", "scripts/edited.py").id, 60))["version"])
    assert answers == [1, 2, 3]
    script.write_text("def run(i, o, p):\n    return {'version': 4\n")  # no longer compiles: the task says so
    broken = tasks.wait(tasks.submit("edited", "scripts/edited.py").id, 60)
    assert status_name(broken) == "failed" and broken.error.type == "SyntaxError", broken.error
    assert "edited.py, line 2" in broken.error.message


def test_a_result_no_report_can_carry_fails_the_task_saying_so(tasks, project):
    for script in ("huge.py", "deep.py"):
        done = tasks.wait(tasks.submit("uncarried", f"scripts/{script}").id, 60)
        assert status_name(done) == "failed" and done.error.type == "ResultNotDelivered", done.error
        assert "INVALID_ARGUMENT" in b"".join(tasks.logs(done.id)).decode(), "the log says why"
    assert status_name(tasks.get(done.id)) == "failed", "the record reads as ever"


CHANNEL_PROBE = '''
import os, socket, stat

def run(i, o, p):
    """Write to this task's own report socket what the worker never would, and keep the scheduler's answers."""
    def is_socket(fd):
        try:
            return stat.S_ISSOCK(os.fstat(fd).st_mode)
        except OSError:  # the descriptor listdir itself held
            return False

    channel = next(fd for fd in map(int, os.listdir("/proc/self/fd")) if is_socket(fd))
    probe = socket.socket(fileno=os.dup(channel))
    answers = {}
    for name, body in [("not JSON", b"{not json"), ("unknown field", b'{"kind": "result", "value": 1, "extra": 2}'),
                       ("started", b'{"kind": "started", "value": 1}'),
                       ("bad progress", b'{"kind": "progress", "value": {"fraction": "half"}}'),
                       ("bad metric", b'{"kind": "metrics", "value": [["loss", -1, 0.5, 0.0]]}'),
                       # results no Task could carry: a record that no client could read again
                       ("too big", b'{"kind": "result", "value": 1' + b"0" * 400 + b"}"),
                       ("not finite", b'{"kind": "result", "value": 1e999}'),
                       ("too deep", b'{"kind": "result", "value": ' + b"[" * 150 + b"]" * 150 + b"}"),
                       ("deep params", b'{"kind": "params", "value": {"a": ' + b"[" * 33 + b"]" * 33 + b"}}"),
                       ("exit code 256", b'{"kind": "exit", "value": 256}'),
                       ("exit code text", b'{"kind": "exit", "value": "0"}')]:
        probe.sendall(len(body).to_bytes(4, "big") + body)
        if name in ("too big", "not finite", "too deep"):  # a result is not answered: its refusal is logged
            continue
        head = probe.recv(5)
        answers[name] = [head[0], probe.recv(int.from_bytes(head[1:], "big")).decode()]
    return answers
'''


def test_a_forked_task_s_report_socket_refuses_what_is_not_a_report(tasks, project):
    (project / "scripts" / "channel_probe.py").write_text(CHANNEL_PROBE)
    done = tasks.wait(tasks.submit("probe", "scripts/channel_probe.py").id, 60)
    assert status_name(done) == "completed", done.error  # refused reports leave the task as it was
    answers = task_result(done)
    assert all(status == 1 and text.startswith("INVALID_ARGUMENT") for status, text in answers.values()), answers
    assert "must be JSON" in answers["not JSON"][1]
    assert "nothing else" in answers["unknown field"][1]
    assert "unknown report kind 'started'" in answers["started"][1]
    assert "progress report" in answers["bad progress"][1]
    assert "step must be >= 0" in answers["bad metric"][1]
    log = b"".join(tasks.logs(done.id)).decode()
    assert log.count("the scheduler refused the result report: INVALID_ARGUMENT: a result report") == 3, log
    assert "params report nests deeper than 32 levels" in answers["deep params"][1]
    assert all("exit code, 0-255" in answers[name][1] for name in ("exit code 256", "exit code text")), answers
    assert task_result(done)  # its own result, after all that: the record reads as ever


FORGED_LAST_WORD = '''
import json, os, socket, stat, subprocess, time

def run(i, o, p):
    """Say the worker's last word on its socket, then carry on as if nothing happened (a child too)."""
    channel = next(fd for fd in map(int, os.listdir("/proc/self/fd"))
                   if os.path.exists(f"/proc/self/fd/{fd}") and stat.S_ISSOCK(os.fstat(fd).st_mode))
    with open("forged_exit.child", "w") as out:
        out.write(str(subprocess.Popen(["sleep", "60"]).pid))
    word = json.dumps({"kind": "exit", "value": 0}, separators=(",", ":")).encode()
    socket.socket(fileno=os.dup(channel)).sendall(len(word).to_bytes(4, "big") + word)
    time.sleep(60)
    return {"never": True}
'''


def test_a_last_word_ends_the_task_and_its_process_group_whoever_says_it(tasks, project):
    """The worker's exit code on its socket ends the task as its process leaves; a script that says it early
    ends with its process group and gives back its slot, rather than running on outside the platform's count. (A
    process it started in a session of its own outlives it, as one does when a script SIGKILLs itself.)"""
    (project / "scripts" / "forged_exit.py").write_text(FORGED_LAST_WORD)
    started = time.time()
    forged = tasks.wait(tasks.submit("forged", "scripts/forged_exit.py").id, 60)
    assert status_name(forged) == "failed" and forged.error.type == "ProcessExit", forged.error
    assert "without reporting a result" in forged.error.message
    assert time.time() - started < 30
    deadline = _until_none_is_left(forged.id)
    child = (project / "forged_exit.child").read_text()
    while _alive(child):
        assert time.time() < deadline, "the child it started ended with it"
        time.sleep(0.1)
    fine = [tasks.submit("fine", "scripts/fine.py") for _ in range(3)]
    assert all(status_name(tasks.wait(t.id, 60)) == "completed" for t in fine), "its slot is free again"


def test_a_task_ends_on_its_worker_s_last_word_not_on_the_fork_server_s_notice(tasks, scheduler, project):
    """The fork server, stopped, can neither reap the task's process nor say it ended: the worker's own last word
    still ends the task, with its result and exit code."""
    (project / "scripts" / "short_nap.py").write_text(
        "import time\n\ndef run(i, o, p):\n    time.sleep(1.5)\n    return {'slept': True}\n")
    napping = tasks.submit("nap", "scripts/short_nap.py")
    deadline = time.time() + 30
    while status_name(tasks.get(napping.id)) != "running" or not tasks.get(napping.id).HasField("started_at"):
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # its process is forked (the record running is saved with its pid once it is)
    server = fork_server(scheduler)
    os.kill(server, signal.SIGSTOP)
    try:
        done = tasks.wait(napping.id, 20)
        assert status_name(done) == "completed" and task_result(done) == {"slept": True}, done.error
    finally:
        os.kill(server, signal.SIGCONT)


REPORT_AFTER_A_REFUSED_RESULT = '''
import atexit, time
from ai_platform.sdk import report

def progress():
    value = {"fraction": 0.5, "message": "from atexit", "metrics": {}, "time": time.time()}
    print("progress delivered:", report.send("progress", value), flush=True)

def run(i, o, p):
    atexit.register(progress)
    return {"huge": 10 ** 400}
'''


def test_a_report_after_the_result_gets_its_own_answer(tasks, project):
    """The result is not answered on the socket, so a report after it (an atexit hook, a thread) reads its own
    answer, never the result's refusal."""
    (project / "scripts" / "after_result.py").write_text(REPORT_AFTER_A_REFUSED_RESULT)
    done = tasks.wait(tasks.submit("after", "scripts/after_result.py").id, 60)
    assert status_name(done) == "failed" and done.error.type == "ResultNotDelivered", done.error
    log = b"".join(tasks.logs(done.id)).decode()
    assert "refused the result report: INVALID_ARGUMENT" in log and "refused the progress report" not in log, log
    assert "progress delivered: True" in log, log


def test_params_up_to_the_limit_start_warm_too(tasks, scheduler, project):
    """A spawn request too big for the fork server's socket (params near their 256 KiB) comes in a memfd instead,
    rather than falling back to a new interpreter."""
    (project / "scripts" / "sizes.py").write_text(
        "import os\n\ndef run(i, o, p):\n    return {'n': len(p['blob']), 'parent': os.getppid()}\n")
    blob = "x" * (256 * 1024 - 64)
    done = tasks.wait(tasks.submit("big", "scripts/sizes.py", params={"blob": blob}).id, 60)
    assert status_name(done) == "completed", done.error
    assert task_result(done) == {"n": len(blob), "parent": fork_server(scheduler)}, "forked, not a new interpreter"


def test_a_task_that_crashes_its_process_fails_alone(tasks):
    expected = {
        "segfault.py": ("ProcessExit", "killed by SIGSEGV"),
        "hard_exit.py": ("ProcessExit", "exited with code 7"),
        "exit_on_import.py": ("SystemExit", "importing exit_on_import.py failed"),
    }
    for script, (kind, says) in expected.items():
        failed = tasks.wait(tasks.submit("crash", f"scripts/{script}").id, 60)
        assert status_name(failed) == "failed" and failed.error.type == kind, (script, failed.error)
        assert says in failed.error.message, (script, failed.error.message)
        fine = tasks.wait(tasks.submit("fine", "scripts/fine.py").id, 60)
        assert status_name(fine) == "completed" and task_result(fine) == {"ok": True}, f"after {script}"


def test_a_fork_bomb_is_bounded_by_the_memory_limit(tasks):
    started = time.time()
    bomb = tasks.wait(tasks.submit("bomb", "scripts/bounded_bomb.py", memory_mb=300).id, 120)
    assert status_name(bomb) == "failed" and bomb.error.type == "OutOfMemory", bomb.error
    assert time.time() - started < 30
    _until_none_is_left(bomb.id)
    fine = tasks.wait(tasks.submit("fine", "scripts/fine.py").id, 60)
    assert status_name(fine) == "completed"


def test_a_killed_fork_server_is_replaced_and_its_running_task_fails(tasks, scheduler, project):
    (project / "scripts" / "nap.py").write_text("import time\n\ndef run(i, o, p):\n    time.sleep(30)\n")
    napping = tasks.submit("nap", "scripts/nap.py")
    deadline = time.time() + 30
    while status_name(tasks.get(napping.id)) != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    server = fork_server(scheduler)
    os.kill(server, signal.SIGKILL)
    ended = tasks.wait(napping.id, 60)
    assert status_name(ended) == "failed", ended
    fine = tasks.wait(tasks.submit("fine", "scripts/fine.py").id, 60)
    assert status_name(fine) == "completed", fine.error
    assert fork_server(scheduler) != server, "a new fork server started"


def own_scheduler(project: Path, name: str, **env: str) -> ServiceProcess:
    """A scheduler of this test's own, one slot, with ``env`` (AIP_WARM_START, AIP_WARM_IMPORTS) over the module's."""
    os.environ["AIP_TOKEN"] = "warm-t0ken"
    return ServiceProcess("scheduler_svc", project / f".ai_platform-{name}",
                          ["--storage-addr", "127.0.0.1:1", "--max-parallel", "1"], cwd=project,
                          env={"AIP_TOKEN": "warm-t0ken", "AIP_STATE_DIR": str(project / f"{name}-state"),
                               **env}).start()


def test_without_warm_start_a_task_gets_a_new_interpreter(project):
    service = own_scheduler(project, "cold", AIP_WARM_START="false")
    client = SchedulerClient(service.addr)
    try:
        done = client.wait(client.submit("messy", "scripts/messy.py").id, 60)
        assert status_name(done) == "completed", done.error
        seen = task_result(done)
        assert seen["pid"] == seen["pgid"] and seen["token_in_env"] and seen["sigpipe_ignored"]
        assert seen["module"] == script_module(project / "scripts" / "messy.py")
        huge = client.wait(client.submit("huge", "scripts/huge.py").id, 60)  # over gRPC: refused in the worker
        assert status_name(huge) == "failed" and huge.error.type == "ResultNotJSON", huge.error
        assert not any(_comm(p).startswith("aip-") for p in _children_of(service.proc.pid))
        # Started back to back from two clients, each new interpreter gets its credential and completes.
        ended: list[str] = []

        def submit_in_turn() -> None:
            own = SchedulerClient(service.addr)
            for _ in range(6):
                ended.append(status_name(own.wait(own.submit("quick", "scripts/messy.py").id, 60)))
            own.close()

        clients = [threading.Thread(target=submit_in_turn) for _ in range(2)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        assert ended == ["completed"] * 12
    finally:
        client.close()
        service.stop()


def _until_none_is_left(task_id: str) -> float:
    """Wait (10 s at most) until no process named for the task is alive; the deadline, for further waits."""
    deadline = time.time() + 10
    while leftovers := [p for p in os.listdir("/proc") if p.isdigit() and _alive(p)
                        and _comm(p).startswith("aip-" + task_id[:11])]:
        assert time.time() < deadline, f"every process of the task ended with it: {leftovers} are left"
        time.sleep(0.1)
    return deadline


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children_of(pid: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(entry)
            except (OSError, ValueError):
                continue
    return found


def test_timeout_s_counts_from_the_task_s_process_not_the_fork_server_s_warm_up(project):
    (project / "slow_warm.py").write_text("import time\ntime.sleep(3)\n")  # a warm import that takes its time
    service = own_scheduler(project, "slow", AIP_WARM_IMPORTS="slow_warm")
    client = SchedulerClient(service.addr)
    try:
        started = time.monotonic()
        done = client.wait(client.submit("first", "scripts/fine.py", timeout_s=1.5).id, 60)
        assert time.monotonic() - started > 2.5, "the fork server warmed up first"
        assert status_name(done) == "completed", done.error
    finally:
        client.close()
        service.stop()


def test_the_fork_server_answers_a_spawn_request_it_cannot_take_and_serves_on(tmp_path):
    """A memfd that holds no request, or another request than its packet names, is answered as an error for that
    request (so the scheduler falls back at once, not after a minute), and the server takes the next one."""
    import json
    import socket
    import subprocess
    import sys

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = subprocess.Popen([sys.executable, "-m", "ai_platform.sdk.forkserver", str(theirs.fileno()), ""],
                              pass_fds=(theirs.fileno(),), cwd=tmp_path, start_new_session=True)
    theirs.close()
    ours.settimeout(30)
    try:
        def spawn(packet: bytes, memfd_text: bytes | None) -> dict:
            read_end, write_end = os.pipe()
            mine, its = socket.socketpair()
            fds = [write_end, its.fileno()]
            if memfd_text is not None:
                memfd = os.memfd_create("request")
                os.write(memfd, memfd_text)
                fds.append(memfd)
            socket.send_fds(ours, [packet], fds)
            for fd in fds:
                os.close(fd)
            its.detach()
            while "spawned" not in (answer := json.loads(ours.recv(1 << 16))):  # skip exit notices
                pass
            os.close(read_end)
            mine.close()
            return answer

        for number, text in ((1, b"{not json"), (2, b"")):
            answer = spawn(b'{"spawn": %d}' % number, text)
            assert answer["spawned"] == number and "a spawn request is JSON" in answer["error"], answer
        assert "memfd" in spawn(b'{"spawn": 3}', json.dumps({"spawn": 4}).encode())["error"]
        request = {"spawn": 5, "env": {"AIP_TASK_ID": "t5"}, "cwd": str(tmp_path), "credential": "",
                   "spec": {"script": str(tmp_path / "none.py")}}
        answer = spawn(b'{"spawn": 5}', json.dumps(request).encode())
        assert answer["spawned"] == 5 and answer["pid"] > 0, answer  # still serving, and a memfd request forks
    finally:
        ours.close()
        server.wait(30)
