"""People with roles and tasks with their own narrow credentials. Every gRPC method and REST route is in the role
table (a test walks the descriptors and the OpenAPI document against it), and every one, called by a viewer, an
editor, an admin and a task's credential, answers as the table says: PERMISSION_DENIED / 403 below the role, never a
5xx. Then the hostile cases: expired, tampered, wrongly signed tokens; a rotated key; clock skew; a task script that
tries to delete, submit, report for another task or find the admin token; the browser door; the audit trail."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

import grpc
import httpx
import pyarrow as pa
import pytest

from ai_platform.core.auth import METHOD_ROLES, OPEN_ROUTES, ROUTE_ROLES, TASK, TASK_METHODS, Authority, Role
from ai_platform.core.wire import bearer
from ai_platform.protos.aiplatform.v1 import access_pb2, pipelines_pb2, scheduler_pb2, storage_pb2
from ai_platform.protos.inference import grpc_service_pb2
from tests.calls import (
    GRPC_CALLS,
    REST_CALLS,
    Prepared,
    arrow_body,
    grpc_call,
    prepare,
    prepare_pipelines,
    rest_status,
    start_slow_runs,
)
from tests.conftest import ROOT, start_platform
from tests.task_scripts import write_scripts

TOKEN, KEY, OLD_KEY = "roles-admin-t0ken", "roles-signing-key-" + "k" * 16, "roles-old-key-" + "o" * 20
DESCRIPTORS = [storage_pb2.DESCRIPTOR.services_by_name["StorageService"],
               scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
               grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
               access_pb2.DESCRIPTOR.services_by_name["AccessService"],
               pipelines_pb2.DESCRIPTOR.services_by_name["PipelineService"]]
MISBEHAVING = """
import os, grpc
from ai_platform.client import Client
from ai_platform.protos.aiplatform.v1 import scheduler_pb2 as pb

def attempt(call):
    try:
        call()
        return "ALLOWED"
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"

def run(input_path, output_path, params):
    with Client() as client:
        token = os.environ.get("AIP_TOKEN", "")
        return {
            "delete": attempt(lambda: client.delete_dataset("points")),
            "submit": attempt(lambda: client.submit("sneaky", "scripts/trivial.py")),
            "report": attempt(lambda: client.scheduler.stub.ReportTask(pb.ReportTaskRequest(
                task_id=params["other"], started=1.0), metadata=[("authorization", f"Bearer {token}")])),
            "read": attempt(lambda: client.read_dataset("points")),
            "write_own": attempt(lambda: client.write_dataset("own_output", __import__("pyarrow").table({"x": [1]}))),
            "write_other": attempt(lambda: client.write_dataset("points", __import__("pyarrow").table({"x": [1.0]}),
                                                                mode="append")),
            "admin_token_here": token == params["admin"] or params["admin"] in open("/proc/self/environ").read(),
            "whoami": client.whoami(),
        }
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    project = tmp_path_factory.mktemp("roles")
    write_scripts(project / "scripts")
    (project / "scripts" / "misbehaving.py").write_text(MISBEHAVING)
    prepare(project)
    running = start_platform(project, token=TOKEN, env={"AIP_AUTH_KEY": KEY, "AIP_AUTH_PREVIOUS_KEYS": OLD_KEY})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def authority():
    return Authority(TOKEN, KEY.encode())


@pytest.fixture(scope="module")
def people(authority):
    return {role: authority.person_token(f"someone-{role.label}", role, 3600) for role in Role}


def test_every_method_and_route_is_in_the_role_table(platform):
    methods = {f"/{d.full_name}/{m.name}" for d in DESCRIPTORS for m in d.methods}
    assert methods == set(METHOD_ROLES), "a method missing from the table, or a table entry of no method"
    assert TASK_METHODS <= methods
    document = httpx.get(f"{platform.url}/openapi.json", timeout=30).json()
    routes = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert routes == set(ROUTE_ROLES) | OPEN_ROUTES, "a route missing from the table, or a table entry of no route"


@pytest.fixture(scope="module")
def ready(platform):
    """The calls' shared objects, made by the admin: a finished task, two sleeping ones to cancel."""
    prepared = Prepared(arrow=arrow_body(pa.table({"x": [1.0, 2.0, 3.0]})))
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as admin:
        prepare_pipelines(admin, prepared)
        for name, script, params in (("done", "scripts/trivial.py", {}), ("sleeper", "scripts/nap.py",
                                                                          {"seconds": 600}),
                                     ("grpc_sleeper", "scripts/nap.py", {"seconds": 600})):
            prepared.names[name] = admin.post("/api/v1/tasks", json={"name": name, "script": script,
                                                                      "params": params}).json()["id"]
        prepared.task_id = prepared.names["done"]
        deadline = time.time() + 60
        while admin.get(f"/api/v1/tasks/{prepared.task_id}").json()["status"] != "completed":
            assert time.time() < deadline
            time.sleep(0.2)
        start_slow_runs(admin, prepared)
    return prepared


def test_each_role_gets_exactly_what_the_table_says(platform, ready, people, authority):
    task_credential = authority.task_token("not-a-real-task", "someone", ["datasets/scratch"], [], 600)
    wrong = []
    for who, token in (("viewer", people[Role.VIEWER]), ("task", task_credential), ("editor", people[Role.EDITOR]),
                       ("admin", people[Role.ADMIN])):
        with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            for call in REST_CALLS:
                status, problem = rest_status(http.request(**call.build(ready)))
                if call.key in OPEN_ROUTES:
                    continue
                below = who == "task" or Role[who.upper()] < ROUTE_ROLES[call.key]
                if below and status != 403 or not below and (status in (401, 403) or status >= 500):
                    wrong.append((who, call.key, status, problem[:160]))
        addrs = {"storage": platform.storage.addr, "scheduler": platform.scheduler.addr,
                 "inference": platform.inference.addr}
        for call in GRPC_CALLS:
            with grpc.insecure_channel(addrs[call.service]) as channel:
                code, message = grpc_call(channel, call, ready, bearer(token))
            needed = METHOD_ROLES[call.method]
            if who == "task":
                below = call.method not in TASK_METHODS
                role_refusal = code == grpc.StatusCode.PERMISSION_DENIED and "a task's credential may" in message
            else:
                below = needed == TASK or Role[who.upper()] < needed
                role_refusal = code == grpc.StatusCode.PERMISSION_DENIED and ("needs the role" in message
                                                                             or "takes a task's own" in message)
            failed = code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAUTHENTICATED)
            if below != role_refusal or failed:
                wrong.append((who, call.method, code.name, message[:160]))
    assert wrong == [], "answers that differ from the role table:\n" + "\n".join(map(str, wrong))


def forged(token: str, **claims: object) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    return ".".join([header, base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("="), signature])


def test_bad_tokens_are_refused_saying_why(platform, people, authority):
    other = Authority(key=b"somebody-else's-key-of-32-bytes!")
    cases = {
        "expired": (Authority(TOKEN, KEY.encode()).person_token("late", Role.ADMIN, -120), "expired"),
        "tampered": (forged(people[Role.VIEWER], role="admin"), "matches no key"),
        "wrong key": (other.person_token("mallory", Role.ADMIN, 600), "matches no key"),
        "garbage": ("not-a-token", "neither AIP_TOKEN nor a token this platform signed"),
        "unknown role": (authority.sign({"sub": "x", "role": "root", "kind": "person"}, 600), "unknown role"),
    }
    with httpx.Client(base_url=platform.url, timeout=30) as http:
        for case, (token, said) in cases.items():
            answer = http.get("/api/v1/datasets", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 401, (case, answer.text)
            assert said in answer.json()["error"]["message"] and KEY not in answer.text, (case, answer.text)
        with grpc.insecure_channel(platform.storage.addr) as channel:
            call = next(c for c in GRPC_CALLS if c.method.endswith("/ListTables"))
            code, message = grpc_call(channel, call, Prepared(), bearer(cases["expired"][0]))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" in message
        rotated = Authority(key=OLD_KEY.encode()).person_token("carol", Role.VIEWER, 600)
        assert http.get("/api/v1/datasets", headers={"Authorization": f"Bearer {rotated}"}).status_code == 200
        skewed = authority.sign({"sub": "skew", "role": "viewer", "kind": "person", "iat": int(time.time()) + 10}, 600)
        assert http.get("/api/v1/datasets", headers={"Authorization": f"Bearer {skewed}"}).status_code == 200
        denied = http.delete("/api/v1/datasets/points", headers={"Authorization": f"Bearer {people[Role.EDITOR]}"})
        assert denied.status_code == 403 and "needs the role admin" in denied.json()["error"]["message"]


def test_whoami_tokens_and_the_audit_trail(platform, authority):
    editor = {"Authorization": f"Bearer {authority.person_token('erin', Role.EDITOR, 600)}"}
    with httpx.Client(base_url=platform.url, timeout=60) as http:
        me = http.get("/api/v1/whoami", headers=editor).json()
        assert me["subject"] == "erin" and me["role"] == "editor" and me["expires_at"]
        made = http.post("/api/v1/tokens", json={"name": "alice", "role": "viewer", "ttl_s": 600},
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert made.status_code == 201 and made.json()["identity"]["subject"] == "alice"
        alice = {"Authorization": f"Bearer {made.json()['token']}"}
        assert http.get("/api/v1/whoami", headers=alice).json()["role"] == "viewer"
        assert http.post("/api/v1/tokens", json={"name": "eve", "role": "admin"}, headers=editor).status_code == 403
        bad = http.post("/api/v1/tokens", json={"name": "eve", "role": "root"}, headers={"Authorization":
                                                                                        f"Bearer {TOKEN}"})
        assert bad.status_code == 400 and "unknown role" in bad.json()["error"]["message"]
        upload = http.post("/api/v1/datasets/audited", content=arrow_body(pa.table({"x": [1]})),
                           headers={**editor, "Content-Type": "application/vnd.apache.arrow.stream"})
        assert upload.status_code == 201 and upload.json()["created_by"] == "erin"
        versions = http.get("/api/v1/datasets/audited/versions", headers=alice).json()
        assert versions[0]["created_by"] == "erin"
        moved = http.put("/api/v1/datasets/audited/aliases/golden", json={"version": 1}, headers=editor)
        assert moved.json()["alias_moves"]["golden"]["moved_by"] == "erin"
        task = http.post("/api/v1/tasks", json={"name": "owned", "script": "scripts/trivial.py"}, headers=editor)
        assert task.json()["owner"] == "erin"
        mine = http.get("/api/v1/tasks", params={"owner": "erin"}, headers=alice).json()
        assert [t["id"] for t in mine] == [task.json()["id"]]
    cli = subprocess.run([str(ROOT / ".venv/bin/aip"), "tokens", "create", "--name", "bob", "--role", "superuser"],
                         capture_output=True, text=True, env={**os.environ, "AIP_TOKEN": TOKEN,
                                                              "AIP_SCHEDULER_ADDR": platform.scheduler.addr})
    assert cli.returncode == 2 and "unknown role 'superuser'" in cli.stderr
    cli = subprocess.run([str(ROOT / ".venv/bin/aip"), "tokens", "create", "--name", "bob", "--role", "viewer",
                          "--ttl", "2d"], capture_output=True, text=True,
                         env={**os.environ, "AIP_TOKEN": TOKEN, "AIP_SCHEDULER_ADDR": platform.scheduler.addr})
    assert cli.returncode == 0, cli.stderr
    who = subprocess.run([str(ROOT / ".venv/bin/aip"), "whoami"], capture_output=True, text=True,
                         env={**os.environ, "AIP_TOKEN": cli.stdout.strip(),
                              "AIP_SCHEDULER_ADDR": platform.scheduler.addr})
    assert who.returncode == 0 and who.stdout.startswith("bob (viewer, until "), who.stdout + who.stderr


def test_a_task_holds_only_its_own_narrow_credential(platform, ready):
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        task = http.post("/api/v1/tasks", json={"name": "misbehaving", "script": "scripts/misbehaving.py",
                                                "output": "datasets/own_output",
                                                "params": {"other": ready.names["sleeper"], "admin": TOKEN}}).json()
        deadline = time.time() + 120
        while (done := http.get(f"/api/v1/tasks/{task['id']}").json())["status"] not in ("completed", "failed"):
            assert time.time() < deadline
            time.sleep(0.3)
        assert done["status"] == "completed", done["error"]
        tried = done["result"]
        assert tried["delete"].startswith("PERMISSION_DENIED") and "a task's credential may" in tried["delete"]
        assert tried["submit"].startswith("PERMISSION_DENIED")
        assert tried["report"].startswith("PERMISSION_DENIED") and "itself" in tried["report"]
        assert tried["read"] == "ALLOWED" and tried["write_own"] == "ALLOWED"
        assert tried["write_other"].startswith("PERMISSION_DENIED") and "its outputs only" in tried["write_other"]
        assert tried["admin_token_here"] is False
        assert tried["whoami"]["role"] == "task" and tried["whoami"]["task_id"] == task["id"]
        assert http.get("/api/v1/datasets/points").status_code in (200, 404)
        assert http.get("/api/v1/datasets/own_output").json()["created_by"] == f"admin (task {task['id']})"


def test_the_browser_door(platform):
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=platform.url, timeout=30) as http:
        for path in ("/v2/repository/models/cnn/unload", f"/api/v1/tasks/{'x' * 8}/cancel"):
            cross = http.post(path, headers={**admin, "Origin": "https://evil.example"})
            assert cross.status_code == 403, cross.text
        own = http.post("/v2/repository/models/cnn/load", headers={**admin, "Origin": platform.url})
        assert own.status_code != 403, "the page's own origin may"
        plain = http.post("/api/v1/models/cnn/predict", content=json.dumps({"image": [0.0] * 784}),
                          headers={**admin, "Content-Type": "text/plain"})
        assert plain.status_code == 415, plain.text
        plain_task = http.post("/api/v1/tasks", content=json.dumps({"name": "x", "script": "scripts/trivial.py"}),
                               headers={**admin, "Content-Type": "text/plain"})
        assert plain_task.status_code == 415
