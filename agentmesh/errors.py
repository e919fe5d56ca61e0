"""Errors a service raises, and how they become google.rpc.Status on the wire.

Domain code raises these; the interceptor in agentmesh.server turns them into a
status code, a human message and google.rpc details (AIP-193). Messages must
never contain secrets: they reach the caller verbatim.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "agentmesh.dev"
# How much of a user's own text an error message may quote back: an error must
# stay small whatever the request held (a megabyte of pattern is still one line).
QUOTE_LIMIT = 200


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """User text for an error message or a log line: repr-escaped (no raw newlines
    or control characters, so it cannot forge a log line) and cut to `limit`."""
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = metadata

    def details(self) -> list:
        return [
            error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        ]

    def to_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details():
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        return status


# A status travels in HTTP/2 trailers, which clients cap at 8 KiB by default: a
# bigger one reaches the caller as RESOURCE_EXHAUSTED instead of the error it is.
_FIELD_LIMIT = 160
_DESCRIPTION_LIMIT = 160
_MAX_VIOLATIONS = 10
_SUMMARY_LIMIT = 480


class InvalidArgument(ServiceError):
    """A request a client must fix; each violation names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[tuple[str, str]], *, reason: str | None = None):
        # Descriptions may quote what a client sent (a pattern, a schema error);
        # capped, a bad request always gets a readable answer, never one too big.
        self.violations = [
            (field[:_FIELD_LIMIT], description[:_DESCRIPTION_LIMIT])
            for field, description in list(violations)[:_MAX_VIOLATIONS]
        ]
        summary = "; ".join(f"{field}: {description}" for field, description in self.violations)
        if len(summary) > _SUMMARY_LIMIT:
            summary = summary[:_SUMMARY_LIMIT] + "..."
        super().__init__(f"invalid request: {summary}", reason=reason)

    def details(self) -> list:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                for field, description in self.violations
            ]
        )
        return [bad_request, *super().details()]


class NotFound(ServiceError):
    """Also what a caller gets for another tenant's resource: it learns nothing."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"

    def __init__(self, resource_name: str):
        super().__init__(f"{resource_name} not found", resource=resource_name)


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED
    reason = "ETAG_MISMATCH"

    @classmethod
    def stale(cls, resource_name: str) -> Aborted:
        """The etag a client sent is not the resource's: it changed since it was read."""
        return cls(
            f"{resource_name} changed since it was read; read it again", resource=resource_name
        )


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unimplemented(ServiceError):
    """A method the contract has and this deployment does not serve yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_seconds: int = 1, **kwargs: str):
        super().__init__(message, **kwargs)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.seconds = self.retry_after_seconds
        return [retry, *super().details()]


class QuotaExceeded(ServiceError):
    """Not enough credits: RESOURCE_EXHAUSTED with a QuotaFailure naming the account."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "INSUFFICIENT_CREDITS"

    def __init__(self, subject: str, description: str):
        super().__init__(description)
        self.subject = subject

    def details(self) -> list:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=self.subject, description=self.message
                )
            ]
        )
        return [quota, *super().details()]


class PeerError(ServiceError):
    """Another service's error, passed on as it came: same code, message and details.

    A NOT_FOUND from the registry is the caller's NOT_FOUND; an UNAVAILABLE peer is
    this call's UNAVAILABLE.
    """

    def __init__(self, status: status_pb2.Status):
        super().__init__(status.message)
        self.status = status
        self.code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> ServiceError:
        status = rpc_status.from_call(error)
        if status is None:
            code = error.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return Unavailable("a service this call needs is not answering")
            status = status_pb2.Status(code=code.value[0], message=error.details() or "")
        return cls(status)

    def to_status(self) -> status_pb2.Status:
        return self.status


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def internal_status(reference: str) -> status_pb2.Status:
    """What a caller sees for a bug: no exception text, only a log reference."""
    status = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (reference {reference})"
    )
    packed = any_pb2.Any()
    packed.Pack(
        error_details_pb2.ErrorInfo(
            reason="INTERNAL", domain=DOMAIN, metadata={"reference": reference}
        )
    )
    status.details.append(packed)
    return status
