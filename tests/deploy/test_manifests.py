"""deploy/: the Containerfile, compose.yaml, nginx.conf and the Kubernetes manifests, checked as
far as this machine allows without a container runtime, a cluster or schemas from the network."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVICES = ("scheduler", "runner", "logs", "api")
IN_CI = os.environ.get("CI") == "true"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        objects += load_all(DEPLOY / "k8s" / name)
    return objects


# --- images ------------------------------------------------------------------------------------


def lock_closure(package: str) -> set[str]:
    """Every package `package` needs, by the lockfile (no extras beyond those it asks for)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    by_name = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(package, ())]
    while todo:
        name, extras = todo.pop()
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        entry = by_name[name]
        deps = list(entry.get("dependencies", []))
        for extra in extras:
            deps += entry.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            todo.append((dep["name"], tuple(dep.get("extra", ()))))
    return {key.split("[")[0] for key in seen}


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_installs_its_own_package_from_the_lockfile(service: str) -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in text
    stage = re.search(rf"^FROM workspace AS build-{service}\n(.*?)(?=^FROM )", text, re.M | re.S)
    assert stage, f"no build stage for {service}"
    sync = stage.group(1)
    for flag in ("uv sync", "--frozen", "--no-dev", "--no-editable", f"--package cronbus-{service}"):
        assert flag in sync, (service, flag)
    final = re.search(rf"^FROM runtime AS {service}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert final, f"no target {service}"
    assert f"COPY --from=build-{service} /opt/cronbus /opt/cronbus" in final.group(1)
    assert f'CMD ["{service}"]' in final.group(1)
    runtime = re.search(r"^FROM \$\{BASE\} AS runtime\n(.*?)(?=^FROM )", text, re.M | re.S)
    assert runtime
    assert re.search(r"^USER 10001:10001$", runtime.group(1), re.M)
    assert "HEALTHCHECK" in runtime.group(1) and "/readyz" in runtime.group(1)
    assert "cronbus health --service" in runtime.group(1)
    assert 'ENTRYPOINT ["cronbus"]' in runtime.group(1)


def test_only_the_api_image_carries_litestar_and_only_sql_services_carry_drivers() -> None:
    closures = {service: lock_closure(f"cronbus-{service}") for service in SERVICES}
    assert "litestar" in closures["api"]
    for service in ("scheduler", "runner", "logs"):
        assert "litestar" not in closures[service], service
    for service in ("scheduler", "runner"):
        assert not {"sqlalchemy", "asyncpg"} & closures[service], service
    assert {"sqlalchemy", "asyncpg"} <= closures["logs"]


# --- compose -----------------------------------------------------------------------------------


def test_compose_topology() -> None:
    services = compose()["services"]
    expected = {"nats-1", "nats-2", "nats-3", "postgres", "scheduler-1", "scheduler-2"}
    expected |= {"runner-1", "runner-2", "logs", "api-1", "api-2", "nginx"}
    assert set(services) == expected
    routes = "--routes=nats://nats-1:6222,nats://nats-2:6222,nats://nats-3:6222"
    for name in ("nats-1", "nats-2", "nats-3"):
        command = services[name]["command"]
        assert f"--name={name}" in command and "--jetstream" in command and routes in command
        assert "--cluster_name=cronbus" in command and "--cluster=nats://0.0.0.0:6222" in command
    instance_ids = []
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        if name.startswith(SERVICES):
            env = service["environment"]
            assert env["CRONBUS_REPLICAS"] == "3", name
            assert env["CRONBUS_NATS_URL"].count("nats://nats-") == 3, name
            instance_ids.append(env["CRONBUS_INSTANCE_ID"])
            kind = name.split("-")[0]
            check = " ".join(service["healthcheck"]["test"])
            assert ("/readyz" if kind == "api" else f"health --service {kind}") in check, name
            assert service["image"].endswith(f"}}-{kind}:${{CRONBUS_VERSION:-0.1.0}}"), name
    assert len(instance_ids) == len(set(instance_ids)) == 7


def test_compose_secrets_reach_only_the_services_that_read_them() -> None:
    services = compose()["services"]
    for name, service in services.items():
        env = service.get("environment", {})
        assert ("CRONBUS_ADMIN_KEY" in env) == name.startswith("api-"), name
        assert ("CRONBUS_DATABASE_URL" in env) == (name.startswith("api-") or name == "logs"), name
        assert "ports" not in service or name == "nginx", f"{name} publishes a port"


def test_compose_volumes_are_named_and_declared() -> None:
    data = compose()
    declared = set(data["volumes"])
    used = set()
    for service in data["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared == {"nats-1", "nats-2", "nats-3", "postgres"}


def test_compose_schema() -> None:
    # A dev dependency: next to this interpreter, whether or not its bin directory is on PATH.
    beside = Path(sys.executable).parent / "check-jsonschema"
    tool = str(beside) if beside.exists() else shutil.which("check-jsonschema")
    if tool is None:
        pytest.skip(
            "check-jsonschema is not installed (pip install check-jsonschema): compose schema not checked"
        )
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- nginx -------------------------------------------------------------------------------------


def test_nginx_streams_live_output_unbuffered() -> None:
    text = (DEPLOY / "nginx.conf").read_text()
    stream = re.search(r"location ~ \^/v1/runs/\[\^/\]\+/log/stream\$ \{(.*?)\}", text, re.S)
    assert stream, "no location for live output"
    assert "proxy_buffering off;" in stream.group(1)
    assert re.search(r"proxy_read_timeout 1h;", stream.group(1))
    assert "server api-1:8080" in text and "server api-2:8080" in text


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        if IN_CI:
            pytest.fail("nginx is missing in CI (.ci/run installs nginx-light)")
        pytest.skip("nginx is not installed (apt-get install nginx-light): nginx -t not run")
    # api-1 and api-2 resolve on the compose network only; nginx -t resolves upstream names.
    conf = (DEPLOY / "nginx.conf").read_text().replace("api-1:8080", "127.0.0.1:18081")
    conf = conf.replace("api-2:8080", "127.0.0.1:18082")
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-g",
            f"pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


# --- Kubernetes --------------------------------------------------------------------------------


def test_k8s_objects_are_complete_and_in_one_namespace() -> None:
    objects = k8s_objects()
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml", "nats-values.yaml"}
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == files
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for service in SERVICES:
        assert ("Deployment", f"cronbus-{service}") in kinds
    assert {("Service", "cronbus-api"), ("PodDisruptionBudget", "cronbus-scheduler")} <= kinds
    assert {("ConfigMap", "cronbus-config"), ("Secret", "cronbus-secrets"), ("Namespace", "cronbus")} <= kinds
    for o in objects:
        assert o.get("apiVersion") and o.get("kind") and o["metadata"].get("name"), o
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "cronbus", o["metadata"]["name"]


def deployments() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "Deployment"}


def test_k8s_deployments_probes_security_and_references() -> None:
    objects = k8s_objects()
    config = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    secrets = {o["metadata"]["name"]: o["stringData"] for o in objects if o["kind"] == "Secret"}
    assert config["cronbus-config"]["CRONBUS_REPLICAS"] == "3"
    for name, deployment in deployments().items():
        service = name.removeprefix("cronbus-")
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["terminationGracePeriodSeconds"] > 20, "longer than CRONBUS_GRACE_PERIOD"
        (container,) = pod["containers"]
        assert container["image"].endswith(f"/cronbus-{service}:0.1.0") and container["args"] == [service]
        ports = {p["name"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, (name, probe)
            port = container[probe].get("httpGet", {}).get("port")
            assert port is None or port in ports, (name, probe, port)
        readiness = container["readinessProbe"]
        if service == "api":
            assert readiness["httpGet"]["path"] == "/readyz"
        else:
            assert readiness["exec"]["command"] == ["cronbus", "health", "--service", service]
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config, name
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["CRONBUS_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        for var in env.values():
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]], (name, ref)
        assert ("CRONBUS_ADMIN_KEY" in env) == (service == "api"), name
        assert ("CRONBUS_DATABASE_URL" in env) == (service in ("api", "logs")), name
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in pod.get("volumes", [])}, name
    assert deployments()["cronbus-logs"]["spec"]["strategy"]["type"] == "Recreate"
    assert deployments()["cronbus-scheduler"]["spec"]["replicas"] == 2


def test_k8s_pdb_and_service_select_their_pods() -> None:
    objects = k8s_objects()
    deploys = deployments()
    (pdb,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    scheduler_labels = deploys["cronbus-scheduler"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= scheduler_labels.items()
    (service,) = [o for o in objects if o["kind"] == "Service"]
    api = deploys["cronbus-api"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= api["metadata"]["labels"].items()
    ports = {p["name"] for p in api["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_k8s_nats_comes_from_the_official_chart() -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "nats-values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["pvc"]["size"]
    assert "helm install nats nats/nats" in (DEPLOY / "k8s" / "nats-values.yaml").read_text()
    assert "StatefulSet" not in {o["kind"] for o in k8s_objects()}
    config = next(o for o in k8s_objects() if o["kind"] == "ConfigMap")
    assert config["data"]["CRONBUS_NATS_URL"] == "nats://nats.cronbus.svc:4222"


def test_k8s_kustomization_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kubectl kustomize deploy/k8s not run")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(rendered) == len(k8s_objects())
