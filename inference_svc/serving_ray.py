"""Level 2 serving: each loaded model version is a Ray Serve application in the platform's Ray cluster.

inference_svc stays the front door (OIP over gRPC, REST through the gateway): validation, datatypes and statistics
happen in ``ServedModel`` as with local serving; only the forward pass moves, to ``ModelReplica`` deployments called
through a ``DeploymentHandle`` (no HTTP hop, no Serve proxy). Each replica reads the program from the lake itself and
batches its requests with ``@serve.batch``. A new version is a new application beside the old one: it serves as soon
as it is running, and the old one is deleted after a grace period, so a hot swap fails no request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from ai_platform.core.errors import CANNOT_PLACE, FailedPrecondition, NoCapacity, Unavailable
from ai_platform.core.settings import InferenceSettings
from ai_platform.sdk.models import ModelRecord, read_model
from inference_svc.batching import AdaptiveBatcher, BatchTiming
from inference_svc.model import REPLICA_PARAMETERS, BatchingConfig, LoadOptions, Program, ServedModel

log = logging.getLogger("inference_svc.serving_ray")

APP_PREFIX = "aip-"
RETIRE_GRACE_S = 2.0  # an old version's application outlives the swap this long: requests sent to it finish
DEPLOY_TIMEOUT_S = 240.0  # under MODEL_LOAD_TIMEOUT_S: a load whose replicas never run fails before its caller
PLACEMENT_GRACE_S = 5.0  # room for new replicas still missing after this long: the change ends, RESOURCE_EXHAUSTED
UNPLACEABLE = ("resources required", "resources available", "insufficient resources")  # Serve's words for it
RETRIES = 4  # a request whose replica died is sent again (inference has no side effects)
RETRY_PAUSE_S = 0.05
CALLS_PER_REPLICA = 2  # merged calls in flight per replica: one computing, the next on its way
STATUS_TTL_S = 0.5
CONNECT_TIMEOUT_S = 3.0
REPLICA_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)


@serve.deployment(name="model", max_ongoing_requests=64, graceful_shutdown_wait_loop_s=0.5,
                  graceful_shutdown_timeout_s=10)
class ModelReplica:
    """One replica of a model version: the program from the lake, Ray Serve's batching, the shared forward pass."""

    def __init__(self, uri: str, version: int, storage_options: dict[str, str], device: str, torch_threads: int,
                 max_batch_size: int, batch_wait_timeout_s: float) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self.version = version
        self.program = Program(read_model(uri, version, storage_options), device)
        self.forward.set_max_batch_size(max_batch_size)
        self.forward.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def pid(self) -> int:
        return os.getpid()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def forward(self, requests: list[list[np.ndarray]]) -> list[tuple[list[np.ndarray], int, tuple]]:
        """Each call's outputs, the version that computed them, and the forward pass's timing (input, infer, output
        nanoseconds). A call is a batch inference_svc already merged; concurrent calls merge again here."""
        sizes = [arrays[0].shape[0] for arrays in requests]
        merged = requests[0] if len(requests) == 1 else [np.concatenate(parts) for parts in zip(*requests, strict=True)]
        outputs, input_ns, infer_ns, output_ns = self.program.forward(merged)
        answers, row = [], 0
        for size in sizes:
            answers.append(([out[row:row + size] for out in outputs], self.version, (input_ns, infer_ns, output_ns)))
            row += size
        return answers


class ServeRunner:
    """A served model's forward passes on its Ray Serve application, through a DeploymentHandle.

    A call through Ray costs milliseconds whatever it carries, so concurrent requests are merged here first (the
    same adaptive batcher as local serving), with a few merged calls in flight per replica.
    """

    def __init__(self, serving: RayServing, app: str, handle: Any, options: LoadOptions,
                 storage_options: dict[str, str]) -> None:
        self.serving = serving
        self.app = app
        self.handle = handle.options(method_name="forward")
        self.options = options
        self.storage_options = storage_options
        self.device = options.device
        self.on_batch: Callable[[BatchTiming], None] = lambda timing: None
        self.batcher = AdaptiveBatcher(self._call, None, options.batching.max_batch_size,
                                       options.batching.max_queue_delay_s, lambda timing: self.on_batch(timing),
                                       max_in_flight=CALLS_PER_REPLICA * options.most_replicas)

    async def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return await self.batcher.submit(arrays)

    def rescaled(self, handle: Any, options: LoadOptions) -> None:
        """The same application with another replica count: more (or fewer) merged calls in flight."""
        self.handle = handle.options(method_name="forward")
        self.options = options
        self.serving.loop.call_soon_threadsafe(self.batcher.set_in_flight, CALLS_PER_REPLICA * options.most_replicas)

    async def _call(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], int, int, int]:
        for attempt in range(RETRIES + 1):
            try:
                outputs, _, timing = await self.handle.remote(arrays)
                return (outputs, *timing)
            except REPLICA_ERRORS as exc:
                if attempt == RETRIES:
                    raise Unavailable(f"model application {self.app}: its replicas are gone ({exc})") from None
                self.serving.retried += 1
                await asyncio.sleep(RETRY_PAUSE_S * (attempt + 1))
            except RayTaskError as exc:
                raise FailedPrecondition(f"model application {self.app} failed in its replica: "
                                         f"{_first_line(exc.cause or exc)}") from None
        raise AssertionError("unreachable")

    def retire(self) -> None:
        self.batcher.retire()
        self.serving.delete_later(self.app)

    def describe(self) -> dict[str, Any]:
        o = self.options
        scaling = ({"min_replicas": o.min_replicas, "max_replicas": o.max_replicas,
                    "target_ongoing_requests": o.target_ongoing_requests}
                   if o.autoscaling else {"replicas": o.replicas})
        return {"serving": "ray", "application": self.app, **scaling, "num_cpus": o.num_cpus, "num_gpus": o.num_gpus}


def _listening(host: str, port: str) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:500]


class RayServing:
    """Model versions as Ray Serve applications on the cluster at ``serve_address``."""

    name = "ray"
    parameters = REPLICA_PARAMETERS

    def __init__(self, settings: InferenceSettings) -> None:
        self.loop = asyncio.get_running_loop()  # the service's: batchers live there, deploys run in threads
        self.address = settings.serve_address
        self.torch_threads = settings.torch_threads
        self.defaults = (settings.replicas, settings.replica_num_cpus, settings.replica_num_gpus)
        self.retried = 0  # requests sent again after their replica died
        self._apps: set[str] = set()
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {}
        self._status_at = 0.0

    # -- cluster --------------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        with self._lock:
            if ray.is_initialized():
                return
            host, _, port = self.address.rpartition(":")
            if self.address and not _listening(host, port):  # ray.init would retry for minutes
                raise Unavailable(f"the Ray cluster at {self.address} cannot be reached: nothing listens there")
            try:
                ray.init(address=self.address or "auto", namespace="ai-platform", log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False,
                         **({"_node_ip_address": host} if host.startswith("127.") else {}))
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise Unavailable(f"the Ray cluster at {self.address or 'auto'} cannot be reached: "
                                  f"{_first_line(exc)}") from None
            serve.start(proxy_location="Disabled")

    def default_options(self, batching: BatchingConfig, device: str) -> LoadOptions:
        replicas, num_cpus, num_gpus = self.defaults
        return LoadOptions(batching, device, replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus)

    def _check_fits(self, options: LoadOptions) -> None:
        total = ray.cluster_resources()
        for resource, each in (("CPU", options.num_cpus), ("GPU", options.num_gpus)):
            need = each * options.most_replicas
            if need > total.get(resource, 0.0) + 1e-9:
                raise NoCapacity(
                    f"{options.most_replicas} replica(s) {CANNOT_PLACE}: they need {options.most_replicas} × {each:g} "
                    f"{resource} = {need:g} {resource}, but the whole Ray cluster has {total.get(resource, 0.0):g}; "
                    f"ask for fewer replicas or less per replica (num_cpus)")

    def _wait_for_room(self, added: int, options: LoadOptions, what: str) -> None:
        """Wait up to PLACEMENT_GRACE_S for the cluster to have ``added`` more replicas' worth of resources free;
        NoCapacity naming what is missing otherwise, before anything is deployed."""
        need = {"CPU": added * options.num_cpus, "GPU": added * options.num_gpus}
        deadline = time.monotonic() + PLACEMENT_GRACE_S
        while True:
            free = ray.available_resources()
            short = {r: (amount, free.get(r, 0.0)) for r, amount in need.items() if amount > free.get(r, 0.0) + 1e-9}
            if not short:
                return
            if time.monotonic() > deadline:
                missing = ", ".join(f"{amount:g} {r} needed, {have:g} free" for r, (amount, have) in short.items())
                raise NoCapacity(f"{what}: {added} more replica(s) {CANNOT_PLACE} on the Ray cluster ({missing} "
                                 f"for {PLACEMENT_GRACE_S:g} s); free resources, or ask for fewer replicas or less "
                                 f"per replica (num_cpus)")
            time.sleep(0.5)

    def _deployment(self, record: ModelRecord, storage_options: dict[str, str], options: LoadOptions) -> Any:
        scaling: dict[str, Any] = (
            {"autoscaling_config": {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                                    "target_ongoing_requests": options.target_ongoing_requests,
                                    "upscale_delay_s": 2, "downscale_delay_s": 30}}
            if options.autoscaling else {"num_replicas": options.replicas})
        deployment = ModelReplica.options(
            ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
            max_ongoing_requests=max(64, 4 * options.batching.max_batch_size), **scaling)
        return deployment.bind(record.uri, record.version, storage_options, options.device, self.torch_threads,
                               options.batching.max_batch_size, options.batching.max_queue_delay_s)

    def _run(self, app: str, bound: Any, what: str) -> Any:
        """``serve.run`` of an application, watched: its handle once every replica runs; NoCapacity naming what is
        missing when Serve still cannot place replicas after PLACEMENT_GRACE_S; FailedPrecondition with the
        replica's error when one fails; Unavailable after DEPLOY_TIMEOUT_S. The caller removes or reverts what a
        failed run left behind."""
        outcome: dict[str, Any] = {}

        def deploy() -> None:
            try:
                outcome["handle"] = serve.run(bound, name=app, route_prefix=None)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        thread = threading.Thread(target=deploy, name=f"deploy-{app}", daemon=True)
        thread.start()
        started, unplaceable_since = time.monotonic(), None
        while thread.is_alive() and time.monotonic() - started < DEPLOY_TIMEOUT_S:
            thread.join(1.0)
            if not thread.is_alive():
                break
            waiting = self._unplaceable(app)
            if waiting and unplaceable_since is None:
                unplaceable_since = time.monotonic()
            elif not waiting:
                unplaceable_since = None
            if unplaceable_since is not None and time.monotonic() - unplaceable_since > PLACEMENT_GRACE_S:
                raise NoCapacity(f"{what}: replicas {CANNOT_PLACE} on the Ray cluster: {waiting}; free resources, "
                                 f"or ask for fewer replicas or less per replica (num_cpus)")
        if "handle" in outcome:
            return outcome["handle"]
        if thread.is_alive():
            raise Unavailable(f"{what}: its replicas were not running after {DEPLOY_TIMEOUT_S:g}s; the change was "
                              f"abandoned")
        raise FailedPrecondition(f"{what} cannot run in a Ray Serve replica: {_replica_error(outcome['error'])}")

    def _unplaceable(self, app: str) -> str:
        """Serve's message for an application whose replicas wait for resources no node has free ('' if none)."""
        try:
            status = serve.status().applications.get(app)
        except Exception:  # noqa: BLE001 - the next look may succeed; the deploy timeout still bounds the wait
            return ""
        for deployment in (status.deployments.values() if status else ()):
            message = " ".join(str(deployment.message or "").split())
            if any(word in message.lower() for word in UNPLACEABLE):
                return message[:400]
        return ""

    def rescale(self, model: ServedModel, options: LoadOptions) -> bool:
        """Change an application's replica count or autoscaling bounds in place (Serve adds or removes replicas
        and keeps the running ones serving); False when more than that changed, which needs new replicas. A change
        that cannot be placed is reverted: the old replicas kept serving throughout."""
        runner = model.runner
        old = runner.options
        if (old.num_cpus, old.num_gpus, old.device, old.batching) != (
                options.num_cpus, options.num_gpus, options.device, options.batching):
            return False
        self._check_fits(options)
        what = f"model '{model.name}' version {model.version}"
        if options.most_replicas > old.most_replicas:
            self._wait_for_room(options.most_replicas - old.most_replicas, options, what)
        try:
            handle = self._run(runner.app, self._deployment(model.record, runner.storage_options, options), what)
        except NoCapacity:
            log.warning("%s: scaling to %s cannot be placed; back to %s", what, options.most_replicas,
                        old.most_replicas)
            self._run(runner.app, self._deployment(model.record, runner.storage_options, old), what)
            raise
        runner.rescaled(handle, options)
        log.info("model rescaled", extra={"model": model.name, "version": model.version, "application": runner.app,
                                          "replicas": options.most_replicas})
        return True

    # -- models ---------------------------------------------------------------------------------------------------
    def build(self, name: str, record: ModelRecord, storage_options: dict[str, str],
              options: LoadOptions) -> ServedModel:
        self._connect()
        self._check_fits(options)
        self._wait_for_room(options.min_replicas or options.replicas if options.autoscaling else options.replicas,
                            options, f"model '{name}' version {record.version}")
        app = f"{APP_PREFIX}{name}-v{record.version}-{uuid.uuid4().hex[:6]}"
        with self._lock:
            self._apps.add(app)
        try:
            handle = self._run(app, self._deployment(record, storage_options, options),
                               f"model '{name}' version {record.version}")
        except BaseException:
            self.delete_later(app, 0.0)  # what it half deployed goes; the version serving now serves on
            raise
        log.info("model deployed", extra={"model": name, "version": record.version, "application": app})
        return ServedModel(name, record, options.batching, ServeRunner(self, app, handle, options, storage_options))

    def delete_later(self, app: str, delay_s: float = RETIRE_GRACE_S) -> None:
        """Delete an application once requests already sent to it have had time to finish."""

        def delete() -> None:
            try:
                serve.delete(app)
            except Exception as exc:  # noqa: BLE001 - the cluster may be gone; nothing else to free then
                log.warning("could not delete %s: %s", app, exc)
            with self._lock:
                self._apps.discard(app)

        timer = threading.Timer(delay_s, delete)
        timer.daemon = True
        timer.start()

    def _applications(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._status_at > STATUS_TTL_S:
            try:
                self._status = dict(serve.status().applications)
            except Exception as exc:  # noqa: BLE001 - reported as the models' state
                log.warning("Ray Serve status failed: %s", exc)
                self._status = {}
            self._status_at = now
        return self._status

    def state(self, model: ServedModel) -> tuple[bool, str]:
        """Whether the model's application can serve now, and its replicas in words (``2 RUNNING``)."""
        app = getattr(model.runner, "app", "")
        status = self._applications().get(app)
        if status is None:
            return False, f"Ray Serve application {app} is gone"
        replicas: dict[str, int] = {}
        for deployment in status.deployments.values():
            for state, count in deployment.replica_states.items():
                replicas[str(getattr(state, "value", state))] = replicas.get(str(getattr(state, "value", state)),
                                                                             0) + count
        words = ", ".join(f"{count} {state}" for state, count in sorted(replicas.items())) or "no replicas"
        return replicas.get("RUNNING", 0) > 0, f"Ray Serve {status.status}: {words}"

    def replica_pids(self, model: ServedModel) -> list[int]:
        """The processes of a model's replicas (for operators and tests), from Ray's state API."""
        from ray.util.state import list_actors

        app = getattr(model.runner, "app", "")
        actors = list_actors(filters=[("state", "=", "ALIVE"), ("class_name", "=", f"ServeReplica:{app}:model")],
                             detail=True, limit=1000)
        return [a.pid for a in actors]

    def close(self) -> None:
        """Delete this service's applications: replicas must not outlive the service that routes to them."""
        if not ray.is_initialized():
            return
        with self._lock:
            apps = list(self._apps)
        for app in apps:
            try:
                serve.delete(app)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not delete %s: %s", app, exc)
        ray.shutdown()


def _replica_error(exc: BaseException) -> str:
    """The replica's own error from Serve's deploy failure text (its last line names the exception)."""
    text = str(exc)
    for marker in ("Error", "Exception"):
        lines = [line.strip() for line in text.splitlines() if marker in line]
        if lines:
            return lines[-1][:500]
    return _first_line(exc)

