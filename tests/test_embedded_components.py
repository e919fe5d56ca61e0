"""The embedded NATS server and the throwaway PostgreSQL really run and clean up."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
import sqlalchemy as sa
from nats.js.api import StreamConfig

from agentmesh.nats_server import EmbeddedNats
from agentmesh.testing.postgres import TemporaryPostgres


def _port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
async def embedded_nats() -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats() as server:
        yield server


@pytest.fixture(scope="module")
def postgres() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres() as pg:
        yield pg


async def test_nats_jetstream_publish_ack_and_consume(embedded_nats: EmbeddedNats) -> None:
    # The system NATS on 4222 must never be the one under test.
    assert embedded_nats.port != 4222
    assert embedded_nats.url == f"nats://127.0.0.1:{embedded_nats.port}"

    client = await nats.connect(embedded_nats.url)
    try:
        js = client.jetstream()
        await js.add_stream(StreamConfig(name="RUNS", subjects=["runs.>"]))

        ack = await js.publish("runs.created", b"run-1")
        assert (ack.stream, ack.seq) == ("RUNS", 1)

        subscription = await js.pull_subscribe("runs.>", durable="worker")
        [message] = await subscription.fetch(1, timeout=5)
        assert (message.subject, message.data) == ("runs.created", b"run-1")
        await message.ack()
    finally:
        await client.close()


async def test_nats_stop_terminates_server_and_removes_temp_dir() -> None:
    server = EmbeddedNats()
    await server.start()
    port, data_dir = server.port, server.data_dir
    assert not _port_is_closed(port)

    await server.stop()

    assert _port_is_closed(port)
    assert not data_dir.exists()


async def test_nats_given_data_dir_holds_store_and_log_not_our_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async with EmbeddedNats(tmp_path) as server:
        client = await nats.connect(server.url)
        await client.jetstream().add_stream(StreamConfig(name="KEPT", subjects=["kept"]))
        await client.close()

    assert (tmp_path / "jetstream").is_dir()
    assert "Server is ready" in (tmp_path / "nats-server.log").read_text()
    out, err = capfd.readouterr()
    assert "nats-server" not in out + err


async def test_nats_start_fails_clearly_when_port_is_taken_by_another_server() -> None:
    # Another NATS-looking server owns the port (like the system one on 4222):
    # start() must not mistake it for ours.
    async def impostor(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_name":"someone-else","jetstream":true}\r\n')
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = other.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RuntimeError, match="address already in use"):
            await EmbeddedNats(port=port).start()
    finally:
        other.close()
        await other.wait_closed()


def test_postgres_runs_queries_and_stop_cleans_up() -> None:
    with TemporaryPostgres() as pg:
        # The system PostgreSQL on 5432 must never be the one under test.
        assert pg.port != 5432
        port, directory = pg.port, pg.directory
        engine = sa.create_engine(pg.url())
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        engine.dispose()

    assert not directory.exists()
    assert _port_is_closed(port)


def test_postgres_create_database_gives_a_separate_empty_database(
    postgres: TemporaryPostgres,
) -> None:
    first = sa.create_engine(postgres.create_database("module_a"))
    second = sa.create_engine(postgres.create_database("module_b"))
    try:
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE runs (id int PRIMARY KEY)"))

        with second.connect() as conn:
            assert conn.scalar(sa.text("SELECT current_database()")) == "module_b"
            assert sa.inspect(conn).get_table_names() == []
    finally:
        first.dispose()
        second.dispose()
