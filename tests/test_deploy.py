"""deploy/: the container image, the compose file and the Kubernetes manifests, checked offline (no container
runtime here): every manifest validates against the Kubernetes schemas, the KubeRay cluster has what KubeRay
needs, every variable they set is one the services read, and ports and probes agree with the services' settings."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from ai_platform.core.settings import (
    SERVICE_SETTINGS,
    ClientSettings,
    default_metrics_addr,
    split_addr,
)
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"
SERVICES = {"storage": 50051, "scheduler": 50052, "inference": 50053, "gateway": 8000}
RAY_VERSION = re.search(r'"ray\[[a-z,]+\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1]


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in documents(p)]


def variables_the_platform_reads() -> set[str]:
    return {declared.env for cls in [*SERVICE_SETTINGS.values(), ClientSettings] for _, declared in cls.declarations()}


def containers(manifest: dict) -> list[dict]:
    spec = manifest.get("spec", {})
    if manifest["kind"] == "RayCluster":
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        return [c for g in groups for c in g["template"]["spec"]["containers"]]
    return spec["template"]["spec"]["containers"] if "template" in spec else []


@pytest.mark.parametrize(("name", "manifest"), [m for m in manifests() if m[1]["kind"] != "RayCluster"],
                         ids=lambda v: v if isinstance(v, str) else v.get("kind", ""))
def test_every_kubernetes_manifest_validates_against_the_schemas(name, manifest):
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_the_ray_cluster_has_what_kuberay_requires():
    (cluster,) = [m for _, m in manifests() if m["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY_VERSION, "the cluster runs the Ray the platform pins"
    assert isinstance(spec["headGroupSpec"]["rayStartParams"], dict)
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["image"]
    pool = spec["workerGroupSpecs"][0]["rayStartParams"]["resources"]
    assert '\\"pool\\": 1' in pool, "the worker group offers the custom resource tasks pin to"
    config = next(m for _, m in manifests() if m["kind"] == "ConfigMap")
    head_service = f"{cluster['metadata']['name']}-head-svc"  # the Service KubeRay creates for the head
    assert config["data"]["RAY_ADDRESS"] == f"http://{head_service}:8265"


def test_every_variable_the_deployments_set_is_one_the_platform_reads():
    read = variables_the_platform_reads()
    set_here: dict[str, set[str]] = {}
    for name, manifest in manifests():
        if manifest["kind"] in ("ConfigMap", "Secret"):
            for key in {**manifest.get("data", {}), **manifest.get("stringData", {})}:
                set_here.setdefault(key, set()).add(name)
        for container in containers(manifest):
            for entry in container.get("env", []):
                set_here.setdefault(entry["name"], set()).add(name)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for service_name, service in compose["services"].items():
        if service["image"].startswith("ai-platform"):
            for key in service.get("environment", {}):
                set_here.setdefault(key, set()).add(f"compose.yaml:{service_name}")
    unknown = {k: sorted(v) for k, v in set_here.items() if k not in read}
    assert unknown == {}, f"variables no service reads: {unknown}"
    assert {"AIP_HOME", "AIP_TOKEN", "AIP_STORAGE_OPTIONS", "RAY_ADDRESS", "AIP_BACKEND"} <= set(set_here)


@pytest.mark.parametrize("service", list(SERVICES))
def test_ports_probes_and_commands_agree_with_the_services(service):
    port = SERVICES[service]
    docs = {d["kind"]: d for d in documents(DEPLOY / "k8s" / f"{service}.yaml")}
    (container,) = containers(docs["Deployment"])
    assert container["args"][:3] == [service, "--addr", f"0.0.0.0:{port}"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe_kind = "httpGet" if service == "gateway" else "grpc"
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe[probe_kind]["port"] == port
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    refs = [next(iter(e.values()))["name"] for e in container["envFrom"]]
    assert refs == ["ai-platform-config", "ai-platform-secrets"]
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in docs["Service"]["spec"]["ports"]}
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    if service == "gateway":
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert ports == {"http": port} and service_ports == {"http": (port, port)}
    else:
        metrics = split_addr(default_metrics_addr(f"0.0.0.0:{port}"))[1]
        assert ports == {"grpc": port, "metrics": metrics}
        assert service_ports == {"grpc": (port, port), "metrics": (metrics, metrics)}
    config = next(m for _, m in manifests() if m["kind"] == "ConfigMap")["data"]
    assert split_addr(config[f"AIP_{service.upper()}_ADDR"]) == (service, port), "peers find it by its Service"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][service]
    assert compose["command"] == [service, "--addr", f"0.0.0.0:{port}"]
    assert compose["environment"][f"AIP_{service.upper()}_ADDR"] == f"{service}:{port}"
    assert compose["ports"] == [f"{port}:{port}"]


def test_the_image_runs_aip_svc_and_compose_has_the_whole_level_3():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.lstrip().splitlines()[0].startswith("#") and "\nFROM python:3.11" in dockerfile
    assert 'ENTRYPOINT ["aip", "svc"]' in dockerfile
    for folder in ("ai_platform", "storage_svc", "scheduler_svc", "inference_svc", "gateway", "web", "mnist"):
        assert f"COPY {folder} {folder}" in dockerfile, f"the image lacks {folder}/"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert set(SERVICES) | {"s3", "ray-head", "ray-worker"} <= set(compose)
    assert '"pool\\": 1' in " ".join(compose["ray-worker"]["entrypoint"]) or "pool" in str(compose["ray-worker"])
    scheduler = compose["scheduler"]["environment"]
    assert scheduler["AIP_BACKEND"] == "ray" and scheduler["RAY_ADDRESS"] == "http://ray-head:8265"
    assert scheduler["AIP_SCHEDULER_PUBLIC_ADDR"] == "scheduler:50052", "Ray workers report to the scheduler by name"
    options = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["x-platform-env"]["AIP_STORAGE_OPTIONS"]
    assert "http://s3:9000" in options


def test_the_validation_catches_a_broken_manifest():
    deployment = next(m for name, m in manifests() if name == "storage.yaml" and m["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
