"""storage_svc end to end: a real service process over a Lance lake on disk, called over gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from ai_platform.client import StorageClient
from ai_platform.core import arrow_ipc
from ai_platform.protos.aiplatform.v1 import storage_pb2 as pb
from ai_platform.protos.aiplatform.v1 import storage_pb2_grpc
from tests.conftest import ROOT, ServiceProcess, free_port

BAD_NAMES = ["../x", "a/b", "..", "", "x" * 200, "a\x00b", "../../etc/passwd", "/etc"]


def mnist_like(rows: int, seed: int = 0, split: str = "train") -> pa.Table:
    rng = np.random.default_rng(seed)
    images = pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, 256, rows * 784, dtype=np.uint8)), 784)
    return pa.table({"image": images, "label": pa.array(rng.integers(0, 10, rows)), "split": [split] * rows})


@pytest.fixture(scope="module")
def client(storage_service):
    c = StorageClient(storage_service.addr, max_message_bytes=4 * 1024 * 1024)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(client):
    return client.stub


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (pb.TableInfo,)):
            list(result)
    return info.value.code(), info.value.details()


def test_write_create_then_describe(client, lake_home):
    table = mnist_like(1000)
    info = client.write("digits", table, metadata={"source": "test"})
    assert (info.name, info.kind, info.num_rows, info.version, info.num_versions) == ("digits", pb.DATASET, 1000, 1, 1)
    assert info.uri == str(lake_home.resolve() / "datasets" / "digits.lance")
    assert [(c.name, c.type) for c in info.schema] == [
        ("image", "fixed_size_list<item: uint8>[784]"),
        ("label", "int64"),
        ("split", "string"),
    ]
    assert info.metadata["source"] == "test"
    assert info.size_bytes >= 784 * 1000
    assert info.created_at.seconds <= info.updated_at.seconds <= time.time() + 1
    got = client.get("digits")
    assert got.num_rows == 1000 and got.latest_version == 1


def test_read_round_trips_exact_bytes(client):
    table = mnist_like(3000, seed=1)
    client.write("roundtrip", table)
    back = client.read("roundtrip")
    assert back.equals(table)
    assert back.schema.field("image").type == pa.list_(pa.uint8(), 784)


def test_read_streams_in_several_messages_with_columns_filter_limit(client, stub):
    client.write("stream", mnist_like(20_000, seed=2))
    chunks = list(stub.ReadTable(pb.ReadTableRequest(kind=pb.DATASET, name="stream")))
    assert len(chunks) > 5, "a 16 MB table must arrive in several messages"
    assert sum(arrow_ipc.decode(c.arrow_ipc)[1][0].num_rows for c in chunks) == 20_000
    labels = client.read("stream", columns=["label"], filter="label < 3")
    assert labels.column_names == ["label"]
    assert labels.num_rows > 0 and max(labels.column("label").to_pylist()) < 3
    assert client.read("stream", limit=7, offset=5).num_rows == 7


def test_read_of_empty_result_still_carries_the_schema(client):
    client.write("stream2", mnist_like(10))
    empty = client.read("stream2", filter="label > 100")
    assert empty.num_rows == 0 and empty.column_names == ["image", "label", "split"]


def test_versions_append_overwrite_and_time_travel(client):
    client.write("versioned", mnist_like(100, seed=3))
    client.write("versioned", mnist_like(50, seed=4), mode="append")
    client.write("versioned", mnist_like(10, seed=5), mode="overwrite")
    versions = client.versions("versioned")
    assert [v.version for v in versions] == [1, 2, 3]
    assert [client.get("versioned", version=v).num_rows for v in (1, 2, 3)] == [100, 150, 10]
    assert client.read("versioned", version=1).equals(mnist_like(100, seed=3))
    assert client.get("versioned").num_versions == 3


def test_list_tables_by_kind(client):
    client.write("a-model", pa.table({"weights": [b"\x00" * 10]}), kind="model")
    datasets = [t.name for t in client.list("dataset")]
    assert "digits" in datasets and "a-model" not in datasets
    assert datasets == sorted(datasets)
    assert [t.name for t in client.list("model")] == ["a-model"]


def test_preview_rows_are_json(stub, client):
    client.write("preview", pa.table({"n": [1, 2, 3], "s": ["a", "b", "c"], "blob": [b"xyz", b"", b"q"]}))
    response = stub.PreviewRows(pb.PreviewRowsRequest(kind=pb.DATASET, name="preview", offset=1, limit=2))
    expected = [{"n": 2, "s": "b", "blob": "<0 bytes>"}, {"n": 3, "s": "c", "blob": "<1 bytes>"}]
    assert json.loads(response.rows_json) == expected
    assert response.total_rows == 3
    only = stub.PreviewRows(pb.PreviewRowsRequest(kind=pb.DATASET, name="preview", columns=["s"]))
    assert json.loads(only.rows_json) == [{"s": "a"}, {"s": "b"}, {"s": "c"}]


def test_resolve_uri(stub, client, lake_home):
    client.write("resolved", mnist_like(5))
    client.write("resolved", mnist_like(5), mode="append")
    r = stub.ResolveUri(pb.ResolveUriRequest(kind=pb.DATASET, name="resolved"))
    assert (r.uri, r.exists, r.version) == (str(lake_home.resolve() / "datasets/resolved.lance"), True, 2)
    assert stub.ResolveUri(pb.ResolveUriRequest(kind=pb.DATASET, name="resolved", version=1)).version == 1
    fresh = stub.ResolveUri(pb.ResolveUriRequest(kind=pb.MODEL, name="not-yet"))
    assert (fresh.exists, fresh.version) == (False, 0) and fresh.uri.endswith("/models/not-yet.lance")
    import lance

    assert lance.dataset(r.uri).count_rows() == 10


def test_delete_table(client, lake_home):
    client.write("doomed", mnist_like(5))
    assert (lake_home / "datasets/doomed.lance").is_dir()
    client.delete("doomed")
    assert not (lake_home / "datasets/doomed.lance").exists()
    assert "doomed" not in [t.name for t in client.list()]
    code, message = code_of(lambda: client.delete("doomed"))
    assert code == grpc.StatusCode.NOT_FOUND and "doomed" in message


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_invalid_argument_on_every_rpc(stub, client, lake_home, name):
    before = sorted(p.name for p in lake_home.parent.rglob("*"))
    calls = [
        lambda: stub.GetTable(pb.GetTableRequest(kind=pb.DATASET, name=name)),
        lambda: stub.ListVersions(pb.ListVersionsRequest(kind=pb.DATASET, name=name)),
        lambda: stub.DeleteTable(pb.DeleteTableRequest(kind=pb.DATASET, name=name)),
        lambda: stub.PreviewRows(pb.PreviewRowsRequest(kind=pb.MODEL, name=name)),
        lambda: stub.ResolveUri(pb.ResolveUriRequest(kind=pb.MODEL, name=name)),
        lambda: stub.ReadTable(pb.ReadTableRequest(kind=pb.DATASET, name=name)),
        lambda: client.write(name, mnist_like(1)),
    ]
    for call in calls:
        code, message = code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
        assert "invalid" in message and "name" in message
    assert sorted(p.name for p in lake_home.parent.rglob("*")) == before


def test_unknown_kind_is_invalid_argument(stub):
    code, message = code_of(lambda: stub.ListTables(pb.ListTablesRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kind" in message


def test_unknown_table_and_version_are_not_found(stub, client):
    for call in (
        lambda: stub.GetTable(pb.GetTableRequest(kind=pb.DATASET, name="nope")),
        lambda: stub.ListVersions(pb.ListVersionsRequest(kind=pb.MODEL, name="nope")),
        lambda: stub.PreviewRows(pb.PreviewRowsRequest(kind=pb.DATASET, name="nope")),
        lambda: stub.ReadTable(pb.ReadTableRequest(kind=pb.DATASET, name="nope")),
        lambda: stub.ResolveUri(pb.ResolveUriRequest(kind=pb.DATASET, name="nope", must_exist=True)),
    ):
        code, message = code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and "'nope' does not exist" in message
    client.write("v1only", mnist_like(3))
    code, message = code_of(lambda: client.get("v1only", version=9))
    assert code == grpc.StatusCode.NOT_FOUND and "no version 9" in message
    code, _ = code_of(lambda: list(client.read_batches("v1only", version=9)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_create_on_existing_name_is_already_exists(client):
    client.write("taken", mnist_like(4))
    code, message = code_of(lambda: client.write("taken", mnist_like(9)))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "taken" in message
    assert client.get("taken").num_rows == 4 and client.get("taken").num_versions == 1


def test_append_with_other_schema_is_failed_precondition_and_keeps_data(client):
    client.write("strict", mnist_like(6))
    code, message = code_of(lambda: client.write("strict", pa.table({"x": [1.0]}), mode="append"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "schema differs" in message
    info = client.get("strict")
    assert (info.num_rows, info.num_versions) == (6, 1)


def test_bad_filter_and_unknown_columns_are_invalid_argument(client):
    client.write("filtered", mnist_like(3))
    code, message = code_of(lambda: client.read("filtered", filter="nosuch > 1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nosuch" in message and ".rs:" not in message
    code, message = code_of(lambda: client.read("filtered", columns=["label", "ghost"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ghost" in message


COMMIT = pb.WriteTableRequest(commit=pb.WriteCommit())


def _raw_write(stub, messages):
    return stub.WriteTable(iter(messages))


def test_corrupt_arrow_bytes_commit_nothing(stub, client):
    client.write("fragile", mnist_like(8))
    good = arrow_ipc.encode(mnist_like(8).schema, mnist_like(8).to_batches())
    header = pb.WriteTableRequest(header=pb.WriteHeader(kind=pb.DATASET, name="fragile", mode=pb.OVERWRITE))
    for chunks in ([b"not arrow at all"], [good, b"\xff\xff\xff\xff garbage"], [good, good[: len(good) // 2]]):
        messages = [header, *[pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=c)) for c in chunks], COMMIT]
        code, message = code_of(lambda messages=messages: _raw_write(stub, messages))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid Arrow IPC stream" in message
    info = client.get("fragile")
    assert (info.num_versions, info.num_rows) == (1, 8)


def test_malformed_write_streams_are_invalid_argument(stub):
    chunk = pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=arrow_ipc.encode(mnist_like(1).schema, [])))
    header = pb.WriteTableRequest(header=pb.WriteHeader(kind=pb.DATASET, name="malformed"))
    for messages, expected in (
        ([], "WriteHeader"),
        ([chunk], "WriteHeader"),
        ([header], "ArrowChunk"),
        ([header, COMMIT], "ArrowChunk"),
        ([header, chunk, header, COMMIT], "message 3 is a second WriteHeader"),
        ([header, header, chunk, COMMIT], "message 2 is a second WriteHeader"),
        ([header, pb.WriteTableRequest(), COMMIT], "message 2 carries nothing"),
    ):
        code, message = code_of(lambda messages=messages: _raw_write(stub, messages))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in message
    code, message = code_of(lambda: _raw_write(stub, [header, chunk]))
    assert code == grpc.StatusCode.CANCELLED and "without a WriteCommit" in message
    code, _ = code_of(lambda: stub.GetTable(pb.GetTableRequest(kind=pb.DATASET, name="malformed")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_client_cancel_half_way_commits_nothing(storage_service, client):
    client.write("cancelled", mnist_like(10))
    table = mnist_like(2000, seed=9)
    sent = threading.Event()

    def slow_requests():
        yield pb.WriteTableRequest(header=pb.WriteHeader(kind=pb.DATASET, name="cancelled", mode=pb.OVERWRITE))
        for batch in table.to_batches(max_chunksize=200):
            yield pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=arrow_ipc.encode(table.schema, [batch])))
            sent.set()
            time.sleep(0.2)

    future = client.stub.WriteTable.future(slow_requests())
    assert sent.wait(10)
    time.sleep(0.5)
    future.cancel()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    time.sleep(1.0)  # let the service notice and unwind
    info = client.get("cancelled")
    assert (info.num_versions, info.num_rows) == (1, 10)
    assert client.read("cancelled").equals(mnist_like(10))


def test_oversized_message_is_resource_exhausted_naming_the_limit(client, stub):
    big = mnist_like(6000)  # ~4.7 MB in one message, over the service's 4 MiB limit
    payload = arrow_ipc.encode(big.schema, big.to_batches())
    channel = grpc.insecure_channel(
        client.channel._channel.target().decode(), options=[("grpc.max_send_message_length", 64 << 20)]
    )
    raw = storage_pb2_grpc.StorageServiceStub(channel)
    messages = [
        pb.WriteTableRequest(header=pb.WriteHeader(kind=pb.DATASET, name="huge")),
        pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=payload)),
        COMMIT,
    ]
    code, message = code_of(lambda: raw.WriteTable(iter(messages)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(4 * 1024 * 1024) in message
    assert "huge" not in [t.name for t in client.list()]
    channel.close()


def test_large_tables_are_written_and_read_within_the_message_limit(client):
    table = mnist_like(12_000, seed=11)  # ~9.5 MB, more than twice the 4 MiB limit
    client.write("bigger", table)
    assert client.read("bigger").equals(table)


# -- service plumbing ---------------------------------------------------------------


def test_health_reflection_and_metrics(storage_service, client):
    with grpc.insecure_channel(storage_service.addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="aiplatform.v1.StorageService")).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert {"aiplatform.v1.StorageService", "grpc.health.v1.Health"} <= set(services)
    client.list()
    code_of(lambda: client.get("never-there"))
    code_of(lambda: client.get("../bad"))
    body = urllib.request.urlopen(f"http://{storage_service.metrics_addr}/metrics", timeout=5).read().decode()
    samples = [s for family in text_string_to_metric_families(body) for s in family.samples]

    def value(name, **labels):
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    assert value("aip_grpc_requests_total", service="storage", method="ListTables", code="OK") >= 1
    assert value("aip_grpc_requests_total", service="storage", code="NOT_FOUND") >= 1
    assert value("aip_grpc_requests_total", service="storage", code="INVALID_ARGUMENT") >= 1
    count = value("aip_grpc_request_seconds_count", service="storage", method="ListTables")
    assert count >= 1 and value("aip_grpc_request_seconds_bucket", method="ListTables", le="+Inf") == count


def test_help_lists_the_flags():
    out = subprocess.run(
        [sys.executable, "-m", "storage_svc", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    for flag in ("--home", "--addr", "--metrics-addr", "--max-message-mb", "--grace-s", "--scheduler-addr"):
        assert flag in out
    assert "--storage-options" in out


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AIP_MAX_MESSAGE_MB", "lots", "AIP_MAX_MESSAGE_MB must be an integer, got 'lots'"),
        ("AIP_GRACE_S", "soon", "AIP_GRACE_S must be a number, got 'soon'"),
        ("AIP_STORAGE_OPTIONS", "{endpoint: x}", "AIP_STORAGE_OPTIONS must be a JSON object"),
        ("AIP_STORAGE_OPTIONS", '["a"]', "AIP_STORAGE_OPTIONS must be a JSON object"),
    ],
)
def test_a_malformed_setting_is_named_at_start(tmp_path, variable, value, message):
    result = subprocess.run(
        [sys.executable, "-m", "storage_svc", "--home", str(tmp_path / "home")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, variable: value},
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "home").exists(), "nothing was created"


def test_port_in_use_is_a_clear_error(storage_service, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "storage_svc",
            "--home",
            str(tmp_path / "home"),
            "--addr",
            storage_service.addr,
            "--metrics-addr",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"cannot bind {storage_service.addr}" in result.stderr


def test_sigterm_drains_an_in_flight_write(tmp_path):
    service = ServiceProcess("storage_svc", tmp_path / "home", ["--grace-s", "20"]).start()
    client = StorageClient(service.addr)
    table = mnist_like(1000, seed=12)
    started = threading.Event()

    def requests():
        yield pb.WriteTableRequest(header=pb.WriteHeader(kind=pb.DATASET, name="drained"))
        for i, batch in enumerate(table.to_batches(max_chunksize=100)):
            yield pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=arrow_ipc.encode(table.schema, [batch])))
            if i == 0:
                started.set()
            time.sleep(0.15)
        yield COMMIT

    future = client.stub.WriteTable.future(requests())
    assert started.wait(10)
    time.sleep(0.5)  # the call is in flight at the service
    service.proc.send_signal(signal.SIGTERM)
    info = future.result(timeout=30)
    assert info.num_rows == 1000
    assert service.proc.wait(30) == 0
    client.close()
    again = ServiceProcess("storage_svc", tmp_path / "home").start()
    try:
        assert StorageClient(again.addr).read("drained").equals(table)
    finally:
        again.stop()


def test_sigkill_in_the_middle_of_a_large_write_keeps_the_last_version(tmp_path):
    home = tmp_path / "home"
    service = ServiceProcess("storage_svc", home).start()
    client = StorageClient(service.addr)
    original = mnist_like(500, seed=13)
    client.write("survivor", original)
    big = mnist_like(40_000, seed=14)
    half_sent = threading.Event()

    def requests():
        yield pb.WriteTableRequest(header=pb.WriteHeader(kind=pb.DATASET, name="survivor", mode=pb.OVERWRITE))
        for i, batch in enumerate(big.to_batches(max_chunksize=1000)):
            yield pb.WriteTableRequest(chunk=pb.ArrowChunk(arrow_ipc=arrow_ipc.encode(big.schema, [batch])))
            if i == 20:
                half_sent.set()
                time.sleep(0.5)

    future = client.stub.WriteTable.future(requests())
    assert half_sent.wait(20)
    time.sleep(0.3)
    service.proc.kill()
    service.proc.wait(10)
    with pytest.raises(grpc.RpcError):
        future.result(timeout=20)
    client.close()
    data_files = list((home / "datasets/survivor.lance/data").iterdir())
    assert data_files, "the killed write had started writing data"
    restarted = ServiceProcess("storage_svc", home).start()
    try:
        again = StorageClient(restarted.addr)
        info = again.get("survivor")
        assert (info.version, info.num_versions, info.num_rows) == (1, 1, 500)
        assert again.read("survivor").equals(original)
        on_disk = sum(f.stat().st_size for f in (home / "datasets/survivor.lance/data").iterdir())
        orphan_bytes = on_disk - info.size_bytes
        assert orphan_bytes > 1_000_000, "size_bytes counts what version 1 references, not the killed write's file"
        young = again.collect_garbage("survivor")
        assert (young.removed_files, young.kept_unreferenced_files) == (0, 1), "a fresh file may be a live write's"
        planned = again.collect_garbage("survivor", min_age_s=0, dry_run=True)
        assert (planned.dry_run, planned.removed_files, planned.removed_bytes) == (True, 1, orphan_bytes)
        assert sum(f.stat().st_size for f in (home / "datasets/survivor.lance/data").iterdir()) == on_disk
        done = again.collect_garbage("survivor", min_age_s=0)
        assert (done.dry_run, done.removed_files, done.removed_bytes, done.removed_versions) == (
            False, 1, orphan_bytes, [])
        assert sum(f.stat().st_size for f in (home / "datasets/survivor.lance/data").iterdir()) == info.size_bytes
        assert again.read("survivor").equals(original)
        again.close()
    finally:
        restarted.stop()


def test_gc_removes_old_versions_on_request_and_keeps_the_newest(client, stub):
    tables = [mnist_like(300, seed=s) for s in (21, 22, 23)]
    client.write("pruned", tables[0])
    for table in tables[1:]:
        client.write("pruned", table, mode="overwrite")
    untouched = client.collect_garbage("pruned", min_age_s=0)
    assert (untouched.removed_versions, untouched.removed_files) == ([], 0), "without keep_versions versions stay"
    planned = client.collect_garbage("pruned", keep_versions=1, dry_run=True)
    assert (list(planned.removed_versions), planned.removed_files) == ([1, 2], 2)
    assert [v.version for v in client.versions("pruned")] == [1, 2, 3]
    done = client.collect_garbage("pruned", keep_versions=1)
    assert (list(done.removed_versions), done.removed_files, done.removed_bytes) == (
        [1, 2], 2, planned.removed_bytes)
    assert [v.version for v in client.versions("pruned")] == [3]
    assert client.read("pruned").equals(tables[2])
    code, details = code_of(lambda: client.read("pruned", version=1))
    assert code == grpc.StatusCode.NOT_FOUND
    for bad in ({"keep_versions": -1}, {"min_age_s": -5}):
        code, details = code_of(lambda bad=bad: stub.CollectGarbage(pb.CollectGarbageRequest(
            kind=pb.DATASET, name="pruned", **bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and ">= 0" in details
    code, details = code_of(lambda: client.collect_garbage("never_written"))
    assert code == grpc.StatusCode.NOT_FOUND and "never_written" in details
