"""One async gRPC server bootstrap for every service.

Every RPC passes one interceptor that, in order: authenticates the caller,
refuses service-only methods to everyone else, validates each request message
against its buf.validate rules, runs the method, maps errors to
google.rpc.Status, and logs one line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import grpc
import protovalidate
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from agentmesh.auth import Authenticator, Principal, caller_for_logs, set_principal
from agentmesh.errors import InvalidArgument, PermissionDenied, ServiceError, internal_status

log = logging.getLogger("agentmesh.rpc")

# Methods anyone may call without credentials.
_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def field_path(violation) -> str:
    parts = []
    for element in violation.proto.field.elements:
        subscript = element.subscript
        if subscript is None:
            parts.append(element.field_name)
        elif subscript.field == "string_key":
            parts.append(f'{element.field_name}["{subscript.value}"]')
        else:
            parts.append(f"{element.field_name}[{subscript.value}]")
    return ".".join(parts)


def validate(message, prefix: str = "") -> None:
    """Raises InvalidArgument naming every field that breaks its buf.validate rules."""
    violations = protovalidate.collect_violations(message)
    if violations:
        raise InvalidArgument(
            (prefix + field_path(violation), violation.proto.message) for violation in violations
        )


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def check_update(field: str, name: str, collection: str, update_mask, updatable: set[str]) -> None:
    """Checks what buf.validate cannot for an Update request: the resource it is
    exempt from names a resource of `collection`, and every mask path may change.

    Update requests exempt the resource from buf.validate (fields outside the
    mask are not sent, so they are validated after the merge instead).
    """
    violations = []
    if not name:
        violations.append((f"{field}.name", f"name the {field} to update"))
    elif not re.fullmatch(rf"{collection}/[A-Za-z0-9_-]{{1,64}}", name):
        violations.append((f"{field}.name", f"must look like {collection}/{{id}}"))
    violations.extend(
        ("update_mask", f"{path!r} is not an updatable field")
        for path in update_mask.paths
        if path not in updatable
    )
    if violations:
        raise InvalidArgument(violations)


@dataclass
class MethodPolicy:
    """Full method names (/package.Service/Method) callable only with service credentials."""

    service_only: set[str] = field(default_factory=set)


class MeshInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, policy: MethodPolicy):
        self._authenticator = authenticator
        self._policy = policy

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        service_only = method in self._policy.service_only
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, service_only, handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_unary_stream(method, service_only, handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_stream_unary(method, service_only, handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream_stream(method, service_only, handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    async def _admit(self, context, service_only: bool) -> Principal:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        principal = await self._authenticator.authenticate(metadata)
        if service_only and not principal.service:
            raise PermissionDenied("this method accepts service credentials only")
        set_principal(principal)
        return principal

    def _wrap_unary(self, method, service_only, behavior):
        async def wrapped(request, context):
            started = time.perf_counter()
            try:
                await self._admit(context, service_only)
                validate(request)
                response = await behavior(request, context)
            except BaseException as error:
                await _abort(context, method, started, error)
            _log_ok(method, started)
            return response

        return wrapped

    def _wrap_unary_stream(self, method, service_only, behavior):
        async def wrapped(request, context):
            started = time.perf_counter()
            try:
                await self._admit(context, service_only)
                validate(request)
                async for response in behavior(request, context):
                    yield response
            except BaseException as error:
                await _abort(context, method, started, error)
            _log_ok(method, started)

        return wrapped

    def _wrap_stream_unary(self, method, service_only, behavior):
        async def wrapped(request_iterator, context):
            started = time.perf_counter()
            try:
                await self._admit(context, service_only)
                response = await behavior(_validated(request_iterator), context)
            except BaseException as error:
                await _abort(context, method, started, error)
            _log_ok(method, started)
            return response

        return wrapped

    def _wrap_stream_stream(self, method, service_only, behavior):
        async def wrapped(request_iterator, context):
            started = time.perf_counter()
            try:
                await self._admit(context, service_only)
                async for response in behavior(_validated(request_iterator), context):
                    yield response
            except BaseException as error:
                await _abort(context, method, started, error)
            _log_ok(method, started)

        return wrapped


async def _validated(requests: AsyncIterator) -> AsyncIterator:
    async for request in requests:
        validate(request)
        yield request


def _log_ok(method: str, started: float) -> None:
    if log.isEnabledFor(logging.INFO):
        elapsed = (time.perf_counter() - started) * 1000
        log.info("%s OK %.1fms caller=%s", method, elapsed, caller_for_logs())


async def _abort(context, method: str, started: float, error: BaseException):
    elapsed = (time.perf_counter() - started) * 1000
    if isinstance(error, ServiceError):
        log.info("%s %s %.1fms caller=%s", method, error.code.name, elapsed, caller_for_logs())
        status = error.to_status()
    elif isinstance(error, (asyncio.CancelledError, grpc.aio.AbortError)):
        raise error
    else:
        reference = uuid.uuid4().hex[:12]
        log.error(
            "%s INTERNAL %.1fms caller=%s reference=%s",
            method,
            elapsed,
            caller_for_logs(),
            reference,
            exc_info=error,
        )
        status = internal_status(reference)
    await context.abort_with_status(rpc_status.to_status(status))


@dataclass
class GrpcServer:
    """A grpc.aio server with health, reflection and the mesh interceptor."""

    authenticator: Authenticator
    policy: MethodPolicy = field(default_factory=MethodPolicy)
    server: grpc.aio.Server = field(init=False)
    health: health.aio.HealthServicer = field(init=False)
    service_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = grpc.aio.server(
            interceptors=[MeshInterceptor(self.authenticator, self.policy)],
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    def add(self, service_name: str, register, servicer, service_only: Iterable[str] = ()) -> None:
        """Adds a servicer; service_only lists its method names for services alone."""
        register(servicer, self.server)
        self.service_names.append(service_name)
        self.policy.service_only.update(f"/{service_name}/{name}" for name in service_only)

    def bind(self, address: str) -> int:
        try:
            return self.server.add_insecure_port(address)
        except RuntimeError:
            raise OSError(f"cannot listen on {address}: is the port taken?") from None

    async def start(self) -> None:
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        """Stops taking calls, reports NOT_SERVING, lets calls in flight finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def wait_for_termination_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
