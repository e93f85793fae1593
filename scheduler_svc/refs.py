"""Resolving a task's ``input``/``output`` into what ``run`` receives.

Accepted forms: a lake reference (``datasets/mnist_clean``, ``models/mnist_cnn``), a seed-style
path (``.ai_platform/datasets/mnist_clean.lance``, relative to the home's parent), a URI
(``s3://...``), ``download[/...]`` (the home's raw-file area), or a plain file or directory
(relative to the directory the platform was started from). Lake references are resolved
through storage_svc, which owns the lake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ai_platform.core.auth import own_token
from ai_platform.core.errors import InvalidArgument, NotFound
from ai_platform.core.names import validate_name
from ai_platform.core.settings import ServiceSettings
from ai_platform.core.wire import TABLE_KINDS, Peer
from ai_platform.protos.aiplatform.v1 import storage_pb2 as pb
from ai_platform.protos.aiplatform.v1 import storage_pb2_grpc

_MODEL_ALIAS = re.compile(r"^models/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_LAKE_REF = re.compile(r"^(?:(?P<prefix>.*?)/)?(?P<kind>datasets|models)/(?P<name>[^/]+?)(?:\.lance)?/?$")


class Resolver:
    def __init__(self, settings: ServiceSettings, start_dir: Path) -> None:
        self.home = settings.home_uri()
        self.start_dir = start_dir
        self._storage = Peer("storage_svc", settings.storage_addr, settings.max_message_bytes,
                             token=own_token(settings, "scheduler"),
                             tls=settings.tls())
        self._stub = storage_pb2_grpc.StorageServiceStub(self._storage.channel)

    async def close(self) -> None:
        await self._storage.close()

    def _lake_ref(self, ref: str) -> tuple[int, str] | None:
        match = _LAKE_REF.match(ref)
        if not match:
            return None
        prefix = match["prefix"]
        if prefix is not None and "://" not in self.home:
            home = Path(self.home)
            if (self.start_dir / prefix).resolve() != home and prefix != home.name:
                return None
        elif prefix is not None:
            return None
        return TABLE_KINDS.number(match["kind"][:-1]), validate_name(match["name"], f"{match['kind'][:-1]} name")

    async def resolve(self, ref: str, role: str) -> tuple[str, LakeVersion | None]:
        """The path or URI handed to ``run`` for an ``input`` (role="input") or ``output``, and for a lake
        reference its table (``datasets/NAME``); an input's version is pinned later (:meth:`pin`). An output may
        be a model's alias (``models/NAME@ALIAS``): the task may move that alias, and receives the reference."""
        ref = ref.strip()
        if not ref or "://" in ref:
            return ref, None
        if "\x00" in ref:
            raise InvalidArgument(f"{role} contains a NUL byte")
        alias = _MODEL_ALIAS.match(ref)
        if alias and role == "output":
            validate_name(alias["name"], "model name")
            validate_name(alias["alias"], "alias")
            return ref, LakeVersion(ref, 0)
        lake = self._lake_ref(ref)
        if lake is not None:
            return await self._resolve_lake(*lake, role)
        return self._resolve_path(ref, role), None

    def _resolve_path(self, ref: str, role: str) -> str:
        if ref.startswith(("datasets/", "models/")):
            raise InvalidArgument(f"{role} {ref!r} is not a lake reference: use datasets/NAME or models/NAME")
        if ref == "download" or ref.startswith("download/"):
            if "://" in self.home:  # object stores do not resolve "..": refuse it rather than pass it on
                if ".." in PurePosixPath(ref).parts:
                    raise InvalidArgument(f"{role} {ref!r} leaves the download area")
                return f"{self.home}/{ref}"
            path = (Path(self.home) / ref).resolve()
            if not path.is_relative_to(Path(self.home) / "download"):
                raise InvalidArgument(f"{role} {ref!r} leaves the download area")
            return str(path)
        path = (self.start_dir / ref).resolve()
        # Anything else belongs to the script, as in the seed: an existing path made absolute, the rest as given.
        return str(path) if path.exists() else ref

    async def _resolve_lake(self, kind: int, name: str, role: str) -> tuple[str, LakeVersion | None]:
        """The table's URI and its reference; the version is not pinned yet (an input is pinned when its task
        starts: a task may be queued behind the task that makes its input)."""
        request = pb.ResolveUriRequest(kind=kind, name=name)
        response = await self._storage.call(self._stub.ResolveUri(request, timeout=self._storage.timeout_s))
        return response.uri, LakeVersion(f"{TABLE_KINDS.name(kind)}s/{name}", 0)

    async def pin(self, table: str, version: int = 0) -> LakeVersion:
        """``table`` ("datasets/NAME") at its newest version now (what a task starting now reads), or at
        ``version`` if it still exists. NotFound naming it when nothing has written it (or the version is gone)."""
        kind, _, name = table.partition("/")
        request = pb.ResolveUriRequest(kind=TABLE_KINDS.number(kind[:-1]), name=name, must_exist=True,
                                       version=version)
        try:
            response = await self._storage.call(self._stub.ResolveUri(request, timeout=self._storage.timeout_s))
        except NotFound:
            if version:
                raise NotFound(f"{table} has no version {version} (removed, or never written)") from None
            raise NotFound(f"the task's input {table} does not exist (nothing wrote it before the task started)") \
                from None
        return LakeVersion(table, response.version, response.uri)

    async def has_version(self, table: str, version: int) -> bool:
        try:
            await self.pin(table, version)
        except NotFound:
            return False
        return True

    async def table_rows(self, table: str) -> tuple[int, int]:
        """(newest version, rows in it) of ``table``: NotFound naming it when it does not exist."""
        kind, _, name = table.partition("/")
        request = pb.GetTableRequest(kind=TABLE_KINDS.number(kind[:-1]), name=name)
        info = await self._storage.call(self._stub.GetTable(request, timeout=self._storage.timeout_s))
        return info.version, info.num_rows

    async def alias_version(self, model: str, alias: str) -> int | None:
        """The version ``models/model``'s ``alias`` points to: 0 when it has no such alias, None when the model does
        not exist yet."""
        request = pb.ResolveUriRequest(kind=TABLE_KINDS.number("model"), name=model, alias=alias)
        try:
            response = await self._storage.call(self._stub.ResolveUri(request, timeout=self._storage.timeout_s))
        except NotFound as exc:
            return 0 if "alias" in exc.message else None
        return response.version


@dataclass(frozen=True)
class LakeVersion:
    """A lake table at one version: what a task's input is pinned to."""

    table: str  # "datasets/NAME" or "models/NAME"
    version: int
    uri: str = ""
