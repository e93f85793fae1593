"""Contracts: checked-in stubs match protos/, and the inference protocol matches Triton's on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ai_platform.protos import generate
from ai_platform.protos.inference import grpc_service_pb2, model_config_pb2
from tests.proto_shape import wire_shape

ROOT = Path(__file__).resolve().parents[1]


def test_checked_in_stubs_match_the_protos(tmp_path):
    written = generate.generate(tmp_path)
    assert written, "the generator wrote nothing"
    drifted = [
        str(path.relative_to(tmp_path))
        for path in written
        if path.read_bytes() != (generate.STUB_ROOT / path.relative_to(tmp_path)).read_bytes()
    ]
    fresh = {p.relative_to(tmp_path) for p in written}
    stale = {
        p.relative_to(generate.STUB_ROOT)
        for package in generate.PROTO_PACKAGES
        for p in (generate.STUB_ROOT / package).rglob("*.py*")
        if p.suffix in {".py", ".pyi"}
    } - fresh
    assert not drifted, f"stubs differ from protos/ (run `make protos`): {drifted}"
    assert not stale, f"stubs with no proto left: {sorted(map(str, stale))}"


# tritonclient registers the same `inference.*` names in the default pool, so it is read in its own process.
_TRITON_SHAPE = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.proto_shape import wire_shape
from tritonclient.grpc import service_pb2, model_config_pb2
print(json.dumps({{"service": wire_shape(service_pb2.DESCRIPTOR), "config": wire_shape(model_config_pb2.DESCRIPTOR)}}))
"""


# Fields of the Open Inference Protocol (KServe v2) that Triton's copy lacks; tritonclient skips them on the wire.
OIP_EXTENSIONS = {
    "ModelMetadataResponse": [["parameters", 6, 11, 3, "ParametersEntry"]],
    "ModelMetadataResponse.TensorMetadata": [["parameters", 4, 11, 3, "ParametersEntry"]],
}


def test_inference_protocol_is_wire_compatible_with_tritonclient():
    out = subprocess.run([sys.executable, "-c", _TRITON_SHAPE], capture_output=True, text=True, check=True, cwd=ROOT)
    triton = json.loads(out.stdout)
    ours = {"service": wire_shape(grpc_service_pb2.DESCRIPTOR), "config": wire_shape(model_config_pb2.DESCRIPTOR)}
    assert ours["service"]["services"]["GRPCInferenceService"], "no service methods"
    for part in ("service", "config"):
        assert ours[part]["package"] == triton[part]["package"] == "inference"
        assert ours[part]["services"] == triton[part]["services"]
        assert ours[part]["enums"] == triton[part]["enums"]
        missing = set(triton[part]["messages"]) - set(ours[part]["messages"])
        assert not missing, f"messages tritonclient has and we lack: {missing}"
        for name, fields in triton[part]["messages"].items():
            mine = ours[part]["messages"][name]
            extra = [f for f in mine if f not in fields]
            assert [f for f in mine if f in fields] == fields, f"message {name} differs from Triton's"
            assert extra == OIP_EXTENSIONS.get(name, []), f"message {name} has fields Triton lacks: {extra}"
