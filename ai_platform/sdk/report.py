"""The report channel from a running task to the scheduler: ``ReportTask`` calls over gRPC, or, for a task the
local backend forked, JSON on a socket of its own (:class:`ChannelReporter`).

The same path from every backend and every node, authenticated by the task's own credential (see
:func:`credential`), so nothing travels through a shared disk. A report the scheduler cannot take right now (it is
restarting, the network blinked) is retried with backoff: progress for a few seconds, the result and the error for
minutes.
"""

from __future__ import annotations

import _thread
import json
import math
import os
import sys
import time
from typing import Any

from ai_platform.core.settings import TaskSettings

PROGRESS_PATIENCE_S = 10.0  # a progress report still undelivered then is dropped; the task goes on
FINAL_PATIENCE_S = 300.0  # the result or error is retried this long before the worker gives up
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 2.0
METRICS_FLUSH_S = 1.0  # buffered metric points are sent this often
METRICS_BATCH = 5000  # points per report; a fuller buffer is sent at once
LAST_WORD_WAIT_S = 1.0  # a forked worker's exit code waits this long for a report in flight on its socket
REPORT_TIMEOUT_S = 10.0  # one ReportTask call (not core.wire's: importing it would load grpc eagerly)

# _thread's locks, not threading's: importing threading registers a hook that every fork of the local backend's
# fork server would run (0.3 ms a task); the metrics thread imports it when a script first logs a point.
_lock = _thread.allocate_lock()


def task_settings() -> TaskSettings:
    """This worker's settings, read once."""
    if not _settings:
        _settings.append(TaskSettings.from_env())
    return _settings[0]


_settings: list[TaskSettings] = []
_reporter_or_none: Reporter | ChannelReporter | bool | None = None  # False: not running as a task


def give_settings(settings: TaskSettings) -> None:
    """This worker's settings, read already (the local backend's fork server reads what every task shares once)."""
    _settings[:] = [settings]


def report_request(task_id: str, kind: str, value: Any) -> Any:
    """The ReportTaskRequest for one report (``value`` as :func:`send` takes it); TypeError/ValueError when the
    value is not plain JSON, KeyError when a field is missing."""
    from google.protobuf import json_format

    from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as pb

    request = pb.ReportTaskRequest(task_id=task_id)
    if kind == "started":
        request.started = float(value)
    elif kind == "progress":
        progress = request.progress
        progress.fraction, progress.message = value["fraction"], value["message"]
        progress.metrics.update(json.loads(json.dumps(value["metrics"], allow_nan=False)))
        progress.updated_at.FromNanoseconds(int(value["time"] * 1e9))
    elif kind == "result":
        json_format.ParseDict(json.loads(json.dumps(value, allow_nan=False)), request.result)
    elif kind == "error":
        request.error.CopyFrom(pb.TaskError(type=value["type"], message=value["message"]))
    elif kind == "metrics":
        request.metrics.points.extend(pb.MetricPoint(key=k, step=st, value=v, time=t) for k, st, v, t in value)
    elif kind == "params":
        request.params.update(json.loads(json.dumps(value, allow_nan=False)))
    else:
        raise ValueError(f"unknown report kind {kind!r}")
    return request


class Reporter:
    """One worker's connection to the scheduler (created on the first report)."""

    def __init__(self, settings: TaskSettings) -> None:
        import grpc

        from ai_platform.protos.aiplatform.v1 import scheduler_pb2, scheduler_pb2_grpc

        self.settings, self.grpc, self.pb = settings, grpc, scheduler_pb2
        credentials = settings.tls().channel_credentials()
        self.channel = (grpc.secure_channel(settings.scheduler_addr, credentials) if credentials is not None
                        else grpc.insecure_channel(settings.scheduler_addr))
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {credential()}")]

    def request(self, kind: str, value: Any) -> Any:
        """The ReportTaskRequest for one report; TypeError/ValueError when the value is not plain JSON."""
        return report_request(self.settings.task_id, kind, value)

    def deliver(self, kind: str, request: Any) -> Any:
        """The scheduler's answer to a report, retried with backoff while it cannot be reached; None when it was
        not delivered (said on stderr)."""
        patience = FINAL_PATIENCE_S if kind in ("result", "error", "started") else PROGRESS_PATIENCE_S
        deadline, delay = time.monotonic() + patience, RETRY_FIRST_S
        retryable = (self.grpc.StatusCode.UNAVAILABLE, self.grpc.StatusCode.DEADLINE_EXCEEDED)
        while True:
            try:
                return self.stub.ReportTask(request, timeout=REPORT_TIMEOUT_S, metadata=self.metadata)
            except self.grpc.RpcError as exc:
                if exc.code() not in retryable or time.monotonic() + delay > deadline:
                    print(f"[platform] the {kind} report did not reach the scheduler at "
                          f"{self.settings.scheduler_addr}: {exc.code().name}: {exc.details()}", file=sys.stderr,
                          flush=True)
                    return None
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # one encoder, not a new one per report
CHANNEL_KINDS = ("progress", "result", "error", "metrics", "params", "exit")


class ChannelReporter:
    """Reports on the socket the local backend's fork server handed this process, to the scheduler that forked it:
    each a JSON object ``{"kind": KIND, "value": VALUE}`` framed by its length, answered with a status byte and a
    length-framed message (empty, or the refusal). The socket is this task's alone, so it carries no credential; a
    forked task spares itself starting gRPC (10-30 ms) and building protobuf messages for its reports.

    Two reports are not waited for: the result (a refusal fails the task as ResultNotDelivered, and the scheduler
    says why in the task's log) and the worker's last word, ``{"kind": "exit", "value": CODE}``, which ends the
    task as the process leaves, not once the kernel has taken it apart and the fork server has heard."""

    UNANSWERED = ("result",)

    def __init__(self, fd: int) -> None:
        self.fd = fd  # the socket's descriptor, written and read as it is: no socket object to build in each fork
        self.lock = _thread.allocate_lock()

    @staticmethod
    def request(kind: str, value: Any) -> bytes:
        """The report's bytes; TypeError/ValueError when the value is not plain JSON."""
        if kind not in CHANNEL_KINDS:
            raise ValueError(f"unknown report kind {kind!r}")
        return _JSON.encode({"kind": kind, "value": value}).encode()

    def deliver(self, kind: str, request: bytes) -> bool | None:
        try:
            with self.lock:
                self.send(len(request).to_bytes(4, "big") + request)
                if kind in self.UNANSWERED:  # a refusal is the scheduler's to record (ResultNotDelivered)
                    return True
                header = self._read(5)
                answer = self._read(int.from_bytes(header[1:], "big"))
        except OSError as exc:
            print(f"[platform] the {kind} report did not reach the scheduler: {exc}", file=sys.stderr, flush=True)
            return None
        if header[0]:
            print(f"[platform] the scheduler refused the {kind} report: {answer.decode(errors='replace')}",
                  file=sys.stderr, flush=True)
            return None
        return True

    def send(self, data: bytes) -> None:
        """All of ``data`` (the caller holds the lock)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = os.read(self.fd, size - len(data))
            if not chunk:
                raise ConnectionError("the scheduler closed the report channel")
            data += chunk
        return data


_credential: list[str] = []
_channel: list[int] = []  # the report socket's descriptor, when the local backend's fork server gave one


def credential() -> str:
    """This task's own credential ('' outside a task): from the job's environment (Ray), or the first line of the
    worker's stdin (local backend, read once: the variable would be readable in /proc by the same user)."""
    if not _credential:
        settings = task_settings()
        token = settings.task_token
        if not token and settings.task_token_stdin:
            token = sys.stdin.readline().strip()
        _credential.append(token)
    return _credential[0]


def give_credential(token: str, channel: int | None = None) -> None:
    """The credential handed over by the process that started this one (the local backend's fork server), and the
    socket to report on instead of gRPC."""
    _credential[:] = [token]
    _channel[:] = [channel] if channel is not None else []


def forked() -> bool:
    """Whether this worker was forked by the local backend's fork server (its spec and report socket handed over;
    the scheduler writes the line that says where it runs)."""
    return bool(_channel)


def _reporter() -> Reporter | ChannelReporter | None:
    global _reporter_or_none
    with _lock:
        if _reporter_or_none is None:
            settings = task_settings()
            if not (settings.task_id and credential()):
                _reporter_or_none = False
            elif _channel:
                _reporter_or_none = ChannelReporter(_channel[0])
            else:
                _reporter_or_none = Reporter(settings)
        return _reporter_or_none or None


def send(kind: str, value: Any) -> bool:
    """Send one report (``progress``, ``result``, ``error`` or ``metrics``) to the scheduler.

    Returns False when not running as a platform task, or when the report could not be delivered (said on
    stderr). Raises TypeError or ValueError when ``value`` is not plain JSON.
    """
    reporter = _reporter()
    if reporter is None:
        return False
    return reporter.deliver(kind, reporter.request(kind, value)) is not None


def last_word(code: int) -> None:
    """A forked worker's exit code, said to the scheduler as the process leaves (its output already closed). Not
    said when a thread the script left has been reporting for LAST_WORD_WAIT_S: the fork server tells of the exit."""
    reporter = _reporter()
    if isinstance(reporter, ChannelReporter) and reporter.lock.acquire(timeout=LAST_WORD_WAIT_S):
        try:
            word = reporter.request("exit", code)
            reporter.send(len(word).to_bytes(4, "big") + word)
        finally:
            reporter.lock.release()


_spec: dict[str, Any] = {}


def give_spec(spec: dict[str, Any]) -> None:
    """The task's spec, handed over with the process (the local backend's fork server): no ``started`` report."""
    _spec.update(spec)


def start(started_at: float) -> dict[str, Any] | None:
    """Tell the scheduler the task began; the task's spec in return (script, input, output, params, the pinned
    input), or None when the scheduler could not be told (said on stderr). A spec handed over already is kept."""
    if _spec:
        return _spec
    from ai_platform.core.wire import struct_value

    reporter = _reporter()
    if not isinstance(reporter, Reporter):  # not a task; a forked one has its spec handed over already
        return None
    answer = reporter.deliver("started", reporter.request("started", started_at))
    if answer is None:
        return None
    task = answer.task
    _spec.update({"id": task.id, "script": os.path.abspath(reporter.settings.task_script),
                  "input": task.resolved_input, "output": task.resolved_output,
                  "params": struct_value(task.params) if task.HasField("params") else {},
                  "input_table": task.input_table, "input_version": task.input_version, "owner": task.owner})
    return _spec


def spec() -> dict[str, Any]:
    """The running task's spec ({} outside a platform task, or before it started)."""
    return _spec


class MetricBuffer:
    """Metric points on their way to the scheduler: kept here, sent in batches by a thread of their own every
    ``METRICS_FLUSH_S`` (or sooner when many wait), and at the end of the task, so a call costs microseconds."""

    def __init__(self) -> None:
        self._points: list[tuple[str, int, float, float]] = []
        self._next_step: dict[str, int] = {}
        self._lock = _thread.allocate_lock()
        self._sending = _thread.allocate_lock()
        self._wake: Any = None  # a threading.Event, with the thread
        self._thread: Any = None

    def add(self, metrics: dict[str, Any], step: int | None) -> None:
        from ai_platform.core.names import METRIC_KEY

        now = time.time()
        if not isinstance(metrics, dict):
            _warn(f"log_metrics: metrics must be a dict of name -> number, got {type(metrics).__name__}; not logged")
            return
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            _warn(f"log_metrics: step must be an integer >= 0, got {step!r}; the points were not logged")
            return
        with self._lock:
            for key, value in metrics.items():
                if not isinstance(key, str) or not METRIC_KEY.fullmatch(key):
                    _warn(f"log_metrics: {key!r} is not a metric name (1-128 letters, digits, '_', '.', '-', '/'); "
                          f"not logged")
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    _warn(f"log_metrics: {key} = {value!r} is not a finite number; not logged")
                    continue
                at = self._next_step.get(key, 0) if step is None else step
                self._next_step[key] = max(self._next_step.get(key, 0), at + 1)
                self._points.append((key, at, float(value), now))
            many = len(self._points) >= METRICS_BATCH
        if self._thread is None:
            import threading

            self._wake = threading.Event()
            self._thread = threading.Thread(target=self._run, name="aip-metrics", daemon=True)
            self._thread.start()
        if many:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(METRICS_FLUSH_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Send what is buffered now (the worker calls this before it reports the task's end)."""
        if self._thread is None:  # no point was ever logged
            return
        with self._sending:
            with self._lock:
                points, self._points = self._points, []
            for start in range(0, len(points), METRICS_BATCH):
                send("metrics", points[start:start + METRICS_BATCH])


def _warn(message: str) -> None:
    print(f"[platform] {message}", file=sys.stderr, flush=True)


metrics = MetricBuffer()


def is_task() -> bool:
    """Whether this process runs as a platform task (and so has a scheduler to report to)."""
    return _reporter() is not None
