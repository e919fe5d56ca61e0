"""What no request may do: crash a method into a bare error, leak an exception's text,
or pass a registry outage off as bad credentials."""

from __future__ import annotations

import asyncio
import logging
import socket

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from rpc_helpers import details_of, error_info
from support import admin_key, mesh_settings

from agentmesh.auth import Authenticator
from agentmesh.client import Client
from agentmesh.db import create_engine, dispose
from agentmesh.gen.guardrails.v1 import guardrails_pb2, guardrails_pb2_grpc
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.mesh import Mesh
from agentmesh.processes import free_port
from agentmesh.server import GrpcServer
from agentmesh.tasks import cancel, every
from agentmesh.testing.postgres import TemporaryPostgres
from services import plugins_named

TOKEN = "robustness-service-token"
SECRET = "sk-live-" + "q" * 32


def _raw_call(channel: grpc.aio.Channel, method: str):
    """A unary call that sends bytes exactly as given."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # not a protobuf message at all
        b"\x0a\x05\xff\xfe\xfd\xfc\xfb",  # field 1 (a string) that is not UTF-8
        b"\x0a\xff\xff\xff\xff\x0f",  # a length running past the end
    ],
    ids=["garbage", "bad-utf8", "truncated"],
)
async def test_a_request_that_does_not_decode_is_invalid_argument(sqlite_mesh, payload, caplog):
    async with grpc.aio.insecure_channel(sqlite_mesh.address) as channel:
        call = _raw_call(channel, "/agentmesh.registry.v1.RegistryService/GetAgent")
        with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as error:
            await call(payload, metadata=(("authorization", f"Bearer {admin_key(sqlite_mesh)}"),))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error_info(error.value, "INVALID_ARGUMENT")
    assert "Traceback" not in caplog.text


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand."""
    length, size = b"", len(payload)
    while True:
        length += bytes([(size & 0x7F) | (0x80 if size > 0x7F else 0)])
        size >>= 7
        if not size:
            break
    return bytes([number << 3 | 2]) + length + payload


async def test_a_message_nested_too_deep_is_invalid_argument(sqlite_mesh):
    # Value{list_value: ListValue{values: [Value{...}]}}, 120 deep: past the 100
    # levels protobuf decodes (and too deep to build as a message in Python).
    value = struct_pb2.Value(string_value="leaf").SerializeToString()
    for _ in range(120):
        value = _field(6, _field(1, value))
    struct = _field(1, _field(1, b"x") + _field(2, value))  # Struct{fields: {"x": value}}
    agent = r.Agent(display_name="deep").SerializeToString() + _field(11, struct)
    payload = _field(1, agent)  # CreateAgentRequest{agent}
    async with grpc.aio.insecure_channel(sqlite_mesh.address) as channel:
        call = _raw_call(channel, "/agentmesh.registry.v1.RegistryService/CreateAgent")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(payload, metadata=(("authorization", f"Bearer {admin_key(sqlite_mesh)}"),))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in error.value.details()  # refused at decoding, not later


class _Broken(guardrails_pb2_grpc.GuardrailServiceServicer):
    async def EvaluateGuardrails(self, request, context):
        raise RuntimeError(f"the database said no; key was {SECRET}")


async def test_a_bug_answers_internal_with_a_reference_and_no_exception_text(caplog):
    async def no_keys(_: str):
        return None

    server = GrpcServer(Authenticator(TOKEN, no_keys))
    server.add(_Broken())
    port = server.bind("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = guardrails_pb2_grpc.GuardrailServiceStub(channel)
            request = guardrails_pb2.EvaluateGuardrailsRequest(
                guardrails=[
                    guardrails_pb2.Guardrail(
                        name="g",
                        regex=guardrails_pb2.RegexCheck(
                            pattern="x", action=guardrails_pb2.RegexCheck.ACTION_BLOCK
                        ),
                    )
                ],
                text="t",
                stage=guardrails_pb2.GUARDRAIL_STAGE_INPUT,
            )
            with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.EvaluateGuardrails(
                    request, metadata=(("authorization", f"Bearer {TOKEN}"),)
                )
    finally:
        await server.stop(0)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    reference = error_info(error.value, "INTERNAL").metadata["reference"]
    assert SECRET not in error.value.details() and "database" not in error.value.details()
    assert reference in error.value.details()
    # The operator finds the cause by the reference in the log.
    assert reference in caplog.text and "RuntimeError" in caplog.text


async def test_a_registry_outage_answers_unavailable_not_unauthenticated(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{closed.getsockname()[1]}"
    # The providers service alone, checking keys with a registry that is not there.
    alone = Mesh(mesh_settings(tmp_path, peers={"registry": nowhere}), plugins_named("providers"))
    async with alone, Client(alone.address, "am_some-user-key") as client:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.providers.ListProviders(p.ListProvidersRequest())
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details_of(error.value, error_details_pb2.RetryInfo)


async def test_a_database_outage_answers_unavailable_and_passes(tmp_path, caplog):
    """Postgres down (crashed, restarting): reads on the driver's pool and on the
    engine, and writes, answer UNAVAILABLE to retry, never INTERNAL; once it is back
    the same service answers again, with nothing written while it was down."""
    with TemporaryPostgres() as postgres:
        url = postgres.create_database("outage")
        registry = Mesh(mesh_settings(tmp_path, database_url=url), plugins_named("registry"))
        async with registry, Client(registry.address, admin_key(registry)) as client:
            agent = await client.registry.CreateAgent(
                r.CreateAgentRequest(agent=r.Agent(display_name="steady"))
            )
            calls = {
                "GetAgent": lambda: client.registry.GetAgent(r.GetAgentRequest(name=agent.name)),
                "ListAgents": lambda: client.registry.ListAgents(r.ListAgentsRequest()),
                "CreateAgent": lambda: client.registry.CreateAgent(
                    r.CreateAgentRequest(agent=r.Agent(display_name="while down"))
                ),
            }
            with postgres.outage(), caplog.at_level(logging.WARNING):
                for name, call in calls.items():
                    with pytest.raises(grpc.aio.AioRpcError) as error:
                        await call()
                    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, name
                    assert "database is unreachable" in error.value.details(), name
                    assert details_of(error.value, error_details_pb2.RetryInfo), name
            # The mesh's own lines (not what other tests' servers may still log).
            ours = [record for record in caplog.records if record.name.startswith("agentmesh")]
            assert ours and not [
                record for record in ours if record.levelno >= logging.ERROR or record.exc_info
            ]
            assert (await calls["GetAgent"]()).name == agent.name
            listed = await calls["ListAgents"]()
            assert [a.display_name for a in listed.agents] == ["steady"]


async def test_a_background_job_logs_an_outage_in_a_line_and_a_bug_with_its_traceback(caplog):
    """A periodic job (a sweep, a relay) that cannot reach its database says so in one
    warning line a try; any other failure keeps its traceback. Both are tried again."""
    engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")

    async def sweep() -> None:
        async with engine.connect():  # refused: nothing listens there
            pass

    async def audit() -> None:
        raise RuntimeError("a bug in the audit")

    log = logging.getLogger("agentmesh.test.jobs")
    tries = {"the sweep": 0, "the audit": 0}
    retried = asyncio.Event()

    def counted(what: str, job):
        async def counted_job() -> None:
            tries[what] += 1
            if min(tries.values()) > 2:  # each has failed, and been logged, twice
                retried.set()
            await job()

        return every(0.01, what, counted_job, log)

    def lines(what: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith(f"{what} failed")]

    with caplog.at_level(logging.WARNING, logger=log.name):
        jobs = [counted("the sweep", sweep), counted("the audit", audit)]
        await asyncio.wait_for(retried.wait(), 10)
        await cancel(jobs)
    await dispose(engine)
    sweeps, audits = lines("the sweep"), lines("the audit")
    assert len(sweeps) >= 2 and len(audits) >= 2
    assert all(
        r.levelno == logging.WARNING and r.exc_info is None and "unreachable" in r.getMessage()
        for r in sweeps
    )
    assert all(r.levelno == logging.ERROR and r.exc_info for r in audits)
