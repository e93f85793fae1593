import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TableKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TABLE_KIND_UNSPECIFIED: _ClassVar[TableKind]
    DATASET: _ClassVar[TableKind]
    MODEL: _ClassVar[TableKind]

class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_MODE_UNSPECIFIED: _ClassVar[WriteMode]
    CREATE: _ClassVar[WriteMode]
    APPEND: _ClassVar[WriteMode]
    OVERWRITE: _ClassVar[WriteMode]
TABLE_KIND_UNSPECIFIED: TableKind
DATASET: TableKind
MODEL: TableKind
WRITE_MODE_UNSPECIFIED: WriteMode
CREATE: WriteMode
APPEND: WriteMode
OVERWRITE: WriteMode

class ColumnInfo(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "kind", "uri", "schema", "num_rows", "size_bytes", "version", "latest_version", "num_versions", "created_at", "updated_at", "metadata", "aliases", "created_by", "alias_moves")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class AliasMovesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AliasMove
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AliasMove, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    ALIAS_MOVES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: TableKind
    uri: str
    schema: _containers.RepeatedCompositeFieldContainer[ColumnInfo]
    num_rows: int
    size_bytes: int
    version: int
    latest_version: int
    num_versions: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    aliases: _containers.ScalarMap[str, int]
    created_by: str
    alias_moves: _containers.MessageMap[str, AliasMove]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[TableKind, str]] = ..., uri: _Optional[str] = ..., schema: _Optional[_Iterable[_Union[ColumnInfo, _Mapping]]] = ..., num_rows: _Optional[int] = ..., size_bytes: _Optional[int] = ..., version: _Optional[int] = ..., latest_version: _Optional[int] = ..., num_versions: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., aliases: _Optional[_Mapping[str, int]] = ..., created_by: _Optional[str] = ..., alias_moves: _Optional[_Mapping[str, AliasMove]] = ...) -> None: ...

class AliasMove(_message.Message):
    __slots__ = ("moved_by", "moved_at")
    MOVED_BY_FIELD_NUMBER: _ClassVar[int]
    MOVED_AT_FIELD_NUMBER: _ClassVar[int]
    moved_by: str
    moved_at: _timestamp_pb2.Timestamp
    def __init__(self, moved_by: _Optional[str] = ..., moved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "timestamp", "metadata", "created_by")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    version: int
    timestamp: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    created_by: str
    def __init__(self, version: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_by: _Optional[str] = ...) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ...) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ...) -> None: ...

class GetTableRequest(_message.Message):
    __slots__ = ("kind", "name", "version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    version: int
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class DeleteTableRequest(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteTableResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PreviewRowsRequest(_message.Message):
    __slots__ = ("kind", "name", "version", "offset", "limit", "columns")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    version: int
    offset: int
    limit: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ...) -> None: ...

class PreviewRowsResponse(_message.Message):
    __slots__ = ("rows_json", "total_rows")
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    rows_json: str
    total_rows: int
    def __init__(self, rows_json: _Optional[str] = ..., total_rows: _Optional[int] = ...) -> None: ...

class ReadTableRequest(_message.Message):
    __slots__ = ("kind", "name", "version", "columns", "filter", "limit", "offset", "batch_rows")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    version: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    limit: int
    offset: int
    batch_rows: int
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., batch_rows: _Optional[int] = ...) -> None: ...

class ArrowChunk(_message.Message):
    __slots__ = ("arrow_ipc",)
    ARROW_IPC_FIELD_NUMBER: _ClassVar[int]
    arrow_ipc: bytes
    def __init__(self, arrow_ipc: _Optional[bytes] = ...) -> None: ...

class WriteHeader(_message.Message):
    __slots__ = ("kind", "name", "mode", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    mode: WriteMode
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ..., mode: _Optional[_Union[WriteMode, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class WriteCommit(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WriteTableRequest(_message.Message):
    __slots__ = ("header", "chunk", "commit")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    header: WriteHeader
    chunk: ArrowChunk
    commit: WriteCommit
    def __init__(self, header: _Optional[_Union[WriteHeader, _Mapping]] = ..., chunk: _Optional[_Union[ArrowChunk, _Mapping]] = ..., commit: _Optional[_Union[WriteCommit, _Mapping]] = ...) -> None: ...

class ResolveUriRequest(_message.Message):
    __slots__ = ("kind", "name", "version", "must_exist", "alias")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MUST_EXIST_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    version: int
    must_exist: bool
    alias: str
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., must_exist: _Optional[bool] = ..., alias: _Optional[str] = ...) -> None: ...

class ResolveUriResponse(_message.Message):
    __slots__ = ("uri", "exists", "version", "storage_options")
    class StorageOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    URI_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STORAGE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    exists: bool
    version: int
    storage_options: _containers.ScalarMap[str, str]
    def __init__(self, uri: _Optional[str] = ..., exists: _Optional[bool] = ..., version: _Optional[int] = ..., storage_options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CollectGarbageRequest(_message.Message):
    __slots__ = ("kind", "name", "keep_versions", "min_age_s", "dry_run")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEEP_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_AGE_S_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    keep_versions: int
    min_age_s: int
    dry_run: bool
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ..., keep_versions: _Optional[int] = ..., min_age_s: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CollectGarbageResponse(_message.Message):
    __slots__ = ("removed_versions", "removed_files", "removed_bytes", "kept_unreferenced_files", "dry_run")
    REMOVED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FILES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    KEPT_UNREFERENCED_FILES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    removed_versions: _containers.RepeatedScalarFieldContainer[int]
    removed_files: int
    removed_bytes: int
    kept_unreferenced_files: int
    dry_run: bool
    def __init__(self, removed_versions: _Optional[_Iterable[int]] = ..., removed_files: _Optional[int] = ..., removed_bytes: _Optional[int] = ..., kept_unreferenced_files: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("kind", "name", "alias", "version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    alias: str
    version: int
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("kind", "name", "alias")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    kind: TableKind
    name: str
    alias: str
    def __init__(self, kind: _Optional[_Union[TableKind, str]] = ..., name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...
