"""The agentmesh command: run the mesh, one service, or talk to a running mesh."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from agentmesh.catalog import apply_definitions, format_agents, list_all_agents, load_definitions
from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.mesh import SERVICES, Mesh
from agentmesh.server import wait_for_termination_signal


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in (("data_dir", args.data_dir), ("port", args.port), ("host", args.host))
        if value is not None
    }
    return Settings(**overrides)


async def _run(settings: Settings, services: tuple[str, ...], apply: list[dict] | None) -> None:
    async with Mesh(settings, services) as mesh:
        if apply:
            key = await asyncio.to_thread((settings.data_dir / "admin.key").read_text)
            async with Client(mesh.address, key.strip()) as client:
                agents = await apply_definitions(client, apply)
                print(f"applied {len(agents)} agent definitions; the registry now lists:")
                print(format_agents(await list_all_agents(client)), flush=True)
        print(f"agentmesh is up on {mesh.address} (Ctrl-C or SIGTERM to stop)", flush=True)
        await wait_for_termination_signal()
    print("agentmesh stopped", flush=True)


async def _agents(args: argparse.Namespace, key: str) -> None:
    async with Client(args.target, key) as client:
        if args.action == "apply":
            await apply_definitions(client, load_definitions(Path(args.file)))
        print(format_agents(await list_all_agents(client)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="agentmesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def server_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data-dir", type=Path, help="default .agentmesh")
        command.add_argument("--port", type=int, help="default 50051; 0 picks a free port")
        command.add_argument("--host", help="default 127.0.0.1")

    up = commands.add_parser("up", help="run every implemented service on one port")
    server_options(up)
    up.add_argument("--apply", type=Path, help="agent definitions (JSON) to apply once up")

    serve = commands.add_parser("serve", help="run one service alone (split deployment)")
    serve.add_argument("service", choices=SERVICES)
    server_options(serve)

    agents = commands.add_parser("agents", help="list or apply agents on a running mesh")
    agents.add_argument("action", choices=["list", "apply"])
    agents.add_argument("file", nargs="?", help="definitions file, for apply")
    agents.add_argument("--target", default="127.0.0.1:50051")
    agents.add_argument("--key", help="API key (default: read --key-file)")
    agents.add_argument("--key-file", default=".agentmesh/admin.key")

    args = parser.parse_args(argv)
    if args.command in ("up", "serve"):
        settings = _settings(args)
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
        services = SERVICES if args.command == "up" else (args.service,)
        apply = getattr(args, "apply", None)
        try:
            asyncio.run(_run(settings, services, load_definitions(apply) if apply else None))
        except OSError as error:  # a taken port, an unwritable data dir
            sys.exit(f"agentmesh: cannot start: {error}")
    else:
        if args.action == "apply" and not args.file:
            parser.error("agents apply needs a file")
        asyncio.run(_agents(args, (args.key or Path(args.key_file).read_text()).strip()))


if __name__ == "__main__":
    main()
