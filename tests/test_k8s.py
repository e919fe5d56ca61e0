"""deploy/k8s renders, validates against Kubernetes' own schemas, and says what it means.

Every overlay is rendered with `kubectl kustomize` (as `kubectl apply -k` would) and
checked with kubernetes-validate --strict (unknown fields are errors) against the
oldest Kubernetes we support: 1.30, the first with the preStop `sleep` action on by
default, and a version every managed Kubernetes still offers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agentmesh.gateway import DEPLOYABLE, HTTP_SERVICES

REPO = Path(__file__).resolve().parent.parent
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"
sys.path.insert(0, str(REPO / "tools"))
import gateway_config  # noqa: E402

OLDEST_KUBERNETES = "1.30.0"
OVERLAYS = sorted(path.name for path in (REPO / "deploy" / "k8s" / "overlays").iterdir())
# `kubectl apply` (client side) keeps the whole object in an annotation, and all of
# an object's annotations together may hold 256 KiB: the tighter of the ConfigMap caps.
MAX_APPLIED_OBJECT_BYTES = 256 * 1024
# The callers each service must accept, and only those (DESIGN.md section 1).
CALLERS = {
    "registry": {"gateway", *DEPLOYABLE},  # every service checks API keys with it
    "providers": {"gateway", "runner", "files", "registry"},  # registry: web search checks
    "runner": {"gateway", "guardrails", "reach", "triggers"},
    "guardrails": {"gateway", "runner"},
    "files": {"gateway", "runner"},
    "traces": {"gateway"},
    "triggers": {"gateway"},
    "reach": set(),  # its gRPC port serves only health, to the kubelet
}
HTTP_PORT = 8081


@pytest.fixture(scope="module")
def deploy_copy(tmp_path_factory) -> Path:
    """deploy/ with the gateway's descriptor (a build output) generated in, away from
    the work tree; envoy.yaml is the committed one (test_gateway.py keeps it current)."""
    assert shutil.which("kubectl"), "kubectl is needed to render deploy/k8s (kubectl kustomize)"
    assert BUF.exists(), f"{BUF} missing: `make setup-test` installs buf"
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(REPO / "deploy", copy, ignore=shutil.ignore_patterns("*.binpb"))
    gateway_config.build_descriptor(BUF, copy / "envoy" / "agentmesh.binpb")
    return copy


@pytest.fixture(scope="module")
def rendered(deploy_copy) -> dict[str, list[dict[str, Any]]]:
    documents = {}
    for overlay in OVERLAYS:
        output = subprocess.run(
            ["kubectl", "kustomize", deploy_copy / "k8s" / "overlays" / overlay],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        documents[overlay] = list(yaml.safe_load_all(output))
    return documents


def _pods(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for document in documents:
        if document["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield document["metadata"]["name"], document["spec"]["template"]


def _containers(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, template in _pods(documents):
        for container in template["spec"]["containers"]:
            yield f"{name}/{container['name']}", container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_schema_validation(rendered, overlay):
    errors = []
    for document in rendered[overlay]:
        try:
            # No CRDs here: a kind without a schema fails rather than being skipped.
            kubernetes_validate.validate(document, OLDEST_KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{document['kind']}/{document['metadata']['name']}: {error.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_grpc_port_has_grpc_probes_on_it(rendered, overlay):
    grpc_ports = 0
    for name, container in _containers(rendered[overlay]):
        for port in container.get("ports", []):
            if port.get("name") == "grpc":
                grpc_ports += 1
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert container[probe]["grpc"]["port"] == port["containerPort"], (
                        f"{name}: {probe} does not ask gRPC health on port {port['containerPort']}"
                    )
    assert grpc_ports == len(DEPLOYABLE)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_runs_from_the_one_image_hardened(rendered, overlay):
    deployments = {
        name: template for name, template in _pods(rendered[overlay]) if name in DEPLOYABLE
    }
    assert set(deployments) == set(DEPLOYABLE)
    images = set()
    for name, template in deployments.items():
        (container,) = template["spec"]["containers"]
        assert container["args"] == ["serve", name]
        images.add(container["image"])
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert {"/tmp", "/var/lib/agentmesh"} <= mounts, name
    assert len(images) == 1
    for name, container in _containers(rendered[overlay]):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert {"requests", "limits"} <= set(container["resources"]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_config_names_the_services_that_exist(rendered, overlay):
    documents = rendered[overlay]
    (config_map,) = [
        d
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("gateway-config-")
    ]
    assert set(config_map["binaryData"]) == {"agentmesh.binpb"}
    assert len(yaml.safe_dump(config_map)) < MAX_APPLIED_OBJECT_BYTES
    envoy = yaml.safe_load(config_map["data"]["envoy.yaml"])
    services = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "Service"}
    for cluster in envoy["static_resources"]["clusters"]:
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        service = services[address["address"]]
        # Headless, so that Envoy's DNS lookups see (and balance over) every pod.
        assert service["clusterIP"] == "None", cluster["name"]
        ports = {port["port"] for port in service["ports"]}
        assert address["port_value"] in ports, f"{cluster['name']}: {address} not in {ports}"
    (gateway,) = [template for name, template in _pods(documents) if name == "gateway"]
    (mount,) = [
        m for m in gateway["spec"]["containers"][0]["volumeMounts"] if m["name"] == "config"
    ]
    transcoder = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = transcoder["typed_config"]["http_filters"]
    descriptors = [f["typed_config"].get("proto_descriptor") for f in filters]
    assert f"{mount['mountPath']}/agentmesh.binpb" in descriptors


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present = labels.get(expression["key"])
        operator, values = expression["operator"], expression.get("values", [])
        if operator == "In" and present not in values:
            return False
        if operator == "NotIn" and present in values:
            return False
        if operator == "Exists" and present is None:
            return False
        if operator == "DoesNotExist" and present is not None:
            return False
    return True


def _admits(policies, direction, subject, peer, port) -> bool:
    """Whether the policies selecting `subject` let traffic through in `direction`
    to or from `peer` (pod labels; None: outside the namespace) on a TCP port."""
    kind, side = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    selecting = [
        p["spec"]
        for p in policies
        if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], subject)
    ]
    if not selecting:
        return True  # not isolated
    for spec in selecting:
        for rule in spec.get(direction, []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            peers = rule.get(side)
            if peers is None:
                return True
            for entry in peers:
                # Only same-namespace pod selectors name pods; ipBlocks are for
                # addresses outside the cluster's pod network.
                if peer is not None and set(entry) == {"podSelector"}:
                    if _selects(entry["podSelector"], peer):
                        return True
    return False


def _reaches(policies, source, target, port) -> bool:
    if source is not None and not _admits(policies, "egress", source, target, port):
        return False
    return _admits(policies, "ingress", target, source, port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_callers_in(rendered, overlay):
    documents = rendered[overlay]
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    pods = {name: template["metadata"]["labels"] for name, template in _pods(documents)}
    # Every pod is isolated (what no policy allows is denied), also one added later.
    for name, labels in {**pods, "newcomer": {"app.kubernetes.io/name": "newcomer"}}.items():
        for kind in ("Ingress", "Egress"):
            assert any(
                kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)
                for p in policies
            ), f"{name} is not isolated for {kind}"
    outside = None
    assert _reaches(policies, outside, pods["gateway"], 8080)
    for target, callers in CALLERS.items():
        assert not _reaches(policies, outside, pods[target], 50051), f"outside -> {target}"
        for caller in ("gateway", *DEPLOYABLE):
            allowed = _reaches(policies, pods[caller], pods[target], 50051)
            assert allowed == (caller in callers), f"{caller} -> {target}: {allowed}"
    # The HTTP APIs: from the gateway only.
    for target in HTTP_SERVICES:
        assert not _reaches(policies, outside, pods[target], HTTP_PORT), f"outside -> {target}"
        for caller in ("gateway", *DEPLOYABLE):
            allowed = _reaches(policies, pods[caller], pods[target], HTTP_PORT)
            assert allowed == (caller == "gateway"), f"{caller} -> {target} http: {allowed}"
    for dependency, port, users in (
        ("nats", 4222, set(DEPLOYABLE)),
        ("postgres", 5432, set(DEPLOYABLE) - {"guardrails", "reach"}),
        ("milvus", 19530, {"files"}),
        ("openbao", 8200, {"providers"}),
    ):
        if dependency not in pods:  # the cluster's own, outside the namespace
            continue
        for caller in ("gateway", *DEPLOYABLE):
            allowed = _reaches(policies, pods[caller], pods[dependency], port)
            assert allowed == (caller in users), f"{caller} -> {dependency}: {allowed}"
