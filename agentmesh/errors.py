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

DOMAIN = "agentmesh.dev"


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


class InvalidArgument(ServiceError):
    """A request a client must fix; each violation names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[tuple[str, str]], *, reason: str | None = None):
        self.violations = list(violations)
        summary = "; ".join(f"{field}: {description}" for field, description in self.violations)
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


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


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
