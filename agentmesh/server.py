"""One async gRPC server bootstrap for every service.

Every method a service serves is wrapped, when it is added, in the same steps:
authenticate the caller, admit it by the method's `audience` (read from the
contract's method options), validate each request message against its
buf.validate rules, run the method, map errors to google.rpc.Status, and log
one line. Wrapping the handlers themselves, rather than passing each call
through a grpc.aio server interceptor, spares every call the interceptor chain's
coroutines and the handler lookup behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from agentmesh.api import validate
from agentmesh.auth import Authenticator, Principal, caller_for_logs, set_principal
from agentmesh.db import unreachable
from agentmesh.errors import (
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    Unavailable,
    Unimplemented,
    internal_status,
)
from agentmesh.gen.common.v1 import options_pb2
from agentmesh.telemetry import set_incoming_trace, trace_for_logs

log = logging.getLogger("agentmesh.rpc")


class _Undecodable:
    """Stands for a request message that failed to decode (corrupt, too deep,
    bad UTF-8): the call answers INVALID_ARGUMENT instead of grpc's UNKNOWN."""


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _UNDECODABLE

    return deserialize


def _decoded(request: Any) -> Any:
    if request is _UNDECODABLE:
        raise InvalidArgument([("", "the request is not a valid message of this method")])
    return request


def _audience(service: ServiceDescriptor, method: str) -> int:
    """Who may call the method: its `audience` option in the contract."""
    return service.methods_by_name[method].GetOptions().Extensions[options_pb2.audience]


class MeshHandlers:
    """Wraps method handlers in the mesh's steps (the module's docstring)."""

    def __init__(self, authenticator: Authenticator):
        self._authenticator = authenticator

    def wrap(
        self, method: str, audience: int, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        deserialize = _tolerant(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, audience, handler.unary_unary), deserialize, serialize
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, audience, handler.stream_unary, streamed=True),
                deserialize,
                serialize,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, audience, handler.unary_stream), deserialize, serialize
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, audience, handler.stream_stream, streamed=True),
            deserialize,
            serialize,
        )

    async def _admit(self, context, audience: int, request: Any, streamed: bool) -> Any:
        """Authenticates and authorizes the caller; returns the validated request."""
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        set_incoming_trace(metadata)
        principal: Principal = await self._authenticator.authenticate(metadata)
        if audience == options_pb2.AUDIENCE_SERVICE and not principal.service:
            raise PermissionDenied("this method accepts service credentials only")
        if audience == options_pb2.AUDIENCE_ADMIN and not principal.admin:
            raise PermissionDenied("this method is for administrators")
        set_principal(principal)
        if streamed:
            return _validated(request)
        validate(_decoded(request))
        return request

    def _unary(self, method: str, audience: int, behavior, streamed: bool = False):
        async def wrapped(request, context):
            started = time.perf_counter()
            try:
                request = await self._admit(context, audience, request, streamed)
                response = await behavior(request, context)
            except BaseException as error:
                await _abort(context, method, started, error)
            _log_ok(method, started)
            return response

        return wrapped

    def _streaming(self, method: str, audience: int, behavior, streamed: bool = False):
        async def wrapped(request, context):
            started = time.perf_counter()
            try:
                request = await self._admit(context, audience, request, streamed)
                async for response in behavior(request, context):
                    yield response
            except BaseException as error:
                await _abort(context, method, started, error)
            _log_ok(method, started)

        return wrapped


async def _validated(requests: AsyncIterator) -> AsyncIterator:
    async for request in requests:
        validate(_decoded(request))
        yield request


def _log_ok(method: str, started: float) -> None:
    if log.isEnabledFor(logging.INFO):
        elapsed = (time.perf_counter() - started) * 1000
        log.info("%s OK %.1fms caller=%s%s", method, elapsed, caller_for_logs(), trace_for_logs())


async def _abort(context, method: str, started: float, error: BaseException):
    elapsed = (time.perf_counter() - started) * 1000
    if unreachable(error):
        # Named by type only: a driver's message can hold the database's address.
        log.warning("%s: the database is unreachable (%s)", method, type(error).__name__)
        error = Unavailable("the service's database is unreachable; try again")
    if isinstance(error, NotImplementedError):
        # A generated servicer's default: the contract has the method, this build not yet.
        error = Unimplemented(f"{method} is not implemented in this version of agentmesh")
    if isinstance(error, ServiceError):
        log.info(
            "%s %s %.1fms caller=%s%s",
            method,
            error.code.name,
            elapsed,
            caller_for_logs(),
            trace_for_logs(),
        )
        status = error.to_status()
    elif isinstance(error, (asyncio.CancelledError, grpc.aio.AbortError)):
        raise error
    else:
        reference = uuid.uuid4().hex[:12]
        log.error(
            "%s INTERNAL %.1fms caller=%s reference=%s%s",
            method,
            elapsed,
            caller_for_logs(),
            reference,
            trace_for_logs(),
            exc_info=error,
        )
        status = internal_status(reference)
    await context.abort_with_status(rpc_status.to_status(status))


class _Registration:
    """Stands for the server while a generated add_*Servicer_to_server registers a
    servicer: keeps its method handlers, which the real server gets wrapped."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The same handlers as the registered ones, which are kept."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = handlers


def _generated_service(servicer: object) -> tuple[ServiceDescriptor, Callable]:
    """The contract's service a servicer implements, and the function that registers
    it: both found from the generated base class it inherits."""
    for base in type(servicer).__mro__:
        module = sys.modules.get(base.__module__)
        if base.__module__.endswith("_pb2_grpc") and base.__name__.endswith("Servicer"):
            service_name = base.__name__.removesuffix("Servicer")
            messages = sys.modules[base.__module__.removesuffix("_grpc")]
            register = getattr(module, f"add_{base.__name__}_to_server")
            return messages.DESCRIPTOR.services_by_name[service_name], register
    raise TypeError(f"{type(servicer).__name__} does not implement a generated servicer")


class GrpcServer:
    """A grpc.aio server with health, reflection and the mesh's steps on every method
    it serves (health and reflection are public and unwrapped)."""

    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator
        self._handlers = MeshHandlers(authenticator)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names: list[str] = []

    def add(self, servicer: object) -> None:
        """Serves a servicer; who may call each method comes from the contract."""
        service, register = _generated_service(servicer)
        registration = _Registration()
        register(servicer, registration)
        handlers = {
            name: self._handlers.wrap(
                f"/{service.full_name}/{name}", _audience(service, name), handler
            )
            for name, handler in registration.handlers.items()
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )
        self.server.add_registered_method_handlers(service.full_name, handlers)
        self.service_names.append(service.full_name)

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


@contextlib.asynccontextmanager
async def termination_signal() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGTERM or SIGINT, with the handlers in place from the start:
    a signal that arrives as soon as the caller says it is ready is not lost."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def settle_heap() -> None:
    """Called once a serving process has started: what starting made (modules,
    descriptors, the SDK, connections) is moved out of the collector's reach, and a
    young collection comes every 20,000 new objects rather than every 700.

    A process serving the whole mesh holds about 380,000 objects after startup; every
    full collection walked them all with the event loop stopped (about 0.3 s here),
    and the young ones came every few hundred objects a run makes. Measured on
    bench/run_overhead.py's tool case at concurrency 16, the collector's time per run
    went from about 3.8 ms of CPU to 0.4. Cycles made after startup are still
    collected; only what startup made stays for the process's life.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
