"""One home for each concern: settings read in one place, the wire tables agree, roles import only their own."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ai_platform.cli.launcher import inference_socket_path
from ai_platform.core import settings as settings_module
from ai_platform.core.errors import Internal, InvalidArgument, NotFound, PlatformError, Unavailable
from ai_platform.core.settings import (
    SERVICE_SETTINGS,
    SUN_PATH_MAX,
    ClientSettings,
    SchedulerSettings,
    SettingsError,
    StorageSettings,
    TaskSettings,
    markdown_table,
)
from ai_platform.core.wire import DATATYPES, TABLE_KINDS, TASK_STATUSES, WRITE_MODES, error_from_rpc
from ai_platform.protos.aiplatform.v1 import scheduler_pb2, storage_pb2
from ai_platform.protos.inference import model_config_pb2
from tests.conftest import ROOT

HAND_WRITTEN = ["ai_platform", "storage_svc", "scheduler_svc", "inference_svc", "gateway", "mnist"]
SERVICE_PACKAGES = ["storage_svc", "scheduler_svc", "inference_svc", "gateway", "ai_platform/core", "ai_platform/sdk"]


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py") if "protos" not in p.parts]


def environment_reads(path: Path) -> list[str]:
    """``os.environ.get(...)``, ``os.getenv(...)`` and ``os.environ[...]`` reads in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        text = ast.unparse(node)
        if isinstance(node, ast.Call) and text.startswith(("os.environ.get(", "os.getenv(")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {text}")
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and text.startswith("os.environ["):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {text}")
    return found


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_only_the_settings_module_reads_the_environment():
    reads = [r for p in python_files(*HAND_WRITTEN) if p.name != "settings.py" for r in environment_reads(p)]
    allowed = [r for r in reads if "PYTHONPATH" in r]
    assert reads == allowed == [], f"environment read outside ai_platform/core/settings.py: {reads}"


def test_services_and_the_task_runtime_never_import_the_client_or_the_cli():
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith(("ai_platform.client",
                                                                                          "ai_platform.cli")))
        for p in python_files(*SERVICE_PACKAGES)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_a_task_worker_imports_neither_grpc_nor_the_user_tools():
    code = ("import sys, json, ai_platform.sdk.worker, ai_platform.sdk; print(json.dumps(sorted(m for m in sys.modules"
            " if m.split('.')[0] in ('grpc', 'torch', 'lance', 'pyarrow', 'pydantic')"
            " or m.startswith(('ai_platform.cli', 'ai_platform.client')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def test_readme_configuration_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- settings:begin -->\n", "\n<!-- settings:end -->"
    assert begin in readme and end in readme, "README lost its configuration table markers"
    table = readme.split(begin, 1)[1].split(end, 1)[0]
    assert table == markdown_table(), "README's table is stale: paste `python -m ai_platform.core.settings`"


def test_every_variable_has_one_meaning_and_one_default():
    seen: dict[str, tuple] = {}
    for cls in [*SERVICE_SETTINGS.values(), ClientSettings]:
        for f, declared in cls.declarations():
            entry = (declared.doc, settings_module._shown(f, declared))
            assert seen.setdefault(declared.env, entry) == entry, f"{declared.env} is declared twice, differently"
    assert "AIP_HOME" in seen and "RAY_ADDRESS" in seen and "AIP_TOKEN" in seen


@pytest.mark.parametrize("module", ["storage_svc", "scheduler_svc", "inference_svc", "gateway"])
def test_help_lists_every_setting_of_the_service(module):
    service = {"storage_svc": "storage", "scheduler_svc": "scheduler", "inference_svc": "inference"}.get(module, module)
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    for _, declared in SERVICE_SETTINGS[service].declarations():
        assert declared.env in out.stdout, f"{module} --help does not mention {declared.env}"


@pytest.mark.parametrize(("module", "variable", "value", "says"), [
    ("storage_svc", "AIP_MAX_MESSAGE_MB", "lots", "AIP_MAX_MESSAGE_MB must be an integer, got 'lots'"),
    ("storage_svc", "AIP_STORAGE_OPTIONS", "[1]", "AIP_STORAGE_OPTIONS must be a JSON object"),
    ("scheduler_svc", "AIP_BACKEND", "kubernetes", "AIP_BACKEND must be one of local, ray, got 'kubernetes'"),
    ("scheduler_svc", "AIP_MAX_PARALLEL", "0", "AIP_MAX_PARALLEL must be a positive integer"),
    ("inference_svc", "AIP_DEVICE", "tpu", "AIP_DEVICE must be one of auto, cpu, cuda"),
    ("gateway", "AIP_GATEWAY_ADDR", "localhost", "AIP_GATEWAY_ADDR must be HOST:PORT"),
    ("gateway", "AIP_BODY_LIMIT_MB", "-1", "AIP_BODY_LIMIT_MB must be a finite number >= 0"),
    ("inference_svc", "AIP_INFERENCE_SOCKET", "/tmp/" + "s" * 120,
     "AIP_INFERENCE_SOCKET is 125 bytes long; a Unix socket's path takes at most 107"),
    ("scheduler_svc", "AIP_AUTH_KEY", "short-key", "AIP_AUTH_KEY must be a signing key of at least 32 bytes"),
    ("gateway", "AIP_AUTH_PREVIOUS_KEYS", "k" * 40 + ",old", "AIP_AUTH_PREVIOUS_KEYS must be"),
])
def test_a_bad_value_names_the_variable_and_starts_nothing(tmp_path, module, variable, value, says):
    home = tmp_path / "home"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "AIP_HOME": str(home), variable: value}
    done = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert not home.exists()


def test_a_bad_flag_names_the_flag(tmp_path):
    done = subprocess.run([sys.executable, "-m", "storage_svc", "--grace-s", "soon"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "--grace-s must be a number, got 'soon'" in done.stderr


def test_flags_override_the_environment_and_settings_travel_to_workers():
    settings = StorageSettings.from_env({"AIP_HOME": "/lake", "AIP_GRACE_S": "3"})
    assert (settings.home, settings.grace_s, settings.max_message_mb) == ("/lake", 3.0, 64)
    scheduler = SchedulerSettings.from_env({"AIP_HOME": "s3://bucket/prefix", "AIP_STORAGE_ADDR": "10.0.0.1:1",
                                            "AIP_STORAGE_OPTIONS": '{"allow_http": true}', "AIP_TOKEN": "t"})
    worker = ClientSettings.from_env(scheduler.worker_env())
    assert (worker.home, worker.storage_addr, worker.storage_options) == (
        "s3://bucket/prefix", "10.0.0.1:1", {"allow_http": "true"})
    assert worker.token == "", "a task gets its own narrow credential, never the admin token"
    with pytest.raises(SettingsError, match="AIP_GRACE_S"):
        StorageSettings.from_env({"AIP_GRACE_S": "nan"})


def test_a_few_variables_read_over_settings_give_what_the_whole_environment_would():
    """The fork server reads every task's settings once; each task's own variables are read over them."""
    shared = {"AIP_SCHEDULER_ADDR": "10.0.0.2:7", "AIP_DIE_WITH_PARENT": "1", "AIP_TASK_ID": "left-over"}
    own = {"AIP_TASK_ID": "abc", "AIP_TASK_SCRIPT": "/p/x.py", "AIP_TASK_TOKEN": "", "UNRELATED": "1",
           "AIP_SCHEDULER_ADDR": ""}  # empty: unset, as in the environment
    base = TaskSettings.from_env(shared)
    assert base.overlaid(own) == TaskSettings.from_env({**shared, **own})
    assert base.task_id == "left-over", "the settings read over are a copy"
    with pytest.raises(SettingsError, match="AIP_GRACE_S"):
        StorageSettings.from_env({}).overlaid({"AIP_GRACE_S": "nan"})


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_a_peer_status_becomes_one_platform_error_whatever_the_caller():
    assert isinstance(error_from_rpc(rpc_error(grpc.StatusCode.NOT_FOUND, "no such"), "storage_svc at a:1"), NotFound)
    down = error_from_rpc(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"), "storage_svc at a:1")
    assert isinstance(down, Unavailable) and down.message == "storage_svc at a:1 is unavailable: slow"
    odd = error_from_rpc(rpc_error(grpc.StatusCode.DATA_LOSS, "bad disk"), "storage_svc at a:1")
    assert isinstance(odd, Internal) and odd.summary == "storage_svc failed" and "bad disk" in odd.message
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        error = error_from_rpc(rpc_error(code, "x"), "peer")
        assert isinstance(error, PlatformError)
        if code not in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ABORTED, grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.DEADLINE_EXCEEDED) and not isinstance(error, Internal):
            assert error.grpc_code == code, f"{code} does not round-trip"


def test_enum_tables_cover_the_protos_and_refuse_what_they_do_not_know():
    assert set(TABLE_KINDS.numbers.values()) == set(storage_pb2.TableKind.values()) - {0}
    assert set(WRITE_MODES.numbers.values()) == set(storage_pb2.WriteMode.values()) - {0}
    assert set(TASK_STATUSES.numbers.values()) == set(scheduler_pb2.TaskStatus.values()) - {0}
    assert WRITE_MODES.name(0) == "create"
    with pytest.raises(InvalidArgument, match="unknown task status 0"):
        TASK_STATUSES.name(0)
    with pytest.raises(InvalidArgument, match="unknown kind 'tables'"):
        TABLE_KINDS.number("tables")


def test_one_datatype_table_for_numpy_typed_contents_and_model_config():
    import numpy as np

    for name, kind in DATATYPES.items():
        assert np.dtype(kind.numpy).name == kind.numpy
        assert model_config_pb2.DataType.Name(kind.config_type) == f"TYPE_{name}"
    assert DATATYPES["FP16"].contents_field is None  # Triton carries FP16 only as raw bytes


def test_aip_up_puts_the_inference_socket_under_the_home_unless_the_path_is_too_long(tmp_path):
    assert inference_socket_path(tmp_path) == str(tmp_path / "run" / "inference.sock")
    deep = tmp_path / ("d" * 100)
    path = inference_socket_path(deep)
    assert path.startswith("/tmp/aip-") and len(path.encode()) <= SUN_PATH_MAX
    assert path == inference_socket_path(deep) != inference_socket_path(tmp_path / ("e" * 100)), "one per home"
