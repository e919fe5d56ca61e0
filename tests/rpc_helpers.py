"""What the access tests share: reading google.rpc error details, and who may call what."""

from __future__ import annotations

import json

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.errors import DOMAIN
from agentmesh.gen.common.v1 import options_pb2
from agentmesh.gen.registry.v1 import account_pb2


def methods_for(service: ServiceDescriptor, audience: int) -> frozenset[str]:
    """The names of a service's methods whose contract gives them this audience."""
    return frozenset(
        method.name
        for method in service.methods
        if method.GetOptions().Extensions[options_pb2.audience] == audience
    )


_ACCOUNTS = account_pb2.DESCRIPTOR.services_by_name["AccountService"]
# AccountService methods that accept service credentials alone (test_auth.py).
SERVICE_ONLY = methods_for(_ACCOUNTS, options_pb2.AUDIENCE_SERVICE)
# AccountService methods only administrators may call (test_auth.py).
ADMIN_ONLY = methods_for(_ACCOUNTS, options_pb2.AUDIENCE_ADMIN)

_DETAIL_TYPES = {
    message.DESCRIPTOR.full_name: message
    for message in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.ResourceInfo,
    )
}


def rich_status(error: grpc.aio.AioRpcError) -> tuple[status_pb2.Status, list]:
    """The google.rpc.Status an error carries, and its details unpacked."""
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code().name} carries no google.rpc.Status"
    details = []
    for packed in status.details:
        detail_type = _DETAIL_TYPES.get(packed.TypeName())
        assert detail_type is not None, f"unexpected error detail {packed.TypeName()}"
        detail = detail_type()
        assert packed.Unpack(detail)
        details.append(detail)
    return status, details


def details_of(error: grpc.aio.AioRpcError, detail_type: type) -> list:
    """The error's details of one google.rpc type (QuotaFailure, BadRequest, ...)."""
    _, details = rich_status(error)
    return [detail for detail in details if isinstance(detail, detail_type)]


def error_info(error: grpc.aio.AioRpcError, reason: str | None = None):
    """The error's one ErrorInfo (domain agentmesh.dev, with a reason); checks the reason."""
    _, details = rich_status(error)
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, f"{error.code().name} has {len(infos)} ErrorInfo details"
    info = infos[0]
    assert info.domain == DOMAIN
    assert info.reason, "ErrorInfo without a reason"
    if reason is not None:
        assert info.reason == reason
    return info


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields a BadRequest detail names, in order; each must say what is wrong."""
    _, details = rich_status(error)
    violations = [
        violation
        for detail in details
        if isinstance(detail, error_details_pb2.BadRequest)
        for violation in detail.field_violations
    ]
    for violation in violations:
        assert violation.description, f"{violation.field} has no description"
    return [violation.field for violation in violations]


def error_text(error: grpc.aio.AioRpcError) -> str:
    """Everything a caller learns from an error, as one comparable string."""
    status, details = rich_status(error)
    return json.dumps(
        {
            "code": error.code().name,
            "details_header": error.details(),
            "message": status.message,
            "details": [
                [type(d).__name__, json_format.MessageToDict(d, preserving_proto_field_name=True)]
                for d in details
            ],
        },
        sort_keys=True,
    )
