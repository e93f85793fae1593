"""The model repository: the lake's model tables (found through storage_svc), loaded on demand.

An empty version means the newest, always: a model served without a version is looked up again every
WATCH_INTERVAL_S, and a newer version is loaded beside the one serving, then swapped in (requests in flight on the
old one finish there). A deleted model, a removed version and a moved or removed alias stop being served at the
same look.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ai_platform.core.auth import own_token
from ai_platform.core.errors import FailedPrecondition, InvalidArgument, NotFound, PlatformError
from ai_platform.core.names import validate_name
from ai_platform.core.settings import ServiceSettings
from ai_platform.core.wire import Peer
from ai_platform.protos.aiplatform.v1 import storage_pb2 as storage_pb
from ai_platform.protos.aiplatform.v1 import storage_pb2_grpc
from ai_platform.sdk.models import ModelRecord, read_model
from inference_svc.model import BatchingConfig, LoadOptions, LocalServing, ServedModel

log = logging.getLogger("inference_svc.repository")
ALIAS_TTL_S = 1.0  # how long an alias's version is trusted before storage is asked again
WATCH_INTERVAL_S = 1.0  # how often the loaded models are looked up again (newest version, deleted, removed)


class ModelState(StrEnum):
    """A model's state in the repository index, as the protocol names it."""

    READY = "READY"
    LOADING = "LOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelStatus:
    name: str
    version: str
    state: ModelState
    reason: str = ""


def parse_version(version: str) -> int | None:
    if not version:
        return None
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise InvalidArgument(f"model version must be a positive integer or an alias, got {version!r}")
    return int(version)


def is_alias(version: str) -> bool:
    """A requested version that names an alias ("production") rather than a number."""
    return bool(version) and not (version.isascii() and version.isdigit())


class Serving(Protocol):
    """Where loaded models compute: ``LocalServing`` (this process) or ``RayServing`` (Ray Serve replicas)."""

    name: str
    parameters: frozenset[str]  # load parameters it takes beyond the common ones

    def default_options(self, batching: BatchingConfig, device: str) -> LoadOptions: ...

    def build(self, name: str, record: ModelRecord, storage_options: dict[str, str],
              options: LoadOptions) -> ServedModel: ...

    def state(self, model: ServedModel) -> tuple[bool, str]: ...

    def close(self) -> None: ...

    # Optional: ``rescale(model, options) -> bool`` changes a served version's replicas in place (Ray Serve).


class ModelRepository:
    def __init__(self, settings: ServiceSettings, device: str, batching: BatchingConfig,
                 serving: Serving | None = None) -> None:
        self.device = device
        self.default_batching = batching
        self.serving: Serving = serving or LocalServing()
        self._peer = Peer("storage_svc", settings.storage_addr, settings.max_message_bytes,
                          token=own_token(settings, "inference"),
                          tls=settings.tls())
        self._storage = storage_pb2_grpc.StorageServiceStub(self._peer.channel)
        self._loaded: dict[str, dict[int, ServedModel]] = {}
        self._newest: dict[str, int] = {}  # the version served when none is asked for
        self._options: dict[str, LoadOptions] = {}  # how the newest is served: a newer version is served the same
        self._states: dict[str, ModelStatus] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._aliases: dict[tuple[str, str], tuple[int, float]] = {}  # (model, alias) -> (version, when resolved)
        self._refreshing: set[tuple[str, str]] = set()
        self._watcher: asyncio.Task | None = None

    def start(self) -> None:
        """Look the loaded models up again every WATCH_INTERVAL_S (see the module's docstring)."""
        self._watcher = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await asyncio.to_thread(self.serving.close)
        await self._peer.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            for name in list(self._loaded):
                try:
                    await self._look_again(name)
                except PlatformError as exc:  # storage down: what is loaded keeps serving
                    log.warning("model %s could not be looked up again: %s", name, exc.message)

    async def _look_again(self, name: str) -> None:
        """Follow the lake: the newest version for unversioned requests, versions and models that are gone."""
        try:
            _, latest, _ = await self._resolve(name, None)
        except NotFound:
            log.info("model %s was deleted: unloading it", extra={"model": name})
            for key in [k for k in self._aliases if k[0] == name]:
                del self._aliases[key]
            await self.unload(name, reason="deleted from the lake")
            return
        if name in self._newest and latest > self._newest[name]:
            await self.load(name, None, follow=True)
        pinned = set(self._loaded.get(name, {})) - {self._newest.get(name)}
        for version in pinned:
            try:
                await self._resolve(name, version)
            except NotFound:
                await self.unload_version(name, version)

    async def _resolve(self, name: str, version: int | None, alias: str = "") -> tuple[str, int, dict[str, str]]:
        validate_name(name, "model name")
        request = storage_pb.ResolveUriRequest(kind=storage_pb.MODEL, name=name, version=version or 0, must_exist=True,
                                               alias=alias)
        response = await self._peer.call(self._storage.ResolveUri(request, timeout=self._peer.timeout_s))
        return response.uri, response.version, dict(response.storage_options)

    async def _alias_version(self, name: str, alias: str) -> int:
        """The version an alias points to. Looked up again after ALIAS_TTL_S; a moved alias keeps serving its old
        version until the new one is loaded (a hot swap), in the background."""
        key, now = (name, alias), time.monotonic()
        entry = self._aliases.get(key)
        if entry is not None:
            if now - entry[1] > ALIAS_TTL_S and key not in self._refreshing:
                self._refreshing.add(key)
                asyncio.ensure_future(self._refresh_alias(key))
            return entry[0]
        validate_name(alias, "alias")
        _, version, _ = await self._resolve(name, None, alias)
        self._aliases[key] = (version, now)
        return version

    async def _refresh_alias(self, key: tuple[str, str]) -> None:
        name, alias = key
        try:
            _, version, _ = await self._resolve(name, None, alias)
            if version not in self._loaded.get(name, {}):
                await self.load(name, version)
            self._aliases[key] = (version, time.monotonic())
        except NotFound:
            self._aliases.pop(key, None)  # the alias (or the model) is gone: the next request says so
        except PlatformError as exc:
            log.warning("alias %s of %s could not be refreshed: %s", alias, name, exc.message)
        finally:
            self._refreshing.discard(key)

    async def get(self, name: str, version: str = "") -> ServedModel:
        """The model that serves ``name`` at ``version`` (newest when empty; a number, or an alias such as
        "production"), loading it on first use."""
        wanted = await self._alias_version(name, version) if is_alias(version) else parse_version(version)
        served = self._loaded.get(name, {})
        if wanted is None and name in self._newest:
            return served[self._newest[name]]
        if wanted is not None and wanted in served:
            return served[wanted]
        return await self.load(name, wanted)

    def loaded(self, name: str, version: str = "", fresh: bool = True) -> ServedModel | None:
        """The loaded model for ``version``, or None. An alias answers only while its lookup is fresh (so that
        get() looks again), unless ``fresh`` is False (readiness and statistics: what it points to now)."""
        if is_alias(version):
            entry = self._aliases.get((name, version))
            if entry is None or (fresh and time.monotonic() - entry[1] > ALIAS_TTL_S):
                return None
            return self._loaded.get(name, {}).get(entry[0])
        wanted = parse_version(version)
        served = self._loaded.get(name, {})
        return served.get(self._newest.get(name, -1) if wanted is None else wanted)

    async def load(self, name: str, version: int | None = None, options: LoadOptions | None = None,
                   follow: bool = False) -> ServedModel:
        """Load ``version`` (the newest when None) with ``options``, or swap the newest in beside what serves.
        ``follow``: the watcher's swap to a newer version, served as the newest is now (skipped when a load made
        meanwhile already serves it)."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if version is not None and version in self._loaded.get(name, {}) and options is None:
                return self._loaded[name][version]
            uri, resolved, storage_options = await self._resolve(name, version)
            if (follow or options is None) and version is None and self._newest.get(name) == resolved:
                return self._loaded[name][resolved]  # the newest already serves, as it is
            if follow:
                options = self._options.get(name)
                log.info("model %s has a newer version %d: swapping it in", name, resolved)
            current = self._loaded.get(name, {}).get(resolved)
            rescale = getattr(self.serving, "rescale", None)
            if current is not None and options is not None and rescale is not None \
                    and await asyncio.to_thread(rescale, current, options):
                if version is None:
                    self._newest[name], self._options[name] = resolved, options
                return current  # the same version with another replica count: scaled in place
            previous = self._states.get(name)
            self._states[name] = ModelStatus(name, str(resolved), ModelState.LOADING)
            try:
                model = await asyncio.to_thread(
                    self._build, name, uri, resolved, storage_options,
                    options or self.serving.default_options(self.default_batching, self.device))
            except PlatformError as exc:
                self._states[name] = ModelStatus(name, str(resolved), ModelState.UNAVAILABLE, exc.message)
                if previous and previous.state is ModelState.READY and name in self._newest:
                    self._states[name] = previous  # the version serving now keeps serving
                raise
            served = self._loaded.setdefault(name, {})
            replaced = served.get(resolved)
            served[resolved] = model
            if version is None:
                older = self._newest.get(name)
                self._newest[name] = resolved
                if options is not None:
                    self._options[name] = options
                if older is not None and older != resolved:
                    served.pop(older).retire()
            if replaced is not None:
                replaced.retire()
            self._states[name] = ModelStatus(name, str(self._newest.get(name, resolved)), ModelState.READY)
            log.info("model loaded", extra={"model": name, "version": resolved, "device": model.device})
            return model

    def _build(
        self, name: str, uri: str, version: int, storage_options: dict[str, str], options: LoadOptions
    ) -> ServedModel:
        record = read_model(uri, version, storage_options)
        try:
            return self.serving.build(name, record, storage_options, options)
        except PlatformError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model that cannot run is unavailable, the server is fine
            raise FailedPrecondition(f"model '{name}' version {version} cannot run: {exc}") from exc

    async def unload(self, name: str, reason: str = "unloaded") -> None:
        validate_name(name, "model name")
        async with self._locks.setdefault(name, asyncio.Lock()):
            served = self._loaded.pop(name, None)
            self._newest.pop(name, None)
            self._options.pop(name, None)
            if served is None:
                if name not in self._states:
                    await self._resolve(name, None)  # NOT_FOUND for a model that does not exist
                self._states[name] = ModelStatus(name, "", ModelState.UNAVAILABLE, reason)
                return
            for model in served.values():
                model.retire()
            if reason == "deleted from the lake":
                self._states.pop(name, None)  # gone from the index too
            else:
                self._states[name] = ModelStatus(name, "", ModelState.UNAVAILABLE, reason)

    async def unload_version(self, name: str, version: int) -> None:
        """Stop serving one version that is gone from the lake (garbage collected)."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            model = self._loaded.get(name, {}).pop(version, None)
            if model is not None:
                log.info("model %s version %d was removed: unloading it", name, version)
                model.retire()
            for key, (aliased, _) in list(self._aliases.items()):
                if key[0] == name and aliased == version:
                    del self._aliases[key]

    async def index(self) -> list[ModelStatus]:
        request = storage_pb.ListTablesRequest(kind=storage_pb.MODEL)
        listing = self._storage.ListTables(request, timeout=self._peer.timeout_s)
        tables = (await self._peer.call(listing)).tables
        states = {t.name: ModelStatus(t.name, str(t.latest_version), ModelState.UNAVAILABLE, "not loaded")
                  for t in tables}
        states.update(self._states)
        for name, status in states.items():
            model = self.loaded(name) if status.state is ModelState.READY else None
            if model is not None:
                serving, reason = self.serving.state(model)
                states[name] = ModelStatus(name, status.version, ModelState.READY if serving else
                                           ModelState.UNAVAILABLE, reason)
        return [states[n] for n in sorted(states)]

    def all_loaded(self) -> list[ServedModel]:
        return [m for served in self._loaded.values() for m in served.values()]
