"""deploy/: the container image, the compose file and the Kubernetes manifests, checked offline (test_containers.py
runs the image and the compose file for real; no Kubernetes cluster here): every manifest validates against the
Kubernetes schemas, the KubeRay cluster has what KubeRay needs, every variable they set is one the services read,
ports, probes, addresses, TLS and the image tag agree with the services and with each other."""

from __future__ import annotations

import json
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
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
IMAGE = f"ai-platform:{VERSION}"
PLATFORM_SECRETS = {"ai-platform-config", "ai-platform-secrets"}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in documents(p)]


def compose_services() -> dict[str, dict]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]


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
        if manifest["kind"] in ("ConfigMap", "Secret") and manifest["metadata"]["name"] in PLATFORM_SECRETS:
            for key in {**manifest.get("data", {}), **manifest.get("stringData", {})}:
                set_here.setdefault(key, set()).add(name)
        for container in containers(manifest):
            if container["image"].startswith("ai-platform"):
                for entry in container.get("env", []):
                    set_here.setdefault(entry["name"], set()).add(name)
    for service_name, service in compose_services().items():
        if service["image"].startswith("ai-platform"):
            for key in service.get("environment", {}):
                set_here.setdefault(key, set()).add(f"compose.yaml:{service_name}")
    unknown = {k: sorted(v) for k, v in set_here.items() if k not in read}
    assert unknown == {}, f"variables no service reads: {unknown}"
    assert {"AIP_HOME", "AIP_TOKEN", "AIP_STORAGE_OPTIONS", "RAY_ADDRESS", "AIP_BACKEND"} <= set(set_here)


@pytest.mark.parametrize("service", list(SERVICES))
def test_ports_probes_tls_and_commands_agree_with_the_services(service):
    port = SERVICES[service]
    docs = {d["kind"]: d for d in documents(DEPLOY / "k8s" / f"{service}.yaml")}
    (container,) = containers(docs["Deployment"])
    assert container["args"][:3] == [service, "--addr", f"0.0.0.0:{port}"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        if service == "gateway":
            assert probe["httpGet"] == {"path": "/healthz", "port": port}
        else:  # the kubelet's grpc probe cannot speak TLS: the image's health command checks over it
            assert probe["exec"]["command"] == ["aip", "health"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    refs = [next(iter(e.values()))["name"] for e in container["envFrom"]]
    assert refs == ["ai-platform-config", "ai-platform-secrets"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AIP_TLS_CERT"] == f"/certs/{service}.pem" and env["AIP_TLS_KEY"] == f"/certs/{service}-key.pem"
    volumes = {v["name"]: v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/certs"]]["secret"]["secretName"] == "ai-platform-tls"
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in docs["Service"]["spec"]["ports"]}
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    if service == "gateway":
        assert ports == {"http": port} and service_ports == {"http": (port, port)}
    else:
        metrics = split_addr(default_metrics_addr(f"0.0.0.0:{port}"))[1]
        assert ports == {"grpc": port, "metrics": metrics}
        assert service_ports == {"grpc": (port, port), "metrics": (metrics, metrics)}
    config = next(m for _, m in manifests() if m["kind"] == "ConfigMap")["data"]
    assert split_addr(config[f"AIP_{service.upper()}_ADDR"]) == (service, port), "peers find it by its Service"
    compose = compose_services()[service]
    assert compose["command"] == [service, "--addr", f"0.0.0.0:{port}"]
    assert compose["environment"][f"AIP_{service.upper()}_ADDR"] == f"{service}:{port}"
    assert compose["ports"] == [f"${{AIP_PUBLISH_HOST:-127.0.0.1}}:${{AIP_{service.upper()}_PORT:-{port}}}:{port}"]
    assert compose["environment"]["AIP_TLS_CERT"] == f"${{AIP_TLS_DIR:+/certs/{service}.pem}}"


def test_every_address_names_a_service_of_the_manifests_and_no_namespace_is_assumed():
    services = {m["metadata"]["name"]: {p["port"] for p in m["spec"]["ports"]} for _, m in manifests()
                if m["kind"] == "Service"}
    (cluster,) = [m for _, m in manifests() if m["kind"] == "RayCluster"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    services[f"{cluster['metadata']['name']}-head-svc"] = {p["containerPort"] for p in head["ports"]}  # KubeRay's
    config = next(m for _, m in manifests() if m["kind"] == "ConfigMap")["data"]
    secrets = next(m for _, m in manifests() if m["metadata"]["name"] == "ai-platform-secrets")["stringData"]
    addresses = {name: value for name, value in config.items() if name.endswith("_ADDR")}
    addresses["RAY_ADDRESS"] = config["RAY_ADDRESS"].removeprefix("http://")
    addresses["aws_endpoint"] = json.loads(secrets["AIP_STORAGE_OPTIONS"])["aws_endpoint"].removeprefix("http://")
    assert len(addresses) == 7
    for name, value in addresses.items():
        host, port = split_addr(value)
        assert host in services and port in services[host], f"{name}={value} is no Service of the manifests"
    for path in (DEPLOY / "k8s").glob("*.yaml"):
        text = path.read_text()
        assert ".svc.cluster.local" not in text and "namespace:" not in text, f"{path.name} assumes a namespace"


def test_one_image_tag_everywhere():
    for _, manifest in manifests():
        for container in containers(manifest):
            if "minio" not in container["image"]:
                assert container["image"] == IMAGE, container["name"]
    for name, service in compose_services().items():
        if name != "s3":
            assert service["image"] == f"ai-platform:${{AIP_VERSION:-{VERSION}}}", name
    assert "IMAGE := ai-platform:$(VERSION)" in (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert IMAGE in readme and "ai-platform:latest" not in readme
    assert set(re.findall(r"ai-platform:(\d[\w.]*)", readme)) == {VERSION}, "the README names one tag"


def test_the_image_takes_its_base_and_torch_source_and_leaves_the_checkout_out():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.lstrip().splitlines()[0].startswith("#")
    assert "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}" in dockerfile
    assert "ARG TORCH_INDEX_URL=" in dockerfile and "/opt/wheels" not in dockerfile, "no host path baked in"
    assert 'ENTRYPOINT ["aip", "svc"]' in dockerfile and '"aip", "health"' in dockerfile
    for folder in ("ai_platform", "storage_svc", "scheduler_svc", "inference_svc", "gateway", "web", "mnist",
                   "pipelines"):
        assert f"COPY {folder} {folder}" in dockerfile, f"the image lacks {folder}/"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".ai_platform", ".git", "tests", "**/__pycache__"} <= set(ignored)


def test_compose_has_the_whole_level_3_with_health_checks_and_restart_policies():
    compose = compose_services()
    assert set(SERVICES) | {"s3", "ray-head", "ray-worker", "demo"} <= set(compose)
    assert "pool" in " ".join(compose["ray-worker"]["entrypoint"])
    scheduler = compose["scheduler"]["environment"]
    assert scheduler["AIP_BACKEND"] == "ray" and scheduler["RAY_ADDRESS"] == "http://ray-head:8265"
    assert scheduler["AIP_SCHEDULER_PUBLIC_ADDR"] == "scheduler:50052", "Ray workers report to the scheduler by name"
    assert "http://s3:9000" in compose["storage"]["environment"]["AIP_STORAGE_OPTIONS"]
    assert compose["s3"]["image"].startswith("${AIP_S3_IMAGE:-") and "RELEASE." in compose["s3"]["image"]
    for name, service in compose.items():
        if name == "demo":
            assert service["profiles"] == ["demo"] and service["restart"] == "on-failure"
            continue
        assert service["restart"] == "unless-stopped", name
        if name != "s3":
            assert service["healthcheck"]["test"][:3] == ["CMD", "aip", "health"], name
        for peer, condition in service.get("depends_on", {}).items():
            assert peer in compose and set(condition) == {"condition"}, f"{name} waits for {peer} in the long form"
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"AIP_TOKEN", "AIP_S3_ACCESS_KEY", "AIP_S3_SECRET_KEY", "AIP_S3_IMAGE", "AIP_TLS_DIR"} <= set(example)
    assert example["AIP_S3_IMAGE"] == "localhost/aip-s3:moto" and example["COMPOSE_PROFILES"] == "demo"
    assert "AIP_S3_IMAGE=quay.io/minio/minio:RELEASE." in (DEPLOY / ".env.example").read_text(), "MinIO documented"


def test_the_validation_catches_a_broken_manifest():
    deployment = next(m for name, m in manifests() if name == "storage.yaml" and m["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["comand"] = ["aip"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
