"""The lake catalog: datasets and models as versioned Lance tables under one home.

Plain Python over Lance and Arrow; knows nothing of gRPC. Every write is one Lance
commit, so an interrupted write leaves the last committed version intact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import lance
import pyarrow as pa
import pyarrow.fs as pafs
from lance.fragment import write_fragments

from ai_platform.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ai_platform.core.lakefs import lake_filesystem
from ai_platform.core.names import validate_name
from storage_svc.filters import check_filter

log = logging.getLogger("storage_svc.catalog")

MAX_PREVIEW_ROWS = 1000
GC_MIN_AGE_S = 3600  # an unreferenced file younger than this may belong to a write still in progress
LANCE_UNVERIFIED_AGE_S = 7 * 24 * 3600  # Lance's cleanup removes unreferenced files older than this itself
GC_FOLDERS = ("data", "_deletions")  # where a table's row data lives; manifests are Lance's own business
ALIAS_FOLDER = "_aip_aliases"  # beside a table's data: who moved each alias (Lance's tags keep only the version)
MAX_MESSAGE_CHARS = 300  # an error may quote Lance, never a whole filter: gRPC metadata has a size limit
TARGET_BATCH_BYTES = 1024 * 1024  # small messages keep read, encode and send overlapping
COMMIT_ATTEMPTS = 5  # a commit that keeps losing races with writers outside this service gives up, saying so
COMMIT_BACKOFF_S = 0.05
_RUST_LOCATION = re.compile(r",?\s*(location: )?/\S+\.rs:\d+:\d+")


class TableKind(StrEnum):
    DATASET = "dataset"
    MODEL = "model"

    @property
    def folder(self) -> str:
        return self.value + "s"


class WriteMode(StrEnum):
    CREATE = "create"
    APPEND = "append"
    OVERWRITE = "overwrite"


@dataclass
class TableInfo:
    name: str
    kind: TableKind
    uri: str
    schema: list[tuple[str, str]]
    num_rows: int
    size_bytes: int
    version: int
    latest_version: int
    num_versions: int
    created_at: dt.datetime
    updated_at: dt.datetime
    metadata: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    created_by: str = ""  # who wrote this version
    alias_moves: dict[str, tuple[str, dt.datetime]] = field(default_factory=dict)  # alias -> (who, when)


@dataclass
class GarbageReport:
    removed_versions: list[int]
    removed_files: int
    removed_bytes: int
    kept_unreferenced_files: int
    dry_run: bool


@dataclass
class VersionInfo:
    version: int
    timestamp: dt.datetime
    metadata: dict[str, str]
    created_by: str = ""


def validate_alias(alias: str) -> str:
    """An alias is a name, and not a number (a number is a version)."""
    validate_name(alias, "alias")
    if alias.isdigit():
        raise InvalidArgument(f"invalid alias {alias!r}: a number is a version; an alias is a name like 'production'")
    return alias


def lance_message(exc: BaseException) -> str:
    """Lance's error text without Rust source locations."""
    return _RUST_LOCATION.sub("", str(exc)).strip()


def _created_by(ds: lance.LanceDataset, version: int) -> str:
    """Who wrote ``version`` ('' when its writer did not say): the ``created_by`` of its transaction."""
    try:
        transaction = ds.read_transaction(version)
    except Exception:  # noqa: BLE001 - a version written before transactions were kept, or cleaned up
        return ""
    properties = getattr(transaction, "transaction_properties", None) or {}
    return str(properties.get("created_by", ""))


def _utc(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.UTC)  # Lance gives naive local times; astimezone reads them as local


def _describe_schema(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(f.name, str(f.type)) for f in schema]


def _schema_metadata(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in (schema.metadata or {}).items()}


def _json_value(value: object) -> object:
    """Preview-friendly values: large binaries are summarised, times become ISO strings."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _referenced_files(ds: lance.LanceDataset) -> dict[str, int | None]:
    """Files one version's rows live in, relative to the table directory, with their sizes where Lance knows them."""
    files: dict[str, int | None] = {}
    for fragment in ds.get_fragments():
        meta = fragment.metadata
        for data_file in meta.files:
            files[f"data/{data_file.path}"] = data_file.file_size_bytes
        if meta.deletion_file is not None:
            files[meta.deletion_file.path(fragment.fragment_id)] = None
    return files


def rows_for_batch_bytes(schema: pa.Schema, target_bytes: int = TARGET_BATCH_BYTES) -> int:
    """Rows per streamed batch so that one batch is about ``target_bytes`` (estimated from fixed widths)."""
    row_bytes = 0
    for f in schema:
        t = f.type
        width = 1
        while pa.types.is_fixed_size_list(t):
            width *= t.list_size
            t = t.value_type
        row_bytes += width * (t.bit_width // 8 if pa.types.is_primitive(t) and t.bit_width >= 8 else 64)
    return max(256, min(131072, target_bytes // max(row_bytes, 1)))


class LakeCatalog:
    """Datasets and models under ``<home>/datasets`` and ``<home>/models`` (local dir or ``s3://``)."""

    def __init__(self, home_uri: str, storage_options: dict[str, str] | None = None,
                 create_bucket: bool = False) -> None:
        self.home = home_uri.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self._root = lake_filesystem(self.home, self.storage_options, create_bucket)
        self._commit_locks: dict[tuple[TableKind, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        for kind in TableKind:
            self.fs.create_dir(self._dir(kind), recursive=True)

    @property
    def remote(self) -> bool:
        """Whether the lake lives on an object store rather than a local directory."""
        return "://" in self.home and not self.home.startswith("file://")

    # -- layout ---------------------------------------------------------------
    def _dir(self, kind: TableKind) -> str:
        return f"{self._root}/{kind.folder}"

    def _path(self, kind: TableKind, name: str) -> str:
        return f"{self._dir(kind)}/{validate_name(name, f'{kind.value} name')}.lance"

    def uri(self, kind: TableKind, name: str) -> str:
        return f"{self.home}/{kind.folder}/{validate_name(name, f'{kind.value} name')}.lance"

    def exists(self, kind: TableKind, name: str) -> bool:
        return self.fs.get_file_info(f"{self._path(kind, name)}/_versions").type == pafs.FileType.Directory

    def _not_found(self, kind: TableKind, name: str) -> NotFound:
        return NotFound(f"{kind.value} '{name}' does not exist")

    def open(self, kind: TableKind, name: str, version: int | None = None) -> lance.LanceDataset:
        if version is not None and version < 0:
            raise InvalidArgument(f"version must be a positive number (or 0 for the latest), got {version}")
        if not self.exists(kind, name):
            raise self._not_found(kind, name)
        uri = self.uri(kind, name)
        try:
            return lance.dataset(uri, version=version or None, storage_options=self.storage_options or None)
        except ValueError as exc:
            if version and "not found" in str(exc).lower():
                raise NotFound(f"{kind.value} '{name}' has no version {version}") from exc
            raise

    # -- catalog --------------------------------------------------------------
    def list_tables(self, kind: TableKind) -> list[TableInfo]:
        selector = pafs.FileSelector(self._dir(kind), allow_not_found=True)
        tables = []
        for entry in sorted(self.fs.get_file_info(selector), key=lambda e: e.base_name):
            name = entry.base_name.removesuffix(".lance")
            if entry.type != pafs.FileType.Directory or not entry.base_name.endswith(".lance"):
                continue
            try:
                tables.append(self.describe(kind, name))
            except (NotFound, InvalidArgument, OSError, ValueError) as exc:
                log.warning("skipping unreadable table %s/%s: %s", kind.folder, entry.base_name, exc)
        return tables

    def describe(self, kind: TableKind, name: str, version: int | None = None) -> TableInfo:
        ds = self.open(kind, name, version)
        versions = ds.versions()
        return TableInfo(
            name=name,
            kind=kind,
            uri=self.uri(kind, name),
            schema=_describe_schema(ds.schema),
            num_rows=ds.count_rows(),
            size_bytes=self._size_bytes(kind, name, ds),
            version=ds.version,
            latest_version=ds.latest_version,
            num_versions=len(versions),
            created_at=_utc(versions[0]["timestamp"]),
            updated_at=_utc(versions[-1]["timestamp"]),
            metadata=_schema_metadata(ds.schema),
            aliases={alias: tag["version"] for alias, tag in sorted(ds.tags.list().items())},
            created_by=_created_by(ds, ds.version),
            alias_moves=self._alias_moves(kind, name),
        )

    def _size_bytes(self, kind: TableKind, name: str, ds: lance.LanceDataset) -> int:
        """Bytes of the files this version references: not files left by an interrupted write, nor old versions'."""
        files = _referenced_files(ds)
        unknown = [f"{self._path(kind, name)}/{path}" for path, size in files.items() if size is None]
        stat = sum(e.size or 0 for e in self.fs.get_file_info(unknown)) if unknown else 0
        return stat + sum(size for size in files.values() if size is not None)

    def _table_files(self, kind: TableKind, name: str) -> dict[str, pafs.FileInfo]:
        """The row-data files under a table, by path relative to the table directory."""
        root = self._path(kind, name)
        found: dict[str, pafs.FileInfo] = {}
        for folder in GC_FOLDERS:
            selector = pafs.FileSelector(f"{root}/{folder}", recursive=True, allow_not_found=True)
            for entry in self.fs.get_file_info(selector):
                if entry.type == pafs.FileType.File:
                    found[entry.path[len(root) + 1:]] = entry
        return found

    def collect_garbage(
        self, kind: TableKind, name: str, keep_versions: int = 0, min_age_s: int = GC_MIN_AGE_S,
        dry_run: bool = False,
    ) -> GarbageReport:
        """Remove unreferenced files older than ``min_age_s`` and, if ``keep_versions``, all but the newest N versions.

        Old versions go through Lance's own cleanup (tagged versions stay). Files no version
        references are swept here, because Lance keeps those for seven days or removes them
        regardless of age; a safe age in between is what a lake with live writers needs.
        """
        if keep_versions < 0 or min_age_s < 0:
            raise InvalidArgument(f"keep_versions and min_age_s must be >= 0, got {keep_versions} and {min_age_s}")
        ds = self.open(kind, name)
        versions = [v["version"] for v in ds.versions()]
        doomed = versions[:-keep_versions] if keep_versions else []
        aliased = {alias: tag["version"] for alias, tag in ds.tags.list().items() if tag["version"] in doomed}
        if aliased:
            named = ", ".join(f"'{alias}' (version {version})" for alias, version in sorted(aliased.items()))
            raise FailedPrecondition(f"keep_versions={keep_versions} would remove versions that aliases point to: "
                                     f"{named}; move or delete the aliases first")
        uri, options = self.uri(kind, name), self.storage_options or None
        referenced: set[str] = set()
        for version in versions:
            if version not in doomed:
                referenced.update(_referenced_files(lance.dataset(uri, version=version, storage_options=options)))
        oldest = time.time() - min(min_age_s, LANCE_UNVERIFIED_AGE_S if doomed else min_age_s)
        before = self._table_files(kind, name)
        unreferenced = {path: entry for path, entry in before.items() if path not in referenced}
        doomed_refs: set[str] = set()
        for version in doomed:
            doomed_refs.update(_referenced_files(lance.dataset(uri, version=version, storage_options=options)))
        plan = {path: entry for path, entry in unreferenced.items()
                if path in doomed_refs or entry.mtime is None or entry.mtime.timestamp() <= oldest}
        if dry_run:
            return GarbageReport(doomed, len(plan), sum(e.size or 0 for e in plan.values()),
                                 len(unreferenced) - len(plan), True)
        if doomed:
            ds.cleanup_old_versions(versions=doomed, error_if_tagged_old_versions=False)
        root = self._path(kind, name)
        for path in plan:
            try:
                self.fs.delete_file(f"{root}/{path}")
            except FileNotFoundError:
                pass  # Lance's cleanup took it
        after = self._table_files(kind, name)
        gone = [entry for path, entry in before.items() if path not in after]
        kept = sum(1 for path in after if path not in referenced)
        log.info("gc %s/%s: %d versions, %d files, %d bytes removed", kind.folder, name, len(doomed), len(gone),
                 sum(e.size or 0 for e in gone))
        return GarbageReport(doomed, len(gone), sum(e.size or 0 for e in gone), kept, False)

    def versions(self, kind: TableKind, name: str) -> list[VersionInfo]:
        ds = self.open(kind, name)
        return [
            VersionInfo(v["version"], _utc(v["timestamp"]), {k: str(x) for k, x in (v.get("metadata") or {}).items()},
                        _created_by(ds, v["version"]))
            for v in ds.versions()
        ]

    def delete(self, kind: TableKind, name: str) -> None:
        if not self.exists(kind, name):
            raise self._not_found(kind, name)
        self.fs.delete_dir(self._path(kind, name))

    def resolve(
        self, kind: TableKind, name: str, version: int | None = None, must_exist: bool = False, alias: str = ""
    ) -> tuple[str, bool, int]:
        """(uri, exists, version): what a script or inference_svc opens directly; ``alias`` names the version."""
        uri = self.uri(kind, name)
        if not self.exists(kind, name):
            if must_exist or version or alias:
                raise self._not_found(kind, name)
            return uri, False, 0
        if alias:
            return uri, True, self._alias_version(kind, name, alias)
        return uri, True, self.open(kind, name, version).version

    # -- aliases --------------------------------------------------------------
    def _alias_version(self, kind: TableKind, name: str, alias: str) -> int:
        tags = self.open(kind, name).tags.list()
        if alias not in tags:
            raise NotFound(f"{kind.value} '{name}' has no alias '{validate_alias(alias)}'")
        return tags[alias]["version"]

    def set_alias(self, kind: TableKind, name: str, alias: str, version: int, by: str = "") -> TableInfo:
        """Point ``alias`` at ``version`` (an existing one), creating the alias or moving it; who moved it (``by``)
        is kept beside the table."""
        validate_alias(alias)
        ds = self.open(kind, name)
        if version < 1 or version not in {v["version"] for v in ds.versions()}:
            raise NotFound(f"{kind.value} '{name}' has no version {version}")
        if alias in ds.tags.list():
            ds.tags.update(alias, version)
        else:
            ds.tags.create(alias, version)
        move = {"alias": alias, "version": version, "moved_by": by, "moved_at": time.time()}
        self.fs.create_dir(f"{self._path(kind, name)}/{ALIAS_FOLDER}", recursive=True)
        with self.fs.open_output_stream(self._alias_file(kind, name, alias)) as out:
            out.write(json.dumps(move).encode())
        log.info("alias moved", extra={"table": f"{kind.value}s/{name}", "alias": alias, "version": version,
                                       "by": by})
        return self.describe(kind, name)

    def delete_alias(self, kind: TableKind, name: str, alias: str, by: str = "") -> TableInfo:
        validate_alias(alias)
        ds = self.open(kind, name)
        if alias not in ds.tags.list():
            raise NotFound(f"{kind.value} '{name}' has no alias '{alias}'")
        ds.tags.delete(alias)
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(self._alias_file(kind, name, alias))
        log.info("alias removed", extra={"table": f"{kind.value}s/{name}", "alias": alias, "by": by})
        return self.describe(kind, name)

    def _alias_file(self, kind: TableKind, name: str, alias: str) -> str:
        return f"{self._path(kind, name)}/{ALIAS_FOLDER}/{alias}.json"

    def _alias_moves(self, kind: TableKind, name: str) -> dict[str, tuple[str, dt.datetime]]:
        """Who last moved each alias, and when (kept beside the table: Lance's tags carry neither)."""
        selector = pafs.FileSelector(f"{self._path(kind, name)}/{ALIAS_FOLDER}", allow_not_found=True)
        moves = {}
        for info in self.fs.get_file_info(selector):
            try:
                with self.fs.open_input_stream(info.path) as stream:
                    move = json.loads(stream.read())
                moves[move["alias"]] = (str(move["moved_by"]), dt.datetime.fromtimestamp(move["moved_at"], dt.UTC))
            except (OSError, ValueError, KeyError):
                continue
        return moves

    # -- data -----------------------------------------------------------------
    def preview(
        self,
        kind: TableKind,
        name: str,
        version: int | None = None,
        offset: int = 0,
        limit: int = 10,
        columns: list[str] | None = None,
    ) -> tuple[list[dict], int]:
        if offset < 0 or limit < 0:
            raise InvalidArgument("offset and limit must be >= 0")
        limit = min(limit or 10, MAX_PREVIEW_ROWS)
        ds = self.open(kind, name, version)
        self._check_columns(ds, columns)
        table = ds.to_table(columns=columns or None, offset=offset, limit=limit)
        return [_json_value(row) for row in table.to_pylist()], ds.count_rows()

    def _check_columns(self, ds: lance.LanceDataset, columns: list[str] | None) -> None:
        unknown = [c for c in columns or [] if c not in ds.schema.names]
        if unknown:
            raise InvalidArgument(f"unknown column(s) {unknown}; the table has {ds.schema.names}")

    def scan(
        self,
        kind: TableKind,
        name: str,
        version: int | None = None,
        columns: list[str] | None = None,
        filter: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        batch_rows: int | None = None,
    ) -> pa.RecordBatchReader:
        """A lazy reader over the table: batches are produced as they are consumed."""
        if (limit or 0) < 0 or (offset or 0) < 0 or (batch_rows or 0) < 0:
            raise InvalidArgument("limit, offset and batch_rows must be >= 0")
        if filter:
            check_filter(filter)
        ds = self.open(kind, name, version)
        self._check_columns(ds, columns)
        projected = ds.schema if not columns else pa.schema([ds.schema.field(c) for c in columns])
        try:
            scanner = ds.scanner(
                columns=columns or None,
                filter=filter or None,
                limit=limit or None,
                offset=offset or None,
                batch_size=batch_rows or rows_for_batch_bytes(projected),
            )
            return scanner.to_reader()
        except (ValueError, OSError) as exc:
            detail = lance_message(exc)[:MAX_MESSAGE_CHARS]
            raise InvalidArgument(f"cannot scan {kind.value} '{name}': {detail}") from exc

    def write(
        self,
        kind: TableKind,
        name: str,
        mode: WriteMode,
        schema: pa.Schema,
        batches: Iterable[pa.RecordBatch],
        metadata: dict[str, str] | None = None,
        created_by: str = "",
    ) -> TableInfo:
        """Write ``batches`` as one Lance commit, recording ``created_by`` with it. If ``batches`` raises, nothing is
        committed."""
        uri = self.uri(kind, name)
        exists = self.exists(kind, name)
        if mode is WriteMode.CREATE and exists:
            raise AlreadyExists(f"{kind.value} '{name}' already exists (use mode append or overwrite)")
        if mode is WriteMode.APPEND and exists:
            current = self.open(kind, name).schema
            if not current.remove_metadata().equals(schema.remove_metadata()):
                raise FailedPrecondition(
                    f"cannot append to {kind.value} '{name}': schema differs "
                    f"(table: {_describe_schema(current)}; data: {_describe_schema(schema)})"
                )
            schema = schema.with_metadata(current.metadata)
        if metadata:
            schema = schema.with_metadata(
                {**(schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
            )

        failure: list[BaseException] = []

        def conformed() -> Iterator[pa.RecordBatch]:
            try:
                for batch in batches:
                    if not batch.schema.remove_metadata().equals(schema.remove_metadata()):
                        raise InvalidArgument(
                            f"batch schema {_describe_schema(batch.schema)} differs from the first batch's"
                        )
                    yield batch.replace_schema_metadata(schema.metadata)
            except BaseException as exc:
                failure.append(exc)
                raise

        reader = pa.RecordBatchReader.from_batches(schema, conformed())
        options = self.storage_options or None
        try:  # the data files first, outside any lock: writers of one table stream their data side by side
            fragments = write_fragments(reader, uri, schema=schema, storage_options=options)
        except Exception:
            if failure:  # the data source failed (corrupt chunk, client gone): report that, not Lance's wrapper
                raise failure[0] from None
            raise
        with self._commit_lock(kind, name):  # then one commit at a time per table, in this service
            version = self._commit(kind, name, mode, schema, fragments, created_by)
        return self.describe(kind, name, version)  # this commit's version, whoever committed after it

    def _commit_lock(self, kind: TableKind, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._commit_locks.setdefault((kind, name), threading.Lock())

    def _commit(self, kind: TableKind, name: str, mode: WriteMode, schema: pa.Schema,
                fragments: list, created_by: str = "") -> int:
        """Commit written fragments as one new version: ``create`` only while the table does not exist (exactly
        one of several racing creates wins), ``append`` on whatever version is newest, ``overwrite`` replacing it.

        Writers outside this service (task scripts open Lance directly) can still race a commit: Lance's retryable
        conflicts are tried again on the newest version (bounded); an append whose table was overwritten meanwhile
        with another schema is a CONFLICT naming that.
        """
        uri, options = self.uri(kind, name), self.storage_options or None
        for attempt in range(COMMIT_ATTEMPTS):
            latest = self.open(kind, name).version if self.exists(kind, name) else None
            if latest is not None and mode is WriteMode.CREATE:
                raise AlreadyExists(f"{kind.value} '{name}' already exists (another writer created it first; use "
                                    f"mode append or overwrite)")
            if latest is not None and mode is WriteMode.APPEND:
                current = self.open(kind, name, latest).schema
                if not current.remove_metadata().equals(schema.remove_metadata()):
                    raise FailedPrecondition(f"cannot append to {kind.value} '{name}': its schema changed while the "
                                             f"data was written (an overwrite committed version {latest})")
                operation = lance.LanceOperation.Append(fragments)
            else:
                operation = lance.LanceOperation.Overwrite(schema, fragments)
            transaction = lance.Transaction(read_version=latest or 0, operation=operation,
                                            transaction_properties={"created_by": created_by} if created_by else {})
            try:
                return lance.LanceDataset.commit(uri, transaction, read_version=latest, storage_options=options,
                                                 max_retries=COMMIT_ATTEMPTS).version
            except Exception as exc:  # noqa: BLE001 - Lance's conflicts are told apart by their words
                text = lance_message(exc)
                conflict = "commit conflict" in text.lower() or "incompatible transaction" in text.lower() \
                    or "already exists" in text.lower()
                if not conflict:
                    raise
                if attempt + 1 == COMMIT_ATTEMPTS:
                    raise FailedPrecondition(f"the commit to {kind.value} '{name}' lost {COMMIT_ATTEMPTS} races "
                                             f"with other writers: {text[:MAX_MESSAGE_CHARS]}") from exc
                log.info("commit to %s '%s' conflicted (%s); trying again on the newest version", kind.value, name,
                         text[:120])
                time.sleep(COMMIT_BACKOFF_S * (attempt + 1))
        raise AssertionError("unreachable")
