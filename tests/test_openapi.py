"""The REST API's OpenAPI description (tools/openapi.py): valid OpenAPI 3.1, one
operation for every public HTTP rule of the contract, and schemas in the proto3
JSON form the gateway prints. That the gateway's answers fit it is
tests/test_openapi_fuzz.py's job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate

from agentmesh.gateway import descriptor_set
from agentmesh.gen.common.v1 import options_pb2

REPO = Path(__file__).resolve().parent.parent
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"
sys.path.insert(0, str(REPO / "tools"))
import openapi  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[bytes, dict]:
    """What `make contract` publishes: buf's descriptor set and the description of it."""
    assert BUF.exists(), f"{BUF} missing: `make setup-test` installs buf"
    out = tmp_path_factory.mktemp("contract")
    subprocess.run(
        [BUF, "build", "--as-file-descriptor-set", "-o", out / "agentmesh.binpb"],
        cwd=REPO,
        check=True,
    )
    subprocess.run(
        [
            sys.executable,
            REPO / "tools" / "openapi.py",
            out / "agentmesh.binpb",
            "-o",
            out / "o.json",
        ],
        cwd=REPO,
        check=True,
    )
    return (out / "agentmesh.binpb").read_bytes(), json.loads((out / "o.json").read_text())


def _operations(spec: dict) -> dict[str, tuple[str, str, dict]]:
    return {
        operation["operationId"]: (verb, path, operation)
        for path, item in spec["paths"].items()
        for verb, operation in item.items()
    }


def test_the_description_is_valid_openapi_3_1(built):
    _, spec = built
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema
    # Every $ref resolves to a component that exists.
    refs = {ref for ref in _refs(spec)}
    for ref in refs:
        kind, _, name = ref.removeprefix("#/components/").partition("/")
        assert name in spec["components"][kind], ref


def _refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_public_http_rule_is_an_operation_and_no_service_only_method_is(built):
    descriptor, spec = built
    expected, service_only = set(), set()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor).file:
        for service in file.service:
            for method in service.method:
                audience = method.options.Extensions[options_pb2.audience]
                if audience == options_pb2.AUDIENCE_SERVICE:
                    service_only.add(f"{service.name}_{method.name}")
                    continue
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                expected.add(f"{service.name}_{method.name}")
                for number in range(2, len(rule.additional_bindings) + 2):
                    expected.add(f"{service.name}_{method.name}{number}")
    operations = _operations(spec)
    assert set(operations) == expected
    assert len(expected) > 60  # the whole contract, not a slice
    assert not service_only & {op.rstrip("0123456789") for op in operations}
    assert {"AccountService_Authenticate", "ProviderService_ResolveCredentials"} <= service_only


def test_paths_parameters_and_bodies_follow_the_http_rules(built):
    _, spec = built
    operations = _operations(spec)

    verb, path, get = operations["RegistryService_GetAgent"]
    assert (verb, path) == ("get", "/api/v1/agents/{agent}")
    (agent,) = get["parameters"]
    assert agent["in"] == "path" and agent["required"]
    # The id part of the field's own pattern: ^agents/[A-Za-z0-9_-]{1,64}(@...)?$
    assert agent["schema"]["pattern"].startswith("^[A-Za-z0-9_-]{1,64}")

    verb, path, update = operations["RegistryService_UpdateAgent"]
    assert (verb, path) == ("patch", "/api/v1/agents/{agent}")  # {agent.name=agents/*}
    body = update["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/agentmesh.registry.v1.Agent"}
    assert [(p["name"], p["in"]) for p in update["parameters"]] == [
        ("agent", "path"),
        ("updateMask", "query"),
    ]

    _, path, remove = operations["RegistryService_RemoveHandoff"]
    assert path == "/api/v1/agents/{agent}/handoffs/agents/{target}"

    _, path, listed = operations["RegistryService_ListAgents"]
    query = {p["name"]: p for p in listed["parameters"]}
    assert set(query) >= {"pageSize", "pageToken"}
    assert query["pageSize"]["schema"]["type"] == "integer"

    # body "*": the request's fields not in the path.
    _, path, run = operations["RunnerService_RunAgent"]
    assert path == "/api/v1/agents/{agent}/run"
    run_body = run["requestBody"]["content"]["application/json"]["schema"]
    assert "agent" not in run_body["properties"] and "input" in run_body["properties"]
    assert "input" in run_body["required"]
    assert run_body["properties"]["maxTurns"]["maximum"] == 100

    # Additional bindings are operations of their own.
    assert operations["RunnerService_ListRuns2"][1] == "/api/v1/agents/{agent}/runs"

    # A server stream is Server-Sent Events of its messages.
    ok = operations["RunnerService_StreamRun"][2]["responses"]["200"]["content"]
    event = ok["text/event-stream"]["schema"]
    assert event["required"] == ["data"]
    assert event["properties"]["data"]["contentMediaType"] == "application/json"
    assert event["properties"]["data"]["contentSchema"] == {
        "$ref": "#/components/schemas/agentmesh.runner.v1.RunEvent"
    }
    # Errors are the google.rpc.Status JSON; the bearer key is asked everywhere.
    assert spec["components"]["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/google.rpc.Status"
    }
    assert spec["security"] == [{"apiKey": []}]
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_schemas_are_the_proto3_json_mapping_the_gateway_prints(built):
    _, spec = built
    schemas = spec["components"]["schemas"]
    agent = schemas["agentmesh.registry.v1.Agent"]
    properties = agent["properties"]
    assert "displayName" in properties and "display_name" not in properties
    assert agent["additionalProperties"] is False  # printed: only its fields
    assert properties["displayName"]["maxLength"] == 200
    assert "displayName" in agent["required"]
    assert properties["name"]["readOnly"] is True
    assert properties["tools"]["type"] == "array"
    assert properties["tools"]["maxItems"] == 128
    assert properties["createTime"] == {
        "$ref": "#/components/schemas/google.protobuf.Timestamp",
        "readOnly": True,
    }
    assert schemas["google.protobuf.Timestamp"]["format"] == "date-time"

    provider = schemas["agentmesh.providers.v1.Provider"]["properties"]
    assert "writeOnly" not in provider["apiKey"]  # INPUT_ONLY: printed, always empty
    assert provider["apiKey"]["description"].endswith("Input only: answers carry it empty.")
    assert provider["extraHeaders"]["type"] == "object"  # a map
    # Enums by name.
    state = schemas["agentmesh.runner.v1.Run.State"]
    assert state["type"] == "string" and "STATE_SUCCEEDED" in state["enum"]
    # 64-bit integers are strings.
    sequence = schemas["agentmesh.runner.v1.RunEvent"]["properties"]["sequence"]
    assert sequence["type"] == "string" and sequence["format"] == "int64"
    # A oneof: at most one member; exactly one when buf.validate requires it.
    event = schemas["agentmesh.runner.v1.RunEvent"]
    assert ["runStarted", "textDelta"] in [c["required"] for c in event["not"]["anyOf"]]
    tool = schemas["agentmesh.registry.v1.Tool"]
    assert {"required": ["function"]} in tool["oneOf"]
    # Comments become descriptions.
    assert sequence["description"] == "Position in the run's event log, for resuming a watch."
    # Error details are described for clients to decode.
    bad = schemas["google.rpc.BadRequest"]
    assert "fieldViolations" in bad["properties"]


def test_the_generated_stubs_contract_describes_the_same_api(built):
    """The description of the contract the Python stubs carry (no json_name, no
    comments: names are derived) matches the one of buf's, but for descriptions."""
    _, spec = built
    from_stubs = openapi.describe(descriptor_set())
    assert _without_descriptions(from_stubs) == _without_descriptions(spec)


def _without_descriptions(node):
    if isinstance(node, dict):
        return {
            key: _without_descriptions(value)
            for key, value in node.items()
            if key not in ("description", "summary")
        }
    if isinstance(node, list):
        return [_without_descriptions(value) for value in node]
    return node
