"""Property-based fuzzing of the REST API through the Envoy gateway, by schemathesis
reading the OpenAPI description (tools/openapi.py): every answer, to requests the
description allows and to ones it does not, must be one the description allows
(status, content type, body schema), never a 5xx; and a path naming another user's
resource must be answered exactly as one naming a resource that never existed.

The run is bounded (about 30 s): a few examples per operation, valid and invalid,
with a fixed seed. To explore further: AGENTMESH_FUZZ_SEED, AGENTMESH_FUZZ_EXAMPLES,
AGENTMESH_FUZZ_PHASES=examples,coverage,fuzzing (boundary values; ~4x slower) and
AGENTMESH_FUZZ_ARGS (more schemathesis options). Path parameters draw from a
dictionary of real ids (the user's own agents, context, run, conversation, provider;
another user's) most of the time, so requests reach the services' logic rather than
stopping at NOT_FOUND. Server streams (runs, watches) are fuzzed too: schemathesis
reads the Server-Sent Events body whole (the stream ends with the run) and checks
each event's JSON against the message schema.

This module is also schemathesis' hooks module (SCHEMATHESIS_HOOKS): the tenancy
check below is registered in the schemathesis process that imports it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from xml.etree import ElementTree

import pytest
import schemathesis
from support import Users, running_mesh

from agentmesh.gateway import Gateway, descriptor_set
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import account_pb2, registry_pb2
from agentmesh.gen.runner.v1 import runner_pb2
from agentmesh.mesh import Mesh

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import openapi  # noqa: E402

# Set by the test for the schemathesis process: JSON {"key": ..., "foreign": {param: [ids]}}.
FOREIGN_ENV = "AGENTMESH_FUZZ_TENANCY"
# An id of the right shape that no resource ever had.
NEVER = "never-existed-0"


@schemathesis.check
def foreign_resources_look_missing(ctx, response, case):
    """A path naming another user's resource is answered like one that never existed:
    the same status and the same error reasons, so nothing tells the two apart."""
    tenancy = json.loads(os.environ.get(FOREIGN_ENV, "{}"))
    foreign = tenancy.get("foreign", {})
    named = [
        name
        for name, value in (case.path_parameters or {}).items()
        if value in foreign.get(name, ())
    ]
    if not named:
        return None
    twin = case.derive(keep_auth=True)
    for name in named:
        twin.path_parameters[name] = NEVER
    answer = twin.call(headers={"authorization": f"Bearer {tenancy['key']}"})
    if (response.status_code, _reasons(response)) != (answer.status_code, _reasons(answer)):
        raise AssertionError(
            f"another user's {', '.join(named)} answered {response.status_code} "
            f"{_reasons(response)}, a missing one {answer.status_code} {_reasons(answer)}"
        )
    return None


def _reasons(response) -> list[str]:
    try:
        body = json.loads(response.content)
    except ValueError:
        return []
    details = body.get("details", []) if isinstance(body, dict) else []
    return sorted(str(d.get("reason", d.get("@type"))) for d in details if isinstance(d, dict))


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path_factory.mktemp("fuzz-mesh")) as running:
        yield running


@pytest.fixture(scope="module")
async def gateway(mesh) -> AsyncIterator[Gateway]:
    async with Gateway(mesh.address) as running:
        yield running


async def _seed(client, prefix: str) -> dict[str, list[str]]:
    """A user's resources, by the path parameter that names them."""
    agents = [
        await client.registry.CreateAgent(
            registry_pb2.CreateAgentRequest(
                agent_id=f"{prefix}-{n}",
                agent=registry_pb2.Agent(display_name=f"{prefix} {n}", instructions="Be brief."),
            )
        )
        for n in ("a", "b")
    ]
    context = await client.registry.CreateContext(
        registry_pb2.CreateContextRequest(
            parent=agents[0].name, context=registry_pb2.Context(display_name="plan")
        )
    )
    run = await client.runner.RunAgent(runner_pb2.RunAgentRequest(agent=agents[0].name, input="hi"))
    provider = await client.providers.CreateProvider(
        p.CreateProviderRequest(
            provider=p.Provider(
                display_name="local",
                type=p.PROVIDER_TYPE_CUSTOM,
                # Never called: no fuzzed request makes a provider call out.
                base_url="https://models.example.com/v1",
                api_key="sk-never-returned",
            )
        )
    )

    def ids(*names: str) -> list[str]:
        return [name.rsplit("/", 1)[-1] for name in names]

    return {
        "agent": ids(*(a.name for a in agents)),
        "target": ids(*(a.name for a in agents)),
        "context": ids(context.name),
        "run": ids(run.name),
        "conversation": ids(run.conversation),
        "provider": ids(provider.name),
    }


# Requests that make a service call a URL a request gave (a provider's base_url,
# an HTTP tool's, an endpoint guardrail's) are never fuzzed with made-up data:
# tests reach no address off this machine. So one user fuzzes the definitions
# (agents, providers, contexts, workflows, ... but not the provider test call nor
# guardrail evaluation, both calls out), and another, who can define nothing,
# fuzzes runs of their own agents: no tools, on the stand-in model server.
DEFINITIONS = (
    "--exclude-tag",
    "RunnerService",
    "--exclude-operation-id",
    "ProviderService_TestProvider",
    "--exclude-operation-id",
    "GuardrailService_EvaluateGuardrails",
)
RUNS = ("--include-tag", "RunnerService")


@pytest.mark.parametrize("part", ["definitions", "runs"])
async def test_the_rest_api_answers_only_what_its_description_allows(mesh, gateway, tmp_path, part):
    users = Users(mesh)
    try:
        client, user = await users.new(credits=1_000_000)
        other, stranger = await users.new(credits=10_000)
        key = await users.admin.accounts.CreateApiKey(
            account_pb2.CreateApiKeyRequest(parent=user.name)
        )
        own = await _seed(client, "fuzz")
        own["user"] = [user.name.rsplit("/", 1)[-1]]
        foreign = await _seed(other, "theirs")
        foreign["user"] = [stranger.name.rsplit("/", 1)[-1]]
        filters = DEFINITIONS if part == "definitions" else RUNS
        result = await _schemathesis(gateway, key.secret, own, foreign, tmp_path, filters)
        assert result.returncode == 0, _failures(result.output)

        # Every operation of the part was tested, none skipped.
        spec = json.loads((tmp_path / "openapi.json").read_text())
        runner = {
            f"{verb.upper()} {path}"
            for path, item in spec["paths"].items()
            for verb, operation in item.items()
            if operation["tags"] == ["RunnerService"]
        }
        everything = {f"{v.upper()} {path}" for path, item in spec["paths"].items() for v in item}
        calls_out = {"POST /api/v1/providers/{provider}:test", "POST /api/v1/guardrails:evaluate"}
        expected = runner if part == "runs" else everything - runner - calls_out
        suite = ElementTree.parse(tmp_path / "junit.xml").getroot()
        assert {case.get("name") for case in suite.iter("testcase")} == expected
        assert not [*suite.iter("failure"), *suite.iter("error"), *suite.iter("skipped")]
        if part == "runs":
            # The dictionary's real agents ran: more runs than the one seeded.
            runs = await client.runner.ListRuns(runner_pb2.ListRunsRequest(page_size=100))
            assert len(runs.runs) > 1
    finally:
        await users.close()


def _failures(output: str) -> str:
    """Schemathesis' report from its first error or failure on: what failed, and a
    curl command reproducing each."""
    starts = [output.find(h) for h in ("= ERRORS =", "= FAILURES =") if h in output]
    return output[min(starts) - 40 :] if starts else output[-20000:]


class _Result:
    def __init__(self, returncode: int, output: str):
        self.returncode, self.output = returncode, output


async def _schemathesis(
    gateway: Gateway,
    api_key: str,
    own: dict[str, list[str]],
    foreign: dict[str, list[str]],
    directory: Path,
    filters: tuple[str, ...],
) -> _Result:
    spec = directory / "openapi.json"
    spec.write_text(json.dumps(openapi.describe(descriptor_set())))
    config = directory / "schemathesis.toml"
    config.write_text(_config(own, foreign))
    examples = os.environ.get("AGENTMESH_FUZZ_EXAMPLES", "8")
    seed = os.environ.get("AGENTMESH_FUZZ_SEED", "20261127")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        str(spec),
        *filters,
        "--url",
        gateway.url,
        "--header",
        f"Authorization: Bearer {api_key}",
        # Requests the description allows, and requests it does not (wrong types,
        # out of range, missing fields): neither may get a 5xx or an undocumented answer.
        "--mode",
        "all",
        "--phases",
        os.environ.get("AGENTMESH_FUZZ_PHASES", "examples,fuzzing"),
        "--max-examples",
        examples,
        "--seed",
        seed,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,foreign_resources_look_missing",
        "--request-timeout",
        "30",
        # One worker: hypothesis describes strategies with ast.parse, which CPython 3.11
        # breaks when threads run it at once ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--no-color",
        "--output-truncate",
        "false",
        "--report",
        "junit",
        "--report-junit-path",
        str(directory / "junit.xml"),
        # More options for a closer look: "--include-operation-id RegistryService_GetAgent".
        *os.environ.get("AGENTMESH_FUZZ_ARGS", "").split(),
        cwd=directory,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "test_openapi_fuzz",
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
            FOREIGN_ENV: json.dumps({"key": api_key, "foreign": foreign}),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode is not None
    return _Result(process.returncode, out.decode(errors="replace"))


def _config(own: dict[str, list[str]], foreign: dict[str, list[str]]) -> str:
    """Dictionaries of real ids for the path parameters that name resources."""
    lines = []
    for name in own:
        values = own[name] + foreign.get(name, []) + [NEVER]
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    for name in own:
        lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = 0.8 }}')
    return "\n".join(lines) + "\n"
